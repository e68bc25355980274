"""How a synthesis's criteria are weighed by a user's own past choices (`reward.verify`).

Each past pair was checked against each criterion (a digit for the chosen reply, one for the
rejected). A Bradley-Terry fit finds the signed weights under which the user's choices are likeliest,
P(chosen) = sigmoid(w . gaps), with a ridge pull toward no preference. A choice often turns on two or
three criteria at once, and the fit weighs them together where the mean gap it replaced took each
alone. With a perfect check step (scripts/weighing_rules.py) it reads warm held-out users at 0.806
against the mean gap's 0.750; on the shipped judge's own digits the two rules are level (0.708
against 0.705 on 400 held-out pairs, docs/training.md): its checks, not its weighing, limit it.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from pgenrm_plugins.chain.formats import PGENRM
from pgenrm_plugins.chain.parser import Criterion

RIDGE = 0.3  # the pull toward the prior; chosen on `pgenrm data synth --users 300 --seed 202`, no eval seed
RULE = f"bradley-terry fit, ridge {RIDGE}"  # part of a cached synthesis's key: weights from another rule differ


def fit_choices(pairs: np.ndarray, prior: np.ndarray | None = None, ridge: float = RIDGE) -> np.ndarray:
    """Weights w that make each pair's chosen side likelier, P = sigmoid(w . (chosen - rejected)),
    one row of gaps per pair, with a Gaussian pull of strength `ridge` toward `prior` (zeros: none)."""
    from scipy.optimize import minimize

    prior = np.zeros(pairs.shape[1]) if prior is None else np.asarray(prior, dtype=float)
    if not len(pairs):
        return prior.copy()

    def loss(w):
        z = pairs @ w
        p = 0.5 * (1.0 + np.tanh(z / 2))  # sigmoid, stable at both ends
        return (np.logaddexp(0.0, -z).sum() + 0.5 * ridge * ((w - prior) ** 2).sum(),
                -pairs.T @ (1.0 - p) + ridge * (w - prior))

    return minimize(loss, prior.copy(), jac=True, method="L-BFGS-B").x


def verify_criteria(criteria: Sequence[Criterion], found: Sequence[Sequence[tuple[float | None, float | None]]],
                    sound: Criterion = PGENRM.sound_criterion, written: int | None = None) -> list[float]:
    """Signed weights: each criterion's written weight times its support in the user's past choices,
    tanh of its fitted weight, in [-1, 1] (`found`: per pair, per criterion, the digits of the chosen
    and the rejected reply). A criterion the user's choices go against counts against a reply that
    meets it; one they never turn on counts for little. `sound` (the format's `sound_criterion`) keeps
    its weight: it is not a taste, and two sound replies tie on it. Criteria from index `written` on
    were not written for this user (`reward.extra_criteria`): only their choices can give them weight.
    No history: the written weights, and none for the rest."""
    written = len(criteria) if written is None else written
    if not found:
        return [c.weight if i < written else 0.0 for i, c in enumerate(criteria)]
    tastes = [i for i, c in enumerate(criteria) if c.name != sound.name]
    gaps = np.array([[0.0 if pair[i][0] is None or pair[i][1] is None else (pair[i][0] - pair[i][1]) / 8
                      for i in tastes] for pair in found]).reshape(len(found), len(tastes))
    support = dict(zip(tastes, np.tanh(fit_choices(gaps)))) if tastes else {}
    return [c.weight * float(support[i]) if i in support else c.weight for i, c in enumerate(criteria)]


__all__ = ["fit_choices", "verify_criteria", "RIDGE", "RULE"]
