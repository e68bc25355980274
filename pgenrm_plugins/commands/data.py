"""`pgenrm data synth`: synthetic PersonalRewardBench users with known preferences."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pgenrm_plugins.commands import err, fail
from pgenrm_plugins.datasets.bench import users_file_for
from pgenrm_plugins.datasets.synthetic import ATTRIBUTES, DEFAULT_DIFFS, RENDERINGS, TYPES, generate, write_bench
from pgenrm_plugins.hookspecs import hookimpl


def parse_diffs(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise ValueError(f"--diffs {text!r}: expected comma-separated whole numbers, e.g. 1,2,2,3") from None


@hookimpl
def register_commands(cli):
    data_app = typer.Typer(help="PersonalRewardBench data: synthetic users with known preferences.",
                           no_args_is_help=True)
    cli.add_typer(data_app, name="data")

    @data_app.command("synth")
    def synth(
        users: int = typer.Option(..., "--users", min=1, help="How many synthetic users."),
        out: Path = typer.Option(..., "--out", "-o", help="Rows file to write (.jsonl or .parquet); "
                                                          "the truth goes next to it as NAME.truth.json."),
        seed: int = typer.Option(0, help="Same seed, same rows."),
        rows_per_user: int = typer.Option(10, min=2, help="Rows of each warm user (train + val + test)."),
        test_per_user: Optional[int] = typer.Option(None, help="Test rows per user "
                                                               "(default: a quarter of rows_per_user)."),
        val_per_user: int = typer.Option(0, min=0, help="Val rows per user."),
        cold_start: float = typer.Option(0.2, min=0.0, max=0.99, help="Fraction of cold-start users (few train "
                                                                      "rows, see --cold-start-pairs)."),
        cold_start_pairs: int = typer.Option(1, min=0, help="Train rows of a cold-start user (0: no history at "
                                                            "all, reported as no-history)."),
        types: int = typer.Option(len(TYPES), min=1, max=len(TYPES), help="How many latent types to use."),
        noise: float = typer.Option(0.25, min=0.0, help="Per-user noise around the type's weights (std)."),
        sharpness: float = typer.Option(3.0, min=0.0, help="How strictly choices follow the weights "
                                                           "(Bradley-Terry scale)."),
        vary: str = typer.Option(",".join(ATTRIBUTES), help="Comma-separated attributes the two answers of a row "
                                                            "may differ on; train without one and test with only it "
                                                            "to hold it out."),
        diffs: str = typer.Option(",".join(map(str, DEFAULT_DIFFS)), help="How many attributes a row's two answers "
                                  "differ on, drawn per row from this comma-separated list (1: every choice turns on "
                                  "one attribute)."),
        rendering: str = typer.Option("default", help=f"How attributes are written: {', '.join(RENDERINGS)}, or "
                                      "several joined by commas, each row drawn among them (alt shares no wording "
                                      "with the others: train on default,plain,lively, test on alt)."),
    ):
        """Write synthetic PersonalRewardBench rows and their latent truth."""
        try:
            bench = generate(users, rows_per_user, seed, test_per_user=test_per_user, val_per_user=val_per_user,
                             cold_start_fraction=cold_start, n_types=types, user_noise=noise, sharpness=sharpness,
                             vary=tuple(a.strip() for a in vary.split(",") if a.strip()), rendering=rendering,
                             diffs=parse_diffs(diffs), cold_start_pairs=cold_start_pairs)
            rows_path, truth_path = write_bench(out, bench)
        except ValueError as exc:
            fail(exc)
        counts = {s: sum(r["split"] == s for r in bench.rows) for s in ("train", "val", "test")}
        n_cold = sum(u["cold_start"] for u in bench.truth["users"].values())
        err.print(
            f"wrote {len(bench.rows)} rows ({counts['train']} train, {counts['val']} val, {counts['test']} test) "
            f"of {users} users ({n_cold} cold-start, {types} types) to {rows_path}; stated preferences in "
            f"{users_file_for(rows_path)}; truth in {truth_path}",
            highlight=False,
        )

