"""The generation-backend contract every backend implements (built-in or third-party).

A backend turns chat conversations into text. Two calls:

- `generate`: sample `n` continuations per request (the evaluation chains).
- `next_token_probs`: the probability of each candidate string as the *first token* of the
  assistant's reply (reading a score as an expected value instead of parsing a sampled digit).
  Backends that cannot expose log-probabilities raise `NotImplementedError`; the scorer then
  falls back to parsing generated text.

Backends see conversations, never users, rewards or RL frameworks. Requests that share a prefix
(all completions of one group after the same persona and criteria) are handed over in one call so
the backend can reuse that prefix: the transformers backend computes its KV cache once, vLLM and
llama.cpp servers do it with their own prefix caches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

Conversation = list[dict[str, str]]  # [{"role": ..., "content": ...}, ...]


class BackendError(RuntimeError):
    """A backend could not produce an answer (server unreachable, kept failing); the message says
    where and why."""


@dataclass(frozen=True)
class GenerationRequest:
    messages: Conversation
    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 0.9
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Text the reply starts with. Backends that can continue a partial assistant turn generate
    # after it and return it as part of `text` (it keeps small judges on the JSON format);
    # backends that cannot ignore it and return the model's reply as it comes.
    prefill: str = ""


@dataclass(frozen=True)
class Generation:
    text: str  # the whole reply, prefill included where the backend used it
    tokens: int  # generated tokens, for the cost accounting every benchmark reports


@dataclass
class BackendStats:
    generated_tokens: int = 0
    prompt_tokens: int = 0
    generate_calls: int = 0
    prob_calls: int = 0
    extra: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    name: str
    stats: BackendStats

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        """One list of `request.n` generations per request, in order."""
        ...

    def next_token_probs(
        self, conversations: Sequence[Conversation], candidates: Sequence[str]
    ) -> list[dict[str, float]]:
        """For each conversation, P(first reply token == c) for each candidate c (not renormalised)."""
        ...

    def close(self) -> None: ...
