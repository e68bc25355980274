"""Retries never recompute: OpenRLHF's own client against the real service with a slowed judge,
the cache of recent answers, and the load test with duplicates among the requests."""

from __future__ import annotations

import asyncio
import os
import re
import time

import httpx
import pytest
from test_server import HISTORY, JUDGE_CONFIG, ContentScorer, LiveServer, Recording, chatml, content_reward, label

from pgenrm_plugins.frameworks.openrlhf import prompt_of
from pgenrm_plugins.scoring import Scorer
from pgenrm_plugins.scoring.batching import ResultCache, request_key
from pgenrm_plugins.scoring.contract import settings_identity
from pgenrm_plugins.server.app import ServerSettings, create_app
from pgenrm_plugins.types import ScoreRequest, ScoreResult


def metric(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class Slowed(Recording):
    """The real judge, made slower than the client's patience by `delay_s` per batch."""

    def __init__(self, scorer, delay_s: float):
        super().__init__(scorer)
        self.delay_s = delay_s

    def score(self, requests):
        time.sleep(self.delay_s)
        return super().score(requests)


def test_openrlhf_retries_after_timeouts_are_answered_without_recomputing(judge, monkeypatch):
    """OpenRLHF's `_fetch_rewards_via_http` (5 tries, 1 s apart) with its 180 s timeout shortened
    to 1.5 s here, and the judge slowed by 2 s per batch, so every first try times out (the test
    asserts it). Every sample still gets its reward, and the judge scores each distinct sample once."""
    from openrlhf.utils import agent
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    real_timeout = agent.aiohttp.ClientTimeout
    monkeypatch.setattr(agent.aiohttp, "ClientTimeout", lambda total=None, **kw: real_timeout(total=1.5))
    scorer = Slowed(Scorer(JUDGE_CONFIG, backend=judge), delay_s=2.0)
    app = create_app(scorer, ServerSettings(max_wait_ms=300))
    prompt = chatml("How can I fall asleep faster?")
    responses = ["Keep a fixed bedtime.", "Stop screens an hour before bed.", "Warm milk."]
    with LiveServer(app) as srv:
        executor = SingleTurnAgentExecutor(remote_rm_url=f"{srv.url}/get_reward")

        async def rollout():
            return await asyncio.gather(*(executor._fetch_rewards_via_http([prompt + r + "<|im_end|>"], [prompt],
                                                                           [label("bea")]) for r in responses))
        started = time.perf_counter()
        replies = asyncio.run(rollout())
        elapsed = time.perf_counter() - started
        text = httpx.get(f"{srv.url}/metrics").text
    assert elapsed > 2.5  # nobody was answered on the first try (1.5 s), and each retry waits 1 s
    direct = Scorer(JUDGE_CONFIG, backend=judge).score(
        [ScoreRequest(user_id="bea", history=HISTORY, prompt=prompt_of(prompt), completions=responses)])[0]
    assert [reply[0]["rewards"][0] for reply in replies] == pytest.approx(direct.rewards, abs=1e-5)
    scored = [c for batch in scorer.calls for r in batch for c in r.completions]
    assert sorted(scored) == sorted(responses)  # one computation per distinct request
    assert metric(text, "pgenrm_batch_completions_sum") == 3.0
    retried = metric(text, "pgenrm_cache_hits_total") + metric(text, "pgenrm_joined_inflight_total")
    assert retried >= 3  # every sample came back at least once and was answered from the first computation
    gone = metric(text, "pgenrm_http_requests_total", '{endpoint="/get_reward",status="499"}')
    ok = metric(text, "pgenrm_http_requests_total", '{endpoint="/get_reward",status="200"}')
    assert ok == 3.0 and gone <= retried  # the callers that timed out are not counted as answered


def result(reward: float) -> ScoreResult:
    return ScoreResult(rewards=[reward], components={"chains_sampled": 2, "criteria": [("Brevity", 100.0)]})


def test_a_cache_hit_is_the_first_answer_and_what_scores_it_is_part_of_the_key():
    cache = ResultCache(max_entries=2, max_bytes=10_000, ttl_s=60)
    request = ScoreRequest(user_id="u", prompt="p", completions=["x"])
    first = result(0.7)
    key = request_key(request, "settings A, store version 3")
    cache.put(key, first)
    assert cache.get(key) == first and cache.get(key).components == first.components
    assert cache.get(request_key(request, "settings B, store version 3")) is None  # scoring settings changed
    assert cache.get(request_key(request, "settings A, store version 4")) is None  # the store changed
    other = request.model_copy(update={"completions": ["y"]})
    assert cache.get(request_key(other, "settings A, store version 3")) is None
    # bounded by entries, by bytes and by time
    for i in range(3):
        cache.put(f"k{i}", result(i / 10))
    assert len(cache) == 2 and cache.get(key) is None and cache.get("k2") is not None
    tiny = ResultCache(max_entries=10, max_bytes=len(first.model_dump_json()) + 10, ttl_s=60)
    tiny.put("a", first)
    tiny.put("b", first)
    assert len(tiny) == 1 and tiny.get("b") is not None and tiny.bytes <= tiny.max_bytes
    expired = ResultCache(ttl_s=0.0)
    expired.put("a", first)
    time.sleep(0.01)
    assert expired.get("a") is None and expired.hits == 0 and expired.misses == 1


def test_the_scoring_identity_follows_the_settings_and_the_store(judge, tmp_path):
    from pgenrm_plugins.prototypes.sqlite_store import SQLiteStore

    a = Scorer(JUDGE_CONFIG, backend=judge).identity()
    b = Scorer({**JUDGE_CONFIG, "sampling": {**JUDGE_CONFIG.get("sampling", {}), "seed": 99}}, backend=judge).identity()
    assert a != b and a == Scorer(JUDGE_CONFIG, backend=judge).identity()

    config = Scorer(JUDGE_CONFIG, backend=judge).config
    store = SQLiteStore(path=str(tmp_path / "s.sqlite"))
    before = settings_identity(config, store)
    build = store.begin_build({"k": 1})
    store.stage_users(build, [])
    import numpy as np

    from pgenrm_plugins.prototypes.base import PrototypeSet

    store.publish(build, PrototypeSet(np.eye(1, 4, dtype=np.float32), "e"), {})
    assert settings_identity(config, store) != before  # a new build: a miss
    store.close()


def test_served_cache_hit_same_answer_and_one_computation():
    scorer = ContentScorer()
    row = {"user_id": "u1", "history": HISTORY, "prompt": "Hi", "completions": ["a", "b"]}
    with LiveServer(create_app(scorer, {"max_wait_ms": 1})) as srv:
        first = httpx.post(f"{srv.url}/v1/score", json=row).json()
        again = httpx.post(f"{srv.url}/v1/score", json=row).json()
        changed = httpx.post(f"{srv.url}/v1/score", json=dict(row, persona="Brief.")).json()
        text = httpx.get(f"{srv.url}/metrics").text
    assert again == first and changed["rewards"] == first["rewards"]  # the persona does not move this stand-in
    # the repeat was answered from the cache; the request with a persona is another request
    assert len(scorer.calls) == 2 and metric(text, "pgenrm_cache_hits_total") == 1.0


def test_load_32_clients_with_duplicates_nothing_lost_duplicated_or_swapped():
    """The load test of test_server.py with every request sent twice, by different clients: each
    answer is still its own, and the judge (`ContentScorer`, a pure function of the content) scores
    each distinct request exactly once. 50 requests a client (1,600, 800 distinct): the volume is the
    other test's, this one is about the duplicates."""
    scorer = ContentScorer()
    clients, per_client = 32, int(os.environ.get("PGENRM_LOAD_PER_CLIENT", "50"))
    prompts = [chatml(f"Question number {k}?") for k in range(8)]
    distinct = clients * per_client // 2

    async def client(c: int, http: httpx.AsyncClient, url: str):
        got = []
        for i in range(per_client):
            n = (c * per_client + i) % distinct  # clients c and c + 16 send the same requests
            prompt, user = prompts[n % len(prompts)], f"user{n % 4}"
            completion = f"answer {n}"
            r = await http.post(url, json={"query": [prompt + completion + "<|im_end|>"], "prompts": [prompt],
                                           "labels": [label(user)]})
            assert r.status_code == 200, r.text
            req = ScoreRequest(user_id=user, history=HISTORY, prompt=prompt_of(prompt), completions=[completion])
            got.append((r.json()["rewards"][0], content_reward(req, completion)))
        return got

    with LiveServer(create_app(scorer, {"max_wait_ms": 5})) as srv:
        async def go():
            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as http:
                return await asyncio.gather(*(client(c, http, f"{srv.url}/get_reward") for c in range(clients)))
        results = asyncio.run(go())
    pairs = [p for r in results for p in r]
    assert len(pairs) == clients * per_client and all(got == want for got, want in pairs)
    scored = [(r.user_id, c) for batch in scorer.calls for r in batch for c in r.completions]
    assert len(scored) == distinct and len(set(scored)) == distinct  # each distinct request scored once


class PerCompletion(ContentScorer):
    """`ContentScorer` that takes `seconds` per completion, like a judge whose batch time grows
    with the batch (the real judge cannot be timed this precisely in a test)."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds

    def score(self, requests):
        time.sleep(self.seconds * sum(len(r.completions) for r in requests))
        return super().score(requests)


def test_a_request_past_its_deadline_gets_504_and_its_retry_the_answer():
    scorer = ContentScorer(delay_s=1.0)
    row = {"user_id": "u1", "history": HISTORY, "prompt": "Hi", "completions": ["a"]}
    with LiveServer(create_app(scorer, {"max_wait_ms": 1, "deadline_s": 0.3})) as srv:
        late = httpx.post(f"{srv.url}/v1/score", json=row)
        time.sleep(1.2)
        retry = httpx.post(f"{srv.url}/v1/score", json=row)
        text = httpx.get(f"{srv.url}/metrics").text
    assert late.status_code == 504 and "deadline_s=0.3" in late.json()["detail"]
    assert retry.status_code == 200 and len(scorer.calls) == 1  # the first computation answered the retry
    assert metric(text, "pgenrm_failures_total", '{kind="deadline"}') == 1.0


def test_batches_fit_the_deadline_and_an_overload_is_reported(caplog):
    """At 0.1 s per completion and a 0.45 s deadline, once the speed is measured a batch holds about
    4 completions, not all 16 waiting; 16 waiting need 16 / 0.45 = 36 completions/s, the judge does
    10: a warning says so, with both rates, and the metrics show them."""
    scorer = PerCompletion(0.1)
    prompts = [f"Question {k}?" for k in range(16)]
    with LiveServer(create_app(scorer, {"max_wait_ms": 50, "deadline_s": 0.45})) as srv:
        httpx.post(f"{srv.url}/v1/score", json={"prompt": "warm-up", "completions": ["x"]})  # measures the speed

        async def burst():
            async with httpx.AsyncClient(timeout=60) as http:
                return await asyncio.gather(*(http.post(f"{srv.url}/v1/score", json={"prompt": p, "completions": ["x"]})
                                              for p in prompts))
        with caplog.at_level("WARNING", logger="pgenrm_plugins.scoring.batching"):
            replies = asyncio.run(burst())
        text = httpx.get(f"{srv.url}/metrics").text
    sizes = [sum(len(r.completions) for r in batch) for batch in scorer.calls[1:]]
    assert sum(sizes) == 16 and max(sizes) <= 6 and len(sizes) >= 3, sizes
    assert {r.status_code for r in replies} <= {200, 504}  # late ones 504; their computations still ran
    assert any("overloaded" in r.message and "completions/s" in r.message for r in caplog.records)
    assert metric(text, "pgenrm_overloaded_total") >= 1
    assert 5 <= metric(text, "pgenrm_judge_completions_per_second") <= 15


def test_the_in_process_batcher_shares_identical_samples_too():
    """verl and OpenRLHF's file form score through the same batcher in the trainer's process: two
    identical samples (GRPO groups repeat completions) are judged once, and both get the reward."""
    from pgenrm_plugins.config import load_config
    from pgenrm_plugins.frameworks.coalescing import SampleCoalescer
    from pgenrm_plugins.frameworks.user_fields import FieldSource, read_user_fields

    scorer = ContentScorer()
    scorer.config = load_config({})  # the failure policy SampleCoalescer reads
    judge = SampleCoalescer(scorer=scorer, max_wait_ms=200)
    fields = read_user_fields({"user_id": "u1", "history": HISTORY}, FieldSource("verl", "extra_info", "fix"))

    async def two():
        return await asyncio.gather(*(judge.ascore(fields, "Hi", "same answer") for _ in range(2)))

    try:
        first, second = asyncio.run(two())
        again = judge.score(fields, "Hi", "same answer")  # later: from the cache
    finally:
        judge.close()
    assert first.reward == second.reward == again.reward
    assert [c for batch in scorer.calls for r in batch for c in r.completions] == ["same answer"]
