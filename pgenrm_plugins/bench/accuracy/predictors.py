"""Reference predictors that read the synthetic users' latent attributes instead of the text:
`oracle` (each user's true weights: the ceiling), `attr-user` (the user's own train pairs fitted
the way `reward.verify` weighs a synthesis's criteria: the synthesis judge's weighing step with a
perfect check step), `attr-user+pro-K` (that fit shrunk toward the fits of the K users whose fits
best explain this user's pairs: what prototype neighbours can add to it), `attr-global` (one fit on
everyone's train pairs) and `types-view` (the best a reader of one judge view can do: a posterior
over the population's latent types from the pairs that view shows). They need the truth file that
`pgenrm data synth` writes next to the rows.

`contrast-overlap` reads the text instead, and needs no truth: the words of the contrast lines one
judge view shows (what only the chosen and only the rejected response of each past pair says),
matched against a reply. It is what a bag of words makes of the judge's own evidence, the least a
trained judge should reach.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

import numpy as np

from pgenrm_plugins.bench.accuracy.stats import _groups, summarize
from pgenrm_plugins.datasets.bench import BenchData, BenchRow


def _attr_vector(attrs: dict[str, int], names: Sequence[str]) -> np.ndarray:
    return np.array([attrs[a] for a in names], dtype=float)


def _records(records: list[dict], index: int, row: BenchRow, margin: float) -> None:
    """One pair's outcome, in both orders alike (these readers see no position)."""
    outcome = "tie" if margin == 0 else ("correct" if margin > 0 else "wrong")
    for chosen_first in (True, False):
        records.append({"row": index, "user_id": row.user_id, "chosen_first": chosen_first, "outcome": outcome})


def _by_user(rows: Iterable[BenchRow]) -> dict[str, list[BenchRow]]:
    out: dict[str, list[BenchRow]] = {}
    for r in rows:
        out.setdefault(r.user_id, []).append(r)
    return out


def _type_posterior_weights(truth: dict, diffs: Sequence[np.ndarray], names: Sequence[str]) -> np.ndarray:
    """Posterior-mean weights over the generator's latent types (uniform prior), given a user's
    (chosen - rejected) attribute differences and the generator's choice model. Per-user noise
    around a type is ignored, so this is a yardstick, not an exact Bayes posterior."""
    types = np.array([[t["weights"][a] for a in names] for t in truth["types"].values()])
    sharpness = float(truth["params"]["sharpness"])
    log_lik = np.zeros(len(types))
    for d in diffs:
        log_lik -= np.logaddexp(0.0, -sharpness * (types @ d))  # log sigmoid(s * w.d)
    post = np.exp(log_lik - log_lik.max())
    return (post / post.sum()) @ types


def _with_neighbours(fits: dict[str, np.ndarray], diffs_of: dict[str, list[np.ndarray]], k: int
                     ) -> dict[str, np.ndarray]:
    """Each user's fit again, pulled toward the mean fit of the k other warm users under whose fits
    the user's own choices are likeliest (their nearest prototype neighbours by what they chose)."""
    from pgenrm_plugins.datasets.bench import WARM_MIN_PAIRS
    from pgenrm_plugins.scoring.weighing import fit_choices

    members = [u for u in fits if len(diffs_of[u]) >= WARM_MIN_PAIRS]
    pool = np.array([fits[m] for m in members])
    out = {}
    for u, ds in diffs_of.items():
        theirs = pool[np.array([m != u for m in members], dtype=bool)] if members else pool
        if not len(theirs):  # nobody else to learn from: the user's own fit
            out[u] = fits[u]
            continue
        ds = np.array(ds)
        likely = -np.logaddexp(0.0, -(ds @ theirs.T)).sum(0)  # log-likelihood of u's choices
        nearest = np.argsort(-likely, kind="stable")[:k]
        out[u] = fit_choices(ds, prior=theirs[nearest].mean(0))
    return out


def reference_predictors(test_rows: Sequence[tuple[int, BenchRow]], data: BenchData, truth: dict,
                         seed: int = 0, view_pairs: int = 4, neighbours: int = 8) -> dict[str, Any]:
    """Accuracy of predictors that see the latent attributes instead of the text (see module doc).
    Rows the truth does not know (edited files) are skipped and counted. `view_pairs`: how many of
    a user's most recent train pairs one judge view shows (`reward.max_history`); `neighbours`: the
    K of `attr-user+pro-K`."""
    from pgenrm_plugins.datasets.synthetic import row_key
    from pgenrm_plugins.scoring.weighing import fit_choices

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

    def gaps(rows) -> list[np.ndarray]:  # each attribute -1, 0 or 1, as a perfect check step gives it
        return [d / 2 for d in diffs(rows)]

    train = data.split("train")
    train_of = _by_user(train)
    all_gaps = gaps(train)
    w_global = fit_choices(np.array(all_gaps)) if all_gaps else None
    gaps_of = {u: g for u, rows in train_of.items() if (g := gaps(rows))}
    w_user = {u: fit_choices(np.array(g)) for u, g in gaps_of.items()}
    w_pro = _with_neighbours(w_user, gaps_of, neighbours)
    w_view = {u: _type_posterior_weights(truth, diffs(rows)[-view_pairs:] if view_pairs else [], names)
              for u, rows in train_of.items()}
    w_prior = _type_posterior_weights(truth, [], names)  # no history: the types' mean
    predictors = {
        "oracle": lambda u: np.array([truth["users"][u]["weights"][a] for a in names]) if u in truth["users"] else None,
        "attr-user": lambda u: w_user.get(u) if w_user.get(u) is not None else w_global,
        f"attr-user+pro-{neighbours}": lambda u: w_pro.get(u) if w_pro.get(u) is not None else w_global,
        "attr-global": lambda u: w_global,
        "types-view": lambda u: w_view.get(u, w_prior),
    }
    descriptions = {
        "oracle": "each user's true latent weights (the ceiling: users choose with noise)",
        "attr-user": ("the user's own train pairs' attributes fitted as reward.verify weighs criteria (a perfect "
                      "check step; no history: attr-global)"),
        f"attr-user+pro-{neighbours}": (f"attr-user pulled toward the fits of the {neighbours} users whose fits best "
                                        "explain the user's pairs (what prototype neighbours can add)"),
        "attr-global": "one fit on all users' train pairs' attributes (one global preference)",
        "types-view": (f"posterior over the population's latent types from the user's last {view_pairs} train pairs' "
                       "attributes, what one judge view shows (cold start: the types' mean)"),
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
            _records(records, index, row, float(w @ (_attr_vector(t["chosen"], names)
                                                      - _attr_vector(t["rejected"], names))))
        out[name] = {"description": descriptions[name], "reads": "truth", **summarize(records, seed),
                     "rows_unknown_to_truth": unknown, "by_group": _groups(records, truth, data, seed)}
    return out


_WORD = re.compile(r"\w+")


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _resemblance(reply: set[str], fragments: Sequence[str]) -> float:
    """The mean share of a fragment's words that the reply has."""
    shares = [len(f & reply) / len(f) for f in map(_words, fragments) if f]
    return sum(shares) / len(shares) if shares else 0.0


def contrast_overlap(test_rows: Sequence[tuple[int, BenchRow]], data: BenchData, truth: dict | None = None,
                     seed: int = 0, view_pairs: int = 4) -> dict[str, Any]:
    """Accuracy of the bag-of-words reader of one judge view (see module doc): a reply scores the
    sum, over the view's pairs, of how much it resembles the chosen side's contrast lines less how
    much it resembles the rejected side's."""
    from pgenrm_plugins.chain.prompts import contrast
    from pgenrm_plugins.scoring.modes import history_view

    evidence = {u: [c for c in (contrast(p.chosen, p.rejected) for p in history_view(h, view_pairs, seed, 0))
                    if c is not None]
                for u, h in data.histories("train").items()}

    def score(user: str, reply: str) -> float:
        words = _words(reply)
        return sum(_resemblance(words, plus) - _resemblance(words, minus) for plus, minus in evidence.get(user, []))

    records: list[dict] = []
    for index, row in test_rows:
        _records(records, index, row, score(row.user_id, row.chosen.content) - score(row.user_id, row.rejected.content))
    return {"description": (f"word overlap of a reply with the contrast lines of the user's last {view_pairs} train "
                            "pairs (chosen side less rejected side), what one judge view shows; no truth needed "
                            "(cold start: a tie)"),
            "reads": "text", **summarize(records, seed), "by_group": _groups(records, truth, data, seed)}
