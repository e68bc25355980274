"""The `pgenrm` command line. Plugins add commands through the `register_commands` hook."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pgenrm_plugins import plugins

app = typer.Typer(
    help="P-GenRM: a personalized generative reward model for TRL, verl and OpenRLHF.\n\n"
    "Start with `pgenrm score --input examples/requests.jsonl --show` (embedded CPU judge, no config needed).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: speed and accuracy, measured side by side.", no_args_is_help=True)
app.add_typer(bench_app, name="bench")
err = Console(stderr=True)

ConfigOption = typer.Option(None, "--config", "-c", help="YAML or TOML config; default: $PGENRM_CONFIG, else the embedded judge.")


def _fail(message: str, code: int = 2):
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def _load_scorer(config: Optional[Path]):
    from pgenrm_plugins.config import ConfigError
    from pgenrm_plugins.scoring import load_scorer

    try:
        with err.status("loading the judge..."):
            return load_scorer(str(config) if config else None)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def score(
    input: Path = typer.Option(..., "--input", "-i", help="Requests, one JSON object per line (.jsonl) or row (.parquet)."),
    config: Optional[Path] = ConfigOption,
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results here (JSONL); default: stdout."),
    batch_size: int = typer.Option(8, min=1, help="Requests scored together in one backend call."),
    show: bool = typer.Option(False, help="Print a table of rewards and the first evaluation chain of each request."),
):
    """Score completions for users: one result line per request line, in the same order.

    A request line: {"user_id": "u1", "history": [{"prompt": ..., "chosen": ..., "rejected": ...}],
    "prompt": "..." or [{"role": "user", "content": "..."}], "completions": ["...", "..."],
    "reference": "..." (pairwise mode)}. A result line: {"rewards": [...], "components": {...}},
    or {"line": N, "error": "..."} for a line that could not be read.
    """
    from rich.progress import Progress

    from pgenrm_plugins.requests_io import LineError, read_requests

    try:
        items = list(read_requests(input))
    except (FileNotFoundError, plugins.UnknownPluginError, ImportError) as exc:
        _fail(str(exc))
    for item in items:
        if isinstance(item, LineError):
            err.print(f"[yellow]skipped[/yellow] {input}: {item}", highlight=False)
    scorer = _load_scorer(config)
    results: list[dict] = [
        {"line": item.line, "error": item.message} if isinstance(item, LineError) else {} for item in items
    ]
    todo = [i for i, item in enumerate(items) if not isinstance(item, LineError)]
    with Progress(console=err, transient=True) as progress:
        task = progress.add_task("scoring", total=len(todo))
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            for i, result in zip(chunk, scorer.score([items[i] for i in chunk])):
                results[i] = result.model_dump()
            progress.advance(task, len(chunk))
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
    out = open(output, "w", encoding="utf-8") if output else sys.stdout
    try:
        for r in results:
            out.write(json.dumps(r) + "\n")
    finally:
        if output:
            out.close()
    if show:
        _show(items, results)
    bad = sum(isinstance(item, LineError) for item in items)
    if bad:
        err.print(f"{bad} of {len(items)} lines could not be read; their result lines carry the error.")
        raise typer.Exit(1)


def _show(items, results) -> None:
    console = Console(stderr=True)
    for item, result in zip(items, results):
        if "error" in result:
            continue
        c = result["components"]
        table = Table(title=f"user {item.user_id or '(anonymous)'}: {c['mode']} mode, {c['reader']} reader", title_justify="left")
        table.add_column("reward", justify="right")
        table.add_column("completion")
        for reward, completion in zip(result["rewards"], item.completions):
            table.add_row(f"{reward:.3f}", completion[:100] + ("..." if len(completion) > 100 else ""))
        console.print(table)
        console.print(
            f"chains sampled {c['chains_sampled']}, parse failures {c['parse_failures']} {c['failure_kinds'] or ''}, "
            f"criteria fallbacks {c['criteria_fallbacks']}, generated tokens {c['generated_tokens']}",
            highlight=False,
        )
        if c.get("evaluation"):
            console.print("[bold]first evaluation chain:[/bold]")
            console.print(c["evaluation"].strip(), markup=False, highlight=False)
        console.print()


@app.command()
def serve(
    config: Optional[Path] = ConfigOption,
    host: str = typer.Option("127.0.0.1", help="Interface to bind. Anything but loopback: set $PGENRM_API_KEY too."),
    port: int = typer.Option(8017, min=1, max=65535, help="TCP port."),
    max_wait_ms: float = typer.Option(20.0, min=0, help="Batching window: how long a waiting request waits for batch-mates."),
    max_batch_requests: int = typer.Option(64, min=1, help="Most caller requests in one backend batch."),
    log_level: str = typer.Option("info", help="uvicorn log level (debug, info, warning, error)."),
    ray: bool = typer.Option(False, "--ray", help="Serve as a Ray Serve deployment (joins $RAY_ADDRESS or a local `ray start` cluster, else starts one)."),
    replicas: int = typer.Option(2, min=1, help="With --ray: scoring replicas, each with its own judge."),
    replica_cpus: float = typer.Option(1.0, min=0, help="With --ray: CPUs reserved per replica."),
    replica_gpus: float = typer.Option(0.0, min=0, help="With --ray: GPUs per replica (fractions share one GPU)."),
):
    """Serve the scorer over HTTP: POST /v1/score, POST /get_reward (OpenRLHF), GET /healthz, GET /metrics.

    OpenRLHF: --reward.remote_url http://HOST:PORT/get_reward --data.label_key label.
    A bearer token is required when $PGENRM_API_KEY is set. See docs/service.md.
    """
    try:
        from pgenrm_plugins.server.app import ServerSettings
        from pgenrm_plugins.server.app import serve as run_service
    except ImportError as exc:
        _fail(f"the service needs the server extra: pip install 'pgenrm-plugins[server]' ({exc})")
    from pgenrm_plugins.config import ConfigError

    settings = ServerSettings(max_wait_ms=max_wait_ms, max_batch_requests=max_batch_requests)
    try:
        if ray:
            try:
                from pgenrm_plugins.server import ray_serve
            except ImportError as exc:
                _fail(f"--ray needs the ray extra: pip install 'pgenrm-plugins[ray]' ({exc})")
            err.print(f"deploying {replicas} replicas on Ray; serving at http://{host}:{port} once they are up (Ctrl-C stops)")
            ray_serve.run(str(config) if config else None, host=host, port=port, settings=settings, replicas=replicas,
                          replica_cpus=replica_cpus, replica_gpus=replica_gpus)
        else:
            run_service(str(config) if config else None, host=host, port=port, settings=settings, log_level=log_level)
    except ConfigError as exc:
        _fail(str(exc))


@app.command("plugins")
def list_plugins(kind: Optional[str] = typer.Option(None, help=f"Only this kind: {', '.join(plugins.KINDS)}.")):
    """List registered backends, embedders, stores, adapters and loaders, with their distribution."""
    kinds = [kind] if kind else list(plugins.KINDS)
    table = Table("kind", "name", "distribution", "description")
    try:
        for k in kinds:
            for name, entry in sorted(plugins.registry(k).items()):
                table.add_row(k, name, entry.distribution, entry.description)
    except plugins.UnknownPluginError as exc:
        _fail(str(exc))
    Console().print(table)


@app.command("config")
def show_config(config: Optional[Path] = ConfigOption):
    """Validate a config and print it with every default filled in."""
    import yaml

    from pgenrm_plugins.config import ConfigError, load_config

    try:
        cfg = load_config(str(config) if config else None)
    except ConfigError as exc:
        _fail(str(exc))
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@bench_app.command("speed")
def bench_speed(
    config: Optional[Path] = ConfigOption,
    prompts: int = typer.Option(8, min=1, help="Prompts in the GRPO-shaped batch (one user each)."),
    completions: int = typer.Option(8, min=2, help="Completions per prompt (GRPO's num_generations)."),
    chains: int = typer.Option(2, min=1, help="Evaluation chains sampled per judgement (Ind-N)."),
    max_new_tokens: int = typer.Option(192, min=16, help="Token budget of one evaluation chain."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Rewards/s and generated tokens per reward: the paper's way against group mode, same model, same run."""
    from pgenrm_plugins.bench.speed import run_speed

    run_speed(config, prompts, completions, chains, max_new_tokens, output, console=Console(width=max(Console().width, 110)))


@bench_app.command("service")
def bench_service(
    config: Optional[Path] = ConfigOption,
    prompts: int = typer.Option(4, min=1, help="(user, prompt) groups in the rollout."),
    completions: int = typer.Option(8, min=1, help="Completions per group (n_samples_per_prompt), each sent as its own request."),
    clients: int = typer.Option(32, min=1, help="Concurrent single-sample clients."),
    chains: int = typer.Option(1, min=1, help="Evaluation chains sampled per judgement (Ind-N)."),
    max_new_tokens: int = typer.Option(48, min=8, help="Token budget of one evaluation chain."),
    max_wait_ms: float = typer.Option(20.0, min=0, help="The service's batching window."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Rewards/s of the scoring service: concurrent single-sample /get_reward clients against the same requests one at a time."""
    from pgenrm_plugins.bench.service import run_service_bench

    run_service_bench(config, prompts, completions, clients, chains, max_new_tokens, max_wait_ms, output,
                      console=Console(width=max(Console().width, 110)))


@bench_app.command("accuracy")
def bench_accuracy(
    data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows (.jsonl or .parquet); the test split is judged."),
    report: Path = typer.Option(..., "--report", help="Folder for report.json, report.md, the plots and the judge cache."),
    config: Optional[Path] = ConfigOption,
    store: Optional[str] = typer.Option(None, help="Prototype store for the ind-N+pro-K settings: a SQLite file, or a YAML file with a store section."),
    settings: Optional[list[str]] = typer.Option(None, help="Comma-separated settings: no-history, global-history, ind-N, ind-N+pro-K, each optionally :MODE or :READER. Default: no-history,global-history,ind-1,ind-2,ind-4,ind-8 (+ ind-2+pro-2,ind-2+pro-4 with --store)."),
    truth: Optional[Path] = typer.Option(None, help="Latent truth of synthetic data; default: DATA's NAME.truth.json when present."),
    cache: Optional[Path] = typer.Option(None, help="Judge-output cache (SQLite); default: REPORT/judge-cache.sqlite. Reruns reuse it."),
    max_test_rows: Optional[int] = typer.Option(None, min=1, help="Judge only the first this many test rows."),
):
    """Personalized pairwise accuracy on the test split: both orders, ties and failures counted, 95% CIs."""
    from pgenrm_plugins.bench.accuracy import AccuracyError, run_accuracy
    from pgenrm_plugins.config import ConfigError

    try:
        run_accuracy(data, report, config=str(config) if config else None, store=store, settings=settings,
                     truth_path=truth, cache_path=cache, max_test_rows=max_test_rows)
    except (AccuracyError, ConfigError, FileNotFoundError, plugins.UnknownPluginError) as exc:
        _fail(str(exc))

@bench_app.command("train")
def bench_train(
    data: Path = typer.Option(..., "--data", help="PersonalRewardBench rows (train users), e.g. from `pgenrm data synth`."),
    steps: int = typer.Option(4, min=1, help="Optimizer steps per trainer."),
    items: int = typer.Option(2, min=1, help="Items (one history view + its candidates) per step."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Cost of the score stage on this machine: the shared-prefix trainer against TRL's SFTTrainer, same items, same run."""
    from pgenrm_plugins.bench.train_cost import run_train_cost

    run_train_cost(data, steps=steps, items_per_step=items, output=output, console=Console(width=max(Console().width, 110)))


@bench_app.command("lookup")
def bench_lookup(
    sizes: str = typer.Option("10000,100000,1000000", help="Store sizes (members), comma-separated."),
    dim: int = typer.Option(384, min=2, help="Embedding dimension."),
    prototypes: int = typer.Option(100, min=1, help="Prototypes (K)."),
    top_k: int = typer.Option(8, min=1, help="Members returned per lookup."),
    stores: str = typer.Option("sqlite,postgres", help="Stores to measure, comma-separated."),
    output: Optional[Path] = typer.Option(None, help="Also write the numbers as JSON here."),
):
    """Prototype lookup latency (nearest prototype + top-k members) against store size, load time and index memory.

    PostgreSQL: $PGENRM_POSTGRES_DSN, else a private server started from /usr/lib/postgresql/*/bin.
    """
    from pgenrm_plugins.bench.lookup import run_lookup

    try:
        size_list = [int(x) for x in sizes.split(",") if x.strip()]
    except ValueError:
        _fail(f"--sizes: expected comma-separated integers, got {sizes!r}")
    run_lookup(size_list, dim, prototypes, top_k, [x.strip() for x in stores.split(",") if x.strip()], output,
               console=Console(width=max(Console().width, 120)))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own progress is shown instead
    plugins.register_commands(app)
    app()


if __name__ == "__main__":
    main()
