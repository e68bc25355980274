"""PersonalRewardBench rows -> the training prompts each RL framework reads.

The prompts are the users' own train conversations. Each prompt carries its user's history *minus
that very row* (leave-one-out), so the judge never sees the chosen answer of the prompt it scores;
the row's chosen response travels along as the `reference` of the `pairwise` reward mode. The test
split is left alone for evaluation. `user` keeps one user's prompts (the personalization recipes
train one policy per user; the history still comes from that user's train rows). One record per
prompt, in the layout the framework's adapter registers (`Adapter.dataset`): TRL and OpenRLHF read
JSONL, verl parquet.

History is JSON text rather than nested columns because a history prompt may be a string or a
message list, which Arrow cannot hold in one column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pgenrm_plugins import plugins
from pgenrm_plugins.datasets.bench import BenchData, BenchRow


def training_prompts(data: BenchData, split: str = "train", max_history: int = 8,
                     user: str | None = None) -> list[dict[str, Any]]:
    """Framework-neutral records: one per row of `split` (of `user` only, when given), with that user's other
    train rows as history."""
    by_user: dict[str, list[BenchRow]] = {}
    for row in data.split("train"):
        by_user.setdefault(row.user_id, []).append(row)
    records = []
    for index, row in enumerate(r for r in data.split(split) if user is None or r.user_id == user):
        history = [r.history_item().model_dump(mode="json") for r in by_user.get(row.user_id, []) if r is not row]
        records.append({
            "index": index,
            "user_id": row.user_id,
            "prompt": [m.model_dump() for m in row.context],
            "history": history[-max_history:] if max_history else [],
            "reference": row.chosen.content,
        })
    return records


def write_records(records: list[dict[str, Any]], path: Path) -> None:
    """Write JSONL or parquet through a temporary file, so a reader never sees half a dataset."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(path)


def prepare(data: BenchData, framework: str, out_dir: str | Path, max_history: int = 8,
            user: str | None = None) -> Path:
    """Write `framework`'s training file into `out_dir` and return its path (`user`: that user's prompts only)."""
    layouts = {name: a.dataset for name, a in plugins.adapters().items() if a.dataset is not None}
    if framework not in layouts:
        raise ValueError(f"unknown framework {framework!r}: choose one of {', '.join(sorted(layouts))}")
    layout = layouts[framework]
    records = [layout.record(r) for r in training_prompts(data, max_history=max_history, user=user)]
    if not records and user is not None:
        known = sorted({r.user_id for r in data.split("train")})
        raise ValueError(f"user {user!r} has no train rows to turn into prompts; users with train rows: "
                         f"{', '.join(known[:20]) or 'none'}{' ...' if len(known) > 20 else ''}")
    if not records:
        raise ValueError("no train rows to turn into prompts: the data needs rows with split 'train'")
    path = Path(out_dir) / layout.file_name
    write_records(records, path)
    return path
