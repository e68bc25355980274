"""Greedy answers of a policy, generated the way TRL generates, and what makes an answer degenerate.

`greedy_answers` puts the model in eval mode with gradient checkpointing off and the KV cache on for
the duration of the call, and restores what it found afterwards. A policy left in train mode with
gradient checkpointing on (TRL's default inside `GRPOTrainer`) generates without a cache, and
SmolLM2-135M then writes `To------...`: that is the probe's artefact, not the policy's answer.
TRL itself switches checkpointing off (and so generates with the cache) while it samples completions,
so training is not affected.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass

# Reasons an answer is degenerate, in the order they are checked.
DEGENERATE_REASONS = ("empty", "looping", "cut off")


@dataclass(frozen=True)
class Answer:
    """One greedy answer: its text, how many tokens it took, and whether it ended on its own (EOS)."""

    text: str
    tokens: int
    finished: bool

    @property
    def degenerate(self) -> str | None:
        return degenerate_reason(self.text, self.finished)


def degenerate_reason(text: str, finished: bool = True) -> str | None:
    """`empty`, `looping`, `cut off` (did not end within its token budget), or None for a sound answer."""
    words = text.split()
    if not words:
        return "empty"
    if looping(text):
        return "looping"
    if not finished:
        return "cut off"
    return None


def looping(text: str) -> bool:
    """A run of one character (`To-------`), or text that is mostly the same 4-word phrases again."""
    if re.search(r"(\S)\1{11,}", text):
        return True
    words = text.split()
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    return len(grams) >= 12 and len(set(grams)) / len(grams) < 0.5


@contextmanager
def generation_mode(model):
    """Eval mode, no gradient checkpointing, KV cache on; the model's previous state afterwards."""
    was_training = model.training
    checkpointing = bool(getattr(model, "is_gradient_checkpointing", False))
    config = getattr(model, "config", None)
    use_cache = getattr(config, "use_cache", None)
    if checkpointing:
        model.gradient_checkpointing_disable()
    if config is not None:
        config.use_cache = True
    model.eval()
    try:
        yield model
    finally:
        if config is not None and use_cache is not None:
            config.use_cache = use_cache
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train(was_training)


def greedy_answers(model, tokenizer, prompts, max_new_tokens: int, batch_size: int = 8) -> list[Answer]:
    """Greedy answers to chat `prompts` (each a list of {role, content}), in eval mode with the cache.

    Batches are left-padded; each answer is cut at its first end-of-turn token."""
    import torch

    stop = {t for t in (tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")) if t is not None}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    answers: list[Answer] = []
    with generation_mode(model), torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            rows = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)
                    ["input_ids"] for p in prompts[start:start + batch_size]]
            width = max(len(r) for r in rows)  # left padding, as TRL pads its prompts
            ids = torch.tensor([[pad] * (width - len(r)) + list(r) for r in rows], device=model.device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=model.device)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                                 eos_token_id=sorted(stop), pad_token_id=pad, use_cache=True)
            for row in out[:, width:].tolist():
                end = next((i for i, t in enumerate(row) if t in stop), None)
                kept = row if end is None else row[:end]
                answers.append(Answer(tokenizer.decode(kept, skip_special_tokens=True).strip(), len(kept),
                                      end is not None))
    return answers


def greedy_answer(model, tokenizer, prompt, max_new_tokens: int) -> str:
    """One prompt's greedy answer text (see `greedy_answers`)."""
    return greedy_answers(model, tokenizer, [prompt], max_new_tokens)[0].text
