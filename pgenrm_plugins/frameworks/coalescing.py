"""Scoring one sample at a time without losing group mode's economy.

verl calls a reward function once per sample (many at once, on its reward worker's event loop) and
OpenRLHF calls `reward_func` once per sample (many at once, each in a thread). The scoring
service's `Batcher` already turns such a stream into backend batches and merges the samples of one
(user, prompt) into one request, so persona and criteria are derived once per group. `SampleCoalescer`
runs that same `Batcher` on a private event loop in a daemon thread, so callers on any thread or
any event loop share one batching window, and adds what every per-sample adapter needs: the user's
fields in, one finite reward and a fixed set of numeric components out, the failure policy for
unreadable user fields.

A completion's reward does not depend on the completions it was merged with (criteria chains are
seeded from the user and prompt only), so coalescing changes the cost, not the rewards.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pgenrm_plugins.frameworks.logs import sample_logs
from pgenrm_plugins.frameworks.user_fields import UserFields
from pgenrm_plugins.scoring import LazyScorer, WithLazyScorer
from pgenrm_plugins.scoring.batching import Batcher, ResultCache
from pgenrm_plugins.types import ScoreResult

if TYPE_CHECKING:
    from pgenrm_plugins.backends.base import Backend
    from pgenrm_plugins.scoring.contract import RequestScorer

log = logging.getLogger(__name__)

WAIT_ENV = "PGENRM_COALESCE_WAIT_MS"


@dataclass(frozen=True)
class SampleReward:
    reward: float
    components: dict[str, float]  # `sample_logs`: the same numeric keys for every sample
    result: ScoreResult | None = None  # the core's result (None for an unreadable sample)

    @classmethod
    def from_result(cls, result: ScoreResult, neutral_value: float) -> SampleReward:
        reward = float(result.rewards[0])
        if not math.isfinite(reward):  # last guard: the framework never sees NaN from us
            reward = neutral_value
            result = result.model_copy(update={"components": result.components.model_copy(
                update={"failed_completions": [0]})})
        return cls(reward, sample_logs(result), result)

    @classmethod
    def invalid(cls, neutral_value: float) -> SampleReward:
        return cls(float(neutral_value), sample_logs(None))


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, batcher: Batcher) -> None:
    """Drain and stop a batcher's loop thread (its owner closed it, dropped it, or the interpreter exits)."""
    if loop.is_closed():
        return
    if threading.current_thread() is thread:  # dropped on its own thread: cannot wait for itself
        loop.call_soon(loop.stop)
        return
    asyncio.run_coroutine_threadsafe(batcher.stop(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


class SharedBatcher:
    """The service's `Batcher` on its own event loop thread: `score` from any thread, `ascore` from
    any event loop; concurrent callers share one batching window."""

    def __init__(self, score, max_wait_ms: float = 20.0, max_batch_requests: int = 64, identity=None, cache=None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pgenrm-coalescer", daemon=True)
        self._thread.start()
        self.batcher = Batcher(score, max_wait_ms=max_wait_ms, max_batch_requests=max_batch_requests,
                               identity=identity, cache=cache)
        self._call(self.batcher.start())
        # Run at close, when dropped unclosed, or at exit: a loop left running would die with the
        # interpreter, its worker task still pending.
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._thread, self.batcher)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def score(self, requests) -> list[ScoreResult]:
        return self._call(self.batcher.submit(requests)).result()

    async def ascore(self, requests) -> list[ScoreResult]:
        return await asyncio.wrap_future(self._call(self.batcher.submit(requests)))

    @property
    def batches(self) -> int:
        return self.batcher.batches

    def close(self) -> None:
        self._finalizer()


class SampleCoalescer(WithLazyScorer):
    """One judge for per-sample callers: config and judge built on first use, calls coalesced.

    config: a PGenRMConfig, dict, YAML/TOML path, or None (then `$PGENRM_CONFIG`, else the embedded
    default). `backend` or `scorer` reuse a judge already loaded. `max_wait_ms` is the batching
    window (default `$PGENRM_COALESCE_WAIT_MS`, else 20 ms).
    """

    def __init__(self, config=None, *, backend: Backend | None = None, scorer: RequestScorer | None = None,
                 max_wait_ms: float | None = None):
        self._lazy = LazyScorer(config, backend=backend, scorer=scorer)
        self._owns_scorer = scorer is None and backend is None  # close only a judge we built
        self._batcher: SharedBatcher | None = None
        self._lock = threading.Lock()
        self.max_wait_ms = max_wait_ms if max_wait_ms is not None else float(os.environ.get(WAIT_ENV, 20.0))
        self.invalid_samples = 0  # unreadable user fields that got the neutral reward

    @property
    def batcher(self) -> SharedBatcher:
        if self._batcher is None:
            scorer = self.scorer
            with self._lock:
                if self._batcher is None:
                    # identical samples share one computation here too (GRPO groups repeat completions)
                    self._batcher = SharedBatcher(scorer.score, max_wait_ms=self.max_wait_ms,
                                                  identity=scorer.identity, cache=ResultCache())
        return self._batcher

    def policy(self) -> tuple[str, float]:
        return self.config.reward.failure_policy, self.config.reward.neutral_value

    def on_invalid(self, error: Exception) -> SampleReward:
        """An unreadable sample: raise under `failure_policy: raise`, else a counted neutral reward."""
        policy, neutral = self.policy()
        if policy == "raise":
            raise error
        with self._lock:
            self.invalid_samples += 1
            count = self.invalid_samples
        log.warning("P-GenRM: unreadable user fields, neutral reward %.2f (%d so far): %s", neutral, count, error)
        return SampleReward.invalid(neutral)

    def score(self, fields: UserFields, prompt: Any, completion: str) -> SampleReward:
        """Blocking, from any thread: one completion's reward."""
        request = fields.request([completion], prompt=prompt)
        [result] = self.batcher.score([request])
        return SampleReward.from_result(result, self.config.reward.neutral_value)

    async def ascore(self, fields: UserFields, prompt: Any, completion: str) -> SampleReward:
        """From any event loop: one completion's reward, batched with what other callers send."""
        request = fields.request([completion], prompt=prompt)
        batcher = self.batcher if self._batcher is not None else await asyncio.to_thread(lambda: self.batcher)
        [result] = await batcher.ascore([request])
        return SampleReward.from_result(result, self.config.reward.neutral_value)

    def close(self) -> None:
        if self._batcher is not None:
            self._batcher.close()
            self._batcher = None
        if self._owns_scorer:
            self._lazy.close()
