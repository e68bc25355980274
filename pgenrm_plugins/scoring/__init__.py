"""The scorer, in parts:

    scorer.py   `Scorer` and `load_scorer`: requests in, one reward per completion out, in [0, 1]
    modes.py    the reward modes (pointwise, pairwise, group, direct digit) and Ind-N sampling
    scaling.py  prototype-level scaling: plans -> jobs -> combined values
    lazy.py     `LazyScorer`: built on first use, for framework adapters
    remote.py   `RemoteScorer`: no judge here, every request to a running `pgenrm serve` (`scorer:`),
                and `ScoringClient`, the service's HTTP client
    contract.py `RequestScorer`: what a scorer is (both of the above implement it), `ScoringError`
    batching.py `Batcher`: concurrent requests coalesced into backend batches (service and adapters)
"""

from pgenrm_plugins.scoring.contract import RequestScorer, ScoringError
from pgenrm_plugins.scoring.lazy import LazyScorer, WithLazyScorer
from pgenrm_plugins.scoring.modes import history_view
from pgenrm_plugins.scoring.remote import RemoteScorer
from pgenrm_plugins.scoring.scorer import Scorer, check_references, load_scorer, resolve_criteria

__all__ = ["LazyScorer", "RemoteScorer", "RequestScorer", "Scorer", "ScoringError", "check_references", "history_view",
           "load_scorer", "resolve_criteria", "WithLazyScorer"]
