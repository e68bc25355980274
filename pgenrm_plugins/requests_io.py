"""Reading request files line by line, with errors that name the line and the field.

A bad line never stops the others: `read_requests` yields either a `ScoreRequest` or a
`LineError` for every line, in order. Loaders are registered by file suffix through the
`register_dataset_loaders` hook, so a plugin can add a format.

Long runs write what they have done as JSON lines and resume from them (`pgenrm score`, `pgenrm
bench accuracy`): `complete_lines` counts the lines a killed writer left, cutting a torn last one,
and a run record (`read_run_record` / `write_run_record`) beside the file says which input and
settings the lines belong to, so a resumed run never mixes results of two setups.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from pgenrm_plugins import plugins
from pgenrm_plugins.hookspecs import hookimpl
from pgenrm_plugins.types import ScoreRequest

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class LineError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(the line)"
        parts.append(f"field '{loc}': {e['msg']}")
    return "; ".join(parts)


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object or LineError) for each non-blank line."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, LineError(number, f"not valid JSON ({exc.msg} at column {exc.colno})")


def iter_parquet(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading parquet needs pyarrow: pip install pyarrow") from exc
    for number, row in enumerate(pq.read_table(path).to_pylist(), 1):
        yield number, row


def iter_rows(path: str | Path) -> Iterator[tuple[int, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    loader = plugins.get("dataset_loader", path.suffix or "(no suffix)")
    return loader.factory(path)


def read_models(path: str | Path, model: type[M]) -> Iterator[M | LineError]:
    """Every row of the file in order, validated as `model`, or a `LineError` naming the line and field."""
    for number, row in iter_rows(path):
        if isinstance(row, LineError):
            yield row
        elif not isinstance(row, dict):
            yield LineError(number, f"expected a JSON object, got {type(row).__name__}")
        else:
            try:
                yield model.model_validate(row)
            except ValidationError as exc:
                yield LineError(number, describe_validation_error(exc))


def file_sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def complete_lines(path: str | Path) -> int:
    """How many whole JSON lines `path` starts with. A last line that a killed writer left cut off
    (no newline at its end, or not valid JSON) is removed from the file, so it is rewritten, never
    read as a result. A bad line with whole lines after it is not a torn write: ValueError names it."""
    good = end = 0
    with open(path, "rb+") as f:
        for line in f:
            ok = line.endswith(b"\n")
            if ok:
                try:
                    json.loads(line)
                except ValueError:
                    ok = False
            if not ok:
                if f.read(1):
                    raise ValueError(f"{path}: line {good + 1} is not a JSON line but lines follow it (not a torn "
                                     "last line): fix or delete the file")
                f.truncate(end)
                break
            good += 1
            end += len(line)
    return good


class InOrder:
    """Writes result lines in input order: a line finished before the lines above it waits here
    until they are written. The caller bounds the wait (it scores in batches and puts each batch
    whole); every put is written as one piece and flushed, so a kill loses no finished line."""

    def __init__(self, out: IO[str], next_index: int = 0):
        self.out, self.next = out, next_index
        self.waiting: dict[int, str] = {}

    def put(self, lines: dict[int, str]) -> None:
        """`lines`: input index -> its line, newline included."""
        self.waiting.update(lines)
        ready = []
        while self.next in self.waiting:
            ready.append(self.waiting.pop(self.next))
            self.next += 1
        if ready:
            self.out.write("".join(ready))
            self.out.flush()


def run_record_path(path: str | Path) -> Path:
    """The small JSON file beside `path` that says which input and settings its lines belong to."""
    path = Path(path)
    return path.with_name(path.name + ".run.json")


def read_run_record(path: str | Path) -> dict | None:
    record = run_record_path(path)
    return json.loads(record.read_text(encoding="utf-8")) if record.is_file() else None


def write_run_record(path: str | Path, record: dict) -> None:
    """Written whole (temporary file, then rename): a kill never leaves half a record."""
    target = run_record_path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    os.replace(tmp, target)


def differences(old: Any, new: Any, key: str = "") -> list[str]:
    """'key: old -> new' for every leaf that differs between two JSON values (dotted keys)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(old.keys() | new.keys(), key=str)
                for d in differences(old.get(k), new.get(k), f"{key}.{k}" if key else str(k))]
    if old == new:
        return []

    def short(value: Any) -> str:
        text = json.dumps(value)
        return text if len(text) <= 60 else text[:57] + "..."

    return [f"{key or '(value)'}: {short(old)} -> {short(new)}"]


def read_requests(path: str | Path) -> Iterator[ScoreRequest | LineError]:
    return read_models(path, ScoreRequest)


@hookimpl
def register_dataset_loaders(register):
    register(".jsonl", iter_jsonl, description="JSON Lines, one object per line")
    register(".parquet", iter_parquet, description="Apache Parquet, one object per row (needs pyarrow)")
