"""The benchmark's statistics: per-user counts, the 95% percentile bootstrap that resamples users
(a user's rows share one history and are not independent), the summary of one setting's judgements,
and the same summary by group (warm vs cold-start users, latent type).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Sequence

import numpy as np

from pgenrm_plugins.datasets.bench import BenchData

BOOTSTRAP = 2000


def _user_counts(records: Sequence[dict]) -> dict[str, list[int]]:
    """user -> [correct, judgements]"""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        out[r["user_id"]][0] += r["outcome"] == "correct"
        out[r["user_id"]][1] += 1
    return dict(out)


def bootstrap_ci(counts: dict[str, list[int]], seed: int = 0,
                 other: dict[str, list[int]] | None = None) -> list[float] | None:
    """95% percentile interval of accuracy (or of accuracy minus `other`'s, paired), resampling users."""
    users = sorted(counts)
    if not users:
        return None
    c = np.array([counts[u] for u in users], dtype=float)
    o = np.array([other.get(u, [0, 0]) for u in users], dtype=float) if other is not None else None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(users), size=(BOOTSTRAP, len(users)))
    stats = c[idx, 0].sum(1) / np.maximum(c[idx, 1].sum(1), 1)
    if o is not None:
        stats = stats - o[idx, 0].sum(1) / np.maximum(o[idx, 1].sum(1), 1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarize(records: Sequence[dict], seed: int = 0) -> dict[str, Any]:
    n = len(records)
    if not n:
        return {"judgements": 0, "accuracy": None, "ci95": None}
    outcomes = {k: sum(r["outcome"] == k for r in records) for k in ("correct", "wrong", "tie", "failed")}
    first = [r for r in records if r["chosen_first"]]
    second = [r for r in records if not r["chosen_first"]]
    acc = lambda rs: round(sum(r["outcome"] == "correct" for r in rs) / len(rs), 4) if rs else None  # noqa: E731
    # Rows whose two orders got the same verdict (both correct or both not).
    by_row: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        by_row[r["row"]].append(r["outcome"] == "correct")
    consistent = [len(set(v)) == 1 for v in by_row.values() if len(v) == 2]
    return {
        "judgements": n,
        "rows": len(by_row),
        "users": len({r["user_id"] for r in records}),
        "accuracy": round(outcomes["correct"] / n, 4),
        "ci95": bootstrap_ci(_user_counts(records), seed),
        **outcomes,
        "accuracy_chosen_first": acc(first),
        "accuracy_chosen_second": acc(second),
        "position_bias": round(acc(first) - acc(second), 4) if first and second else None,
        "order_consistency": round(sum(consistent) / len(consistent), 4) if consistent else None,
    }


def _groups(records: Sequence[dict], truth: dict | None, data: BenchData, seed: int) -> dict[str, Any]:
    """Accuracy of warm, cold-start and no-history users (`datasets.bench.user_group`), and per
    latent type when the truth is known."""
    user_groups = data.groups()
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups[user_groups.get(r["user_id"], "no_history")].append(r)
        if truth and r["user_id"] in truth.get("users", {}):
            groups["type:" + truth["users"][r["user_id"]]["type"]].append(r)
    return {g: {k: v for k, v in summarize(rs, seed).items() if k in ("accuracy", "ci95", "judgements", "users")}
            for g, rs in sorted(groups.items())}
