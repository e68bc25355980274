"""PersonalRewardBench rows -> the training prompts each RL framework reads.

The prompts are the users' own train conversations. Each prompt carries its user's history *minus
that very row* (leave-one-out), so the judge never sees the chosen answer of the prompt it scores;
the row's chosen response travels along as the `reference` of the `pairwise` reward mode. The test
split is left alone for evaluation. One record per prompt, in the column layout each adapter reads:

- TRL       JSONL: `prompt` (messages), `user_id`, `history` (JSON text), `reference`.
- verl      parquet: `data_source`, `prompt`, `ability`, `reward_model.ground_truth` (verl needs it),
            `extra_info` {user_id, history (JSON text), reference, index} — same keys on every row.
- OpenRLHF  JSONL: `prompt` (messages, with `--data.apply_chat_template`) and `label`, a JSON string
            {user_id, history, reference}: `--data.label_key label` is the only per-sample field
            OpenRLHF hands to a reward.

History is JSON text rather than nested columns because a history prompt may be a string or a
message list, which Arrow cannot hold in one column.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from pgenrm_plugins.data import BenchData, BenchRow

FRAMEWORKS = ("trl", "verl", "openrlhf")
DATA_SOURCE = "pgenrm/personalized"


def training_prompts(data: BenchData, split: str = "train", max_history: int = 8) -> list[dict[str, Any]]:
    """Framework-neutral records: one per row of `split`, with that user's other train rows as history."""
    by_user: dict[str, list[BenchRow]] = {}
    for row in data.split("train"):
        by_user.setdefault(row.user_id, []).append(row)
    records = []
    for index, row in enumerate(data.split(split)):
        history = [r.history_item().model_dump(mode="json") for r in by_user.get(row.user_id, []) if r is not row]
        records.append({
            "index": index,
            "user_id": row.user_id,
            "prompt": [m.model_dump() for m in row.context],
            "history": history[-max_history:] if max_history else [],
            "reference": row.chosen.content,
        })
    return records


def trl_record(r: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": r["prompt"], "user_id": r["user_id"], "history": json.dumps(r["history"]), "reference": r["reference"]}


def verl_record(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "data_source": DATA_SOURCE,
        "prompt": r["prompt"],
        "ability": "personalization",
        "reward_model": {"style": "model", "ground_truth": r["reference"]},
        "extra_info": {"user_id": r["user_id"], "history": json.dumps(r["history"]),
                       "reference": r["reference"], "index": r["index"]},
    }


def openrlhf_record(r: dict[str, Any]) -> dict[str, Any]:
    label = {"user_id": r["user_id"], "history": r["history"], "reference": r["reference"]}
    return {"prompt": r["prompt"], "label": json.dumps(label)}


# framework -> (record builder, file name, the columns its adapter reads)
LAYOUTS: dict[str, tuple[Callable[[dict], dict], str, tuple[str, ...]]] = {
    "trl": (trl_record, "train.jsonl", ("prompt", "user_id", "history")),
    "verl": (verl_record, "train.parquet", ("prompt", "reward_model", "extra_info")),
    "openrlhf": (openrlhf_record, "train.jsonl", ("prompt", "label")),
}


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


def prepare(data: BenchData, framework: str, out_dir: str | Path, max_history: int = 8) -> Path:
    """Write `framework`'s training file into `out_dir` and return its path."""
    if framework not in LAYOUTS:
        raise ValueError(f"unknown framework {framework!r}: choose one of {', '.join(FRAMEWORKS)}")
    build, name, _ = LAYOUTS[framework]
    records = [build(r) for r in training_prompts(data, max_history=max_history)]
    if not records:
        raise ValueError("no train rows to turn into prompts: the data needs rows with split 'train'")
    path = Path(out_dir) / name
    write_records(records, path)
    return path
