"""A synthetic user's latent utility of a free-form answer, and the statistics the recipe reports.

The synthetic users (`pgenrm_plugins.datasets.synthetic`) weigh five attributes. Four show in the
text itself (`detect_attributes`: list lines, contractions or a chatty opener, "For example", a
caveat lead). The fifth, length, is measured here in words against the policy's token budget:
-1 at or below `short` words, +1 at or above `long` words, linear between (the generator's brief and
detailed answers differ by two supporting points; a 135M policy with ~128 tokens has a narrower
range, so the scale follows the budget).

    utility u = sum_a w_a * attr_a(answer)   in [-W, W], W = sum_a |w_a|
    reported  = (u + W) / (2 W)              in [0, 1]

An empty or looping answer is worth 0 to every user, the bottom of the scale: no user's utility can
be raised by breaking the answer. An answer cut off at the token budget keeps `CUTOFF_CREDIT` (half)
of what its text is worth: half an answer is some use, a finished one is worth twice as much.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgenrm_plugins.datasets.synthetic import ATTRIBUTES, detect_attributes
from pgenrm_trl.personalize.probe import degenerate_reason

CUTOFF_CREDIT = 0.5


@dataclass(frozen=True)
class LengthScale:
    """Words at which the length attribute is -1 (`short`) and +1 (`long`)."""

    short: float
    long: float

    @classmethod
    def for_budget(cls, max_tokens: int) -> LengthScale:
        # ~0.75 words a token: +1 at about 60% of what fits, -1 at about 20%.
        return cls(short=0.15 * max_tokens, long=0.45 * max_tokens)

    def attribute(self, text: str) -> float:
        words = len(text.split())
        x = (words - self.short) / (self.long - self.short)
        return max(-1.0, min(1.0, 2.0 * x - 1.0))


def answer_attributes(text: str, scale: LengthScale) -> dict[str, float]:
    return {**detect_attributes(text), "length": scale.attribute(text)}


def latent_utility(weights: dict[str, float], text: str, scale: LengthScale, finished: bool = True,
                   cutoff_credit: float = CUTOFF_CREDIT) -> float:
    """The user's utility of `text` on [0, 1]: 0 when empty or looping, scaled by `cutoff_credit` when cut off."""
    reason = degenerate_reason(text, finished)
    if reason in ("empty", "looping"):
        return 0.0
    attrs = answer_attributes(text, scale)
    total = sum(abs(weights[a]) for a in ATTRIBUTES) or 1.0
    value = (sum(weights[a] * attrs[a] for a in ATTRIBUTES) + total) / (2.0 * total)
    return value * cutoff_credit if reason == "cut off" else value


def bootstrap_mean(values, n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` and its percentile bootstrap interval (resampling the values)."""
    import numpy as np

    x = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    return float(x.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1.0 - tail))
