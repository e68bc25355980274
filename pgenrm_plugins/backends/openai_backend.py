"""The `openai` backend: a judge served over the OpenAI chat-completions API (vLLM, SGLang, llama.cpp).

Why a server: the judge runs on its own GPUs (or its own box) and several trainers can share it.
What this module does about the ways such servers differ and fail:
- The requests of one call go out concurrently (at most `max_concurrency` in flight), round-robin
  over `base_urls`, from a private event loop in a daemon thread. The sync methods therefore work
  from any thread, including one whose own event loop is running.
- Some servers (llama.cpp) ignore `n > 1` and return one choice; the missing samples are asked
  for one by one with seeds `seed + i`, so a seeded request stays reproducible.
- Connect errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff, each retry on
  the next base URL; other 4xx fail at once with the server's message.
- `next_token_probs` reads the first position's `top_logprobs` (at most 20 tokens), so a candidate
  outside the top 20 gets 0.0. Rows that share a conversation up to their last message go to one
  server, the first alone, so that server's prefix cache holds the shared part for the rest.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import threading
from typing import Any, Sequence

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pgenrm_plugins.backends.base import BackendError, BackendStats, Conversation, Generation, GenerationRequest
from pgenrm_plugins.hookspecs import hookimpl


class OpenAIOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    base_urls: list[str] = Field(
        ..., min_length=1, description="servers, e.g. http://127.0.0.1:8000/v1 (a list or one comma-separated string)"
    )
    model: str = Field("default", description="the served model name (vLLM: --served-model-name)")
    api_key: str | None = Field(None, description="bearer token; default: env OPENAI_API_KEY, else none")
    timeout_s: float = Field(120, gt=0, description="per HTTP request")
    max_retries: int = Field(3, ge=0, description="retries after the first attempt")
    backoff_s: float = Field(0.5, ge=0, description="wait before retry i is backoff_s * 2**i")
    max_concurrency: int = Field(16, ge=1, description="requests in flight at once, all servers together")
    continue_final_message: bool = Field(
        False, description="the server continues a partial assistant turn (vLLM, SGLang): use the scorer's prefill"
    )

    @field_validator("base_urls", mode="before")
    @classmethod
    def _split(cls, v: Any) -> Any:
        return [u.strip() for u in v.split(",") if u.strip()] if isinstance(v, str) else v

    @field_validator("base_urls")
    @classmethod
    def _check(cls, urls: list[str]) -> list[str]:
        for u in urls:
            if not u.startswith(("http://", "https://")):
                raise ValueError(f"base URL {u!r} must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        return [u.rstrip("/") for u in urls]


class OpenAIBackend:
    name = "openai"

    def __init__(self, options: OpenAIOptions):
        self.options = options
        self.stats = BackendStats()
        key = options.api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.AsyncClient(timeout=options.timeout_s, headers=headers)
        self._rr = itertools.count()
        self._sem = asyncio.Semaphore(options.max_concurrency)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="pgenrm-openai", daemon=True)
        self._thread.start()

    # -- plumbing ---------------------------------------------------------------------------
    def _run(self, coro):
        if self._loop.is_closed():
            coro.close()
            raise BackendError("the openai backend is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _count(self, key: str, by: float = 1) -> None:
        self.stats.extra[key] = self.stats.extra.get(key, 0) + by

    async def _post(self, payload: dict, server: int | None = None) -> tuple[str, dict]:
        """POST one chat completion to base URL `server` (default: the next in turn), retries on the
        ones after it; returns (base URL that answered, response JSON)."""
        o = self.options
        start = next(self._rr) if server is None else server
        payload = {"model": o.model, **payload}
        last = ""
        for attempt in range(o.max_retries + 1):
            base = o.base_urls[(start + attempt) % len(o.base_urls)]
            url = f"{base}/chat/completions"
            self._count(f"requests@{base}")
            try:
                async with self._sem:
                    resp = await self._client.post(url, json=payload)
            except httpx.TransportError as e:  # connect errors, timeouts, dropped connections
                last = f"{url}: {type(e).__name__}: {e or 'no detail'}"
            else:
                if resp.status_code == 200:
                    try:
                        return base, resp.json()
                    except ValueError:
                        raise BackendError(f"{url} answered with non-JSON: {resp.text[:300]!r}") from None
                error = f"HTTP {resp.status_code}: {_server_message(resp)}"
                if resp.status_code != 429 and resp.status_code < 500:
                    raise BackendError(f"{url} rejected the request: {error}")
                last = f"{url}: {error}"
            if attempt < o.max_retries:
                self._count("retries")
                await asyncio.sleep(o.backoff_s * 2**attempt)
        tried = sorted({o.base_urls[(start + a) % len(o.base_urls)] for a in range(o.max_retries + 1)})
        raise BackendError(f"gave up after {o.max_retries + 1} attempts on {', '.join(tried)}; last error: {last}")

    def _usage(self, body: dict) -> int | None:
        usage = body.get("usage") or {}
        self.stats.prompt_tokens += int(usage.get("prompt_tokens") or 0)
        return usage.get("completion_tokens")

    # -- the contract -----------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        self.stats.generate_calls += 1
        results = self._run(_gather(self._generate_one(r) for r in requests))
        self.stats.generated_tokens += sum(g.tokens for gens in results for g in gens)
        return results

    async def _generate_one(self, r: GenerationRequest) -> list[Generation]:
        prefill = r.prefill if self.options.continue_final_message else ""

        def payload(n: int, k: int) -> dict:
            messages = [*r.messages, {"role": "assistant", "content": prefill}] if prefill else r.messages
            p = {"messages": messages, "n": n, "max_tokens": r.max_new_tokens,
                 "temperature": r.temperature, "top_p": r.top_p}
            if prefill:  # vLLM's and SGLang's extension of the chat API
                p.update(continue_final_message=True, add_generation_prompt=False)
            if r.seed is not None:
                p["seed"] = r.seed + k
            if r.stop:
                p["stop"] = list(r.stop)
            return p

        _, body = await self._post(payload(r.n, 0))
        gens = self._generations(body, prefill)
        while len(gens) < r.n:  # the server ignored n: ask for the rest one at a time, seeds seed+i
            self._count("n_ignored_requests", r.n - len(gens))
            more = await _gather(self._post(payload(1, k)) for k in range(len(gens), r.n))
            got = [g for _, b in more for g in self._generations(b, prefill)]
            if not got:
                raise BackendError("the server returned no choices")
            gens += got
        return gens[: r.n]

    def _generations(self, body: dict, prefill: str) -> list[Generation]:
        texts = [(c.get("message") or {}).get("content") or "" for c in body.get("choices") or []]
        return [Generation(prefill + t, k) for t, k in zip(texts, _split_tokens(self._usage(body), texts))]

    def next_token_probs(
        self, conversations: Sequence[Conversation], candidates: Sequence[str]
    ) -> list[dict[str, float]]:
        self.stats.prob_calls += 1
        return self._run(self._probs_by_prefix(conversations, candidates))

    async def _probs_by_prefix(self, conversations: Sequence[Conversation], candidates: Sequence[str]):
        """Rows that differ only in their last message (the questions about one criteria chain)
        share everything before it. Each such group goes to one server, its first row alone, so
        the shared prefix sits in that server's prefix cache (vLLM, SGLang, llama.cpp's slots)
        before the rest of the group arrives; the groups run concurrently."""
        groups: dict[str, list[int]] = {}
        for i, messages in enumerate(conversations):
            groups.setdefault(json.dumps(messages[:-1]), []).append(i)
        out: list[dict[str, float]] = [{} for _ in conversations]

        async def ask(members: list[int]) -> None:
            server = next(self._rr) % len(self.options.base_urls)
            out[members[0]] = await self._probs_one(conversations[members[0]], candidates, server)
            rest = await _gather(self._probs_one(conversations[i], candidates, server) for i in members[1:])
            for i, probs in zip(members[1:], rest):
                out[i] = probs

        await _gather(ask(members) for members in groups.values())
        return out

    async def _probs_one(self, messages: Conversation, candidates: Sequence[str], server: int) -> dict[str, float]:
        payload = {"messages": messages, "n": 1, "max_tokens": 1, "temperature": 0, "logprobs": True,
                   "top_logprobs": 20}
        base, body = await self._post(payload, server)
        self._usage(body)  # prompt tokens; the one scored token is not a generation
        choices = body.get("choices") or [{}]
        content = (choices[0].get("logprobs") or {}).get("content") or []
        if not content or not content[0].get("top_logprobs"):
            raise NotImplementedError(f"server at {base} returned no logprobs")
        probs = dict.fromkeys(candidates, 0.0)
        for top in content[0]["top_logprobs"]:
            token = (top.get("token") or "").strip()
            if token in probs:
                probs[token] += math.exp(top["logprob"])
        return probs

    def close(self) -> None:
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _gather(coros):
    return list(await asyncio.gather(*coros))


def _server_message(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        return resp.text[:500]
    if isinstance(body, dict):
        err = body.get("error")
        body = ((err.get("message") if isinstance(err, dict) else err) or body.get("detail") or body.get("message")
                or body)
    return str(body)[:500]


def _split_tokens(total: int | None, texts: list[str]) -> list[int]:
    """Share a response's completion_tokens among its choices by text length (exact sum); without
    usage, estimate about four characters a token."""
    if total is None:
        return [max(1, round(len(t) / 4)) if t else 0 for t in texts]
    chars = sum(len(t) for t in texts)
    shares = [total * len(t) // chars if chars else total // len(texts) for t in texts] if texts else []
    if shares:
        shares[max(range(len(texts)), key=lambda i: len(texts[i]))] += total - sum(shares)
    return shares


@hookimpl
def register_backends(register):
    register(
        "openai",
        OpenAIBackend,
        options=OpenAIOptions,
        description="OpenAI-compatible chat-completions servers (vLLM, SGLang, llama.cpp), round-robin with retries",
    )
