"""OpenRLHF's remote-reward protocol (`--reward.remote_url http://HOST:PORT/get_reward`).

OpenRLHF 0.11.2 (`openrlhf/utils/agent.py`, `SingleTurnAgentExecutor._fetch_rewards_via_http`)
POSTs ONE sample per request: `{"query": [prompt + response], "prompts": [prompt], "labels":
[label]}`, where `query` is the decoded prompt+response tokens *with* special tokens and `label` is
the dataset column named by `--data.label_key`. For P-GenRM the label is a JSON string:

    {"user_id": "u1", "history": [{"prompt": ..., "chosen": ..., "rejected": ...}],
     "persona": "optional", "reference": "optional (pairwise mode)", "prompt": "optional"}

`prompt` in the label (a string or a message list) replaces the chat-templated prompt OpenRLHF sends;
without it a ChatML prompt (`<|im_start|>role ... <|im_end|>`) is turned back into messages.
"""

from __future__ import annotations

import re
from typing import Any

from pgenrm_plugins.frameworks.logs import sample_logs
from pgenrm_plugins.frameworks.user_fields import (
    FieldSource,
    UserFieldError,
    UserFields,
    read_container,
    read_user_fields,
)
from pgenrm_plugins.types import ScoreRequest, ScoreResult

END_OF_TURN = ("<|im_end|>", "</s>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|end_of_text|>")
_CHATML = re.compile(r"<\|im_start\|>(system|user|assistant)\n(.*?)(?:<\|im_end\|>|$)", re.DOTALL)

class ProtocolError(ValueError):
    """A sample that cannot be turned into a ScoreRequest; the message names the field."""


def strip_end_of_turn(text: str, tokens: tuple[str, ...] = END_OF_TURN) -> str:
    changed = True
    while changed:
        changed = False
        stripped = text.rstrip()
        for tok in tokens:
            if stripped.endswith(tok):
                text, changed = stripped[: -len(tok)], True
                break
    return text


def completion_of(query: str, prompt: str, tokens: tuple[str, ...] = END_OF_TURN) -> str:
    """The response part of `query` (= prompt + response as decoded by OpenRLHF)."""
    if query.startswith(prompt):
        response = query[len(prompt):]
    else:
        # The decoded prompt can differ from the sent one (left truncation, tokenizer normalising
        # spaces): anchor on the prompt's tail.
        tail = prompt[-64:]
        at = query.rfind(tail) if tail.strip() else -1
        if at < 0:
            raise ProtocolError("field 'query': does not contain its prompt, so the response cannot be cut out")
        response = query[at + len(tail):]
    return strip_end_of_turn(response, tokens)


def prompt_of(prompt: str) -> Any:
    """A chat-templated prompt back as messages where the template is ChatML, else the text."""
    turns = [{"role": r, "content": c.strip()} for r, c in _CHATML.findall(prompt)]
    turns = [t for t in turns if t["content"] or t["role"] != "assistant"]  # the open assistant turn
    if turns:
        return turns
    return prompt.strip() or prompt


def label_source(index: int) -> FieldSource:
    """Where sample `index` keeps its user: the `label` column (the body's `labels.<index>`)."""
    return FieldSource(
        framework="OpenRLHF", container=f"labels.{index}", strict=True,
        fix="--data.label_key names the dataset column sent as the label; each row's label must be a JSON "
            'string {"user_id": ..., "history": [{"prompt", "chosen", "rejected"}], "persona": optional}',
    )


def parse_label(label: Any, index: int) -> UserFields:
    try:
        return read_user_fields(read_container(label, label_source(index)), label_source(index))
    except UserFieldError as exc:
        raise ProtocolError(str(exc)) from None


def to_requests(body: Any, tokens: tuple[str, ...] = END_OF_TURN) -> list[ScoreRequest]:
    if not isinstance(body, dict):
        raise ProtocolError('the body must be a JSON object {"query": [...], "prompts": [...], "labels": [...]}')
    queries, prompts_, labels = body.get("query"), body.get("prompts"), body.get("labels")
    for name, value in (("query", queries), ("prompts", prompts_), ("labels", labels)):
        if not isinstance(value, list):
            raise ProtocolError(f"field '{name}': required, a list (one entry per sample)")
    if not (len(queries) == len(prompts_) == len(labels)):
        raise ProtocolError(
            "fields 'query', 'prompts', 'labels' must have the same length, "
            f"got {len(queries)}, {len(prompts_)}, {len(labels)}")
    out = []
    for i, (q, p, lab) in enumerate(zip(queries, prompts_, labels)):
        if not isinstance(q, str) or not isinstance(p, str):
            raise ProtocolError(f"fields 'query.{i}' and 'prompts.{i}' must be strings")
        fields = parse_label(lab, i)
        try:
            completion = completion_of(q, p, tokens)
        except ProtocolError as exc:
            raise ProtocolError(str(exc).replace("'query'", f"'query.{i}'")) from None
        try:
            out.append(fields.request([completion], prompt=prompt_of(p)))
        except UserFieldError as exc:
            raise ProtocolError(f"sample {i}: {exc}") from None
    return out


def to_reply(results: list[ScoreResult]) -> dict:
    """OpenRLHF's reply: rewards, scores, and `extra_logs` with the same keys as the file form's."""
    rewards = [float(r.rewards[0]) for r in results]
    logs = [sample_logs(r) for r in results]
    return {"rewards": rewards, "scores": list(rewards), "extra_logs": {k: [row[k] for row in logs] for k in logs[0]}}
