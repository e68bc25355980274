"""The scoring service seen from a worker: `ScoringClient` (HTTP, sync and async, with retries) and
`RemoteScorer`, a scorer that builds no judge: every request goes to a running `pgenrm serve` (or
its Ray Serve deployment), which all RL workers share. Switched on by the config's `scorer:` section:

    scorer: {url: http://127.0.0.1:8017, api_key_env: PGENRM_API_KEY, timeout_s: 600}

The same config file drives the service (which ignores `scorer:`) and the adapters. Samples of one
(user, prompt) that reach the service from different workers in one batching window are merged
there, so persona and criteria are written once per group. Only httpx is needed here: no torch.

The client on its own:

    client = ScoringClient("http://127.0.0.1:8017", api_key=None)
    results = client.score([{"user_id": "u1", "history": [], "prompt": "Hi", "completions": ["Hello."]}])
    results = await client.ascore(requests)

Connect errors, timeouts and 5xx answers are retried with exponential backoff (`max_retries` times);
a 4xx answer raises `ScoringClientError` at once with the server's reason. When the service stays
unreachable, `RemoteScorer` applies the failure policy: every completion gets the counted neutral
reward (`failure_kinds: {"service_unavailable": n}`), or `ScoringError` is raised. Never `None`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import httpx

from pgenrm_plugins.config import PGenRMConfig
from pgenrm_plugins.scoring.contract import ScoringError, settings_identity
from pgenrm_plugins.types import Components, ScoreRequest, ScoreResult

log = logging.getLogger(__name__)

RETRYABLE = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.RemoteProtocolError,
             httpx.ReadError, httpx.WriteError, httpx.PoolTimeout)


class ScoringClientError(RuntimeError):
    """The service refused the request (4xx), or kept failing after every retry."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json().get("detail", response.text))
    except Exception:  # noqa: BLE001 - any non-JSON error body is shown as text
        return response.text[:500]


class ScoringClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 300.0,
                 max_retries: int = 4, backoff_s: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s, connect=min(10.0, timeout_s))
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._client: httpx.Client | None = None
        self._aclient: httpx.AsyncClient | None = None

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def _payload(requests: Sequence[ScoreRequest | dict]) -> list[dict]:
        return [r.model_dump(mode="json") for r in _validated(requests)]

    def _decide(self, response: httpx.Response, attempt: int) -> list[ScoreResult] | None:
        """Results, or None to retry; raises on a final failure."""
        if response.status_code == 200:
            return [ScoreResult.model_validate(r) for r in response.json()]
        message = f"{self.base_url}/v1/score answered {response.status_code}: {_detail(response)}"
        if response.status_code >= 500 and attempt < self.max_retries:
            return None
        raise ScoringClientError(message, response.status_code)

    def _give_up(self, exc: Exception) -> ScoringClientError:
        return ScoringClientError(
            f"cannot reach the scoring service at {self.base_url} after {self.max_retries + 1} tries: "
            f"{type(exc).__name__}: {exc}")

    # -- sync ---------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        payload = self._payload(requests)
        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post(f"{self.base_url}/v1/score", json=payload)
            except RETRYABLE as exc:
                if attempt >= self.max_retries:
                    raise self._give_up(exc) from exc
            else:
                results = self._decide(response, attempt)
                if results is not None:
                    return results
            time.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def health(self) -> dict[str, Any]:
        return httpx.get(f"{self.base_url}/healthz", timeout=self.timeout).json()

    # -- async --------------------------------------------------------------------------------
    async def ascore(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        payload = self._payload(requests)
        if self._aclient is None:
            self._aclient = httpx.AsyncClient(timeout=self.timeout, headers=self.headers)
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._aclient.post(f"{self.base_url}/v1/score", json=payload)
            except RETRYABLE as exc:
                if attempt >= self.max_retries:
                    raise self._give_up(exc) from exc
            else:
                results = self._decide(response, attempt)
                if results is not None:
                    return results
            await asyncio.sleep(self.backoff_s * 2 ** attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    async def aclose(self) -> None:
        if self._aclient is not None:
            await self._aclient.aclose()
            self._aclient = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class RemoteScorer:
    """`score` through the scoring service, with the config's failure policy."""

    def __init__(self, config: PGenRMConfig):
        self.config = config
        remote = config.scorer
        self.client = ScoringClient(remote.url, api_key=os.environ.get(remote.api_key_env) or None,
                                    timeout_s=remote.timeout_s, max_retries=remote.max_retries,
                                    backoff_s=remote.backoff_s)
        self.unavailable = 0  # completions that got the neutral reward because the service was down
        self.store = None  # the service reads the store; its answers say which version (served_by)

    def score(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        reqs = _validated(requests)
        try:
            return self.client.score(reqs)
        except ScoringClientError as exc:
            return self._failed(reqs, exc)

    def _failed(self, reqs: list[ScoreRequest], exc: Exception) -> list[ScoreResult]:
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

    def identity(self) -> str:
        return settings_identity(self.config, None)

    def close(self) -> None:
        self.client.close()


def _validated(requests) -> list[ScoreRequest]:
    return [r if isinstance(r, ScoreRequest) else ScoreRequest.model_validate(r) for r in requests]
