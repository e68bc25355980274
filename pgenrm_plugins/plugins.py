"""The plugin manager: built-in plugins plus everything in the `pgenrm_plugins` entry-point group.

Built-ins register through the same hooks a third-party plugin uses (as `llm` does with its
default models), so `pgenrm plugins` lists both the same way.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable

import pluggy
from pydantic import BaseModel

from pgenrm_plugins import hookspecs
from pgenrm_plugins.hookspecs import Adapter

ENTRY_POINT_GROUP = "pgenrm_plugins"
BUILTIN_DISTRIBUTION = "pgenrm-plugins"

DEFAULT_PLUGINS = (
    # backends, embedders, stores, request-file loaders
    "pgenrm_plugins.backends.transformers_backend",
    "pgenrm_plugins.backends.openai_backend",
    "pgenrm_plugins.backends.vllm_backend",
    "pgenrm_plugins.prototypes.embedders",
    "pgenrm_plugins.prototypes.sqlite_store",
    "pgenrm_plugins.prototypes.postgres_store",
    "pgenrm_plugins.requests_io",
    "pgenrm_plugins.chain.formats",
    # the `pgenrm` commands (pgenrm_plugins/commands/)
    "pgenrm_plugins.commands.core",
    "pgenrm_plugins.commands.bench",
    "pgenrm_plugins.commands.data",
    "pgenrm_plugins.commands.prototypes",
    "pgenrm_plugins.commands.train",
    "pgenrm_plugins.commands.recipe",
    "pgenrm_plugins.commands.compare",
    "pgenrm_plugins.commands.adapters",
)

# kind -> the hook that registers it
KINDS = {
    "backend": "register_backends",
    "embedder": "register_embedders",
    "store": "register_stores",
    "chain_format": "register_chain_formats",
    "adapter": "register_adapters",
    "dataset_loader": "register_dataset_loaders",
}


class UnknownPluginError(LookupError):
    """Asked for a name nobody registered; the message lists the known ones."""


@dataclass(frozen=True)
class Entry:
    kind: str
    name: str
    factory: Callable[..., Any]
    options: type[BaseModel] | None
    description: str
    distribution: str
    adapter: Adapter | None = None  # kind "adapter": the whole registered object, capabilities included


@lru_cache(maxsize=1)
def get_plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("pgenrm")
    pm.add_hookspecs(hookspecs)
    for module_name in DEFAULT_PLUGINS:
        pm.register(importlib.import_module(module_name), name=module_name)
    pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def _distribution_of(pm: pluggy.PluginManager) -> dict[int, str]:
    return {id(plugin): dist.project_name for plugin, dist in pm.list_plugin_distinfo()}


def registry(kind: str) -> dict[str, Entry]:
    """Everything registered for `kind`, by name. Later registrations of a name win (plugins may
    override a built-in), which is why entry points load after the defaults."""
    if kind not in KINDS:
        raise UnknownPluginError(f"unknown plugin kind {kind!r}; known kinds: {', '.join(KINDS)}")
    pm = get_plugin_manager()
    dists = _distribution_of(pm)
    entries: dict[str, Entry] = {}
    hook = getattr(pm.hook, KINDS[kind])
    # Call each implementation on its own, in registration order, so every entry knows its
    # distribution and a plugin registered later may override a built-in name.
    for impl in hook.get_hookimpls():
        dist = dists.get(id(impl.plugin), BUILTIN_DISTRIBUTION)

        def register(name, factory=None, options=None, description="", _dist=dist):
            entries[name] = Entry(kind, name, factory, options, description, _dist)

        def register_adapter(adapter: Adapter, _dist=dist):
            if not isinstance(adapter, Adapter):
                raise TypeError(f"register_adapters: register() takes a pgenrm_plugins.hookspecs.Adapter, got "
                                f"{type(adapter).__name__} (from {_dist})")
            entries[adapter.name] = Entry(kind, adapter.name, adapter.build_reward, adapter.options,
                                          adapter.description, _dist, adapter)

        impl.function(register=register_adapter if kind == "adapter" else register)
    return entries


def get(kind: str, name: str) -> Entry:
    entries = registry(kind)
    if name not in entries:
        known = ", ".join(sorted(entries)) or "none"
        raise UnknownPluginError(f"unknown {kind} {name!r}; known {kind}s: {known}")
    return entries[name]


def adapters() -> dict[str, Adapter]:
    """Every registered framework adapter, by name."""
    return {name: entry.adapter for name, entry in registry("adapter").items()}


def adapter(name: str) -> Adapter:
    return get("adapter", name).adapter


def register_commands(cli) -> None:
    get_plugin_manager().hook.register_commands(cli=cli)
