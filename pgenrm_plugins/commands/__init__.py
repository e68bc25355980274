"""The built-in `pgenrm` commands, one module per group, each registered through the same
`register_commands` hook a plugin uses (they are default plugins, see `plugins.DEFAULT_PLUGINS`):

    core.py        score, serve, plugins, config
    bench.py       bench speed / service / accuracy / train / lookup
    data.py        data synth
    prototypes.py  prototypes build / add-user / show
    train.py       train score / eval / export / psi / cre
    recipe.py      recipe list / show / prepare / run
    compare.py     compare adapters
    adapters.py    adapters path

Heavy imports stay inside the commands, so `pgenrm --help` is quick. The helpers below give every
command the same error line and the same --config option.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

err = Console(stderr=True, soft_wrap=True)  # paths in messages stay on one line

CONFIG_HELP = "YAML or TOML config; default: $PGENRM_CONFIG, else the embedded judge."


def config_option():
    return typer.Option(None, "--config", "-c", help=CONFIG_HELP)


def fail(message: object, code: int = 2) -> NoReturn:
    """One red error line on stderr and exit `code` (2: bad input), no traceback."""
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def wide_console(width: int = 110) -> Console:
    """A console at least `width` columns wide, so benchmark tables do not wrap."""
    return Console(width=max(Console().width, width))


def load_scorer_or_fail(config):
    """The scorer for a --config value (None: the default), with a status line while it loads."""
    from pgenrm_plugins.config import ConfigError
    from pgenrm_plugins.scoring import load_scorer

    try:
        with err.status("loading the judge..."):
            return load_scorer(config if isinstance(config, dict) or not config else str(config))
    except ConfigError as exc:
        fail(exc)
