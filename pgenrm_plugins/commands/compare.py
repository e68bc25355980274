"""`pgenrm compare adapters`: the same requests through the core API and every installed adapter,
side by side (`frameworks/parity.py`); exit 1 if they differ."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pgenrm_plugins.commands import config_option, err, fail, load_scorer_or_fail, wide_console
from pgenrm_plugins.hookspecs import hookimpl

compare_app = typer.Typer(help="Side-by-side comparisons.", no_args_is_help=True)


@compare_app.command("adapters")
def compare_adapters(
    input: Optional[Path] = typer.Option(None, "--input", "-i", help="Requests (.jsonl/.parquet, the `pgenrm score` "
                                                                     "format); default: a built-in pair of users."),
    config: Optional[Path] = config_option(),
    tolerance: float = typer.Option(1e-6, min=0.0, help="Largest difference from the core API still called identical."),
):
    """Score the same requests through the core API and every installed framework adapter (TRL,
    verl, OpenRLHF, any plugin's) and print the rewards side by side; exit 1 if they differ."""
    from pgenrm_plugins.frameworks.parity import DEFAULT_REQUESTS, adapter_parity, render
    from pgenrm_plugins.requests_io import LineError, read_requests
    from pgenrm_plugins.types import ScoreRequest

    if input is not None:
        try:
            items = list(read_requests(input))
        except (FileNotFoundError, LookupError, ImportError) as exc:
            fail(exc)
        bad = [i for i in items if isinstance(i, LineError)]
        if bad:
            fail(f"{input}: {bad[0]}")
        requests = items
    else:
        requests = [ScoreRequest.model_validate(r) for r in DEFAULT_REQUESTS]
    scorer = load_scorer_or_fail(config)
    try:
        with err.status("scoring through the core API and each adapter..."):
            table = adapter_parity(requests, scorer)
    finally:
        scorer.close()
    console = wide_console(120)
    console.print(render(table))
    for name, why in table.errors.items():
        console.print(f"[yellow]{name}: not compared[/yellow] ({why})", highlight=False)
    diff = table.max_difference()
    adapters = [n for n in table.columns if n != "core"]
    if diff <= tolerance:
        console.print(f"identical: {', '.join(adapters) or 'no adapter'} match the core API "
                      f"(largest difference {diff:.2e})")
    else:
        console.print(f"[red]different:[/red] largest difference from the core API {diff:.2e} > {tolerance:.0e}")
        raise typer.Exit(1)


@hookimpl
def register_commands(cli):
    cli.add_typer(compare_app, name="compare")
