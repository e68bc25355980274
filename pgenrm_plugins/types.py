"""Wire types: what goes into the scorer and what comes out.

These are the JSON shapes of `pgenrm score` (one request per line, one result per line) and of the
scoring service. They know no RL framework; adapters translate their framework's batch into them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
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


# How a per-completion field of the components is cut when a merged request's result is split:
# "values" holds one entry per completion, "indices" holds completion indices.
def _per_completion(kind: str, default: Any = None, **kwargs) -> Any:
    return Field(default, json_schema_extra={"per_completion": kind}, **kwargs)


class NeighbourUse(BaseModel):
    """One neighbour whose history scored the completions under prototype scaling."""

    model_config = ConfigDict(extra="forbid")

    user_id: str
    similarity: float
    rewards: list[float | None] = _per_completion("values", [])


class Components(BaseModel):
    """What produced the rewards of one result. Fields made with `_per_completion` hold one entry per
    completion (or completion indices); `split_result` cuts exactly those, nested models included.

    `self` (attribute `own`) is the user's own side; under prototype scaling `neighbours` is the
    neighbours' mean and `self` may be None (a cold-start user is scored by neighbours alone).
    """

    model_config = ConfigDict(extra="forbid", validate_by_name=True, validate_by_alias=True, serialize_by_alias=True)

    mode: str = "group"
    reader: str = "parse"  # what read the scores in this call: logprob (digit probabilities) or parse
    criteria_mode: str = "generated"
    chain_format: str = "pgenrm"
    own: list[float | None] | None = _per_completion("values", alias="self")
    neighbours: list[float | None] | None = _per_completion("values")
    prototype_id: int | None = None
    prototype_similarity: float | None = None
    neighbours_used: list[NeighbourUse] = Field(default_factory=list)
    placement: str | None = None  # stored | placed | cold_start
    weights: dict[str, float] | None = None
    chains_sampled: int = 0
    chains_scored: list[int] = _per_completion("values", [])
    parse_failures: int = 0  # unreadable chains or replies, and requests with nothing to compare
    failure_kinds: dict[str, int] = Field(default_factory=dict)
    criteria_fallbacks: int = 0
    failed_completions: list[int] = _per_completion("indices", [])  # got reward.neutral_value
    ties: int = 0
    comparisons: int = 0  # pairwise, tournament: pairs judged (each order counted)
    position_swaps: int = 0  # comparisons that showed the scored completion second
    generated_tokens: int = 0
    syntheses_reused: int = 0  # criteria synthesis: syntheses read from the cache instead of written
    criteria: list[tuple[str, float]] | None = None  # what scored, weighed (a synthesis: signed, by the user's choices)
    evaluation: str | None = None
    merged_completions: int | None = None  # set when the result was cut out of a merged request's
    served_by: dict[str, Any] | None = None  # the scoring service: which replica and store version scored it


class ScoreResult(BaseModel):
    """One reward per completion, each in [0, 1], plus the components that produced it."""

    rewards: list[float]
    components: Components = Field(default_factory=Components)


def _cut(model: BaseModel, start: int, stop: int) -> BaseModel:
    update = {}
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        kind = (info.json_schema_extra or {}).get("per_completion")
        if value is None:
            continue
        if kind == "values":
            update[name] = value[start:stop]
        elif kind == "indices":
            update[name] = [i - start for i in value if start <= i < stop]
        elif isinstance(value, list) and value and isinstance(value[0], BaseModel):
            update[name] = [_cut(v, start, stop) for v in value]
    return model.model_copy(update=update)


def split_result(result: ScoreResult, start: int, stop: int) -> ScoreResult:
    """The part of a merged request's result that belongs to its completions [start, stop)."""
    # a result already cut out of a larger merge (the service's, then a worker's) keeps the larger count
    merged = max(result.components.merged_completions or 0, len(result.rewards))
    components = _cut(result.components, start, stop).model_copy(update={"merged_completions": merged})
    return ScoreResult(rewards=result.rewards[start:stop], components=components)


def group_key(request: ScoreRequest) -> str:
    """Requests with the same key differ only in their completions: one (user, prompt) group, which
    may be scored as one request (persona and criteria derived once)."""
    return json.dumps(request.model_dump(mode="json", exclude={"completions"}), sort_keys=True)


def merge_groups(requests: Sequence[ScoreRequest]) -> tuple[list[ScoreRequest], list[tuple[int, int, int]]]:
    """Requests of one group merged into one holding all their completions, in order of first
    appearance; and for each given request (merged index, first completion, end completion)."""
    merged: list[ScoreRequest] = []
    completions: list[list[str]] = []
    index: dict[str, int] = {}
    spans = []
    for request in requests:
        key = group_key(request)
        if key not in index:
            index[key] = len(merged)
            merged.append(request)
            completions.append([])
        m = index[key]
        start = len(completions[m])
        completions[m].extend(request.completions)
        spans.append((m, start, len(completions[m])))
    return [r.model_copy(update={"completions": cs}) for r, cs in zip(merged, completions)], spans
