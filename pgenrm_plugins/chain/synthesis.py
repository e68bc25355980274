"""The synthesis chain (`reward.criteria: synthesis`): the paper's chain cut where it depends on
what.

Parts (a) and (b) of an evaluation chain, the persona and the weighted criteria, depend on the
user's past choices and nothing else; part (c), the scores, depends on the reply. So the judge
writes the first two once per user and history version, in a short fixed shape the parser below
reads:

    Persona: prefers brief, casual answers with an example.
    Criteria:
    - Brief: a short answer with only the key points (40)
    - Casual: a relaxed, chatty tone with contractions (30)
    - Example: includes a concrete example (20)
    - Sound: a complete, coherent answer to the question (10)

and every reply is then checked against each criterion on its own, in a short context with no
history in it (the conversation, the reply, the criterion last), answered by one digit whose
probabilities the scorer reads. A criterion says everything the check needs, so the same
(conversation, reply, criterion) row serves every user who holds that criterion: prototype
neighbours who share criteria add no rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import Criterion, ParseFailure

PREFILL = "Persona:"
SYSTEM = ("You read one user's past choices and write down what they want from a reply: a persona, then "
          "weighted criteria. Claim nothing their choices and words do not show.")
TASK = ("Write the user's persona in one line, then the criteria their choices support, one per line as "
        "'- Name: what it asks (weight)'; the weights sum to 100.")
CHECK = ("Does the reply meet the criterion named after it? Answer with one digit from 1 (not at all) to 9 "
         "(fully).")
CHECK_FIRST = "Does the reply meet the criterion? Answer with one digit from 1 (not at all) to 9 (fully)."
# A criterion every synthesis ends with: a broken reply (cut off, looping, empty) fails it whatever
# the user's taste, and a user with no history is judged by it alone.
SOUND = Criterion("Sound: a complete, coherent answer to the question", 10.0)
NOTHING_KNOWN = "nothing known yet"

_CRITERION = re.compile(r"^\s*[-*]\s*(?P<text>[^()\n]+?)\s*\((?P<weight>\d+(?:\.\d+)?)\)\s*$")


@dataclass(frozen=True)
class Synthesis:
    persona: str
    criteria: tuple[Criterion, ...]

    def text(self) -> str:
        return format_synthesis(self.persona, self.criteria)


def format_synthesis(persona: str, criteria: Sequence[Criterion]) -> str:
    lines = [f"Persona: {persona}", "Criteria:"]
    lines += [f"- {c.name} ({c.weight:g})" for c in criteria]
    return "\n".join(lines)


def parse_synthesis(text: str) -> Synthesis | ParseFailure:
    """The persona and the criteria of a synthesis; `ParseFailure` when no criterion with a
    positive weight can be read. Weights need not sum to 100 (the scorer normalises them);
    lines that are not criteria are skipped, a repeated criterion counts once."""
    persona = ""
    criteria: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(PREFILL) and not persona:
            persona = line[len(PREFILL):].strip()
        elif m := _CRITERION.match(line):
            weight = float(m["weight"])
            if weight > 0 and m["text"] not in criteria:
                criteria[m["text"]] = weight
    if not criteria:
        return ParseFailure("no_criteria", "no '- Name: what it asks (weight)' line", text)
    return Synthesis(persona, tuple(Criterion(name, w) for name, w in criteria.items()))


def synthesis_messages(history, persona: str | None, *, max_items: int, max_chars: int,
                       render: prompts.HistoryRender = "contrast") -> list[dict[str, str]]:
    """The conversation that asks for a user's synthesis: their past choices (and stated persona)."""
    user = (f"## The user's past choices\n{prompts.history_block(history, persona, max_items, max_chars, render)}"
            f"\n\n## Your task\n{TASK}")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def criterion_messages(prompt, reply: str, criterion: str, *, max_chars: int,
                       criterion_first: bool = False) -> list[dict[str, str]]:
    """One reply checked against one criterion. By default the criterion comes last: every check of
    one reply shares the conversation and the reply, and each criterion costs only its own words.
    `criterion_first` names it before the reply instead (each check then reads the reply again,
    knowing what to look for): a judge is read the way it was trained (`reward.criterion_first`)."""
    conversation = f"## The conversation\n{prompts.render_prompt(prompt, max_chars)}\n\n"
    reply_block = f"## The reply\n{prompts.clip(reply, max_chars)}\n\n"
    if criterion_first:
        user = f"{conversation}Criterion: {criterion}\n\n{reply_block}{CHECK_FIRST}"
    else:
        user = f"{conversation}{reply_block}{CHECK}\nCriterion: {criterion}"
    return [{"role": "system", "content": prompts.SYSTEM}, {"role": "user", "content": user}]


__all__ = ["Synthesis", "SOUND", "PREFILL", "format_synthesis", "parse_synthesis", "synthesis_messages",
           "criterion_messages", "NOTHING_KNOWN"]
