"""Chain formats: the layout a judge was trained on and the parser of its verdicts, as plugins.

A format renders the conversation that asks a judge to compare two responses for one user, and
reads its verdict (`PairVerdict`, or a typed `ParseFailure`; the parser never raises). The config
key `chain.format` chooses one; `pgenrm plugins --kind chain_format` lists them. Built-ins,
registered through `register_chain_formats` like a third party's:

    pgenrm      this project's chain (chain/prompts.py, chain/parser.py); every reward mode
    p-genrm-8b  the released P-GenRM-8B judges' layout (chain/pgenrm_8b.py); pairwise only, so it
                scores completions against the reference (`pairwise`) or each other (`tournament`)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from pgenrm_plugins.chain import pgenrm_8b, prompts
from pgenrm_plugins.chain.parser import PairVerdict, ParseFailure, parse_chain
from pgenrm_plugins.hookspecs import hookimpl


@dataclass(frozen=True)
class ChainFormat:
    """What a format gives the scorer.

    pair_messages  (history, persona, prompt, first, second, *, max_items, max_chars, render)
                   -> the conversation asking the judge to compare `first` (shown first) with `second`
    parse_pair     the judge's reply -> PairVerdict (scores of the first and second response) or
                   ParseFailure; never raises
    analysis       the reply -> the text a prototype build embeds (the user synthesis)
    pairwise_only  the judge only compares two responses (no pointwise or group chains)
    prefill, stop  how a reply starts and where generation stops ("" / () for nothing)
    """

    name: str
    pair_messages: Callable[..., list[dict[str, str]]]
    parse_pair: Callable[[str], PairVerdict | ParseFailure]
    analysis: Callable[[str], str]
    pairwise_only: bool = False
    prefill: str = ""
    stop: tuple[str, ...] = ()


def _pgenrm_pair(history, persona, prompt, first: str, second: str, *, max_items: int = 8, max_chars: int = 1500,
                 render: prompts.HistoryRender = "full") -> list[dict[str, str]]:
    return prompts.full_chain(history, persona, prompt, [first, second], max_items=max_items, max_chars=max_chars,
                              render=render)


def _pgenrm_verdict(text: str) -> PairVerdict | ParseFailure:
    parsed = parse_chain(text, labels=("A", "B"))
    if isinstance(parsed, ParseFailure):
        return parsed
    return PairVerdict(parsed.scores["A"].total, parsed.scores["B"].total, analysis=text, rationale="",
                       repairs=parsed.repairs, criteria=parsed.criteria)


def _pgenrm_8b_pair(history, persona, prompt, first: str, second: str, *, max_items: int = pgenrm_8b.HISTORY_PAIRS,
                    max_chars: int = 1500, render: Any = "full") -> list[dict[str, str]]:
    # The released judges read whole history pairs: `reward.history_render` does not apply.
    return pgenrm_8b.pair_messages(history, persona, prompt, first, second, max_items=max_items, max_chars=max_chars)


PGENRM = ChainFormat("pgenrm", _pgenrm_pair, _pgenrm_verdict, analysis=lambda text: text,
                     prefill=prompts.CHAIN_PREFILL, stop=(prompts.CLOSE,))
PGENRM_8B = ChainFormat("p-genrm-8b", _pgenrm_8b_pair, pgenrm_8b.parse_verdict, analysis=pgenrm_8b.analysis_of,
                        pairwise_only=True)


def chain_format(name: str) -> ChainFormat:
    """The registered format `name` (the error lists the known ones)."""
    from pgenrm_plugins import plugins

    return plugins.get("chain_format", name).factory(None)


@hookimpl
def register_chain_formats(register):
    register("pgenrm", lambda options: PGENRM,
             description="this project's chain: persona, weighted criteria, scores as JSON; every reward mode")
    register("p-genrm-8b", lambda options: PGENRM_8B,
             description="the released P-GenRM-8B layout: history in the system turn, two responses, "
                         "PART 1/PART 2, <JSON_START> better_response <JSON_END>; pairwise and tournament")
