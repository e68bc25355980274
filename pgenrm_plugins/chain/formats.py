"""Chain formats: every prompt a judge was trained on and every parser of its replies, as plugins.

A format is the one place the reward modes (scoring/modes.py) get their conversations and their
parsers from: the chains that compare two responses (`pairwise`, `tournament`), the chain that
scores one (`pointwise`), the criteria chain and its follow-up questions (`group`), the direct
question (`group`, `reward.criteria: none`) and the per-user synthesis with its criterion checks
(`group`, `reward.criteria: synthesis`). Parsers never raise: they return a verdict or a typed
`ParseFailure`. The config key `chain.format` chooses one; `pgenrm plugins --kind chain_format`
lists them. Built-ins, registered through `register_chain_formats` like a third party's:

    pgenrm      this project's chain (chain/prompts.py, chain/synthesis.py, chain/parser.py); every
                reward mode
    p-genrm-8b  the released P-GenRM-8B judges' layout (chain/pgenrm_8b.py); pairwise only, so it
                scores completions against the reference (`pairwise`) or each other (`tournament`)

A format that leaves a mode's fields None does not support that mode: a config asking for it is
refused when the scorer is built, with the config key to change (`ChainFormat.require`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from pgenrm_plugins.chain import pgenrm_8b, prompts
from pgenrm_plugins.chain import synthesis as synthesis_chain
from pgenrm_plugins.chain.parser import (
    Criterion,
    PairVerdict,
    ParseFailure,
    PointVerdict,
    parse_chain,
    parse_criteria,
)
from pgenrm_plugins.hookspecs import hookimpl

Messages = list[dict[str, str]]

# The criterion a group-mode chain whose criteria cannot be read is scored by (logprob reader): the
# chain text still sits in the judge's context, so its persona keeps steering the score.
FALLBACK_CRITERION = Criterion("fit to this user's preferences", 100.0)

# Which fields each mode needs: (config key and value naming it, fields)
_POINTWISE = ("point_messages", "parse_point")
_GROUP = ("criteria_messages", "parse_criteria")
_PROBABILITIES = ("criterion_question",)
_PARSED = ("score_followup", "parse_scores")
_DIRECT = ("direct_question",)
_SYNTHESIS = ("synthesis_messages", "parse_synthesis", "criterion_messages")


@dataclass(frozen=True)
class ChainFormat:
    """What a format gives the scorer: the contract a third-party format implements.

    Every format compares two responses (`reward.mode: pairwise` and `tournament`):
    pair_messages       (history, persona, prompt, first, second, *, max_items, max_chars, render)
                        -> the conversation asking the judge to compare `first` (shown first) with
                        `second`
    parse_pair          the judge's reply -> PairVerdict (scores of the first and second response,
                        on any positive scale) or ParseFailure
    analysis            a reply -> the text a prototype build embeds (the user synthesis)
    prefill, stop       how a chain reply starts and where generation stops ("" / () for nothing);
                        used by the pair, point and criteria chains and the score follow-ups

    The other modes are optional; a format leaves their fields None when it has no such chain.
    `reward.mode: pointwise`, one chain per completion:
    point_messages      (history, persona, prompt, response, *, max_items, max_chars, render)
                        -> the conversation asking the judge to score `response`
    parse_point         the reply -> PointVerdict (a score on 1-10 and the criteria) or ParseFailure

    `reward.mode: group` with `reward.criteria: generated`, one criteria chain per (user, prompt):
    criteria_messages   (history, persona, prompt, *, max_items, max_chars, render) -> the
                        conversation asking for the user's weighted criteria for this prompt
    parse_criteria      the reply -> something with `criteria` (tuple of Criterion) or ParseFailure
    criterion_question  (conversation, chain reply, response, criterion name, *, max_chars) -> the
                        conversation answered by one digit 1-9, read by probability (`reward.reader:
                        logprob`, and `auto` where the backend gives probabilities)
    score_followup      (conversation, chain reply, response, *, max_chars) -> the conversation whose
                        reply scores `response` against the chain's criteria (`reward.reader: parse`,
                        and `auto` where the backend gives no probabilities)
    parse_scores        (reply, criteria) -> PointVerdict or ParseFailure, for score_followup
    scores_prefill      how a score follow-up's reply starts
    criteria_fallback   the criterion a chain with unreadable criteria is scored by (logprob reader)

    `reward.mode: group` with `reward.criteria: none`, no chain:
    direct_question     (history, persona, prompt, response, *, max_items, max_chars, render,
                        versus=None) -> the conversation answered by one digit 1-9 (with `versus`:
                        9 = `response` much better than `versus`, `reward.compare`)

    `reward.mode: group` with `reward.criteria: synthesis`, once per user and history version:
    synthesis_messages  (history, persona, *, max_items, max_chars, render) -> the conversation
                        asking for the user's persona and weighted criteria (no prefill, no stop)
    parse_synthesis     the reply -> something with `criteria` (tuple of Criterion) or ParseFailure
    criterion_messages  (prompt, reply, criterion name, *, max_chars, criterion_first) -> the
                        conversation answered by one digit 1-9 (`reward.criterion_first`: the
                        criterion named before the reply)
    sound_criterion     the criterion an unreadable synthesis falls back to; verification
                        (`reward.verify`) keeps its weight, since it is not a taste

    pairwise_only       (derived) True when the format has none of the optional chains
    """

    name: str
    pair_messages: Callable[..., Messages]
    parse_pair: Callable[[str], PairVerdict | ParseFailure]
    analysis: Callable[[str], str]
    prefill: str = ""
    stop: tuple[str, ...] = ()
    point_messages: Callable[..., Messages] | None = None
    parse_point: Callable[[str], PointVerdict | ParseFailure] | None = None
    criteria_messages: Callable[..., Messages] | None = None
    parse_criteria: Callable[[str], Any] | None = None
    criterion_question: Callable[..., Messages] | None = None
    score_followup: Callable[..., Messages] | None = None
    parse_scores: Callable[[str, Sequence[Criterion]], PointVerdict | ParseFailure] | None = None
    scores_prefill: str = ""
    criteria_fallback: Criterion = FALLBACK_CRITERION
    direct_question: Callable[..., Messages] | None = None
    synthesis_messages: Callable[..., Messages] | None = None
    parse_synthesis: Callable[[str], Any] | None = None
    criterion_messages: Callable[..., Messages] | None = None
    sound_criterion: Criterion = synthesis_chain.SOUND

    @property
    def pairwise_only(self) -> bool:
        """The judge only compares two responses: no pointwise, group, direct or synthesis chain."""
        return all(getattr(self, f) is None for f in (*_POINTWISE, *_GROUP, *_DIRECT, *_SYNTHESIS))

    def missing(self, mode: str, criteria: str = "generated", reader: str = "auto") -> tuple[str, ...]:
        """The fields this format lacks for `reward.mode`/`criteria`/`reader` (empty: supported)."""
        if mode in ("pairwise", "tournament"):
            needed: tuple[str, ...] = ("pair_messages", "parse_pair")
        elif mode == "pointwise":
            needed = _POINTWISE
        elif criteria == "none":
            needed = _DIRECT
        elif criteria == "synthesis":
            needed = _SYNTHESIS
        else:
            needed = _GROUP + (_PARSED if reader == "parse" else _PROBABILITIES)
            if reader == "auto" and all(getattr(self, f) is not None for f in _PARSED):
                needed = _GROUP  # either reader will do
        return tuple(f for f in needed if getattr(self, f) is None)

    def supported(self) -> list[str]:
        """The settings this format can score with, as config keys."""
        out = ["reward.mode: pairwise", "reward.mode: tournament"]
        if not self.missing("pointwise"):
            out.append("reward.mode: pointwise")
        for criteria in ("generated", "none", "synthesis"):
            if not self.missing("group", criteria):
                out.append(f"reward.mode: group with reward.criteria: {criteria}")
        return out

    def require(self, mode: str, criteria: str = "generated", reader: str = "auto") -> None:
        """Raise ValueError, naming the config keys and the fix, unless the format supports the mode."""
        lacking = self.missing(mode, criteria, reader)
        if not lacking:
            return
        if self.pairwise_only:
            raise ValueError(f"chain.format {self.name} only compares two responses: set reward.mode to pairwise "
                             f"(against the reference) or tournament (against each other), not {mode}; or set "
                             "chain.format to a format with that mode's chains (pgenrm has every mode)")
        asked = f"reward.mode: {mode}" if mode == "pointwise" else \
            f"reward.mode: {mode} with reward.criteria: {criteria} and reward.reader: {reader}"
        fixes = self.supported()
        if mode == "group" and criteria == "generated" and not self.missing(mode, criteria, "parse"):
            fixes.insert(0, "reward.reader: parse")  # only the logprob reader's question is missing
        raise ValueError(f"chain.format {self.name} does not support {asked} (its ChainFormat leaves "
                         f"{', '.join(lacking)} unset): set {'; or '.join(fixes)}; or set "
                         "chain.format to a format that has those chains (pgenrm has every mode)")


# -- pgenrm: this project's chain ------------------------------------------------------------------
def _pgenrm_pair(history, persona, prompt, first: str, second: str, *, max_items: int = 8, max_chars: int = 1500,
                 render: prompts.HistoryRender = "full") -> Messages:
    return prompts.full_chain(history, persona, prompt, [first, second], max_items=max_items, max_chars=max_chars,
                              render=render)


def _pgenrm_verdict(text: str) -> PairVerdict | ParseFailure:
    parsed = parse_chain(text, labels=("A", "B"))
    if isinstance(parsed, ParseFailure):
        return parsed
    return PairVerdict(parsed.scores["A"].total, parsed.scores["B"].total, analysis=text, rationale="",
                       repairs=parsed.repairs, criteria=parsed.criteria)


def _pgenrm_point(history, persona, prompt, response: str, *, max_items: int = 8, max_chars: int = 1500,
                  render: prompts.HistoryRender = "full") -> Messages:
    return prompts.full_chain(history, persona, prompt, [response], max_items=max_items, max_chars=max_chars,
                              render=render)


def _pgenrm_point_verdict(text: str, criteria: Sequence[Criterion] | None = None) -> PointVerdict | ParseFailure:
    parsed = parse_chain(text, labels=("A",), criteria=criteria)
    if isinstance(parsed, ParseFailure):
        return parsed
    return PointVerdict(parsed.scores["A"].total, parsed.criteria, parsed.repairs)


def _pgenrm_scores(text: str, criteria: Sequence[Criterion]) -> PointVerdict | ParseFailure:
    return _pgenrm_point_verdict(text, criteria)


PGENRM = ChainFormat(
    "pgenrm", _pgenrm_pair, _pgenrm_verdict, analysis=lambda text: text,
    prefill=prompts.CHAIN_PREFILL, stop=(prompts.CLOSE,),
    point_messages=_pgenrm_point, parse_point=_pgenrm_point_verdict,
    criteria_messages=prompts.criteria_chain, parse_criteria=parse_criteria,
    criterion_question=prompts.criterion_question, score_followup=prompts.score_followup,
    parse_scores=_pgenrm_scores, scores_prefill=prompts.SCORES_PREFILL,
    direct_question=prompts.direct_question,
    synthesis_messages=synthesis_chain.synthesis_messages, parse_synthesis=synthesis_chain.parse_synthesis,
    criterion_messages=synthesis_chain.criterion_messages, sound_criterion=synthesis_chain.SOUND,
)


# -- p-genrm-8b: the released judges' layout, pairwise only -------------------------------------
def _pgenrm_8b_pair(history, persona, prompt, first: str, second: str, *, max_items: int = pgenrm_8b.HISTORY_PAIRS,
                    max_chars: int = 1500, render: Any = "full") -> Messages:
    # The released judges read whole history pairs: `reward.history_render` does not apply.
    return pgenrm_8b.pair_messages(history, persona, prompt, first, second, max_items=max_items, max_chars=max_chars)


PGENRM_8B = ChainFormat("p-genrm-8b", _pgenrm_8b_pair, pgenrm_8b.parse_verdict, analysis=pgenrm_8b.analysis_of)


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
