"""How well can a user's weights be told from their own pairs when every check is right?

The synthesis judge checks each reply against criteria, then weighs the criteria by the user's past
choices (`reward.verify`, scoring/weighing.py). Here the check step is perfect: each reply's
attributes come from the truth file that `pgenrm data synth` writes. What is left is the weighing
rule, on the test pairs `pgenrm bench accuracy` judges:

    true weights   the user's latent weights (the rest is the noise of the sampled choice)
    mean gap       the mean of (chosen - rejected) over the user's train pairs (the rule until 2026-12-07)
    fit            `fit_choices`: a Bradley-Terry fit of the choices, ridge-regularised (the rule now)
    fit + pro-8    the fit pulled toward the fits of the 8 users under whose fits the user's own
                   choices are likeliest (`attr-user+pro-8` in `bench accuracy`: what prototypes add)
    fit + stated   the fit pulled toward what the user stated (`pgenrm data synth`'s users file: the
                   sides of some of their strong preferences), +-1 each: a perfect reader of the
                   persona that `bench accuracy --settings ind-1:persona` shows the judge

A tie counts half here (a judge's non-integer digits break it by chance; `bench accuracy`'s
reference rows count it wrong, and show how many there were).

    .venv/bin/python scripts/weighing_rules.py /tmp/heldout.jsonl [--max-test-rows 120]
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import numpy as np

from pgenrm_plugins.bench.accuracy.predictors import _with_neighbours
from pgenrm_plugins.datasets.bench import load_bench, user_group
from pgenrm_plugins.datasets.synthetic import load_truth, row_key
from pgenrm_plugins.scoring.weighing import fit_choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="rows from `pgenrm data synth`, its truth file beside them")
    parser.add_argument("--max-test-rows", type=int, default=None)
    args = parser.parse_args()

    truth = load_truth(args.data)
    names = truth["attributes"]
    by_key = {t["key"]: t for t in truth["rows"]}
    gap = lambda t: np.array([t["chosen"][a] - t["rejected"][a] for a in names], dtype=float) / 2  # noqa: E731
    pairs: dict[str, list[np.ndarray]] = defaultdict(list)
    for t in truth["rows"]:
        if t["split"] == "train":
            pairs[t["user_id"]].append(gap(t))
    bench = load_bench(args.data, strict=True)
    rows = bench.split("test")[:args.max_test_rows]
    users = {r.user_id for r in rows} | set(pairs)
    zeros = np.zeros(len(names))

    def stated(user: dict) -> np.ndarray:
        return np.array([np.sign(user["weights"][a]) if a in user["stated"] else 0.0 for a in names])

    fits = {u: fit_choices(np.array(pairs[u])) if pairs[u] else zeros for u in users}
    rules = {
        "true weights": {u: np.array([truth["users"][u]["weights"][a] for a in names]) for u in users},
        "mean gap": {u: np.mean(pairs[u], axis=0) if pairs[u] else zeros for u in users},
        "fit": fits,
        "fit + pro-8": {**fits, **_with_neighbours({u: fits[u] for u in pairs}, dict(pairs), 8)},
        "fit + stated": {u: fit_choices(np.array(pairs[u]).reshape(-1, len(names)), prior=stated(truth["users"][u]))
                         for u in users},
    }
    print(f"{len(rows)} test pairs of {args.data}; a tie counts half")
    print(f"{'user weights from':<16}" + "".join(f"{g:>14}" for g in ("all", "warm", "cold_start", "no_history")))
    for rule, weights in rules.items():
        right: dict[str, list[float]] = defaultdict(list)
        for r in rows:
            s = float(weights[r.user_id] @ gap(by_key[row_key(r.model_dump(mode="json"))]))
            for g in ("all", user_group(len(pairs[r.user_id]))):
                right[g].append(1.0 if s > 0 else 0.5 if s == 0 else 0.0)
        cells = [f"{np.mean(right[g]):.3f} ({len(right[g])})" if right[g] else "-"
                 for g in ("all", "warm", "cold_start", "no_history")]
        print(f"{rule:<16}" + "".join(f"{c:>14}" for c in cells))


if __name__ == "__main__":
    main()
