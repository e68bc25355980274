"""`pgenrm compare ...`: side-by-side comparisons.

`pgenrm compare adapters [--input FILE] [--config CFG]` scores the same requests through the core
API and through every installed framework adapter (found in the adapter registry; each scores them
in its framework's own call shape: TRL's flat keyword batch, verl's per-sample `compute_score`,
OpenRLHF's per-sample `reward_func` on a JSON label) with one judge and one seed, and prints the
rewards side by side. They must be identical: the adapters only translate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pgenrm_plugins.adapter_tools import adapters_with
from pgenrm_plugins.hookspecs import hookimpl
from pgenrm_plugins.types import ScoreRequest

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
     "prompt": [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "How should I brew green tea?"}],
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


def adapter_parity(requests: list[ScoreRequest], scorer, adapters: list[str] | None = None) -> ParityTable:
    """The core API's rewards and each adapter's, for the same requests and the same judge."""
    columns = {"core": [r.rewards for r in scorer.score(requests)]}
    errors = {}
    found = adapters_with("parity_rewards")
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


compare_app = typer.Typer(help="Side-by-side comparisons.", no_args_is_help=True)


@compare_app.command("adapters")
def compare_adapters(
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Requests (.jsonl/.parquet, the `pgenrm score` format); default: a built-in pair of users."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML or TOML config; default: $PGENRM_CONFIG, else the embedded judge."),
    tolerance: float = typer.Option(1e-6, min=0.0, help="Largest difference from the core API still called identical."),
):
    """Score the same requests through the core API and every installed framework adapter (TRL,
    verl, OpenRLHF, any plugin's) and print the rewards side by side; exit 1 if they differ."""
    from pgenrm_plugins.config import ConfigError
    from pgenrm_plugins.requests_io import LineError, read_requests
    from pgenrm_plugins.scoring import load_scorer

    err = Console(stderr=True)
    if input is not None:
        try:
            items = list(read_requests(input))
        except (FileNotFoundError, LookupError, ImportError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        bad = [i for i in items if isinstance(i, LineError)]
        if bad:
            err.print(f"[red]error:[/red] {input}: {bad[0]}", highlight=False)
            raise typer.Exit(2)
        requests = items
    else:
        requests = [ScoreRequest.model_validate(r) for r in DEFAULT_REQUESTS]
    try:
        with err.status("loading the judge..."):
            scorer = load_scorer(str(config) if config else None)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    try:
        with err.status("scoring through the core API and each adapter..."):
            table = adapter_parity(requests, scorer)
    finally:
        scorer.close()
    console = Console(width=max(Console().width, 120))
    console.print(render(table))
    for name, why in table.errors.items():
        console.print(f"[yellow]{name}: not compared[/yellow] ({why})", highlight=False)
    diff = table.max_difference()
    adapters = [n for n in table.columns if n != "core"]
    if diff <= tolerance:
        console.print(f"identical: {', '.join(adapters) or 'no adapter'} match the core API (largest difference {diff:.2e})")
    else:
        console.print(f"[red]different:[/red] largest difference from the core API {diff:.2e} > {tolerance:.0e}")
        raise typer.Exit(1)


@hookimpl
def register_commands(cli):
    cli.add_typer(compare_app, name="compare")
