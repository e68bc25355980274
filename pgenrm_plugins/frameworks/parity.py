"""The same requests through the core API and every installed adapter (`pgenrm compare adapters`).

Each adapter scores them in its framework's own call shape (TRL's flat keyword batch, verl's
per-sample `compute_score`, OpenRLHF's per-sample `reward_func` on a JSON label) with one judge and
one seed. The rewards must be identical: the adapters only translate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from rich.table import Table

from pgenrm_plugins import plugins
from pgenrm_plugins.types import ScoreRequest

if TYPE_CHECKING:
    from pgenrm_plugins.scoring.contract import RequestScorer


def per_request(flat: list[float], requests) -> list[list[float]]:
    """One reward per completion, in request order, cut back into one list per request
    (for `parity_rewards` of adapters whose framework scores sample by sample)."""
    out, at = [], 0
    for r in requests:
        out.append(flat[at:at + len(r.completions)])
        at += len(r.completions)
    return out


# Used when no --input is given: two users, one with a multi-turn prompt, one with a persona.
DEFAULT_REQUESTS = [
    {"user_id": "brief-bea",
     "history": [{"prompt": "What is a good name for a cat?", "chosen": "Miso.",
                  "rejected": "Choosing a name is personal! Many people pick names from food or books."}],
     "prompt": "How can I fall asleep faster?",
     "completions": ["Keep a fixed bedtime.", "Sleep is complicated and many factors matter.",
                     "Stop screens an hour before bed."]},
    {"user_id": "thorough-tom", "persona": "Likes precise numbers.",
     "history": [{"prompt": "How do I boil an egg?", "chosen": "Boil it for nine minutes, then cool it in cold water.",
                  "rejected": "Boil it."}],
     "prompt": [{"role": "system", "content": "You are concise."},
                {"role": "user", "content": "How should I brew green tea?"}],
     "completions": ["Use water at 80 C for two minutes.", "Just pour boiling water on it and wait."]},
]


PREFERRED_ORDER = ("trl", "verl", "openrlhf")  # the table's columns after "core"; other adapters follow


@dataclass
class ParityTable:
    requests: list[ScoreRequest]
    columns: dict[str, list[list[float]]]  # "core" and each adapter -> rewards per request
    errors: dict[str, str]  # adapter -> why it produced no column

    def max_difference(self) -> float:
        core = self.columns["core"]
        return max((abs(a - b) for name, col in self.columns.items() if name != "core"
                    for rc, ra in zip(core, col) for a, b in zip(rc, ra)), default=0.0)


def adapter_parity(requests: list[ScoreRequest], scorer: RequestScorer,
                   adapters: list[str] | None = None) -> ParityTable:
    """The core API's rewards and each adapter's, for the same requests and the same judge."""
    columns = {"core": [r.rewards for r in scorer.score(requests)]}
    errors = {}
    found = {name: a.parity_rewards for name, a in plugins.adapters().items() if a.parity_rewards is not None}
    order = [n for n in PREFERRED_ORDER if n in found] + sorted(set(found) - set(PREFERRED_ORDER))
    for name in order:
        parity_rewards = found[name]
        if adapters is not None and name not in adapters:
            continue
        try:
            columns[name] = parity_rewards(requests, scorer)
        except ImportError as exc:  # the adapter is registered but its framework is not installed
            errors[name] = f"{type(exc).__name__}: {exc}"
    return ParityTable(requests, columns, errors)


def render(table: ParityTable) -> Table:
    out = Table(title="the same requests through the core API and each adapter (one judge, one seed)",
                title_justify="left")
    out.add_column("user")
    out.add_column("completion")
    for name in table.columns:
        out.add_column(name, justify="right")
    for ri, request in enumerate(table.requests):
        for ci, completion in enumerate(request.completions):
            short = completion[:40] + ("..." if len(completion) > 40 else "")
            out.add_row(request.user_id or "(anonymous)", short,
                        *(f"{col[ri][ci]:.6f}" for col in table.columns.values()))
    return out
