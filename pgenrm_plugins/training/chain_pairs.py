"""What the two chain stages (`psi_stage`, `cre_stage`) share: their prompts, how a chain is read,
the backends they ask, and what the judge they write reads.

Pairs are drawn with `items.ItemSource` (targets=1, no degenerate copies): a train user, a view of
`history_pairs` of their pairs, and one *other* pair of theirs, so no target pair is ever in its own
history. Which response is shown as A is a seeded coin flip per pair, recorded with the pair.

The prompt is `prompts.full_chain` (history view, current conversation, responses A and B), the
pointwise/pairwise scoring conversation. A judge's reply starts with `prompts.CHAIN_PREFILL` at
scoring time, so both stages train on replies that start with it too: the teacher is asked with
that prefill, and CRE's prompts are the conversation rendered by the judge's chat template with the
prefill appended (`prefill=False` gives TRL the plain conversation instead).

Both stages write a judge folder (a peft LoRA adapter and `pgenrm_judge.json`, protocol `chain-v1`,
`criteria: generated`) that the transformers backend loads by path.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgenrm_plugins.backends.judge_folder import BASE_MODEL
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import ParsedChain, ParseFailure, parse_chain
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.scoring.modes import content_seed
from pgenrm_plugins.training.items import ItemSettings, ItemSource
from pgenrm_plugins.types import HistoryItem, Prompt

PROTOCOL = "chain-v1"
LABELS = ("A", "B")
# The teacher when none is configured: the untrained embedded base, i.e. rejection sampling from
# the judge itself. On CPU it keeps (almost) nothing: see docs/training.md.
DEFAULT_TEACHER: dict[str, Any] = {"backend": {"name": "transformers", "options": {"model": BASE_MODEL}}}


@dataclass(frozen=True)
class ChainPair:
    """One training prompt: a history view of one user and one of their other pairs, shown as A/B."""

    index: int
    user_id: str
    history: tuple[HistoryItem, ...]
    prompt: Prompt
    responses: tuple[str, str]  # shown as Response A, Response B
    chosen: str  # "A" or "B": the label of the response the user chose
    flipped: bool  # True: the chosen response is shown as B

    @property
    def other(self) -> str:
        return "B" if self.chosen == "A" else "A"

    def messages(self, max_chars: int) -> list[dict]:
        return prompts.full_chain(list(self.history), None, self.prompt, list(self.responses),
                                  max_items=len(self.history), max_chars=max_chars)


def draw_pairs(data, count: int, *, history_pairs: int, seed: int) -> list[ChainPair]:
    """`count` pairs from the train rows of `data` (a path or `BenchData`): a pure function of the
    arguments, so a resumed run draws the same pairs in the same order."""
    bench = load_bench(data, strict=True) if isinstance(data, (str, Path)) else data
    source = ItemSource(bench, ItemSettings(history_pairs=history_pairs, targets=1, degenerate_rate=0.0, seed=seed))
    pairs = []
    for i in range(count):
        item = source.item(i)
        (win, lose), = item.pairs[:1]
        chosen, rejected = item.candidates[win], item.candidates[lose]
        flipped = random.Random(content_seed(seed, "a/b", i)).random() < 0.5
        responses = (rejected.response, chosen.response) if flipped else (chosen.response, rejected.response)
        pairs.append(ChainPair(i, item.user_id, tuple(item.history), chosen.prompt, responses,
                               "B" if flipped else "A", flipped))
    return pairs


# --- reading a chain --------------------------------------------------------------------------------


def verdict(text: str, chosen: str) -> tuple[str, ParsedChain | ParseFailure]:
    """("right" | "tie" | "wrong" | "unparsed", the parse) of a chain about a pair whose chosen
    response is labelled `chosen`. Right means a strictly higher total for the chosen side."""
    parsed = parse_chain(text, labels=LABELS)
    if isinstance(parsed, ParseFailure):
        return "unparsed", parsed
    mine = parsed.scores[chosen].total
    theirs = parsed.scores["B" if chosen == "A" else "A"].total
    return ("right" if mine > theirs else "tie" if mine == theirs else "wrong"), parsed


def rounded(x: float, digits: int) -> float | int:
    x = round(float(x), digits)
    return int(x) if x == int(x) else x


def canonical_chain(parsed: ParsedChain) -> str:
    """The chain as the parser read it, written back in the prompt's exact format: weights summing
    to 100, totals recomputed from the scores. Same content as the teacher's chain, clean syntax."""
    obj = {
        "preferences": parsed.preferences,
        "criteria": [{"name": c.name, "weight": rounded(c.weight, 1)} for c in parsed.criteria],
        "scores": {label: {"per_criterion": {k: rounded(v, 2) for k, v in s.per_criterion.items()},
                           "total": rounded(s.total, 2)} for label, s in parsed.scores.items()},
    }
    return f"{prompts.OPEN}\n{json.dumps(obj, ensure_ascii=False)}\n{prompts.CLOSE}"


def raw_chain(text: str) -> str:
    """The teacher's own text, cut just after its closing marker."""
    end = text.find(prompts.CLOSE)
    return text if end < 0 else text[: end + len(prompts.CLOSE)]


# --- the backends asked (teacher, process judge) ---------------------------------------------------


def backend_config(config_source):
    """The `backend` section of a pgenrm config (path, dict, or None for the embedded base),
    validated; raises ConfigError (a ValueError) naming the bad key."""
    from pgenrm_plugins.config import load_config

    return load_config(str(config_source) if isinstance(config_source, Path) else
                       (config_source if config_source is not None else DEFAULT_TEACHER)).backend


def teacher_backend(config_source):
    """(open backend, its description) from a pgenrm config (path, dict, or None: the embedded base)."""
    backend = backend_config(config_source)
    return backend.build("backend"), backend.model_dump(mode="json")


def chain_scoring(history_pairs: int, max_chars: int, max_new_tokens: int) -> dict[str, Any]:
    # What the judge was trained to read and write; `with_judge_defaults` fills these in where a
    # config leaves them unset.
    return {"reward": {"criteria": "generated", "max_history": history_pairs, "max_chars": max_chars},
            "sampling": {"max_new_tokens": max(8, max_new_tokens)}}


__all__ = ["PROTOCOL", "LABELS", "DEFAULT_TEACHER", "ChainPair", "draw_pairs", "verdict", "canonical_chain",
           "raw_chain", "rounded", "backend_config", "teacher_backend", "chain_scoring"]
