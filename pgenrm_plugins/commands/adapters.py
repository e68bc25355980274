"""`pgenrm adapters path NAME`: where the file a framework loads by path is."""

from __future__ import annotations

import typer

from pgenrm_plugins import plugins
from pgenrm_plugins.hookspecs import hookimpl

adapters_app = typer.Typer(help="Framework adapters: where their files are.", no_args_is_help=True)


@adapters_app.command("path")
def path(name: str = typer.Argument(..., help="adapter name, as `pgenrm plugins --kind adapter` lists it")):
    """Print the absolute path of the file a framework loads by path, e.g.
    `--reward.remote_url $(pgenrm adapters path openrlhf)`."""
    try:
        adapter = plugins.adapter(name)
    except plugins.UnknownPluginError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if adapter.reward_file is None:
        with_files = ", ".join(n for n, a in sorted(plugins.adapters().items()) if a.reward_file) or "none"
        typer.echo(f"error: adapter {name!r} has no file to load by path (adapters that do: {with_files})", err=True)
        raise typer.Exit(2)
    typer.echo(str(adapter.reward_file()))


@hookimpl
def register_commands(cli):
    cli.add_typer(adapters_app, name="adapters")
