"""Reading request files line by line, with errors that name the line and the field.

A bad line never stops the others: `read_requests` yields either a `ScoreRequest` or a
`LineError` for every line, in order. Loaders are registered by file suffix through the
`register_dataset_loaders` hook, so a plugin can add a format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, TypeVar

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


def read_requests(path: str | Path) -> Iterator[ScoreRequest | LineError]:
    return read_models(path, ScoreRequest)


@hookimpl
def register_dataset_loaders(register):
    register(".jsonl", iter_jsonl, description="JSON Lines, one object per line")
    register(".parquet", iter_parquet, description="Apache Parquet, one object per row (needs pyarrow)")
