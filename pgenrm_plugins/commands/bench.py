"""`pgenrm bench ...`: speed, service, accuracy, train cost, lookup; each measured side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pgenrm_plugins import plugins
from pgenrm_plugins.commands import config_option, fail, wide_console
from pgenrm_plugins.hookspecs import hookimpl

bench_app = typer.Typer(help="Benchmarks: speed and accuracy, measured side by side.", no_args_is_help=True)


@bench_app.command("speed")
def bench_speed(
    config: Optional[Path] = config_option(),
    prompts: int = typer.Option(8, min=1, help="Prompts in the GRPO-shaped batch (one user each)."),
    completions: int = typer.Option(8, min=2, help="Completions per prompt (GRPO's num_generations)."),
    chains: int = typer.Option(2, min=1, help="Evaluation chains sampled per judgement (Ind-N)."),
    max_new_tokens: int = typer.Option(192, min=16, help="Token budget of one evaluation chain."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Rewards/s and generated tokens per reward: the paper's way against group mode, same model, same run."""
    from pgenrm_plugins.bench.speed import run_speed

    run_speed(config, prompts, completions, chains, max_new_tokens, output, console=wide_console(110))


@bench_app.command("pairs")
def bench_pairs(
    config: Optional[Path] = config_option(),
    prompts: int = typer.Option(2, min=1, help="Prompts in the GRPO-shaped batch (one user each)."),
    completions: int = typer.Option(4, min=2, help="Completions per prompt (GRPO's num_generations)."),
    chains: int = typer.Option(1, min=1, help="Evaluation chains sampled per comparison (Ind-N)."),
    max_new_tokens: int = typer.Option(96, min=16, help="Token budget of one evaluation chain."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Judge calls, prompt and generated tokens per reward: group mode against a pairwise-only judge's
    two rewards (against the reference, and a tournament of the group), same batch, same judge, same run."""
    from pgenrm_plugins.bench.speed import PAIR_SETUPS, run_speed

    run_speed(config, prompts, completions, chains, max_new_tokens, output, console=wide_console(120),
              setups=PAIR_SETUPS)


@bench_app.command("judges")
def bench_judges(
    judge: list[str] = typer.Option(
        ["embedded:smollm2-135m-direct-v1", "embedded:smollm2-135m-synthesis-v1"],
        help="A judge to time: embedded:NAME (see `pgenrm config`) or a judge folder; repeat the option."),
    prompts: int = typer.Option(8, min=1, help="Users in a GRPO-shaped batch (one prompt each)."),
    completions: int = typer.Option(8, min=2, help="Completions per prompt (GRPO's num_generations)."),
    steps: int = typer.Option(3, min=1, help="GRPO steps: the same users, other prompts."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Rewards/s of judges side by side over several GRPO steps of the same users: step 1 reads each
    history for the first time; later steps reuse what a judge keeps per user."""
    from pgenrm_plugins.bench.speed import run_judges

    run_judges(judge, prompts, completions, steps, output, console=wide_console(120))


@bench_app.command("prototypes")
def bench_prototypes(
    store: Path = typer.Option(..., "--store", help="A SQLite store built by `pgenrm prototypes build`. Each setup "
                                                    "runs on its own copy, its synthesis cache emptied (unless "
                                                    "--keep-cache); the file is not written."),
    config: Optional[Path] = config_option(),
    top_k: list[int] = typer.Option([4], "--top-k", min=1, help="Neighbours per user (Pro-k); repeat the option."),
    prompts: int = typer.Option(8, min=1, help="Users in a GRPO-shaped batch (one prompt each)."),
    completions: int = typer.Option(8, min=2, help="Completions per prompt (GRPO's num_generations)."),
    steps: int = typer.Option(3, min=1, help="GRPO steps: the same users, other prompts."),
    keep_cache: bool = typer.Option(False, "--keep-cache", help="Keep the store's cached syntheses in the copies "
                                                                "(measure a store warmed by `pgenrm prototypes "
                                                                "warm`)."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """What prototype scaling costs: self alone against self + Pro-k, same judge, same GRPO steps of the
    same users, each placed among the store's members. Step 1 writes each neighbour's synthesis once;
    later steps reuse them."""
    from pgenrm_plugins.bench.speed import run_prototype_cost
    from pgenrm_plugins.config import ConfigError, config_dict

    try:
        cfg = config_dict(str(config) if config else None)
        run_prototype_cost(cfg, store, top_k, prompts, completions, steps, output, console=wide_console(120),
                           keep_cache=keep_cache)
    except (ConfigError, FileNotFoundError) as exc:
        fail(str(exc))


@bench_app.command("service")
def bench_service(
    config: Optional[Path] = config_option(),
    prompts: int = typer.Option(4, min=1, help="(user, prompt) groups in the rollout."),
    completions: int = typer.Option(8, min=1, help="Completions per group (n_samples_per_prompt), each sent as "
                                                   "its own request."),
    clients: int = typer.Option(32, min=1, help="Concurrent single-sample clients."),
    chains: int = typer.Option(1, min=1, help="Evaluation chains sampled per judgement (Ind-N)."),
    max_new_tokens: int = typer.Option(48, min=8, help="Token budget of one evaluation chain."),
    max_wait_ms: float = typer.Option(20.0, min=0, help="The service's batching window."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Rewards/s of the scoring service: concurrent single-sample /get_reward clients against the same requests
    one at a time."""
    from pgenrm_plugins.bench.service import run_service_bench

    run_service_bench(config, prompts, completions, clients, chains, max_new_tokens, max_wait_ms, output,
                      console=wide_console(110))


@bench_app.command("workers")
def bench_workers(
    config: Optional[Path] = config_option(),
    prompts: int = typer.Option(8, min=1, help="(user, prompt) groups in the batch."),
    completions: int = typer.Option(8, min=1, help="Samples per group (GRPO's rollout.n)."),
    workers: int = typer.Option(4, min=1, help="Reward workers (verl's reward.num_workers)."),
    chains: int = typer.Option(1, min=1, help="Evaluation chains sampled per judgement (Ind-N)."),
    max_new_tokens: int = typer.Option(48, min=8, help="Token budget of one evaluation chain."),
    max_wait_ms: float = typer.Option(500.0, min=0, help="The service's batching window (workers start a few ms "
                                                         "apart)."),
    seed: int = typer.Option(0, help="Seed of the reordering that stands in for verl's trainer.balance_batch."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """One verl-shaped batch split over reward workers: each with its own judge, against all sharing one
    `pgenrm serve`. Wall time, chains written, judge memory."""
    from pgenrm_plugins.bench.workers import run_workers_bench

    run_workers_bench(config, prompts, completions, workers, chains, max_new_tokens, max_wait_ms, seed, output,
                      console=wide_console(120))


@bench_app.command("ray-transport")
def bench_ray_transport(
    samples: int = typer.Option(64, min=1, help="One-sample calls per round (a verl batch: prompts x rollout.n)."),
    concurrency: int = typer.Option(16, min=1, help="Calls in flight at once."),
    rounds: int = typer.Option(5, min=1, help="Rounds each way, alternating."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Inside a Ray cluster: a Ray Serve handle against HTTP through Serve's proxy, per call, transport only."""
    from pgenrm_plugins.bench.ray_transport import run_ray_transport

    run_ray_transport(samples, concurrency, rounds, output, console=wide_console(110))


@bench_app.command("accuracy")
def bench_accuracy(
    data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows (.jsonl or .parquet); "
                                                  "the test split is judged."),
    report: Path = typer.Option(..., "--report", help="Folder for report.json, report.md, the plots and "
                                                      "the judge cache."),
    config: Optional[Path] = config_option(),
    store: Optional[str] = typer.Option(None, help="Prototype store for the ind-N+pro-K settings: a SQLite file, "
                                                   "or a YAML file with a store section."),
    settings: Optional[list[str]] = typer.Option(None, help="Comma-separated settings: no-history, global-history, "
                                                            "ind-N, ind-N+pro-K, each optionally :MODE, :READER "
                                                            "or :persona (the judge also reads the user's stated "
                                                            "preferences: a users file's or the rows' persona fields). "
                                                            "Default: no-history,global-history,ind-1,ind-2,ind-4,"
                                                            "ind-8 (+ ind-2+pro-2,ind-2+pro-4 with --store)."),
    truth: Optional[Path] = typer.Option(None, help="Latent truth of synthetic data; default: DATA's NAME.truth.json "
                                                    "when present."),
    cache: Optional[Path] = typer.Option(None, help="Judge-output cache (SQLite); default: REPORT/judge-cache.sqlite. "
                                                    "Reruns reuse it."),
    max_test_rows: Optional[int] = typer.Option(None, min=1, help="Judge only the first this many test rows."),
    restart: bool = typer.Option(False, "--restart", help="Judge every row again instead of resuming "
                                                          "REPORT/progress.jsonl."),
):
    """Personalized pairwise accuracy on the test split: both orders, ties and failures counted, 95% CIs.

    Each judged batch of rows is kept in REPORT/progress.jsonl: rerunning an interrupted command
    judges only what is missing, setting by setting."""
    from pgenrm_plugins.bench.accuracy import AccuracyError, run_accuracy
    from pgenrm_plugins.config import ConfigError

    try:
        run_accuracy(data, report, config=str(config) if config else None, store=store, settings=settings,
                     truth_path=truth, cache_path=cache, max_test_rows=max_test_rows, restart=restart)
    except (AccuracyError, ConfigError, FileNotFoundError, plugins.UnknownPluginError) as exc:
        fail(str(exc))

@bench_app.command("train")
def bench_train(
    data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows (train users), "
                                                  "e.g. from `pgenrm data synth`."),
    steps: int = typer.Option(4, min=1, help="Optimizer steps per trainer."),
    items: int = typer.Option(2, min=1, help="Items (one history view + its candidates) per step."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Cost of the score stage on this machine: the shared-prefix trainer against TRL's SFTTrainer, same items,
    same run."""
    from pgenrm_plugins.bench.train_cost import run_train_cost

    run_train_cost(data, steps=steps, items_per_step=items, output=output, console=wide_console(110))


@bench_app.command("lookup")
def bench_lookup(
    sizes: str = typer.Option("10000,100000,1000000", help="Store sizes (members), comma-separated."),
    dim: int = typer.Option(384, min=2, help="Embedding dimension."),
    prototypes: int = typer.Option(100, min=1, help="Prototypes (K)."),
    top_k: int = typer.Option(8, min=1, help="Members returned per lookup."),
    stores: str = typer.Option("sqlite,postgres", help="Stores to measure, comma-separated."),
    indexes: str = typer.Option("baseline,fp32,fp16,sq8",
                                help="Member indexes, comma-separated: baseline (the old hand-written one), "
                                     "or faiss with fp32, fp16 or sq8 storage."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Prototype lookup latency (nearest prototype + top-k members) against store size, load time and index memory.

    PostgreSQL: $PGENRM_POSTGRES_DSN, else a private server started from /usr/lib/postgresql/*/bin.
    """
    from pgenrm_plugins.bench.lookup import run_lookup

    try:
        size_list = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        fail(f"--sizes: expected comma-separated integers, got {sizes!r}")
    from pgenrm_plugins.prototypes.index import STORAGES

    index_list = [x.strip() for x in indexes.split(",") if x.strip()]
    unknown = [x for x in index_list if x != "baseline" and x not in STORAGES]
    if unknown or not index_list:
        fail(f"--indexes: unknown {unknown or indexes!r}; use baseline and/or {', '.join(STORAGES)}")
    run_lookup(size_list, dim, prototypes, top_k, [x.strip() for x in stores.split(",") if x.strip()], output,
               indexes=index_list, console=wide_console(150))


@hookimpl
def register_commands(cli):
    cli.add_typer(bench_app, name="bench")
