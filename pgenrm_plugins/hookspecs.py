"""The plugin contract: every hook a pgenrm plugin may implement, and what each one registers.

A plugin is a module (or object) with functions decorated `@pgenrm_plugins.hookimpl`, installed
with an entry point in the `pgenrm_plugins` group:

    [project.entry-points.pgenrm_plugins]
    my_backend = "my_package.plugin"

The built-in backends, embedders, stores, loaders and commands register through these same hooks.
A name registered later wins, so a plugin may replace a built-in.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pluggy

hookspec = pluggy.HookspecMarker("pgenrm")
hookimpl = pluggy.HookimplMarker("pgenrm")


@hookspec
def register_backends(register):
    """Register generation backends (turn conversations into text and digit probabilities).

    :param register: ``register(name, factory, options=OptionsModel, description="")``.
        ``factory(options) -> Backend`` (the protocol in ``backends/base.py``) is called when a
        config's ``backend.name`` is ``name``; ``options`` is the pydantic model that validates that
        section's ``options:`` block (None: no options).
    :return: nothing; register each backend through ``register``.
    """


@hookspec
def register_embedders(register):
    """Register text embedders (they place users among the prototypes).

    :param register: ``register(name, factory, options=OptionsModel, description="")``;
        ``factory(options)`` returns an object with ``embed(list[str]) -> numpy array (n, d)`` and a
        ``name``.
    :return: nothing.
    """


@hookspec
def register_stores(register):
    """Register prototype stores (users, their embeddings and histories, published prototype builds).

    :param register: ``register(name, factory, options=OptionsModel, description="")``;
        ``factory(options)`` returns a store as ``prototypes/base.py`` describes it.
    :return: nothing.
    """


@hookspec
def register_dataset_loaders(register):
    """Register request-file loaders by file suffix (``".jsonl"``, ``".parquet"``).

    :param register: ``register(suffix, factory, description="")``; ``factory(path)`` yields
        ``(line number, dict)`` pairs, one per request.
    :return: nothing.
    """


@hookspec
def register_chain_formats(register):
    """Register chain formats: every prompt a judge was trained on and every parser of its output.

    :param register: ``register(name, factory, description="")``; ``factory(None)`` returns a
        ``ChainFormat`` (``chain/formats.py``; its docstring lists every field): the pairwise
        pieces every format gives (``pair_messages``, ``parse_pair``, ``analysis``, ``prefill``,
        ``stop``), and, for each other reward mode it supports, that mode's prompts and parsers
        (``point_messages``/``parse_point``; ``criteria_messages``/``parse_criteria``/
        ``criterion_question``/``score_followup``/``parse_scores``; ``direct_question``;
        ``synthesis_messages``/``parse_synthesis``/``criterion_messages``), None for a mode it
        does not. A config chooses it with ``chain.format: name``; asking it for a mode it lacks
        is an error naming ``chain.format`` and ``reward.mode``.
    :return: nothing.
    """


@dataclass(frozen=True)
class DatasetLayout:
    """How training prompts are written for one framework (`pgenrm recipe prepare`).

    record     framework-neutral record ({index, user_id, prompt, history, reference}) -> one row
    file_name  the file written (its suffix picks JSONL or parquet)
    columns    the columns the adapter reads (a recipe checks its data file has them)
    """

    record: Callable[[dict[str, Any]], dict[str, Any]]
    file_name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class Adapter:
    """What a framework adapter offers. Only `name` and `build_reward` are required.

    build_reward    ``build_reward(options) -> the framework's reward entry point`` (what one line of
                    the framework's config names)
    options         pydantic model validating ``build_reward``'s options (None: takes none)
    reward_file     ``() -> Path`` of a file the framework loads by path (OpenRLHF's
                    ``--reward.remote_url``); ``pgenrm adapters path NAME`` prints it
    parity_rewards  ``(requests, scorer) -> list[list[float]]``: the requests scored through the
                    framework's own call shape with this scorer's judge (``pgenrm compare adapters``)
    dataset         the training-file layout the framework reads

    An adapter module imports its framework only inside these callables, so listing plugins stays
    cheap and works where the framework is not installed.
    """

    name: str
    build_reward: Callable[..., Any]
    options: type | None = None
    description: str = ""
    reward_file: Callable[[], Path] | None = None
    parity_rewards: Callable[[list, Any], list[list[float]]] | None = None
    dataset: DatasetLayout | None = None


@hookspec
def register_adapters(register):
    """Register RL-framework adapters.

    :param register: ``register(Adapter(...))``, one call per adapter (see `Adapter`).
    :return: nothing.
    """


@hookspec
def register_commands(cli):
    """Add commands to the `pgenrm` CLI.

    :param cli: the root ``typer.Typer`` app; add a command (``@cli.command()``) or a group
        (``cli.add_typer(app, name=...)``).
    :return: nothing.
    """
