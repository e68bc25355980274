"""The chain format of the released P-GenRM-8B judges (`chain.format: p-genrm-8b`).

`Tongyi-ConvAI/P-GenRM-8B-PRISM` and `-ChatbotArena` were fine-tuned on one layout, and they are
off-distribution in any other (facts from the public inference code, GitHub
`Tongyi-ConvAI/Qwen-Character`, folder `Character-GenRM`; the instruction sentences here are ours):

- input: the user's history in the **system** turn as few-shot blocks `User:` / `Chosen:` /
  `Rejected:`; the **user** turn holds the current input and exactly two responses. Pairwise only.
- output: "PART 1: Chain-of-Thought Analysis" (a preference synthesis under Style, Content &
  Structure and Core Values, then lettered criteria with percentage weights), "PART 2: Final
  Scoring and JSON Output", then one JSON object between `<JSON_START>` and `<JSON_END>` with
  `rationale` (text) and `better_response`: {"response_1": x, "response_2": y}, weighted means on
  1-10 that may arrive as strings; some outputs say `scores` where `better_response` is meant.

`parse_verdict` never raises: it coerces strings to numbers, accepts the key variants, repairs what
has one obvious repair (noted in `repairs`) and otherwise returns a typed `ParseFailure`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import (
    MISSING,
    OUT_OF_TEN,
    Fail,
    PairVerdict,
    ParseFailure,
    extract_json,
    get_field,
    load_object,
    show,
    to_number,
)
from pgenrm_plugins.types import HistoryItem, Prompt

JSON_START, JSON_END = "<JSON_START>", "<JSON_END>"
PART_2 = "PART 2"
# The official scripts show 6 past pairs to a single chain and 3 to each chain under prototype scaling.
HISTORY_PAIRS = 6

SYSTEM = """# Your task
You judge responses for one particular user. Below are choices this user made before, each between two \
responses to the same input. Learn from them what this user values, write that down as a weighted scoring \
model, and use the model to score two new responses to a new input.

# The user's past choices
[The Start of User's preference history]
{few_shots}
[The End of User's preference history]
{persona}
# What to write
Write exactly two parts, in this order.

**PART 1: Chain-of-Thought Analysis**
1. **User Preference Synthesis**: set what the user chose against what they rejected, and describe, only \
where the evidence is clear, the **Style** they want, the **Content & Structure** they want, and the \
**Core Values** behind their choices.
2. **Personalised Scoring Model**: turn the synthesis into lettered criteria (A, B, C, ...). Give each a \
percentage weight for this input and one sentence on why it matters to this user; the weights add up to \
100%.

**PART 2: Final Scoring and JSON Output**
Write <JSON_START>, then one JSON object, then <JSON_END>, and nothing after it. The object has two keys:
- "rationale": one string that restates the weighted criteria, scores each response on each criterion \
from 1 (poor) to 10 (excellent) with a short reason, and shows each response's weighted sum, for example \
"Response 1 = 8*0.5 + 6*0.3 + 7*0.2 = 7.2".
- "better_response": an object {{"response_1": <Response 1's weighted score>, "response_2": <Response 2's \
weighted score>}}.
"""

USER = """
# Input Data
[The Start of User Input]
{user_input}
[The End of User Input]

[The Start of Response 1]
{response_1}
[The End of Response 1]

[The Start of Response 2]
{response_2}
[The End of Response 2]
"""


def few_shots(history: Sequence[HistoryItem], max_items: int, max_chars: int) -> str:
    """The most recent `max_items` past choices as `User:` / `Chosen:` / `Rejected:` blocks."""
    shown = list(history)[-max_items:] if max_items else []
    return "".join(f"User: {prompts.render_prompt(h.prompt, max_chars)}\n"
                   f"Chosen: {prompts.clip(h.chosen, max_chars)}\n"
                   f"Rejected: {prompts.clip(h.rejected, max_chars)}\n\n" for h in shown)


def pair_messages(history: Sequence[HistoryItem], persona: str | None, prompt: Prompt, first: str, second: str,
                  *, max_items: int = HISTORY_PAIRS, max_chars: int = 1500) -> list[dict[str, str]]:
    """The conversation that asks the judge to compare `first` (Response 1) with `second`."""
    about = f"\n# What the user says about themselves\n{prompts.clip(persona, max_chars)}\n" if persona else ""
    system = SYSTEM.format(few_shots=few_shots(history, max_items, max_chars), persona=about)
    user = USER.format(user_input=prompts.render_prompt(prompt, max_chars),
                       response_1=prompts.clip(first, max_chars), response_2=prompts.clip(second, max_chars))
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_RESPONSE_KEY = re.compile(r"\s*(?:response)?[\s_\-]*([12])\s*", re.IGNORECASE)


def analysis_of(text: str) -> str:
    """PART 1 of a chain: everything before PART 2 (or before the JSON when PART 2 has no header)."""
    ends = [i for i in (text.find(PART_2), text.find(JSON_START)) if i >= 0]
    return (text[:min(ends)] if ends else text).strip()


def parse_verdict(text: str) -> PairVerdict | ParseFailure:
    """The two scores of a P-GenRM-8B chain, or a typed failure. Never raises."""
    raw = text if isinstance(text, str) else ""
    try:
        return _parse(raw)
    except Fail as fail:
        return ParseFailure(fail.kind, fail.detail, raw)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises on model output"
        return ParseFailure("invalid_json", f"unexpected {type(exc).__name__}: {show(str(exc))}", raw)


def _parse(text: str) -> PairVerdict:
    repairs: list[str] = []
    obj = load_object(extract_json(text, repairs, JSON_START, JSON_END, want=("better_response", "scores")), repairs)
    scores = get_field(obj, "better_response", repairs)
    if scores is MISSING:
        scores = get_field(obj, "scores", repairs)
        if scores is not MISSING:
            repairs.append("'scores' read as 'better_response'")
    if scores is MISSING:
        raise Fail("missing_field", "better_response: missing (nor 'scores')")
    if not isinstance(scores, dict):
        raise Fail("bad_value", f"better_response: expected an object, got {type(scores).__name__}")
    found: dict[str, float] = {}
    for key, value in scores.items():
        match = _RESPONSE_KEY.fullmatch(key) if isinstance(key, str) and len(key) <= 40 else None
        if match is None:
            continue
        number = to_number(value, OUT_OF_TEN)
        if number is None:
            raise Fail("bad_value", f"better_response.{key}: not a number: {show(value)}")
        if key.strip() != f"response_{match.group(1)}":
            repairs.append(f"key {show(key)} read as 'response_{match.group(1)}'")
        found[match.group(1)] = number
    for side in ("1", "2"):
        if side not in found:
            raise Fail("missing_field", f"better_response.response_{side}: missing")
        if found[side] < 0:
            raise Fail("bad_value", f"better_response.response_{side}: negative score {show(found[side])}")
    if found["1"] + found["2"] <= 0:
        raise Fail("bad_value", "better_response: both scores are 0")
    rationale = get_field(obj, "rationale", repairs)
    return PairVerdict(found["1"], found["2"], analysis_of(text),
                       rationale if isinstance(rationale, str) else "" if rationale is MISSING else str(rationale),
                       tuple(repairs))

