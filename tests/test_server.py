"""The scoring service: real uvicorn on a loopback port, the real embedded judge on the main path,
OpenRLHF 0.11.2's own HTTP reward client against `/get_reward`.

The tests of judgement paths use the judge. Tests of the plumbing around it use `ContentScorer`,
whose reward is a pure function of the request's content, and say so: the load test (routing at
volume), the fault tests (a scorer that raises, or is slow on purpose), limits, auth and the client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import threading
import time

import httpx
import pytest
import uvicorn

from pgenrm_plugins.config import PGenRMConfig
from pgenrm_plugins.frameworks.logs import LOG_KEYS
from pgenrm_plugins.frameworks.openrlhf import completion_of, prompt_of
from pgenrm_plugins.scoring import Scorer
from pgenrm_plugins.scoring.remote import ScoringClient, ScoringClientError
from pgenrm_plugins.server.app import ServerSettings, create_app
from pgenrm_plugins.types import ScoreRequest, ScoreResult

# The shortest chains the config allows: the judge runs end to end (chain, criteria fallback, logprob
# reader) while the suite stays short on 2 shared cores.
JUDGE_CONFIG = {"sampling": {"chains": 1, "max_new_tokens": 8, "seed": 3}}
HISTORY = [{"prompt": "What is a good name for a cat?", "chosen": "Miso.",
            "rejected": "Choosing a name is personal! Many people pick names from food or books."}]


# -- helpers ---------------------------------------------------------------------------------------
class LiveServer:
    """The app under a real uvicorn server on a free 127.0.0.1 port, in a background thread."""

    def __init__(self, app, graceful_s: float = 30):
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=graceful_s)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        return self

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        assert not self.thread.is_alive()

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.stop()


class Recording:
    """Wraps a scorer's `score` to record every batch the service hands it."""

    def __init__(self, scorer):
        self.inner, self.calls, self.results = scorer, [], []
        self.config, self.store, self.identity, self.close = scorer.config, scorer.store, scorer.identity, scorer.close

    def score(self, requests):
        self.calls.append([r.model_copy(deep=True) for r in requests])
        results = self.inner.score(requests)
        self.results.append(results)
        return results


def content_reward(request: ScoreRequest, completion: str) -> float:
    blob = json.dumps([request.user_id, request.model_dump(mode="json")["prompt"], completion]).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=4).digest(), "big") / 2**32


class ContentScorer:
    """Stands in for the judge where a test checks routing, faults or timing, not judgement: each
    reward is a pure function of (user, prompt, completion), so any lost, duplicated or swapped
    answer is visible. `delay_s` makes a batch slow; `fail_first` makes the first N batches raise."""

    config, store = PGenRMConfig(), None  # a `RequestScorer` with the default settings and no store

    def __init__(self, delay_s: float = 0.0, fail_first: int = 0):
        self.delay_s, self.fail_first = delay_s, fail_first
        self.calls: list[list[ScoreRequest]] = []
        self.lock = threading.Lock()

    def identity(self) -> str:
        return "content"

    def close(self) -> None:
        pass

    def score(self, requests):
        with self.lock:
            self.calls.append(list(requests))
            n = len(self.calls)
        if self.delay_s:
            time.sleep(self.delay_s)
        if n <= self.fail_first:
            raise RuntimeError("judge backend went away (simulated)")
        return [ScoreResult(rewards=[content_reward(r, c) for c in r.completions],
                            components={"chains_sampled": 1, "parse_failures": 0, "self": [0.0] * len(r.completions),
                                        "failed_completions": []})
                for r in requests]


def chatml(user_text: str) -> str:
    return f"<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n{user_text}<|im_end|>\n<|im_start|>assistant\n"


def label(user_id: str, persona: str | None = None) -> str:
    row = {"user_id": user_id, "history": HISTORY}
    if persona:
        row["persona"] = persona
    return json.dumps(row)


@pytest.fixture(scope="module")
def judge_scorer(judge):
    return Scorer(JUDGE_CONFIG, backend=judge)


# -- the main path, with the real judge --------------------------------------------------------------
def test_score_endpoint_with_the_judge(judge_scorer):
    row = {"user_id": "u1", "history": HISTORY, "prompt": "How can I fall asleep faster?",
           "completions": ["Keep a fixed bedtime.", "Sleep is complicated."]}
    expected = judge_scorer.score([row])[0]
    with LiveServer(create_app(judge_scorer)) as srv:
        r = httpx.post(f"{srv.url}/v1/score", json=row, timeout=120)
        assert r.status_code == 200, r.text
        one = ScoreResult.model_validate(r.json())
        assert one.rewards == pytest.approx(expected.rewards, abs=1e-5)
        assert all(0.0 <= x <= 1.0 for x in one.rewards)
        # one synthesis or chain per request; the server's call reuses the synthesis written above
        assert one.components.chains_sampled + one.components.syntheses_reused == 1
        assert httpx.get(f"{srv.url}/healthz").json()["status"] == "ok"


def test_openrlhf_client_gets_rewards_and_requests_are_coalesced(judge_scorer):
    """OpenRLHF 0.11.2's own client sends one sample per request; the service merges the group."""
    try:
        from openrlhf.utils.agent import SingleTurnAgentExecutor
    except ImportError as exc:
        pytest.fail(f"this test runs OpenRLHF's own reward client: pip install --no-deps openrlhf==0.11.2, "
                    f"then aiohttp and pylatexenc (the Makefile does): {exc}")

    recorder = Recording(judge_scorer)
    # a long window that closes as soon as all 5 samples are in: one batch even on a busy machine
    app = create_app(recorder, ServerSettings(max_wait_ms=3000, max_batch_requests=5))
    prompt = chatml("How can I fall asleep faster?")
    responses = ["Keep a fixed bedtime.", "Stop screens an hour before bed.", "Sleep is complicated.", "Warm milk."]
    with LiveServer(app) as srv:
        executor = SingleTurnAgentExecutor(remote_rm_url=f"{srv.url}/get_reward")

        async def rollout():
            calls = [executor._fetch_rewards_via_http([prompt + resp + "<|im_end|>"], [prompt], [label("bea")])
                     for resp in responses]
            # one sample from another user joins the same window but not the same merged request
            calls.append(executor._fetch_rewards_via_http([prompt + "Count sheep.<|im_end|>"], [prompt],
                                                          [label("cal")]))
            return await asyncio.gather(*calls)

        replies = asyncio.run(rollout())
        metrics = httpx.get(f"{srv.url}/metrics").text

    # what the scorer received: one batch, one ScoreRequest per user, bea's holding all 4 completions
    assert len(recorder.calls) == 1, [len(c) for c in recorder.calls]
    [batch] = recorder.calls
    by_user = {r.user_id: r for r in batch}
    assert sorted(by_user) == ["bea", "cal"]
    assert sorted(by_user["bea"].completions) == sorted(responses)  # end-of-turn token stripped
    assert by_user["cal"].completions == ["Count sheep."]
    assert [m.role for m in by_user["bea"].prompt] == ["system", "user"]
    assert by_user["bea"].prompt[1].content == "How can I fall asleep faster?"
    # each caller got its own completion's reward: compare with scoring the merged batch directly
    direct = judge_scorer.score(batch)
    expected = {(r.user_id, c): x for r, res in zip(batch, direct) for c, x in zip(r.completions, res.rewards)}
    for resp, [reply] in zip(responses + ["Count sheep."], replies):
        user = "cal" if resp == "Count sheep." else "bea"
        assert reply["rewards"] == [pytest.approx(expected[(user, resp)], abs=1e-5)]
        assert reply["scores"] == reply["rewards"]
        assert list(reply["extra_logs"]) == ["pgenrm_" + k for k in LOG_KEYS]  # the file form's keys too
        assert all(isinstance(v, float) for vs in reply["extra_logs"].values() for v in vs)
        assert reply["extra_logs"]["pgenrm_merged_completions"] == [4.0 if user == "bea" else 1.0]
    assert "pgenrm_batch_completions_bucket" in metrics and "pgenrm_queue_depth" in metrics


def test_concurrent_score_requests_merge_into_one_group(judge_scorer):
    recorder = Recording(judge_scorer)
    row = {"user_id": "dee", "history": HISTORY, "prompt": "Suggest a weekend hobby."}
    completions = ["Pottery.", "Try hiking with friends.", "Learn chess."]
    with LiveServer(create_app(recorder, {"max_wait_ms": 3000, "max_batch_requests": 3})) as srv:
        async def go():
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(*(c.post(f"{srv.url}/v1/score", json=dict(row, completions=[x]))
                                              for x in completions))
        replies = asyncio.run(go())
    assert [r.status_code for r in replies] == [200] * 3
    assert len(recorder.calls) == 1 and len(recorder.calls[0]) == 1
    merged = recorder.calls[0][0]
    assert sorted(merged.completions) == sorted(completions)
    [direct] = judge_scorer.score([merged])
    for x, r in zip(completions, replies):
        body = r.json()
        assert body["rewards"] == [pytest.approx(direct.rewards[merged.completions.index(x)], abs=1e-5)]
        assert body["components"]["merged_completions"] == 3
        assert len(body["components"]["self"]) == 1


# -- volume: routing at load (stand-in scorer) -----------------------------------------------------
def test_load_32_clients_nothing_lost_duplicated_or_swapped():
    """32 concurrent clients x N single-sample OpenRLHF-protocol requests on loopback.
    `ContentScorer` stands in for the judge here, because the judge cannot do this volume in a test:
    at its tiniest settings (1 chain of 8 tokens) it scores about 0.5-2 rewards/s on the shared
    2-core machine, so 6,400 rewards would take hours. Its reward is a pure function of the
    content, so every answer is checked cheaply. The same shape with the real judge, at 32 requests,
    is `test_load_32_clients_with_the_judge`.

    N is the issue's 200 (6,400 requests, about 40-45 s on 2 cores, client and server in one
    process); `PGENRM_LOAD_PER_CLIENT=50` shortens it on a busy machine."""
    scorer = ContentScorer()
    clients, per_client = 32, int(os.environ.get("PGENRM_LOAD_PER_CLIENT", "200"))
    prompts = [chatml(f"Question number {k}?") for k in range(8)]

    async def client(c: int, http: httpx.AsyncClient, url: str):
        got = []
        for i in range(per_client):
            prompt = prompts[(c + i) % len(prompts)]
            completion = f"answer {c}-{i}"
            r = await http.post(url, json={"query": [prompt + completion + "<|im_end|>"], "prompts": [prompt],
                                           "labels": [label(f"user{c % 4}")]})
            assert r.status_code == 200, r.text
            req = ScoreRequest(user_id=f"user{c % 4}", history=HISTORY, prompt=prompt_of(prompt),
                               completions=[completion])
            got.append((r.json()["rewards"][0], content_reward(req, completion)))
        return got

    with LiveServer(create_app(scorer, {"max_wait_ms": 5})) as srv:
        async def go():
            limits = httpx.Limits(max_connections=clients)
            async with httpx.AsyncClient(timeout=60, limits=limits) as http:
                return await asyncio.gather(*(client(c, http, f"{srv.url}/get_reward") for c in range(clients)))
        started = time.perf_counter()
        results = asyncio.run(go())
        elapsed = time.perf_counter() - started
    pairs = [p for r in results for p in r]
    assert len(pairs) == clients * per_client
    assert all(got == want for got, want in pairs)
    scored = [c for batch in scorer.calls for r in batch for c in r.completions]
    assert len(scored) == clients * per_client and len(set(scored)) == len(scored)  # each scored exactly once
    assert max(len(b) for b in scorer.calls) > 1  # batching happened
    print(f"{clients * per_client} requests in {elapsed:.1f}s, {len(scorer.calls)} batches")


def test_load_32_clients_with_the_judge(judge_scorer):
    """OpenRLHF's shape with the real judge: 32 concurrent single-sample requests, 4 (user, prompt)
    groups of 8. Checked cheaply against what the judge itself returned for each batch (recorded):
    every completion judged exactly once, every caller given exactly its own completion's reward."""
    recorder = Recording(judge_scorer)
    groups = [(f"user{g}", chatml(f"Give me one tip for topic {g}.")) for g in range(4)]
    samples = [(user, prompt, f"Tip {k} for {user}.") for user, prompt in groups for k in range(8)]
    with LiveServer(create_app(recorder, {"max_wait_ms": 50})) as srv:
        async def go():
            async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=32)) as http:
                return await asyncio.gather(*(
                    http.post(f"{srv.url}/get_reward", json={"query": [prompt + text + "<|im_end|>"],
                                                            "prompts": [prompt], "labels": [label(user)]})
                    for user, prompt, text in samples))
        replies = asyncio.run(go())
    assert [r.status_code for r in replies] == [200] * 32, [r.text for r in replies if r.status_code != 200]
    judged = {}
    for batch, results in zip(recorder.calls, recorder.results):
        for request, result in zip(batch, results):
            for completion, reward in zip(request.completions, result.rewards):
                assert (request.user_id, completion) not in judged, "judged twice"
                judged[(request.user_id, completion)] = reward
    assert len(judged) == 32  # none lost, none judged twice
    for (user, _, text), reply in zip(samples, replies):
        assert reply.json()["rewards"] == [judged[(user, text)]]  # its own, not a neighbour's
    # and the batch-mates did not change a reward: two completions of one group judged on their own
    user, prompt = groups[0]
    texts = [t for u, _, t in samples if u == user][:2]
    [alone] = judge_scorer.score([{"user_id": user, "history": HISTORY, "prompt": prompt_of(prompt),
                                   "completions": texts}])
    assert alone.rewards == pytest.approx([judged[(user, t)] for t in texts], abs=1e-4)


# -- faults -----------------------------------------------------------------------------------------
ROW = {"user_id": "u", "history": [], "prompt": "Hi", "completions": ["Hello."]}


def test_bad_input_is_refused_with_the_reason():
    with LiveServer(create_app(ContentScorer(), {"max_body_bytes": 2048, "max_completions_per_request": 3,
                                                 "max_requests_per_call": 2})) as srv:
        r = httpx.post(f"{srv.url}/v1/score", content=b'{"user_id": "u", ',
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/v1/score", json=dict(ROW, completions=[]))
        assert r.status_code == 422 and "completions" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/v1/score", json=[ROW, dict(ROW, prompt=" ")])
        assert r.status_code == 422 and "field '1.prompt'" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/v1/score", json=dict(ROW, completions=["a"] * 4))
        assert r.status_code == 422 and "'completions'" in r.json()["detail"] and "at most 3" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/v1/score", json=[ROW] * 3)
        assert r.status_code == 422 and "'requests'" in r.json()["detail"] and "at most 2" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/v1/score", json=dict(ROW, completions=["x" * 3000]))
        assert r.status_code == 413 and "2048" in r.json()["detail"]

        async def chunked():  # no Content-Length: the limit still holds while streaming
            async def body():
                for _ in range(10):
                    yield b" " * 512
            async with httpx.AsyncClient() as c:
                return await c.post(f"{srv.url}/v1/score", content=body())
        assert asyncio.run(chunked()).status_code == 413
        r = httpx.post(f"{srv.url}/get_reward", json={"query": ["x"], "prompts": ["p"], "labels": ["{not json"]})
        assert r.status_code == 422 and "labels.0" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/get_reward", json={"query": ["x"], "prompts": ["p", "q"], "labels": ["{}"]})
        assert r.status_code == 422 and "same length" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/get_reward", content=b'{"query": [', headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/get_reward", content=b'{"query": ["\xc3\x28"]}',
                       headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/get_reward", json={"query": ["x" * 3000], "prompts": ["p"], "labels": ["{}"]})
        assert r.status_code == 413 and "2048" in r.json()["detail"]
        assert httpx.post(f"{srv.url}/v1/score", json=ROW).status_code == 200
        # a list body gets a list back, in order
        two = [dict(ROW, user_id="x", completions=["a", "b"]), dict(ROW, user_id="y")]
        got = httpx.post(f"{srv.url}/v1/score", json=two).json()
        assert [g["rewards"] for g in got] == [[content_reward(ScoreRequest.model_validate(r), c)
                                                for c in r["completions"]]
                                               for r in two]
        assert 'pgenrm_failures_total{kind="invalid"}' in httpx.get(f"{srv.url}/metrics").text


def test_bearer_token(monkeypatch):
    monkeypatch.setenv("PGENRM_API_KEY", "s3cret")
    with LiveServer(create_app(ContentScorer())) as srv:
        r = httpx.post(f"{srv.url}/v1/score", json=ROW)
        assert r.status_code == 401 and "missing bearer token" in r.json()["detail"]
        r = httpx.post(f"{srv.url}/get_reward", json={}, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and "wrong bearer token" in r.json()["detail"]
        assert httpx.get(f"{srv.url}/metrics").status_code == 401
        assert httpx.get(f"{srv.url}/healthz").status_code == 200
        r = httpx.post(f"{srv.url}/v1/score", json=ROW, headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 200
        assert ScoringClient(srv.url, api_key="s3cret").score([ROW])[0].rewards == r.json()["rewards"]
        with pytest.raises(ScoringClientError, match="401.*missing bearer token"):
            ScoringClient(srv.url).score([ROW])


def test_scorer_failure_is_503_for_that_batch_and_the_next_batch_is_served():
    """`ContentScorer(fail_first=1)` stands in for a judge whose backend fails once."""
    scorer = ContentScorer(fail_first=1)
    with LiveServer(create_app(scorer, {"max_wait_ms": 1000, "max_batch_requests": 2})) as srv:
        async def go():
            async with httpx.AsyncClient(timeout=30) as c:
                return await asyncio.gather(*(c.post(f"{srv.url}/v1/score", json=dict(ROW, user_id=u)) for u in "ab"))
        first = asyncio.run(go())
        assert [r.status_code for r in first] == [503, 503]
        assert all("judge backend went away" in r.json()["detail"] for r in first)
        assert len(scorer.calls) == 1  # both were in the failed batch
        r = httpx.post(f"{srv.url}/v1/score", json=ROW)
        assert r.status_code == 200
        text = httpx.get(f"{srv.url}/metrics").text
        assert 'pgenrm_failures_total{kind="scorer"} 2.0' in text  # two requests failed
        assert 'pgenrm_failures_total{kind="scorer_batch"} 1.0' in text  # in one batch


class FailsMidBatch:
    """The real judge, made to fail once in the middle of a batch: the criteria chains of every
    group are generated, then reading the scores (one call for the whole batch) raises, as a judge
    server going away would."""

    def __init__(self, inner, fail_on_prob_call: int = 1):
        self.inner, self.fail_on = inner, fail_on_prob_call
        self.name, self.stats = inner.name, inner.stats
        self.generate_calls = self.prob_calls = 0

    def generate(self, requests):
        self.generate_calls += 1
        return self.inner.generate(requests)

    def next_token_probs(self, conversations, candidates):
        self.prob_calls += 1
        if self.prob_calls == self.fail_on:
            raise RuntimeError("judge went away mid-batch (injected)")
        return self.inner.next_token_probs(conversations, candidates)

    def close(self):
        pass


def test_judge_raising_mid_batch_is_503_and_openrlhf_retry_gets_the_right_reward(judge):
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    flaky = FailsMidBatch(judge)
    # criteria chains first, then the digit reads: the failure comes after work already done
    chains = {**JUDGE_CONFIG, "reward": {"criteria": "generated"}}
    recorder = Recording(Scorer(chains, backend=flaky))
    prompt = chatml("Suggest a weekend hobby.")
    samples = [("bea", "Pottery."), ("bea", "Try hiking with friends."), ("cal", "Learn chess.")]
    with LiveServer(create_app(recorder, {"max_wait_ms": 3000, "max_batch_requests": 3})) as srv:
        # what a caller without retries sees: 503 with the reason, for every request of that batch
        async def raw():
            async with httpx.AsyncClient(timeout=300) as http:
                return await asyncio.gather(*(
                    http.post(f"{srv.url}/get_reward", json={"query": [prompt + t + "<|im_end|>"], "prompts": [prompt],
                                                            "labels": [label(u)]}) for u, t in samples))
        first = asyncio.run(raw())
        assert [r.status_code for r in first] == [503] * 3
        assert all("judge went away mid-batch" in r.json()["detail"] for r in first)
        assert flaky.generate_calls == 1 and flaky.prob_calls == 1  # it failed after the chains, mid-scoring
        # OpenRLHF's own client on the same (recovered) service: its answers are the judge's
        executor = SingleTurnAgentExecutor(remote_rm_url=f"{srv.url}/get_reward")

        async def rollout():
            return await asyncio.gather(*(executor._fetch_rewards_via_http([prompt + t + "<|im_end|>"], [prompt],
                                                                           [label(u)])
                                          for u, t in samples))
        replies = asyncio.run(rollout())
        assert srv.app.state.service.batcher.running
        text = httpx.get(f"{srv.url}/metrics").text
    assert 'pgenrm_failures_total{kind="scorer_batch"} 1.0' in text
    assert 'pgenrm_failures_total{kind="scorer"} 3.0' in text
    assert len(recorder.results) >= 1  # the batch that failed returned nothing; later ones did
    want = {(r.user_id, c): x for batch, results in zip(recorder.calls[1:], recorder.results)
            for r, res in zip(batch, results) for c, x in zip(r.completions, res.rewards)}
    assert sorted(want) == sorted(samples)
    for (u, t), [reply] in zip(samples, replies):
        assert reply["rewards"] == [want[(u, t)]]
    # and they are the judge's rewards for these samples, judged without any failure
    direct = Scorer(chains, backend=judge).score([{"user_id": "bea", "history": HISTORY, "prompt": prompt_of(prompt),
                                                   "completions": ["Pottery.", "Try hiking with friends."]}])[0].rewards
    assert [want[("bea", "Pottery.")], want[("bea", "Try hiking with friends.")]] == pytest.approx(direct, abs=1e-4)


def test_client_that_disconnects_does_not_break_the_service():
    """`ContentScorer(delay_s=...)` stands in for a slow judge so the client can leave mid-request."""
    scorer = ContentScorer(delay_s=0.5)
    with LiveServer(create_app(scorer, {"max_wait_ms": 1})) as srv:
        body = json.dumps(ROW).encode()
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", srv.port))
            s.sendall(b"POST /v1/score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            time.sleep(0.1)
            s.close()  # gone before the answer
        # also a client that leaves while its request is still queued behind the slow batch
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{srv.url}/v1/score", json=dict(ROW, user_id="impatient"), timeout=0.2)
        r = httpx.post(f"{srv.url}/v1/score", json=dict(ROW, user_id="later"), timeout=30)
        assert r.status_code == 200
        want = content_reward(ScoreRequest.model_validate(dict(ROW, user_id="later")), "Hello.")
        assert r.json()["rewards"] == [want]
        assert srv.app.state.service.batcher.running


def test_graceful_shutdown_finishes_in_flight_requests():
    scorer = ContentScorer(delay_s=1.0)
    srv = LiveServer(create_app(scorer, {"max_wait_ms": 1})).__enter__()
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", httpx.post(f"{srv.url}/v1/score", json=ROW, timeout=30)))
    t.start()
    time.sleep(0.3)  # the request is being scored
    srv.stop()
    t.join(10)
    assert out["r"].status_code == 200 and len(out["r"].json()["rewards"]) == 1
    assert not srv.app.state.service.batcher.running


def test_client_retries_then_fails_clearly_and_async_works():
    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    client = ScoringClient(f"http://127.0.0.1:{dead}", max_retries=2, backoff_s=0.01)
    with pytest.raises(ScoringClientError, match="cannot reach the scoring service.*after 3 tries"):
        client.score([ROW])
    scorer = ContentScorer(fail_first=1)  # stands in for a judge failing once: the client retries the 503
    with LiveServer(create_app(scorer)) as srv:
        c = ScoringClient(srv.url, backoff_s=0.01)
        [res] = c.score([ROW])
        assert res.rewards == [content_reward(ScoreRequest.model_validate(ROW), "Hello.")]
        with pytest.raises(ScoringClientError, match="422.*completions"):
            c.score([dict(ROW, completions=["a"] * 65)])

        async def go():
            try:
                return await c.ascore([ROW, dict(ROW, user_id="v")])
            finally:
                await c.aclose()
        assert [len(r.rewards) for r in asyncio.run(go())] == [1, 1]


# -- protocol pieces -------------------------------------------------------------------------------
def test_completion_and_prompt_are_cut_out_of_openrlhf_queries():
    p = chatml("Hi there")
    assert completion_of(p + "Hello!<|im_end|>", p) == "Hello!"
    assert completion_of(p + "Hello!<|im_end|><|endoftext|>\n", p) == "Hello!"
    assert completion_of("<s>[INST] Hi [/INST] Yo</s>", "<s>[INST] Hi [/INST]") == " Yo"
    assert completion_of(p[10:] + "Hello!</s>", p) == "Hello!"  # left-truncated prompt
    assert prompt_of(p) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    assert prompt_of("plain question") == "plain question"
