"""The `openai` backend against a real llama.cpp server (SmolLM2-135M GGUF), plus failure paths:
closed ports, a server that never answers, HTTP 4xx/429, and a server without logprobs."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time

import httpx
import pytest
from llama_server import LlamaServer, free_port, llama_server  # noqa: F401  (fixture)
from pydantic import ValidationError

from pgenrm_plugins.backends.base import Backend, BackendError, GenerationRequest
from pgenrm_plugins.backends.openai_backend import OpenAIBackend, OpenAIOptions, register_backends

pytestmark = pytest.mark.server

POEM = [{"role": "user", "content": "Write a short poem about the sea."}]
TRIPOD = [{"role": "user", "content": "Answer with one digit from 1 to 9: how many legs does a tripod have?"}]
DIGITS = [str(d) for d in range(1, 10)]


def make(*urls: str, **kw) -> OpenAIBackend:
    return OpenAIBackend(OpenAIOptions(base_urls=list(urls), **kw))


@pytest.fixture(scope="module")
def backend(llama_server):  # noqa: F811
    b = make(llama_server.base_url)
    yield b
    b.close()


# -- options ---------------------------------------------------------------------------------
def test_options_validation_messages():
    with pytest.raises(ValidationError) as e:
        OpenAIOptions()
    assert "base_urls" in str(e.value) and "Field required" in str(e.value)
    with pytest.raises(ValidationError, match="at least 1 item"):
        OpenAIOptions(base_urls=[])
    with pytest.raises(ValidationError, match="must start with http:// or https://"):
        OpenAIOptions(base_urls="127.0.0.1:8000/v1")
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        OpenAIOptions(base_urls=["http://a/v1"], modle="x")
    o = OpenAIOptions(base_urls=" http://a:1/v1/ , http://b:2/v1")
    assert o.base_urls == ["http://a:1/v1", "http://b:2/v1"] and o.model == "default"


def test_registered_and_api_key(monkeypatch):
    seen = {}
    register_backends(lambda name, factory, options=None, description="": seen.update({name: (factory, options)}))
    assert seen["openai"] == (OpenAIBackend, OpenAIOptions)
    monkeypatch.setenv("OPENAI_API_KEY", "from-env")
    b = make("http://127.0.0.1:9/v1")
    c = make("http://127.0.0.1:9/v1", api_key="explicit")
    monkeypatch.delenv("OPENAI_API_KEY")
    d = make("http://127.0.0.1:9/v1")
    try:
        assert isinstance(b, Backend) and b.name == "openai"
        assert b._client.headers["authorization"] == "Bearer from-env"
        assert c._client.headers["authorization"] == "Bearer explicit"
        assert "authorization" not in d._client.headers
    finally:
        for x in (b, c, d):
            x.close()


# -- against llama.cpp ---------------------------------------------------------------------------
def test_generate_n2_counts_tokens(backend):
    before = backend.stats.generated_tokens
    reqs = [GenerationRequest(POEM, n=2, max_new_tokens=8, temperature=0.9, seed=11),
            GenerationRequest(TRIPOD, n=1, max_new_tokens=4, temperature=0)]
    out = backend.generate(reqs)
    assert [len(g) for g in out] == [2, 1]
    for g in out[0] + out[1]:
        assert g.text.strip() and 0 < g.tokens <= 8
    assert backend.stats.generated_tokens - before == sum(g.tokens for gens in out for g in gens)
    assert backend.stats.prompt_tokens > 0 and backend.stats.generate_calls >= 1
    # llama.cpp returns one choice whatever n is; the second sample came from a follow-up (seed+1)
    assert backend.stats.extra["n_ignored_requests"] >= 1
    assert out[0][0].text != out[0][1].text


def test_seed_reproducible(backend):
    def sample(seed):
        return backend.generate([GenerationRequest(POEM, max_new_tokens=8, temperature=0.9, seed=seed)])[0][0].text

    assert sample(5) == sample(5)
    assert len({sample(s) for s in (5, 6, 7)}) > 1
    # n=2 with seed s equals the two single samples with seeds s and s+1
    pair = backend.generate([GenerationRequest(POEM, n=2, max_new_tokens=8, temperature=0.9, seed=5)])[0]
    assert [g.text for g in pair] == [sample(5), sample(6)]


def test_next_token_probs(backend):
    probs = backend.next_token_probs([TRIPOD, POEM], DIGITS)
    assert len(probs) == 2 and all(list(p) == DIGITS for p in probs)
    for p in probs:
        assert all(0.0 <= v <= 1.0 for v in p.values())
        assert sum(p.values()) <= 1 + 1e-6
    assert max(probs[0].values()) > 0.05  # SmolLM2-135M puts real mass on a digit here
    assert backend.stats.prob_calls >= 1


def test_runs_inside_a_running_event_loop(backend):
    async def main():
        return backend.generate([GenerationRequest(TRIPOD, max_new_tokens=2, temperature=0)])

    assert asyncio.run(main())[0][0].tokens > 0


def test_round_robin_over_two_servers(llama_server):  # noqa: F811
    with LlamaServer.start() as second:
        b = make(llama_server.base_url, second.base_url)
        try:
            out = b.generate([GenerationRequest(TRIPOD, max_new_tokens=2, temperature=0) for _ in range(4)])
            assert len(out) == 4 and all(g[0].text for g in out)
            assert b.stats.extra[f"requests@{llama_server.base_url}"] == 2
            assert b.stats.extra[f"requests@{second.base_url}"] == 2
            assert "retries" not in b.stats.extra
            # Probability rows that share a conversation up to their last message stay on one server.
            rows = [[*conv, {"role": "user", "content": f"Rate it: {k}"}] for conv in (TRIPOD, POEM) for k in "abc"]
            b.next_token_probs(rows, DIGITS)
            assert b.stats.extra[f"requests@{llama_server.base_url}"] == 5
            assert b.stats.extra[f"requests@{second.base_url}"] == 5
        finally:
            b.close()


def test_fails_over_from_a_closed_port(llama_server):  # noqa: F811
    dead = f"http://127.0.0.1:{free_port()}/v1"
    b = make(dead, llama_server.base_url, backoff_s=0.01, timeout_s=5)
    try:
        out = b.generate([GenerationRequest(TRIPOD, max_new_tokens=2, temperature=0) for _ in range(4)])
        assert all(g[0].text for g in out)
        assert b.stats.extra["retries"] >= 2 and b.stats.extra[f"requests@{dead}"] >= 2
    finally:
        b.close()


def test_http_4xx_fails_at_once_with_the_server_message(llama_server):  # noqa: F811
    wrong = llama_server.base_url.removesuffix("/v1")  # POST /chat/completions -> 404
    b = make(wrong, backoff_s=0.01)
    try:
        with pytest.raises(BackendError, match=r"rejected the request: HTTP 404: Not Found") as e:
            b.generate([GenerationRequest(TRIPOD, max_new_tokens=2)])
        assert wrong in str(e.value) and "retries" not in b.stats.extra
    finally:
        b.close()


# -- unreachable servers (no llama.cpp needed) ------------------------------------------------------
def test_closed_port_gives_up_after_max_retries():
    dead = f"http://127.0.0.1:{free_port()}/v1"
    b = make(dead, max_retries=2, backoff_s=0.01, timeout_s=1)
    try:
        t = time.monotonic()
        with pytest.raises(BackendError) as e:
            b.generate([GenerationRequest(TRIPOD, max_new_tokens=2)])
        assert time.monotonic() - t < 3
        msg = str(e.value)
        assert "gave up after 3 attempts" in msg and dead in msg and "ConnectError" in msg
        assert b.stats.extra["retries"] == 2
    finally:
        b.close()


def test_silent_server_times_out():
    with socket.socket() as s:  # accepts connections (kernel backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
        b = make(url, max_retries=1, backoff_s=0.01, timeout_s=0.3)
        try:
            t = time.monotonic()
            with pytest.raises(BackendError, match="ReadTimeout") as e:
                b.next_token_probs([TRIPOD], DIGITS)
            assert time.monotonic() - t < 3 and url in str(e.value)
        finally:
            b.close()


# -- protocol corner cases, with a mock transport ----------------------------------------------------
def mocked(handler, **kw) -> OpenAIBackend:
    b = make("http://mock/v1", backoff_s=0.01, **kw)
    b._client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    return b


def test_429_is_retried_and_server_that_honours_n_is_asked_once():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) == 1:
            return httpx.Response(429, json={"error": {"message": "slow down"}})
        choices = [{"message": {"content": "ab" * (i + 1)}} for i in range(3)]
        return httpx.Response(200, json={"choices": choices, "usage": {"prompt_tokens": 5, "completion_tokens": 9}})

    b = mocked(handler)
    try:
        out = b.generate([GenerationRequest(POEM, n=3)])[0]
        assert len(calls) == 2 and [g.text for g in out] == ["ab", "abab", "ababab"]
        assert sum(g.tokens for g in out) == 9 == b.stats.generated_tokens and b.stats.prompt_tokens == 5
        assert b.stats.extra["retries"] == 1 and "n_ignored_requests" not in b.stats.extra
    finally:
        b.close()


def test_a_shared_prefix_is_asked_once_before_its_continuations():
    """The order on the wire (a server's prefix cache cannot run here: what it is given is tested)."""
    done: list[str] = []
    seen: dict[str, list[str]] = {}

    async def handler(request: httpx.Request) -> httpx.Response:
        last = json.loads(request.content)["messages"][-1]["content"]
        seen[last] = list(done)
        await asyncio.sleep(0.02)
        done.append(last)
        top = [{"token": "5", "logprob": 0.0}]
        return httpx.Response(200, json={"choices": [{"message": {"content": "5"},
                                                      "logprobs": {"content": [{"token": "5", "top_logprobs": top}]}}]})

    b = mocked(handler)
    try:
        rows = [[*conv, {"role": "user", "content": f"{name}{k}"}] for name, conv in (("t", TRIPOD), ("p", POEM))
                for k in range(3)]
        probs = b.next_token_probs(rows, DIGITS)
        assert [p["5"] for p in probs] == [1.0] * 6
        for name in "tp":
            assert f"{name}0" not in seen[f"{name}0"]
            assert all(f"{name}0" in seen[f"{name}{k}"] for k in (1, 2))  # the first row went alone
        assert seen["p0"] == [] and seen["t0"] == []  # the two groups did not wait for each other
    finally:
        b.close()


def test_server_without_logprobs_raises_not_implemented():
    def handler(request):
        return httpx.Response(200, json={"choices": [{"message": {"content": "3"}, "logprobs": None}]})

    b = mocked(handler)
    try:
        with pytest.raises(NotImplementedError, match="server at http://mock/v1 returned no logprobs"):
            b.next_token_probs([TRIPOD], DIGITS)
    finally:
        b.close()


def test_probabilities_of_tokens_that_strip_alike_add_up():
    top = [{"token": " 3", "logprob": math.log(0.5)}, {"token": "3", "logprob": math.log(0.2)},
           {"token": "A", "logprob": math.log(0.1)}, {"token": "7\n", "logprob": math.log(0.05)}]

    def handler(request):
        return httpx.Response(200, json={"choices": [{"message": {"content": " 3"},
                                                      "logprobs": {"content": [{"token": " 3",
                                                                                "top_logprobs": top}]}}]})

    b = mocked(handler)
    try:
        [p] = b.next_token_probs([TRIPOD], DIGITS)
        assert p["3"] == pytest.approx(0.7) and p["7"] == pytest.approx(0.05) and p["1"] == 0.0
    finally:
        b.close()


def test_closed_backend_refuses_work():
    b = make("http://127.0.0.1:9/v1")
    b.close()
    b.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        b.generate([GenerationRequest(POEM)])


# -- the scorer over HTTP -----------------------------------------------------------------------
def test_scorer_over_a_real_server(llama_server):  # noqa: F811
    """The whole group-mode path over HTTP: chains generated by the server, scores read from its
    logprobs. The server cannot prefill, so the chain is the model's reply as it comes."""
    from pgenrm_plugins.scoring import Scorer

    config = {"backend": {"name": "openai", "options": {"base_urls": [llama_server.base_url]}},
              "sampling": {"chains": 1, "max_new_tokens": 32}}
    scorer = Scorer(config)
    try:
        [result] = scorer.score([{"user_id": "u", "prompt": "Name a fruit.", "completions": ["Apple.", "A chair."],
                                  "history": [{"prompt": "Name a colour.", "chosen": "Red.",
                                               "rejected": "Colours are..."}]}])
    finally:
        scorer.close()
    assert result.components.reader == "logprob"
    assert len(result.rewards) == 2 and all(0.0 <= r <= 1.0 and math.isfinite(r) for r in result.rewards)
    assert result.components.chains_scored == [1, 1]
