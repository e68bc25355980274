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

Identical requests share one computation when the batcher is given an `identity` (what scores the
requests: the scorer's `identity()`; scoring is deterministic, so a request is identified by its content
and by that, `request_key`). A
request identical to one in flight joins it; one identical to a request answered recently gets the
stored answer from `cache` at once. A caller that goes away does not cancel a keyed computation: it
finishes into the cache, because a caller that timed out (OpenRLHF: 180 s, 5 tries) sends the same
request again, and the retry should find the answer instead of starting over.

With `deadline_s`, batches are sized so that queue wait plus the batch's expected time (the
measured seconds per completion) stay under it, and a backlog the judge cannot clear within the
deadline is reported: a warning with the measured and the needed rate, and `overloaded` metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
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
    queued_at: float = 0.0


class ResultCache:
    """Answers of recent requests by key, bounded by entries and by bytes (of their JSON), each
    kept `ttl_s` seconds; the least recently used go first."""

    def __init__(self, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024, ttl_s: float = 900.0):
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, ttl_s
        self._entries: OrderedDict[str, tuple[float, int, ScoreResult]] = OrderedDict()
        self.bytes = self.hits = self.misses = 0

    def get(self, key: str) -> ScoreResult | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] < time.monotonic():
            self._drop(key)
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[2]

    def put(self, key: str, result: ScoreResult) -> None:
        size = len(result.model_dump_json())
        if key in self._entries:
            self._drop(key)
        if size > self.max_bytes or self.max_entries <= 0:
            return
        self._entries[key] = (time.monotonic() + self.ttl_s, size, result)
        self.bytes += size
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def _drop(self, key: str) -> None:
        _, size, _ = self._entries.pop(key)
        self.bytes -= size

    def __len__(self) -> int:
        return len(self._entries)


def request_key(request: ScoreRequest, scoring: str) -> str:
    """A request's identity: its whole content and `scoring` (what scores it: the scoring settings
    and the prototype store's build)."""
    return json.dumps([request.model_dump(mode="json"), scoring], sort_keys=True)


class Batcher:
    def __init__(
        self,
        score: Callable[[list[ScoreRequest]], list[ScoreResult]],
        max_wait_ms: float = 20.0,
        max_batch_requests: int = 64,
        metrics: Any = None,
        identity: Callable[[], str] | None = None,
        cache: ResultCache | None = None,
        deadline_s: float | None = None,
    ):
        self._score = score
        self._identity, self.cache = identity, cache
        self._inflight: dict[str, asyncio.Future] = {}
        self.deadline_s = deadline_s
        self.seconds_per_completion: float | None = None  # measured, smoothed over batches
        self._held: _Item | None = None  # the item that did not fit the last batch's time budget
        self._queued_completions = 0
        self._warned_at = float("-inf")
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
        return (self._queue.qsize() if self._queue is not None else 0) + (self._held is not None)

    # -- callers ----------------------------------------------------------------------------------
    async def submit(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """Score `requests` (results in the same order); they may share a batch with other callers'."""
        if not self.running:
            raise BatcherClosed("the scoring service is shutting down (or not started); retry on another replica")
        loop = asyncio.get_running_loop()
        futures, items = [], []
        identity = self._identity() if self._identity is not None else None  # once per call: it may ask the store
        for r in requests:
            key = request_key(r, identity) if identity is not None else None
            if key is not None:
                hit = self.cache.get(key) if self.cache is not None else None
                if hit is not None:
                    self._count("cache_hits")
                    futures.append(loop.create_future())
                    futures[-1].set_result(hit)
                    continue
                self._count("cache_misses")
                if key in self._inflight:
                    self._count("joined")
                    futures.append(self._inflight[key])
                    continue
            item = _Item(r, loop.create_future(), time.perf_counter())
            if key is not None:
                self._inflight[key] = item.future
                item.future.add_done_callback(lambda f, key=key: self._finished(key, f))
            items.append(item)
            futures.append(item.future)
        for item in items:
            self._queued_completions += len(item.request.completions)
            self._queue.put_nowait(item)
        self._gauge()
        try:
            if identity is not None:  # shared computations outlive a caller that goes away
                return list(await asyncio.gather(*(asyncio.shield(f) for f in futures)))
            return list(await asyncio.gather(*futures))
        except BaseException:
            if identity is None:
                for i in items:  # the caller went away or one part failed: drop what is still queued
                    if i.future.done() and not i.future.cancelled():
                        i.future.exception()  # retrieved, so asyncio does not log it as lost
                    i.future.cancel()
            else:
                for f in futures:
                    if f.done() and not f.cancelled():
                        f.exception()
            raise

    def _count(self, name: str) -> None:
        if self.metrics is not None:
            getattr(self.metrics, name).inc()

    def _finished(self, key: str, future: asyncio.Future) -> None:
        if self._inflight.get(key) is future:
            del self._inflight[key]
        if self.cache is not None and not future.cancelled() and future.exception() is None:
            self.cache.put(key, future.result())

    # -- worker -----------------------------------------------------------------------------------
    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self.depth)

    def _budget(self, first: _Item) -> int | None:
        """How many completions fit this batch before the deadline, given how long `first` waited."""
        if self.deadline_s is None or not self.seconds_per_completion:
            return None
        remaining = self.deadline_s - (time.perf_counter() - first.queued_at)
        return max(len(first.request.completions), int(remaining / self.seconds_per_completion))

    async def _collect(self) -> tuple[list[_Item], bool]:
        """Wait for a first item, then take what arrives within the window and fits the time
        budget. Returns (items, stop)."""
        first, self._held = self._held or await self._queue.get(), None
        if first is None:
            return [], True
        items, stop = [first], False
        budget, size = self._budget(first), len(first.request.completions)
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
            if budget is not None and size + len(item.request.completions) > budget:
                self._held = item  # first of the next batch
                break
            items.append(item)
            size += len(item.request.completions)
        self._queued_completions -= size
        return items, stop

    def _measured(self, seconds: float, completions: int) -> None:
        """Update the judge's measured speed; warn when the backlog cannot be cleared in time."""
        per = seconds / max(1, completions)
        spc = per if self.seconds_per_completion is None else 0.7 * self.seconds_per_completion + 0.3 * per
        self.seconds_per_completion = spc
        if self.deadline_s is None:
            return
        backlog = self._queued_completions + (len(self._held.request.completions) if self._held else 0)
        judge_rate, needed = 1.0 / spc, backlog / self.deadline_s
        m = self.metrics
        if m is not None:
            m.judge_rate.set(judge_rate)
            m.needed_rate.set(needed)
        if needed > judge_rate:
            if m is not None:
                m.overloaded.inc()
            now = time.monotonic()
            if now - self._warned_at > 30:
                self._warned_at = now
                log.warning("overloaded: %d completions wait, which takes the judge %.1f s at its measured %.2f "
                            "completions/s; answering them within the %g s deadline needs %.2f completions/s "
                            "(add replicas or judge servers, or fewer chains or tokens)",
                            backlog, backlog * spc, judge_rate, self.deadline_s, needed)

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
            now = time.perf_counter()
            for item in items:
                m.queue_wait.observe(now - item.queued_at)
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
            elapsed = time.perf_counter() - started
            self._measured(elapsed, sum(len(r.completions) for r in merged))
            if m is not None:
                m.batch_seconds.observe(elapsed)
        if m is not None:
            m.chains.inc(sum(r.components.chains_sampled for r in results))
            m.generated_tokens.inc(sum(r.components.generated_tokens for r in results))
        for item, (mi, start, stop) in zip(items, spans):
            if not item.future.done():
                item.future.set_result(split_result(results[mi], start, stop))
