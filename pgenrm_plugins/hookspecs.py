"""The plugin contract: every hook a pgenrm plugin may implement.

A plugin is a module (or object) with functions decorated `@pgenrm_plugins.hookimpl`, installed
with an entry point in the `pgenrm_plugins` group:

    [project.entry-points.pgenrm_plugins]
    my_backend = "my_package.plugin"

Each `register_*` hook receives a `register` callable:

    register(name, factory, options=OptionsModel, description="...")

`factory(options)` builds the thing when a config asks for `name`; `options` is a pydantic model
that validates that thing's settings (the `options:` block of its config section). The built-in
backends, embedders, stores and loaders register through these same hooks.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("pgenrm")
hookimpl = pluggy.HookimplMarker("pgenrm")


@hookspec
def register_backends(register):
    """Register generation backends: factory(options) -> Backend (see backends/base.py)."""


@hookspec
def register_embedders(register):
    """Register text embedders: factory(options) -> object with .embed(list[str]) -> array."""


@hookspec
def register_stores(register):
    """Register prototype stores: factory(options) -> store holding users and prototypes."""


@hookspec
def register_adapters(register):
    """Register RL-framework adapters: factory(options) -> the adapter module's reward entry point."""


@hookspec
def register_dataset_loaders(register):
    """Register loaders by file suffix (".jsonl", ".parquet"): factory(path) -> iterator of (line, dict)."""


@hookspec
def register_commands(cli):
    """Add commands to the `pgenrm` CLI (a typer.Typer app)."""
