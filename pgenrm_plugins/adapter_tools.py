"""What the core may ask of a framework adapter, found through the adapter registry only.

An adapter registers `factory(options) -> its framework's reward entry point` through
`register_adapters`. The module that defines that factory (the adapter's plugin module) may also
define, for the core's tools:

    reward_file() -> Path
        a file the framework loads by path (OpenRLHF's `--reward.remote_url /abs/path.py`);
        `pgenrm adapters path NAME` prints it.
    parity_rewards(requests: list[ScoreRequest], scorer: Scorer) -> list[list[float]]
        the requests scored through the framework's own call shape, with this scorer's judge;
        `pgenrm compare adapters` puts them next to the core API's.

The core imports no framework: it imports the adapter's plugin module, which imports its
framework only inside those functions.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import typer

from pgenrm_plugins import plugins
from pgenrm_plugins.hookspecs import hookimpl


def adapter_function(name: str, function: str) -> Callable[..., Any] | None:
    """`function` from adapter `name`'s plugin module, or None when it does not provide one."""
    entry = plugins.get("adapter", name)
    module = importlib.import_module(entry.factory.__module__)
    return getattr(module, function, None)


def per_request(flat: list[float], requests) -> list[list[float]]:
    """One reward per completion, in request order, cut back into one list per request
    (for `parity_rewards` of adapters whose framework scores sample by sample)."""
    out, at = [], 0
    for r in requests:
        out.append(flat[at:at + len(r.completions)])
        at += len(r.completions)
    return out


def adapters_with(function: str) -> dict[str, Callable[..., Any]]:
    """Every registered adapter that provides `function`, by name."""
    found = {}
    for name in sorted(plugins.registry("adapter")):
        fn = adapter_function(name, function)
        if fn is not None:
            found[name] = fn
    return found


adapters_app = typer.Typer(help="Framework adapters: where their files are.", no_args_is_help=True)


@adapters_app.command("path")
def path(name: str = typer.Argument(..., help="adapter name, as `pgenrm plugins --kind adapter` lists it")):
    """Print the absolute path of the file a framework loads by path, e.g.
    `--reward.remote_url $(pgenrm adapters path openrlhf)`."""
    try:
        fn = adapter_function(name, "reward_file")
    except plugins.UnknownPluginError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if fn is None:
        with_files = ", ".join(adapters_with("reward_file")) or "none"
        typer.echo(f"error: adapter {name!r} has no file to load by path (adapters that do: {with_files})", err=True)
        raise typer.Exit(2)
    typer.echo(str(fn()))


@hookimpl
def register_commands(cli):
    cli.add_typer(adapters_app, name="adapters")
