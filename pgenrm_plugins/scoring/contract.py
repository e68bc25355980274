"""What a scorer is: what every consumer (the service, the adapters, the CLI, the benchmarks) may
call, and nothing else. `Scorer` (the judge in this process) and `RemoteScorer` (a running
`pgenrm serve`) implement it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Protocol, Sequence

from pgenrm_plugins.config import PGenRMConfig
from pgenrm_plugins.types import ScoreRequest, ScoreResult

if TYPE_CHECKING:
    from pgenrm_plugins.prototypes.base import PrototypeStore


class ScoringError(RuntimeError):
    """Raised under `failure_policy: raise` when a completion could not be scored."""


class RequestScorer(Protocol):
    config: PGenRMConfig  # the settings in force (the judge's manifest filled in)
    store: PrototypeStore | None  # the prototype store it reads, if any

    def score(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        """One `ScoreResult` per request, one reward in [0, 1] per completion, in order; never None or
        NaN (a completion that cannot be scored gets the counted neutral reward, or `ScoringError`)."""
        ...

    def identity(self) -> str:
        """What scores a request besides its content: the settings and the prototype store's version
        (a new build or an added user changes it). Scoring is deterministic, so an answer may be
        reused while the request and this are the same."""
        ...

    def close(self) -> None:
        """Free the judge, the store and any connection."""
        ...


def settings_identity(config: PGenRMConfig, store: PrototypeStore | None) -> str:
    """`identity()` as both scorers write it: JSON [settings, store version]."""
    version = store.version() if store is not None else None
    return json.dumps([config.model_dump(mode="json"), version], sort_keys=True, default=str)


__all__ = ["RequestScorer", "ScoringError", "settings_identity"]
