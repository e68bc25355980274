"""Wire types: what goes into the scorer and what comes out.

These are the JSON shapes of `pgenrm score` (one request per line, one result per line) and of the
scoring service. They know no RL framework; adapters translate their framework's batch into them.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator


# Other names datasets use for the two sides of a conversation: PRISM-derived and Gemini-style
# data call the model's turn `model` (ShareGPT: `gpt`; others `bot`, `chatbot`) and the user `human`.
ROLE_ALIASES = {"model": "assistant", "gpt": "assistant", "bot": "assistant", "chatbot": "assistant",
                "human": "user"}


def normalise_role(role: Any) -> Any:
    """A role spelled any way the datasets spell it, as the core's `system`/`user`/`assistant`
    (case-insensitive, surrounding spaces ignored). Anything else is returned unchanged, so the
    validator still refuses it with the allowed roles in the message."""
    if not isinstance(role, str):
        return role
    key = role.strip().lower()
    if key in ("system", "user", "assistant"):
        return key
    return ROLE_ALIASES.get(key, role)


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant"]
    content: str

    @field_validator("role", mode="before")
    @classmethod
    def _role_alias(cls, v: Any) -> Any:
        return normalise_role(v)


Prompt = Union[str, list[Message]]


def as_messages(prompt: Prompt) -> list[Message]:
    """A plain-string prompt is one user turn; a message list is kept whole (multi-turn context)."""
    if isinstance(prompt, str):
        return [Message(role="user", content=prompt)]
    return [m if isinstance(m, Message) else Message.model_validate(m) for m in prompt]


class HistoryItem(BaseModel):
    """One past choice of the user: for `prompt` they preferred `chosen` over `rejected`."""

    model_config = ConfigDict(extra="forbid")

    prompt: Prompt
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)


class ScoreRequest(BaseModel):
    """Score `completions` of `prompt` for one user.

    `reference` is the response each completion is compared with in `pairwise` mode.
    """

    model_config = ConfigDict(extra="forbid")

    user_id: str | None = None
    persona: str | None = None
    history: list[HistoryItem] = Field(default_factory=list)
    prompt: Prompt
    completions: list[str] = Field(min_length=1)
    reference: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, v: Prompt) -> Prompt:
        if isinstance(v, str) and not v.strip():
            raise ValueError("prompt is empty")
        if isinstance(v, list) and not v:
            raise ValueError("prompt has no messages")
        return v


class ScoreResult(BaseModel):
    """One reward per completion, each in [0, 1], plus the components that produced it."""

    rewards: list[float]
    components: dict[str, Any]
