"""A scorer that builds no judge: every request goes to a running `pgenrm serve` (or its Ray Serve
deployment), which all RL workers share. Switched on by the config's `scorer:` section:

    scorer: {url: http://127.0.0.1:8017, api_key_env: PGENRM_API_KEY, timeout_s: 600}

The same config file drives the service (which ignores `scorer:`) and the adapters. Samples of one
(user, prompt) that reach the service from different workers in one batching window are merged
there, so persona and criteria are written once per group. Only httpx is needed here: no torch.

When the service stays unreachable (the client retries with backoff within its retries), the
failure policy decides: every completion gets the counted neutral reward
(`failure_kinds: {"service_unavailable": n}`), or `ScoringError` is raised. Never `None`.
"""

from __future__ import annotations

import logging
import os
from typing import Sequence

from pgenrm_plugins.config import PGenRMConfig
from pgenrm_plugins.types import Components, ScoreRequest, ScoreResult

log = logging.getLogger(__name__)


class RemoteScorer:
    """`score` / `ascore` through the scoring service, with the config's failure policy."""

    def __init__(self, config: PGenRMConfig):
        from pgenrm_plugins.server.client import ScoringClient

        self.config = config
        remote = config.scorer
        self.client = ScoringClient(remote.url, api_key=os.environ.get(remote.api_key_env) or None,
                                    timeout_s=remote.timeout_s, max_retries=remote.max_retries,
                                    backoff_s=remote.backoff_s)
        self.unavailable = 0  # completions that got the neutral reward because the service was down

    def score(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        from pgenrm_plugins.server.client import ScoringClientError

        reqs = _validated(requests)
        try:
            return self.client.score(reqs)
        except ScoringClientError as exc:
            return self._failed(reqs, exc)

    async def ascore(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        from pgenrm_plugins.server.client import ScoringClientError

        reqs = _validated(requests)
        try:
            return await self.client.ascore(reqs)
        except ScoringClientError as exc:
            return self._failed(reqs, exc)

    def _failed(self, reqs: list[ScoreRequest], exc: Exception) -> list[ScoreResult]:
        from pgenrm_plugins.scoring.scorer import ScoringError

        rc = self.config.reward
        if rc.failure_policy == "raise" or getattr(exc, "status", None) in range(400, 500):
            # a 4xx is a bad request, not an outage: retrying or a neutral reward would hide it
            raise ScoringError(f"the scoring service did not score {len(reqs)} requests: {exc}") from exc
        n = sum(len(r.completions) for r in reqs)
        self.unavailable += n
        log.warning("P-GenRM: scoring service unavailable, %d completions get the neutral reward %.2f (%d so far): %s",
                    n, rc.neutral_value, self.unavailable, exc)
        return [ScoreResult(rewards=[rc.neutral_value] * len(r.completions), components=Components(
            mode=rc.mode, failure_kinds={"service_unavailable": 1}, parse_failures=1,
            failed_completions=list(range(len(r.completions))))) for r in reqs]

    def close(self) -> None:
        self.client.close()


def _validated(requests) -> list[ScoreRequest]:
    return [r if isinstance(r, ScoreRequest) else ScoreRequest.model_validate(r) for r in requests]
