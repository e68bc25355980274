"""The evaluation-chain prompts, in the paper's structure and our own words.

A chain has three parts, written by the judge as one JSON object between markers:

    <evaluation>
    {"preferences": {"style": "...", "content": "...", "values": "..."},
     "criteria": [{"name": "Brevity", "weight": 60}, {"name": "Warmth", "weight": 40}],
     "scores": {"A": {"per_criterion": {"Brevity": 8, "Warmth": 5}, "total": 6.8}}}
    </evaluation>

(a) preferences, only what the user's past choices support; (b) criteria for *this* conversation
with weights summing to 100; (c) for each response, a 1-10 score per criterion and the weighted
total. Unlike the reference prompt, the score key has one name (`per_criterion`) and the total's
formula is stated, not left as a placeholder.

Conversations are built here and nowhere else; the scorer only chooses which one it needs:
- `full_chain`: all three parts for the shown responses (pointwise, pairwise: the paper's way);
- `criteria_chain`: parts (a) and (b) only, once per (user, prompt) in `group` mode;
- `synthesis_chain`: (a) and general criteria with no current conversation, once per user, to
  place them among the user prototypes;
- `score_followup` / `criterion_question`: a turn after a criteria chain that scores one response,
  by generated JSON or by the probability of a single digit;
- `direct_question`: no chain at all: the history, the conversation and one response, answered by
  one digit. The trained embedded judge's format (`reward.criteria: none`): on a small judge the
  chain costs most of the time and carries little, so its reading of the history is trained into
  that one digit instead (`pgenrm train`).
"""

from __future__ import annotations

import difflib
import re
from typing import Literal, Sequence

from pgenrm_plugins.types import HistoryItem, as_messages

OPEN, CLOSE = "<evaluation>", "</evaluation>"
LABELS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Single-digit scale for probability reading: "10" is two tokens in most tokenizers.
DIGITS = tuple(str(d) for d in range(1, 10))

SYSTEM = (
    "You are a personalized reward model. You judge responses for one particular user, "
    "guided by what that user's past choices reveal about them, not by your own taste."
)

_PREFERENCES_STEP = (
    "1. Preferences: from the past choices only, describe what this user wants in style, "
    "in content and structure, and in values. Do not claim anything the choices do not show."
)
_CRITERIA_STEP = (
    "2. Criteria: name 2 to 4 criteria that decide how well a reply to the current conversation "
    "suits this user, each with an integer weight; the weights sum to 100."
)
_SCORES_STEP = (
    "3. Scores: score each response from 1 to 10 on every criterion, and give its total: "
    "the sum of weight x score over the criteria, divided by 100."
)

_CRITERIA_SHAPE = (
    '{"preferences": {"style": "...", "content": "...", "values": "..."},\n'
    ' "criteria": [{"name": "...", "weight": 60}, {"name": "...", "weight": 40}]'
)


# Replies start with these (where the backend can prefill): a small judge then stays on the format.
CHAIN_PREFILL = OPEN + '\n{"preferences": {"style": "'
SCORES_PREFILL = OPEN + '\n{"scores": {"A": {"per_criterion": {"'


_CUT = " [...] "


def clip(text: str, max_chars: int) -> str:
    """Keep the start and the end: a reply's ending (a caveat, an example, the sign-off) tells as
    much about its style as its opening, and cutting it would hide exactly what users choose by."""
    if len(text) <= max_chars:
        return text
    if max_chars < 3 * len(_CUT):
        return text[: max_chars - 3] + "..."
    head = (max_chars - len(_CUT)) * 2 // 3
    tail = max_chars - len(_CUT) - head
    return text[:head] + _CUT + text[len(text) - tail:]


def render_prompt(prompt, max_chars: int) -> str:
    messages = as_messages(prompt)
    if len(messages) == 1 and messages[0].role == "user":
        return clip(messages[0].content, max_chars)
    return "\n".join(f"{m.role}: {clip(m.content, max_chars)}" for m in messages)


HistoryRender = Literal["full", "contrast"]

_WORD = re.compile(r"\s*\S+")  # a word with the whitespace before it
# Below this share of common words the two responses are different texts, and a contrast of them
# would be both texts in pieces: they are shown whole instead.
CONTRAST_MIN_SHARED = 0.4
# A fragment is shown by its first words: what it is (an opener, "For example", "3.", a caveat's
# lead) is said at its start, and the rest would only repeat the prompt's content.
FRAGMENT_WORDS = 8


def contrast(chosen: str, rejected: str) -> tuple[list[str], list[str]] | None:
    """What only the chosen and what only the rejected response says (a word diff, difflib), as
    fragments: one per changed run of words and per line within it, a fragment that starts a line
    marked '¶', each cut to its first FRAGMENT_WORDS words. None when the two share too little.

    Two answers to one prompt mostly say the same things; what a user chose by is the difference.
    Shown alone it is short (a history pair costs tens of tokens, not hundreds), and each piece of
    evidence sits right next to its side's mark, where a small judge can attend to it."""
    a, b = _WORD.findall(chosen), _WORD.findall(rejected)
    key = lambda w: ("\n" in w, w.strip())  # noqa: E731 - a word and whether a line break precedes it
    matcher = difflib.SequenceMatcher(None, [key(w) for w in a], [key(w) for w in b], autojunk=False)
    if matcher.ratio() < CONTRAST_MIN_SHARED:
        return None
    only_a: list[str] = []
    only_b: list[str] = []
    for i1, i2, j1, j2 in _changes(matcher.get_opcodes()):
        only_a += _fragments(a[i1:i2])
        only_b += _fragments(b[j1:j2])
    return only_a, only_b


def _changes(opcodes) -> list[tuple[int, int, int, int]]:
    """The changed spans, with a run of fewer than 3 common words between two changes taken into
    them: a lone 'the' that happens to match would otherwise cut a sentence into scraps. (difflib
    never puts two changes side by side: an `equal` run always stands between them.)"""
    spans: list[list[int]] = []
    short_gap = False  # the last run was a short common one after a change
    for op, i1, i2, j1, j2 in opcodes:
        if op == "equal":
            short_gap = bool(spans) and i2 - i1 < 3
        elif short_gap:
            spans[-1][1], spans[-1][3] = i2, j2
        else:
            spans.append([i1, i2, j1, j2])
    return [tuple(x) for x in spans]


def _fragments(words: list[str]) -> list[str]:
    """Changed words split at line breaks; each piece cut to FRAGMENT_WORDS words, '¶' first when
    it starts a line."""
    pieces: list[tuple[bool, list[str]]] = []
    for w in words:
        if "\n" in w or not pieces:
            pieces.append(("\n" in w, []))
        pieces[-1][1].append(w.strip())
    out = []
    for starts_line, piece in pieces:
        text = " ".join(piece[:FRAGMENT_WORDS]) + (" …" if len(piece) > FRAGMENT_WORDS else "")
        out.append(f"¶ {text}" if starts_line else text)
    return out


def _contrasted(a: str, b: str, marks: tuple[str, str], whole: tuple[str, str], same: str,
                max_chars: int, render: HistoryRender) -> str:
    """Two texts as their contrast, one marked line per fragment (`contrast`), or whole under their
    labels (`full`, or two texts that share too little to contrast)."""
    shown = contrast(a, b) if render == "contrast" else None
    if shown is None:
        return f"{whole[0]}{clip(a, max_chars)}{whole[1]}{clip(b, max_chars)}"
    lines = [f"{marks[0]} {f}" for f in shown[0]] + [f"{marks[1]} {f}" for f in shown[1]]
    return "\n".join(lines) if lines else same


def _pair(item: HistoryItem, max_chars: int, render: HistoryRender) -> str:
    return _contrasted(item.chosen, item.rejected, ("+", "-"), ("Preferred: ", "\nRejected: "),
                       "(the two responses were the same)", max_chars, render)


def history_block(history: Sequence[HistoryItem], persona: str | None, max_items: int, max_chars: int,
                  render: HistoryRender = "full") -> str:
    """The user's past choices: each pair in full (`full`), or only where its two responses differ
    (`contrast`, falling back to full for two unrelated texts)."""
    parts = []
    if persona:
        parts.append(f"Persona given by the user: {clip(persona, max_chars)}")
    recent = list(history)[-max_items:] if max_items else []
    for i, item in enumerate(recent, 1):
        parts.append(f"[{i}] Prompt: {render_prompt(item.prompt, max_chars)}\n{_pair(item, max_chars, render)}")
    if not parts:
        parts.append("(none: this user has no recorded choices; judge by the conversation alone)")
    return "\n\n".join(parts)


def _responses_block(responses: Sequence[str], max_chars: int) -> str:
    return "\n\n".join(f"[Response {LABELS[i]}]\n{clip(r, max_chars)}" for i, r in enumerate(responses))


def _scores_shape(labels: Sequence[str]) -> str:
    inner = ", ".join(f'"{label}": {{"per_criterion": {{"...": 7, "...": 5}}, "total": 6.2}}' for label in labels)
    return f' "scores": {{{inner}}}}}'


def _context(history, persona, prompt, max_items: int, max_chars: int, render: HistoryRender = "full") -> str:
    return (
        "## The user's past choices\n"
        f"{history_block(history, persona, max_items, max_chars, render)}\n\n"
        "## The current conversation\n"
        f"{render_prompt(prompt, max_chars)}"
    )


def full_chain(history, persona, prompt, responses: Sequence[str], *, max_items=8, max_chars=1500,
               render: HistoryRender = "full") -> list[dict]:
    """Preferences, criteria and scores for `responses` (labelled A, B, ...) in one chain."""
    labels = LABELS[: len(responses)]
    user = (
        f"{_context(history, persona, prompt, max_items, max_chars, render)}\n\n"
        f"## Responses to evaluate\n{_responses_block(responses, max_chars)}\n\n"
        f"## Your task\n{_PREFERENCES_STEP}\n{_CRITERIA_STEP}\n{_SCORES_STEP}\n\n"
        f"Answer with one JSON object between {OPEN} and {CLOSE}, in this shape:\n"
        f"{OPEN}\n{_CRITERIA_SHAPE},\n{_scores_shape(labels)}\n{CLOSE}"
    )
    return _conversation(user)


def criteria_chain(history, persona, prompt, *, max_items=8, max_chars=1500,
                   render: HistoryRender = "full") -> list[dict]:
    """Preferences and weighted criteria for this (user, prompt): shared by every completion."""
    user = (
        f"{_context(history, persona, prompt, max_items, max_chars, render)}\n\n"
        f"## Your task\n{_PREFERENCES_STEP}\n{_CRITERIA_STEP}\n\n"
        f"Answer with one JSON object between {OPEN} and {CLOSE}, in this shape:\n"
        f"{OPEN}\n{_CRITERIA_SHAPE}}}\n{CLOSE}"
    )
    return _conversation(user)


_GENERAL_CRITERIA_STEP = (
    "2. Criteria: name 2 to 4 criteria this user applies to replies in general, "
    "each with an integer weight; the weights sum to 100."
)


def synthesis_chain(history, persona, *, max_items=8, max_chars=1500) -> list[dict]:
    """The user's preference synthesis with no current conversation: preferences and the criteria
    they apply in general. Built once per user and embedded to place them among user prototypes."""
    user = (
        f"## The user's past choices\n{history_block(history, persona, max_items, max_chars)}\n\n"
        f"## Your task\n{_PREFERENCES_STEP}\n{_GENERAL_CRITERIA_STEP}\n\n"
        f"Answer with one JSON object between {OPEN} and {CLOSE}, in this shape:\n"
        f"{OPEN}\n{_CRITERIA_SHAPE}}}\n{CLOSE}"
    )
    return _conversation(user)


def score_followup(chain_conversation: list[dict], chain_text: str, response: str, *, max_chars=1500) -> list[dict]:
    """After a criteria chain: score one response (label A) as JSON. Shares the chain's prefix."""
    user = (
        f"A reply to the current conversation:\n{_responses_block([response], max_chars)}\n\n"
        f"{_SCORES_STEP[3:]} Use the criteria and weights above.\n"
        f"Answer between {OPEN} and {CLOSE}:\n{OPEN}\n{{{_scores_shape('A')[1:]}\n{CLOSE}"
    )
    return _after(chain_conversation, chain_text, user)


def criterion_question(chain_conversation: list[dict], chain_text: str, response: str, criterion: str, *,
                       max_chars=1500) -> list[dict]:
    """After a criteria chain: how well does `response` meet `criterion`? Answered by one digit,
    whose probabilities the scorer reads. The instruction comes first and the criterion's name
    last: every question about one chain shares the chain and the instruction, every question
    about one response shares the response too, and each criterion costs the judge only its name."""
    user = (
        "For this user, how well does the reply below meet the criterion named after it? "
        "Answer with one digit from 1 (not at all) to 9 (perfectly).\n\n"
        f"{_responses_block([response], max_chars)}\n\nCriterion: {criterion}"
    )
    return _after(chain_conversation, chain_text, user)


DIRECT_QUESTION = (
    "For this user, how well does this reply suit them, judged by what their past choices show? "
    "Answer with one digit from 1 (not at all) to 9 (perfectly)."
)


DIRECT_COMPARISON = (
    "For this user, judged by what their past choices show, which reply suits them better? "
    "Answer with one digit from 1 (B much better) to 9 (A much better)."
)


def _two_replies(a: str, b: str, max_chars: int, render: HistoryRender) -> str:
    return _contrasted(a, b, ("A:", "B:"), ("[Reply A]\n", "\n\n[Reply B]\n"), "(the two replies are the same)",
                       max_chars, render)


def direct_question(history, persona, prompt, response: str, *, max_items=8, max_chars=1500,
                    render: HistoryRender = "full", versus: str | None = None) -> list[dict]:
    """No chain: history, conversation, one response, one digit. Every completion of a group shares
    everything before the response, which the backend computes once.

    With `versus`, the reply is compared with that other reply instead (A = `response`, B =
    `versus`), shown the way the history is: a user's choice is a comparison, and two replies laid
    side by side, or their contrast, put what differs in plain view."""
    context = _context(history, persona, prompt, max_items, max_chars, render)
    if versus is None:
        user = f"{context}\n\n## A reply to judge\n{clip(response, max_chars)}\n\n{DIRECT_QUESTION}"
    else:
        user = (f"{context}\n\n## Two replies to judge\n{_two_replies(response, versus, max_chars, render)}"
                f"\n\n{DIRECT_COMPARISON}")
    return _conversation(user)


def _conversation(user: str) -> list[dict]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def _after(chain_conversation: list[dict], chain_text: str, user: str) -> list[dict]:
    return [*chain_conversation, {"role": "assistant", "content": chain_text}, {"role": "user", "content": user}]


__all__ = [
    "OPEN", "CLOSE", "LABELS", "DIGITS", "SYSTEM", "CHAIN_PREFILL", "SCORES_PREFILL",
    "full_chain", "criteria_chain", "synthesis_chain", "score_followup", "criterion_question", "direct_question",
    "history_block", "contrast", "HistoryRender",
]
