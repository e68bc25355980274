"""Prometheus metrics of one app, in their own registry (several apps can live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("pgenrm_queue_depth", "Score requests waiting for the batcher", registry=r)
        self.batch_items = Histogram(
            "pgenrm_batch_items", "Caller requests taken into one backend batch", buckets=SIZE_BUCKETS, registry=r)
        self.batch_requests = Histogram(
            "pgenrm_batch_score_requests", "ScoreRequests in one backend batch after merging same (user, prompt)",
            buckets=SIZE_BUCKETS, registry=r)
        self.batch_completions = Histogram(
            "pgenrm_batch_completions", "Completions scored in one backend batch", buckets=SIZE_BUCKETS, registry=r)
        # What group mode saves shows here: one chain per (user, prompt) and chain sample, however many
        # callers the group's completions came from.
        self.chains = Counter(
            "pgenrm_chains_sampled", "Evaluation chains the judge sampled (group mode: one persona-and-criteria "
            "chain per (user, prompt) request and chain sample)", registry=r)
        self.generated_tokens = Counter("pgenrm_generated_tokens", "Tokens the judge generated", registry=r)
        self.batch_seconds = Histogram(
            "pgenrm_batch_seconds", "Time the scorer took for one batch", buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram(
            "pgenrm_queue_wait_seconds", "Time a request waited for its backend batch to start",
            buckets=LATENCY_BUCKETS, registry=r)
        self.cache_hits = Counter("pgenrm_cache_hits", "Requests answered from the cache of recent answers", registry=r)
        self.cache_misses = Counter("pgenrm_cache_misses", "Keyed requests not in the cache", registry=r)
        self.joined = Counter("pgenrm_joined_inflight", "Requests that joined an identical one in flight", registry=r)
        self.cache_entries = Gauge("pgenrm_cache_entries", "Answers held in the cache", registry=r)
        self.judge_rate = Gauge("pgenrm_judge_completions_per_second", "The judge's measured speed", registry=r)
        self.needed_rate = Gauge("pgenrm_needed_completions_per_second",
                                 "Speed needed to answer what waits within the deadline", registry=r)
        self.overloaded = Counter("pgenrm_overloaded", "Batches after which the backlog could not be cleared within "
                                                       "the deadline at the measured speed", registry=r)
        self.latency = Histogram(
            "pgenrm_request_latency_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.requests = Counter("pgenrm_http_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.failures = Counter(
            "pgenrm_failures",
            "Failures by kind: scorer (a request failed by the scorer), scorer_batch (a batch the scorer failed), "
            "deadline (not answered within deadline_s), auth, too_large, invalid, unavailable", ["kind"], registry=r)
