"""PersonalRewardBench rows: the schema of the SynthesizeMe personalized sets (Chatbot Arena, PRISM).

One row is one choice of one user:

    {"user_id": "u17", "split": "train" | "val" | "test",
     "context": [{"role": "user", "content": "..."}, ...],      # the full conversation so far
     "chosen": {"role": "assistant", "content": "..."},
     "rejected": {"role": "assistant", "content": "..."},
     "chosen_score": 7, "rejected_score": 3}                       # optional

Roles may be spelled the way PRISM-derived or Gemini-style exports spell them, in any case: `model`,
`gpt`, `bot` and `chatbot` are read as `assistant`, `human` as `user` (`types.Message`); any other
role is a bad row.

A user's train rows are their history; test rows are what gets scored.

Users may also *state* their preferences, the way PRISM's survey records them: `persona` (free
text), `self_description`, `system_string`, `stated_prefs` (a mapping of what they rate as
important), on a row or in a users file joined by `user_id` (one JSON object per line with those
fields; `rows.jsonl` finds `rows.users.jsonl` by itself), and per row `choice_attributes`. Training
may read them; scoring never needs them, and shows a user's persona to the judge when there is one.

Rows are read line by line through the registered dataset loaders (JSONL, parquet); a bad row
becomes a `LineError` that names its line and field, never a guess.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pgenrm_plugins.requests_io import LineError, read_models
from pgenrm_plugins.types import HistoryItem, Message

SPLITS = ("train", "val", "test")
# A user with this many train pairs or more is warm; with fewer, cold-start (the paper's "new users
# with limited feedback"); with none, no-history (scored from the population and prototypes alone).
WARM_MIN_PAIRS = 3


def user_group(train_pairs: int) -> str:
    return "warm" if train_pairs >= WARM_MIN_PAIRS else "cold_start" if train_pairs else "no_history"


class StatedUser(BaseModel):
    """A user's stated preferences (PRISM's survey fields, or a free-text persona), all optional:
    one line of a users file, joined to the rows by `user_id`, and part of every row."""

    model_config = ConfigDict(extra="ignore", frozen=True)  # the real sets carry extra columns

    user_id: str = Field(min_length=1)
    persona: str | None = None
    self_description: str | None = None
    system_string: str | None = None
    stated_prefs: dict[str, Any] | None = None

    @field_validator("user_id", mode="before")
    @classmethod
    def _id_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    def stated(self) -> str | None:
        return persona_text(self.model_dump(include=set(STATED_FIELDS)))


class BenchRow(StatedUser):
    split: Literal["train", "val", "test"]
    context: list[Message] = Field(min_length=1)
    chosen: Message
    rejected: Message
    chosen_score: float | None = None
    rejected_score: float | None = None
    choice_attributes: dict[str, Any] | list[Any] | None = None

    @field_validator("chosen", "rejected", mode="before")
    @classmethod
    def _response(cls, v: Any) -> Any:
        if isinstance(v, str):  # some exports keep only the text
            v = {"role": "assistant", "content": v}
        if isinstance(v, dict) and not str(v.get("content") or "").strip():
            raise ValueError("response is empty")
        return v

    def history_item(self) -> HistoryItem:
        return HistoryItem(prompt=list(self.context), chosen=self.chosen.content, rejected=self.rejected.content)


def read_bench_rows(path: str | Path) -> Iterator[BenchRow | LineError]:
    """Every row of the file in order: a `BenchRow`, or a `LineError` naming the line and the field."""
    return read_models(path, BenchRow)


STATED_FIELDS = ("persona", "self_description", "system_string", "stated_prefs")


def persona_text(fields: dict[str, Any]) -> str | None:
    """One persona text from whichever stated-preference fields a user has: the free-text ones in
    order, then `stated_prefs` as "Rates as important: name (value), ..."; None when all are empty."""
    parts = [str(fields[k]).strip() for k in STATED_FIELDS[:3] if fields.get(k) and str(fields[k]).strip()]
    prefs = fields.get("stated_prefs")
    if isinstance(prefs, dict) and prefs:
        parts.append("Rates as important: " + ", ".join(f"{k} ({v})" for k, v in prefs.items()))
    return " ".join(dict.fromkeys(parts)) or None


class BadRowsError(ValueError):
    """Raised by `load_bench(strict=True)` when any row is bad; lists them by line."""


@dataclass
class BenchData:
    rows: list[BenchRow] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)
    stated: dict[str, str] = field(default_factory=dict)  # user_id -> persona text, from a users file

    def personas(self) -> dict[str, str]:
        """user_id -> the user's stated preferences as one text: a users file's, else their rows'."""
        out = {}
        for r in self.rows:
            if r.user_id not in out and (text := r.stated()):
                out[r.user_id] = text
        return {**out, **self.stated}

    def split(self, name: str) -> list[BenchRow]:
        return [r for r in self.rows if r.split == name]

    def histories(self, split: str = "train") -> dict[str, list[HistoryItem]]:
        """user_id -> that user's rows of `split` as history, in file order."""
        out: dict[str, list[HistoryItem]] = defaultdict(list)
        for r in self.rows:
            if r.split == split:
                out[r.user_id].append(r.history_item())
        return dict(out)

    def groups(self) -> dict[str, str]:
        """user_id -> warm | cold_start | no_history, by the user's number of train pairs."""
        counts = {u: len(h) for u, h in self.histories("train").items()}
        return {u: user_group(counts.get(u, 0)) for u in self.users()}

    def users(self) -> list[str]:
        return list(dict.fromkeys(r.user_id for r in self.rows))


def users_file_for(path: str | Path) -> Path:
    """The users file that sits next to a rows file: `rows.jsonl` -> `rows.users.jsonl`."""
    p = Path(path)
    return p.with_name(p.stem + ".users.jsonl")


def load_bench(path: str | Path, strict: bool = False, users: str | Path | None = None) -> BenchData:
    """All rows of a PersonalRewardBench file. Bad rows are collected in `errors` (and skipped),
    or, with `strict=True`, refused: `BadRowsError` lists every bad line. `users`: a users file of
    stated preferences (default: `users_file_for(path)` when it exists)."""
    data = BenchData()
    for item in read_bench_rows(path):
        (data.errors if isinstance(item, LineError) else data.rows).append(item)
    users_path = Path(users) if users is not None else users_file_for(path)
    if users is not None or users_path.is_file():
        for item in read_models(users_path, StatedUser):
            if isinstance(item, LineError):
                data.errors.append(item)
            elif text := item.stated():
                data.stated[item.user_id] = text
    if strict and data.errors:
        shown = "\n".join(f"  {e}" for e in data.errors[:20])
        more = f"\n  ... and {len(data.errors) - 20} more" if len(data.errors) > 20 else ""
        raise BadRowsError(f"{path}: {len(data.errors)} bad row(s):\n{shown}{more}")
    return data
