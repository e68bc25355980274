"""Reading a user's fields out of an RL framework's per-sample data, whatever shape they come in.

Each framework keeps the user somewhere else: TRL hands every dataset column to the reward
(`user_id`, `history`, ...), verl keeps them in the row's `extra_info` dict, OpenRLHF carries one
column only, the `label` (a JSON string). The adapter says where with a `FieldSource`; everything
here is framework-agnostic, and every error names the column as the framework calls it and the
config key (or dataset change) that fixes it:

    verl: column 'extra_info.history': item 0: field 'rejected': Field required. Fix: ...

What is read (all optional except where an adapter requires `user_id`):

    user_id    a string or number; null = an anonymous user
    history    a list of {prompt, chosen, rejected}, its JSON string, a dict of lists (how a
               `datasets` sequence of structs decodes), or PersonalRewardBench items
               ({context, chosen: {role, content}, rejected: {...}, extra score fields})
    persona    text
    reference  text (the response pairwise mode compares with)
    prompt     a string or a list of {role, content} messages (content may be content blocks)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from pgenrm_plugins.requests_io import describe_validation_error
from pgenrm_plugins.types import HistoryItem, ScoreRequest, normalise_role

USER_FIELDS = ("user_id", "history", "persona", "reference", "prompt")
ROLES = ("system", "user", "assistant")
HISTORY_KEYS = ("prompt", "chosen", "rejected")


class UserFieldError(ValueError):
    """A sample whose user fields cannot be read; `column` is where, in the framework's words."""

    def __init__(self, message: str, column: str):
        super().__init__(message)
        self.column = column


@dataclass(frozen=True)
class FieldSource:
    """Where one framework keeps the user fields, for reading them and for naming them in errors.

    framework  "verl", "OpenRLHF", "TRL"
    container  the column that holds the fields ("extra_info", "label"); None when every field is
               a column of its own (TRL)
    fix        what to change, naming the framework's config key: "--data.label_key ..."
    strict     unknown keys in the container are errors (a JSON label of ours: catches typos);
               otherwise ignored (verl's extra_info also holds `index`, `split`, ...)
    """

    framework: str
    container: str | None
    fix: str
    strict: bool = False

    def column(self, name: str | None = None) -> str:
        if not name:
            return self.container or "(row)"
        return f"{self.container}.{name}" if self.container else name

    def error(self, name: str | None, problem: str) -> UserFieldError:
        column = self.column(name)
        return UserFieldError(f"{self.framework}: column '{column}': {problem}. Fix: {self.fix}", column)


# -- single values ------------------------------------------------------------------------------
def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))  # NaN: pandas' missing value


def message_text(content: Any) -> str:
    """A message's content as text: a string, None, or a list of content blocks (text blocks kept)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for block in content:
            if isinstance(block, str):
                parts.append(block)
            elif isinstance(block, dict) and block.get("type", "text") == "text":
                parts.append(str(block.get("text", "")))
        return "".join(parts)
    return str(content)


def read_messages(value: Any) -> list[dict[str, str]]:
    """Chat messages as the core's {role, content}; tool turns become labelled user turns."""
    out = []
    for m in value:
        if not isinstance(m, Mapping) or "role" not in m:
            raise ValueError(f"expected a message {{'role', 'content'}}, got {type(m).__name__}")
        role, content = str(normalise_role(m["role"])), message_text(m.get("content"))
        if role not in ROLES:
            role, content = "user", f"[{role}] {content}"
        out.append({"role": role, "content": content})
    return out


def _sequence(value: Any) -> bool:
    # numpy arrays (verl's non_tensor_batch, parquet lists) count as sequences too
    return isinstance(value, (list, tuple)) or (hasattr(value, "tolist") and not isinstance(value, (str, bytes)))


def _as_list(value: Any) -> list:
    return value.tolist() if hasattr(value, "tolist") and not isinstance(value, (list, tuple)) else list(value)


def read_prompt(value: Any) -> str | list[dict[str, str]]:
    """A prompt: a string, or a list of messages (the whole multi-turn context)."""
    if isinstance(value, str):
        return value
    if _sequence(value):
        return read_messages(_as_list(value))
    raise ValueError(f"expected a string or a list of messages, got {type(value).__name__}")


def completion_text(value: Any) -> str:
    """A completion: a string, or messages (assistant turns joined; all turns if none is)."""
    if isinstance(value, str):
        return value
    if _missing(value):
        return ""
    if _sequence(value):
        messages = [m for m in _as_list(value) if isinstance(m, Mapping)]
        said = [message_text(m.get("content")) for m in messages if normalise_role(m.get("role")) == "assistant"]
        return "\n".join(said if said else [message_text(m.get("content")) for m in messages])
    if isinstance(value, Mapping):
        return message_text(value.get("content"))
    return str(value)


def optional_text(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, (Mapping, list, tuple)):
        return completion_text(value)
    return str(value)


def read_user_id(value: Any) -> str | None:
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) and not hasattr(value, "item"):
        raise ValueError(f"expected a string or a number, got {type(value).__name__}")
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def read_history(value: Any) -> list[dict]:
    """A user's past choices, validated, as plain {prompt, chosen, rejected} dicts (see module doc)."""
    if _missing(value):
        return []
    if isinstance(value, str):
        if not value.strip():
            return []
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if value is None:
            return []
    if isinstance(value, Mapping) and value and all(_sequence(v) for v in value.values()):
        columns = {k: _as_list(v) for k, v in value.items()}
        if len({len(v) for v in columns.values()}) != 1:
            raise ValueError("a dict of lists whose lists differ in length")
        value = [dict(zip(columns, row)) for row in zip(*columns.values())]
    if not _sequence(value):
        raise ValueError(f"expected a list of {{prompt, chosen, rejected}}, got {type(value).__name__}")
    items = []
    for i, item in enumerate(_as_list(value)):
        if not isinstance(item, Mapping):
            raise ValueError(f"item {i}: expected {{prompt, chosen, rejected}}, got {type(item).__name__}")
        item = dict(item)
        if "prompt" not in item and "context" in item:  # PersonalRewardBench names it `context`
            item["prompt"] = item.pop("context")
        # Keep what the judge reads; extra fields (scores, split, ids) are common in preference data.
        item = {k: v for k, v in item.items() if k in HISTORY_KEYS}
        if _sequence(item.get("prompt")):
            item["prompt"] = read_messages(_as_list(item["prompt"]))
        for key in ("chosen", "rejected"):  # a conversational dataset may store {role, content}
            if isinstance(item.get(key), Mapping) or _sequence(item.get(key)):
                item[key] = completion_text(item[key])
        try:
            items.append(HistoryItem.model_validate(item).model_dump(mode="json"))
        except ValidationError as exc:
            raise ValueError(f"item {i}: {describe_validation_error(exc)}") from None
    return items


# -- a whole sample -------------------------------------------------------------------------------
def read_container(value: Any, source: FieldSource) -> dict:
    """The column holding the user fields (verl's extra_info, OpenRLHF's label): a dict or its JSON string."""
    if isinstance(value, (str, bytes)):
        if not value.strip():
            raise source.error(None, "is empty; expected a JSON object {\"user_id\": ..., \"history\": [...]}")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise source.error(None, f"not valid JSON ({exc.msg} at column {exc.colno}); expected a JSON object "
                                     '{"user_id": ..., "history": [...]}') from None
    if _missing(value):
        raise source.error(None, 'is missing; expected {"user_id": ..., "history": [...]}')
    if not isinstance(value, Mapping):
        raise source.error(None, f"expected a JSON object with user_id and history, got {type(value).__name__}")
    if source.strict:
        unknown = sorted(set(value) - set(USER_FIELDS))
        if unknown:
            raise source.error(None, f"unknown keys {unknown}; allowed: {sorted(USER_FIELDS)}")
    return dict(value)


@dataclass(frozen=True)
class UserFields:
    """A user's fields for one sample; `request(...)` makes the core's ScoreRequest from them."""

    user_id: str | None = None
    history: list[dict] = field(default_factory=list)
    persona: str | None = None
    reference: str | None = None
    prompt: str | list[dict[str, str]] | None = None  # only where the framework stores it with the user
    source: FieldSource | None = None

    def request(self, completions: Sequence[str], prompt: Any = None) -> ScoreRequest:
        """A ScoreRequest; `prompt` (the framework's own) is used when the fields carry none."""
        row = {"user_id": self.user_id, "history": self.history, "persona": self.persona,
               "reference": self.reference, "prompt": self.prompt if self.prompt is not None else prompt,
               "completions": list(completions)}
        if row["prompt"] is None and self.source is not None:
            raise self.source.error("prompt", "no prompt: the framework passed none and the sample carries none")
        try:
            return ScoreRequest.model_validate(row)
        except ValidationError as exc:
            if self.source is None:
                raise ValueError(describe_validation_error(exc)) from None
            first = exc.errors()[0]["loc"][0] if exc.errors() and exc.errors()[0]["loc"] else None
            if first in USER_FIELDS:
                raise self.source.error(str(first), describe_validation_error(exc)) from None
            # not a user field (the framework's completions): nothing in the dataset to fix
            raise UserFieldError(f"{self.source.framework}: {describe_validation_error(exc)}", str(first)) from None


_READERS = {"history": read_history, "persona": optional_text, "reference": optional_text, "prompt": read_prompt}


def read_user_fields(fields: Mapping, source: FieldSource, *, require_user_id: bool = True) -> UserFields:
    """Read the user fields from one sample's mapping (verl's extra_info, OpenRLHF's parsed label,
    a TRL row). A missing `user_id` key is an error when required (null means anonymous)."""
    if require_user_id and "user_id" not in fields:
        given = ", ".join(sorted(map(str, fields))) or "none"
        raise source.error("user_id", f"missing (keys present: {given}); each sample needs the user's id "
                                      "(null for an anonymous user) and optionally 'history'")
    values: dict[str, Any] = {"source": source}
    try:
        values["user_id"] = read_user_id(fields.get("user_id"))
    except ValueError as exc:
        raise source.error("user_id", str(exc)) from None
    for name, read in _READERS.items():
        if name in fields and not (name == "prompt" and (_missing(fields[name]) or fields[name] == "")):
            try:
                values[name] = read(fields[name])
            except ValueError as exc:
                raise source.error(name, str(exc)) from None
    return UserFields(**values)
