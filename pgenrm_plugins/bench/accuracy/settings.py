"""The benchmark's settings grammar and store option: `Setting` (what the judge sees in one column
of the grid), `parse_setting(s)` for `--settings` (no-history, global-history, ind-N, ind-N+pro-K,
each optionally `:MODE` / `:READER` / `:persona`), the default grids, and `store_config` for `--store`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

DEFAULT_SETTINGS = ("no-history", "global-history", "ind-1", "ind-2", "ind-4", "ind-8")
DEFAULT_PROTOTYPE_SETTINGS = ("ind-2+pro-2", "ind-2+pro-4")
MODES = ("group", "pairwise", "pointwise")
READERS = ("logprob", "parse", "auto")


class AccuracyError(ValueError):
    """The benchmark cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Setting:
    name: str
    history: str  # "none" | "global" | "user"
    chains: int
    top_k: int = 0  # prototype neighbours; 0 = no prototype scaling
    mode: str | None = None  # None = the config's
    reader: str | None = None
    persona: bool = False  # the judge also reads each user's stated preferences, where the data has them

    def describe(self) -> str:
        what = {"none": "no history", "global": "one global history", "user": "the user's history"}[self.history]
        text = f"{what}, {self.chains} chain{'s' if self.chains > 1 else ''}"
        if self.top_k:
            text += f", + top-{self.top_k} prototype neighbours"
        if self.persona:
            text += ", + the user's stated preferences"
        if self.history == "user" and self.chains == 1 and not self.top_k and not self.persona:
            text = "history only: " + text
        return text


_SETTING = re.compile(r"^(?:(?P<none>no-history)|(?P<global>global-history)|ind-(?P<n>\d+)(?:\+pro-(?P<k>\d+))?)"
                      r"(?P<opts>(?::[a-z]+)*)$")


def parse_setting(spec: str) -> Setting:
    """'no-history', 'global-history', 'ind-4', 'ind-4+pro-8', each optionally ':MODE' / ':READER' /
    ':persona' (the user's stated preferences shown too: a users file's, or the rows' persona fields)."""
    spec = spec.strip()
    m = _SETTING.match(spec)
    if not m:
        raise AccuracyError(f"setting {spec!r}: expected no-history, global-history, ind-N or ind-N+pro-K, "
                            f"optionally followed by :MODE ({', '.join(MODES)}), :READER ({', '.join(READERS)}) "
                            "or :persona")
    mode = reader = None
    persona = False
    for opt in filter(None, m["opts"].split(":")):
        if opt in MODES:
            mode = opt
        elif opt in READERS:
            reader = opt
        elif opt == "persona":
            persona = True
        else:
            raise AccuracyError(f"setting {spec!r}: unknown option {opt!r}; "
                                f"modes: {', '.join(MODES)}; readers: {', '.join(READERS)}; or persona")
    if m["none"]:
        history, chains, k = "none", 1, 0
    elif m["global"]:
        history, chains, k = "global", 1, 0
    else:
        history, chains, k = "user", int(m["n"]), int(m["k"] or 0)
        if not 1 <= chains <= 64:
            raise AccuracyError(f"setting {spec!r}: N must be between 1 and 64")
        if m["k"] is not None and not 1 <= k <= 64:
            raise AccuracyError(f"setting {spec!r}: K must be between 1 and 64")
    if persona and history != "user":
        raise AccuracyError(f"setting {spec!r}: :persona shows a user's own stated preferences, so it goes with "
                            "ind-N or ind-N+pro-K")
    return Setting(spec, history, chains, k, mode, reader, persona)


def parse_settings(specs: Iterable[str]) -> list[Setting]:
    out = [parse_setting(s) for spec in specs for s in spec.split(",") if s.strip()]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise AccuracyError(f"settings repeat a name: {', '.join(names)}")
    return out


def store_config(store: str | None) -> dict | None:
    """`--store`, as `pgenrm prototypes build` takes it: a SQLite file, a postgresql:// URL, or a
    YAML/JSON file holding a `store:` section."""
    if not store:
        return None
    if store.startswith(("postgresql://", "postgres://")):
        return {"name": "postgres", "options": {"dsn": store}}
    path = Path(store)
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        if not path.is_file():
            raise AccuracyError(f"--store {store}: file not found")
        section = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return section.get("store", section)
    if not path.is_file():
        raise AccuracyError(f"--store {store}: no such store file; build one from the train split first: "
                            f"pgenrm prototypes build --data ROWS --store {store}")
    return {"name": "sqlite", "options": {"path": str(path)}}
