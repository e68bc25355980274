"""`pgenrm train eval`'s quick check: pairwise accuracy of a judge folder on held-out users
(`synthesis_eval` measures a synthesis judge step by step; `pgenrm bench accuracy` is the full one)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgenrm_plugins.datasets.bench import load_bench


def evaluate(judge: str | Path, data: str | Path, *, max_rows: int = 64, threads: int | None = None,
             chains: int = 1) -> dict[str, Any]:
    """Pairwise accuracy of a judge folder on the test rows of `data` (each user's train rows are the
    history): chosen must get the higher reward; a tie counts as wrong. The judge is read as its
    manifest says it was trained (history pairs, clipping, rendering)."""
    from pgenrm_plugins.scoring import Scorer

    bench = load_bench(data, strict=True)
    histories = bench.histories("train")
    rows = [r for r in bench.split("test") if r.user_id in histories][:max_rows]
    if not rows:
        raise ValueError(f"{data}: no test row of a user with train rows")
    options: dict[str, Any] = {"model": str(judge)}
    if threads:
        options["threads"] = threads
    scorer = Scorer({"backend": {"name": "transformers", "options": options},
                     "sampling": {"chains": chains},
                     "reward": {"mode": "group"}})  # the rest as the judge's manifest says
    try:
        results = scorer.score([{"user_id": r.user_id, "history": [h.model_dump() for h in histories[r.user_id]],
                                 "prompt": [m.model_dump() for m in r.context],
                                 "completions": [r.chosen.content, r.rejected.content]} for r in rows])
    finally:
        scorer.close()
    correct = sum(res.rewards[0] > res.rewards[1] for res in results)
    return {"data": str(data), "pairs": len(rows), "accuracy": round(correct / len(rows), 4),
            "mean_margin": round(sum(res.rewards[0] - res.rewards[1] for res in results) / len(rows), 4)}


__all__ = ["evaluate"]
