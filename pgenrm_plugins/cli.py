"""The `pgenrm` command line: the root app. Every command comes in through the `register_commands`
hook: the built-in ones from `pgenrm_plugins/commands/`, then every installed plugin's."""

from __future__ import annotations

import logging
import os

import typer

from pgenrm_plugins import plugins

app = typer.Typer(
    help="P-GenRM: a personalized generative reward model for TRL, verl and OpenRLHF.\n\n"
    "Start with `pgenrm score --input examples/requests.jsonl --show` (embedded CPU judge, no config needed).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
plugins.register_commands(app)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress is shown instead
    app()


if __name__ == "__main__":
    main()
