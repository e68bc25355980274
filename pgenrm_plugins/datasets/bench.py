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

A user's train rows are their history; test rows are what gets scored. Rows are read line by line
through the registered dataset loaders (JSONL, parquet); a bad row becomes a `LineError` that names
its line and field, never a guess.
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


class BenchRow(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)  # the real sets carry extra columns

    user_id: str = Field(min_length=1)
    split: Literal["train", "val", "test"]
    context: list[Message] = Field(min_length=1)
    chosen: Message
    rejected: Message
    chosen_score: float | None = None
    rejected_score: float | None = None

    @field_validator("user_id", mode="before")
    @classmethod
    def _id_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

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


class BadRowsError(ValueError):
    """Raised by `load_bench(strict=True)` when any row is bad; lists them by line."""


@dataclass
class BenchData:
    rows: list[BenchRow] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    def split(self, name: str) -> list[BenchRow]:
        return [r for r in self.rows if r.split == name]

    def histories(self, split: str = "train") -> dict[str, list[HistoryItem]]:
        """user_id -> that user's rows of `split` as history, in file order."""
        out: dict[str, list[HistoryItem]] = defaultdict(list)
        for r in self.rows:
            if r.split == split:
                out[r.user_id].append(r.history_item())
        return dict(out)

    def users(self) -> list[str]:
        return list(dict.fromkeys(r.user_id for r in self.rows))


def load_bench(path: str | Path, strict: bool = False) -> BenchData:
    """All rows of a PersonalRewardBench file. Bad rows are collected in `errors` (and skipped),
    or, with `strict=True`, refused: `BadRowsError` lists every bad line."""
    data = BenchData()
    for item in read_bench_rows(path):
        (data.errors if isinstance(item, LineError) else data.rows).append(item)
    if strict and data.errors:
        shown = "\n".join(f"  {e}" for e in data.errors[:20])
        more = f"\n  ... and {len(data.errors) - 20} more" if len(data.errors) > 20 else ""
        raise BadRowsError(f"{path}: {len(data.errors)} bad row(s):\n{shown}{more}")
    return data
