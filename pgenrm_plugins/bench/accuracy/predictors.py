"""Reference predictors that read the synthetic users' latent attributes instead of the text:
`oracle` (each user's true weights: the ceiling), `attr-user` (a logistic regression on the user's
own train pairs) and `attr-global` (one logistic regression on everyone's train pairs). They need
the truth file that `pgenrm data synth` writes next to the rows.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np

from pgenrm_plugins.bench.accuracy.stats import _groups, summarize
from pgenrm_plugins.datasets.bench import BenchData, BenchRow


def _attr_vector(attrs: dict[str, int], names: Sequence[str]) -> np.ndarray:
    return np.array([attrs[a] for a in names], dtype=float)


def reference_predictors(test_rows: Sequence[tuple[int, BenchRow]], data: BenchData, truth: dict,
                         seed: int = 0) -> dict[str, Any]:
    """Accuracy of predictors that see the latent attributes instead of the text (see module doc).
    Rows the truth does not know (edited files) are skipped and counted."""
    from sklearn.linear_model import LogisticRegression

    from pgenrm_plugins.datasets.synthetic import row_key

    names = truth["attributes"]
    by_key = {t["key"]: t for t in truth["rows"]}

    def key_of(row: BenchRow) -> str:
        return row_key(row.model_dump(mode="json"))

    def diffs(rows: Iterable[BenchRow]):
        out = []
        for row in rows:
            t = by_key.get(key_of(row))
            if t:
                out.append(_attr_vector(t["chosen"], names) - _attr_vector(t["rejected"], names))
        return out

    def fit(ds):
        if not ds:
            return None
        x = np.vstack([np.array(ds), -np.array(ds)])  # mirrored: both classes, no intercept
        y = np.array([1] * len(ds) + [0] * len(ds))
        return LogisticRegression(fit_intercept=False, C=1.0).fit(x, y).coef_[0]

    train = data.split("train")
    w_global = fit(diffs(train))
    w_user = {u: fit(diffs([r for r in train if r.user_id == u])) for u in {r.user_id for r in train}}
    predictors = {
        "oracle": lambda u: np.array([truth["users"][u]["weights"][a] for a in names]) if u in truth["users"] else None,
        "attr-user": lambda u: w_user.get(u) if w_user.get(u) is not None else w_global,
        "attr-global": lambda u: w_global,
    }
    descriptions = {
        "oracle": "each user's true latent weights (the ceiling: users choose with noise)",
        "attr-user": "logistic regression on the user's own train pairs' attributes (cold start: attr-global)",
        "attr-global": "one logistic regression on all users' train pairs' attributes (one global preference)",
    }
    out: dict[str, Any] = {}
    for name, weights_of in predictors.items():
        records, unknown = [], 0
        for index, row in test_rows:
            t = by_key.get(key_of(row))
            w = weights_of(row.user_id) if t else None
            if t is None or w is None:
                unknown += t is None
                continue
            d = float(w @ (_attr_vector(t["chosen"], names) - _attr_vector(t["rejected"], names)))
            outcome = "tie" if d == 0 else ("correct" if d > 0 else "wrong")
            for chosen_first in (True, False):  # no position: both orders alike
                records.append({"row": index, "user_id": row.user_id, "chosen_first": chosen_first, "outcome": outcome})
        out[name] = {"description": descriptions[name], **summarize(records, seed), "rows_unknown_to_truth": unknown,
                     "by_group": _groups(records, truth, data, seed)}
    return out
