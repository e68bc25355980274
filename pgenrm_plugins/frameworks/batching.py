"""Coalesce concurrent score requests into backend batches (the service and the in-process
per-sample adapters share it).

One asyncio queue, one worker task. The worker waits for a first request, keeps taking what
arrives for up to `max_wait_ms` (or until `max_batch_requests`), merges requests that share
(user_id, persona, history, prompt, reference) into ONE `ScoreRequest` holding all their completions
(OpenRLHF sends one completion per HTTP request; merged, group mode derives persona and criteria
once per group), runs the synchronous `scorer.score` in a thread, and splits the results back so
every caller gets exactly its own completions' rewards, in its own order.

A scorer exception fails every request of that batch with `ScorerFailed` (the app answers 503); the
worker goes on with the next batch. A caller that went away (its future cancelled) is skipped.
`stop()` refuses new requests and drains what is queued before returning.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pgenrm_plugins.types import ScoreRequest, ScoreResult, merge_groups, split_result

log = logging.getLogger(__name__)


class ScorerFailed(RuntimeError):
    """The scorer raised while scoring the batch this request was in."""


class BatcherClosed(RuntimeError):
    """The service is shutting down and takes no new requests."""


@dataclass
class _Item:
    request: ScoreRequest
    future: asyncio.Future


class Batcher:
    def __init__(
        self,
        score: Callable[[list[ScoreRequest]], list[ScoreResult]],
        max_wait_ms: float = 20.0,
        max_batch_requests: int = 64,
        metrics: Any = None,
    ):
        self._score = score
        self.max_wait = max_wait_ms / 1000.0
        self.max_batch_requests = max_batch_requests
        self.metrics = metrics
        self._queue: asyncio.Queue[_Item | None] | None = None
        self._worker: asyncio.Task | None = None
        self._closing = False
        self.batches = 0

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self._worker is not None:
            return
        self._queue = asyncio.Queue()
        self._closing = False
        self._worker = asyncio.create_task(self._run(), name="pgenrm-batcher")

    async def stop(self) -> None:
        """Take no new requests, finish every queued one, then end the worker."""
        if self._worker is None:
            return
        self._closing = True
        await self._queue.put(None)
        await self._worker
        self._worker = None

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done() and not self._closing

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    # -- callers ----------------------------------------------------------------------------------
    async def submit(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score `requests` (results in the same order); they may share a batch with other callers'."""
        if not self.running:
            raise BatcherClosed("the scoring service is shutting down (or not started); retry on another replica")
        loop = asyncio.get_running_loop()
        items = [_Item(r, loop.create_future()) for r in requests]
        for item in items:
            self._queue.put_nowait(item)
        self._gauge()
        try:
            return list(await asyncio.gather(*(i.future for i in items)))
        except BaseException:
            for i in items:  # the caller went away or one part failed: drop what is still queued
                if i.future.done() and not i.future.cancelled():
                    i.future.exception()  # retrieved, so asyncio does not log it as lost
                i.future.cancel()
            raise

    # -- worker -----------------------------------------------------------------------------------
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.depth)

    async def _collect(self) -> tuple[list[_Item], bool]:
        """Wait for a first item, then take what arrives within the window. Returns (items, stop)."""
        first = await self._queue.get()
        if first is None:
            return [], True
        items, stop = [first], False
        deadline = time.monotonic() + self.max_wait
        while len(items) < self.max_batch_requests:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closing:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except TimeoutError:
                    break
            if item is None:
                stop = True
                break
            items.append(item)
        return items, stop

    async def _run(self) -> None:
        # `stop()` sets `_closing` before it queues the sentinel and `submit` refuses new items once
        # `_closing` is set, so the sentinel is always last: when it comes out, the queue is drained.
        while True:
            items, stop = await self._collect()
            self._gauge()
            items = [i for i in items if not i.future.done()]  # callers that went away are skipped
            if items:
                try:
                    await self._score_batch(items)
                except Exception:  # never let one batch kill the worker (log.exception keeps the trace)
                    log.exception("batch failed outside the scorer")
                    for i in items:
                        if not i.future.done():
                            i.future.set_exception(ScorerFailed("internal error while batching; see the server log"))
            if stop:
                return

    async def _score_batch(self, items: list[_Item]) -> None:
        merged, spans = merge_groups([i.request for i in items])
        m = self.metrics
        if m is not None:
            m.batch_items.observe(len(items))
            m.batch_requests.observe(len(merged))
            m.batch_completions.observe(sum(len(r.completions) for r in merged))
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(self._score, merged)
            if len(results) != len(merged):
                raise RuntimeError(f"scorer returned {len(results)} results for {len(merged)} requests")
        except Exception as exc:  # noqa: BLE001 - any scorer failure becomes a 503 for this batch only
            reason = f"{type(exc).__name__}: {exc}"
            log.warning("scorer failed on a batch of %d requests: %s", len(items), reason)
            if m is not None:
                m.failures.labels("scorer_batch").inc()
            for i in items:
                if not i.future.done():
                    i.future.set_exception(ScorerFailed(f"the scorer failed on this batch: {reason}"))
            return
        finally:
            self.batches += 1
            if m is not None:
                m.batch_seconds.observe(time.perf_counter() - started)
        for item, (mi, start, stop) in zip(items, spans):
            if not item.future.done():
                item.future.set_result(split_result(results[mi], start, stop))
