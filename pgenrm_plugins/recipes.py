"""Ready training runs: `recipes/<name>/recipe.yaml` -> one framework command, checked before it starts.

A recipe names its framework, the command, its arguments and environment, with `${var}` holes whose
defaults sit in `vars:` (every size is a var, so `--set policy=... --set n_gpus=8` resizes a run).
`pgenrm recipe run` renders it, checks what would otherwise fail minutes into a framework's start-up
(the data file, its columns, the P-GenRM config, the prototype store) and only then hands over to
the framework. The recipes' arguments are validated by each framework's own parser in the tests, so
a recipe that drifts from the pinned framework version fails there, not on a GPU cluster.
"""

from __future__ import annotations

import json
import os
import string
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pgenrm_plugins import plugins
from pgenrm_plugins.config import ConfigError, load_config

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"  # the checkout's recipes/ folder


class RecipeError(ValueError):
    """A recipe cannot run as asked; the message says what to fix."""


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    framework: Literal["trl", "verl", "openrlhf"]
    description: str
    command: list[str] = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    vars: dict[str, str] = Field(default_factory=dict)
    folder: Path = Path(".")

    def values(self, overrides: dict[str, str] | None = None) -> dict[str, str]:
        unknown = set(overrides or {}) - set(self.vars)
        if unknown:
            raise RecipeError(f"recipe {self.name}: unknown var(s) {', '.join(sorted(unknown))}; "
                              f"known: {', '.join(sorted(self.vars))}")
        values = {**self.vars, **(overrides or {})}
        # Vars may refer to recipe_dir, python (this interpreter) and each other (data_file: ${data_dir}/train.parquet).
        base = {"recipe_dir": str(self.folder), "python": sys.executable}
        for _ in range(4):
            values = {k: string.Template(v).safe_substitute(base, **values) for k, v in values.items()}
        return {**base, **values}

    def render(self, overrides: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """The argv and the environment additions, every `${var}` filled."""
        values = self.values(overrides)

        def fill(text: str, where: str) -> str:
            try:
                return string.Template(text).substitute(values)
            except KeyError as exc:
                raise RecipeError(f"recipe {self.name}: {where} uses ${{{exc.args[0]}}}, "
                                  "which is not in vars") from None

        argv = [fill(a, "command") for a in self.command] + [fill(a, "args") for a in self.args]
        env = {k: fill(v, f"env.{k}") for k, v in self.env.items()}
        return argv, env


def load_recipe(name_or_path: str | Path, recipes_dir: Path = RECIPES_DIR) -> Recipe:
    path = Path(name_or_path)
    if not path.suffix:
        path = (recipes_dir / str(name_or_path) / "recipe.yaml") if not path.is_dir() else path / "recipe.yaml"
    if not path.is_file():
        known = ", ".join(list_recipes(recipes_dir)) or "none found"
        raise RecipeError(f"no recipe {name_or_path!r} (looked for {path}); known recipes: {known}")
    try:
        return Recipe.model_validate({**yaml.safe_load(path.read_text()), "folder": path.parent.resolve()})
    except ValidationError as exc:
        raise RecipeError(f"{path}: {exc}") from None


def list_recipes(recipes_dir: Path = RECIPES_DIR) -> list[str]:
    return sorted(p.parent.name for p in recipes_dir.glob("*/recipe.yaml"))


def first_record(path: Path) -> dict:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(path).read_row_group(0)
        return table.slice(0, 1).to_pylist()[0] if table.num_rows else {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                return json.loads(line)
    return {}


def preflight(recipe: Recipe, overrides: dict[str, str] | None = None) -> list[str]:
    """What would make the run fail, each with its fix; empty when the run can start.

    A recipe without a `data_file` var makes its own data (the CPU recipes): no data checks."""
    values = recipe.values(overrides)
    problems = []
    if "data_file" in recipe.vars:
        problems += data_problems(recipe, values)
    config_path = values.get("pgenrm_config")
    if config_path:
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            problems.append(f"pgenrm_config: {exc}")
        else:
            store_path = (config.store.options.get("path") if config.store and config.store.name == "sqlite" else None)
            if config.prototypes.enabled and store_path and not Path(store_path).is_file():
                problems.append(f"prototype store {store_path} does not exist: build it with "
                                f"`pgenrm prototypes build --data ROWS.jsonl --store {store_path}`")
    return problems


def data_problems(recipe: Recipe, values: dict[str, str]) -> list[str]:
    """The data file exists, reads, and has the columns the recipe's framework adapter reads."""
    problems = []
    data_file = Path(values.get("data_file", ""))
    columns = plugins.adapter(recipe.framework).dataset.columns
    fix = f"run `pgenrm recipe prepare {recipe.name} --data ROWS.jsonl`, or --set data_file=PATH"
    if not data_file.is_file():
        problems.append(f"data_file {data_file} does not exist: {fix}")
    else:
        try:
            row = first_record(data_file)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
            problems.append(f"data_file {data_file} cannot be read ({exc}): {fix}")
        else:
            missing = [c for c in columns if c not in row]
            if not row:
                problems.append(f"data_file {data_file} is empty: {fix}")
            elif missing:
                problems.append(f"data_file {data_file} lacks column(s) {', '.join(missing)} that the "
                                f"{recipe.framework} adapter reads: {fix}")
    return problems


def run(recipe: Recipe, overrides: dict[str, str] | None = None, dry_run: bool = False) -> list[str]:
    """Check, then replace this process with the framework's command (returns argv on a dry run)."""
    problems = preflight(recipe, overrides)
    if problems:
        raise RecipeError(f"recipe {recipe.name} cannot start:\n" + "\n".join(f"  - {p}" for p in problems))
    argv, env = recipe.render(overrides)
    if not dry_run:
        os.execvpe(argv[0], argv, {**os.environ, **env})
    return argv


# -- the `pgenrm recipe` commands ---------------------------------------------------------------
def parse_sets(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise RecipeError(f"--set {pair!r}: expected VAR=VALUE, e.g. --set policy=Qwen/Qwen3-0.6B")
        out[key.strip()] = value
    return out
