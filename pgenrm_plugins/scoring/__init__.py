"""The scorer, in parts:

    scorer.py   `Scorer` and `load_scorer`: requests in, one reward per completion out, in [0, 1]
    modes.py    the reward modes (pointwise, pairwise, group, direct digit) and Ind-N sampling
    scaling.py  prototype-level scaling: plans -> jobs -> combined values
    lazy.py     `LazyScorer`: built on first use, for framework adapters
    remote.py   `RemoteScorer`: no judge here, every request to a running `pgenrm serve` (`scorer:`)
"""

from pgenrm_plugins.scoring.lazy import LazyScorer, WithLazyScorer
from pgenrm_plugins.scoring.modes import history_view
from pgenrm_plugins.scoring.remote import RemoteScorer
from pgenrm_plugins.scoring.scorer import Scorer, ScoringError, check_references, load_scorer, resolve_criteria

__all__ = ["LazyScorer", "RemoteScorer", "Scorer", "ScoringError", "check_references", "history_view", "load_scorer",
           "resolve_criteria", "WithLazyScorer"]
