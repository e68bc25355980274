"""`pgenrm recipe ...`: list, show, prepare and run the ready GRPO/PPO recipes (see recipes/)."""

from __future__ import annotations

from pathlib import Path

from pgenrm_plugins.commands import fail
from pgenrm_plugins.hookspecs import hookimpl
from pgenrm_plugins.recipes import RecipeError, list_recipes, load_recipe, parse_sets, run


@hookimpl
def register_commands(cli):
    import shlex

    import typer
    from rich.console import Console
    from rich.table import Table

    app = typer.Typer(help="Ready personalized GRPO/PPO runs for TRL, verl and OpenRLHF (see recipes/).",
                      no_args_is_help=True)
    cli.add_typer(app, name="recipe")
    console = Console()
    SetOption = typer.Option([], "--set", help="Override a recipe var: --set policy=Qwen/Qwen3-0.6B (repeatable).")

    @app.command("list")
    def list_cmd():
        """The recipes and what each runs."""
        table = Table("recipe", "framework", "what it runs")
        for name in list_recipes():
            r = load_recipe(name)
            table.add_row(name, r.framework, r.description)
        console.print(table)

    @app.command("show")
    def show_cmd(name: str = typer.Argument(..., help="A recipe name (pgenrm recipe list)."),
                 sets: list[str] = SetOption):
        """Print the exact command and environment a recipe runs, with its vars filled."""
        try:
            recipe = load_recipe(name)
            argv, env = recipe.render(parse_sets(sets))
        except RecipeError as exc:
            fail(exc)
        for key, value in env.items():
            print(f"{key}={shlex.quote(value)} \\")
        print(" \\\n    ".join(shlex.quote(a) for a in argv))

    @app.command("prepare")
    def prepare_cmd(
        name: str = typer.Argument(..., help="A recipe name: its framework decides the file layout."),
        data: Path = typer.Option(..., help="PersonalRewardBench rows (.jsonl or .parquet); "
                                            "train rows become prompts."),
        sets: list[str] = SetOption,
        strict: bool = typer.Option(False, help="Refuse the data if any row is bad (default: report and skip)."),
    ):
        """Turn PersonalRewardBench rows into the recipe's training file (data_file)."""
        from pgenrm_plugins.datasets.bench import BadRowsError, load_bench
        from pgenrm_plugins.frameworks.prepare import prepare

        try:
            recipe = load_recipe(name)
            values = recipe.values(parse_sets(sets))
            if "data_file" not in values:
                raise RecipeError(f"recipe {name} makes its own data: run it with `pgenrm recipe run {name}`")
            bench = load_bench(data, strict=strict)
            for error in bench.errors:
                console.print(f"[yellow]skipped[/yellow] {data}: {error}")
            # A personalization recipe trains for one user (var `user`) and may set the history it carries
            # (var `max_history`; 0: the non-personal control).
            user = values.get("user") or None
            path = prepare(bench, recipe.framework, Path(values["data_file"]).parent,
                           max_history=int(values.get("max_history", 8)), user=user)
        except (RecipeError, BadRowsError, FileNotFoundError, ValueError) as exc:
            fail(exc)
        n = sum(1 for r in bench.split("train") if user is None or r.user_id == user)
        console.print(f"wrote {path} ({recipe.framework} layout, {n} prompts{f' of user {user}' if user else ''})")

    @app.command("run")
    def run_cmd(
        name: str = typer.Argument(..., help="A recipe name (pgenrm recipe list)."),
        sets: list[str] = SetOption,
        dry_run: bool = typer.Option(False, "--dry-run", help="Check and print the command, do not start it."),
    ):
        """Check the data, config and store, then start the framework's run."""
        try:
            argv = run(load_recipe(name), parse_sets(sets), dry_run=dry_run)
        except RecipeError as exc:
            fail(exc)
        print(" ".join(shlex.quote(a) for a in argv))
