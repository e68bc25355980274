"""`pgenrm score`, `pgenrm serve`, `pgenrm plugins`, `pgenrm config`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pgenrm_plugins import plugins
from pgenrm_plugins.commands import config_option, err, fail, load_scorer_or_fail
from pgenrm_plugins.hookspecs import hookimpl


def score(
    input: Path = typer.Option(..., "--input", "-i", help="Requests, one JSON object per line (.jsonl) "
                                                          "or row (.parquet)."),
    config: Optional[Path] = config_option(),
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
        fail(str(exc))
    for item in items:
        if isinstance(item, LineError):
            err.print(f"[yellow]skipped[/yellow] {input}: {item}", highlight=False)
    scorer = load_scorer_or_fail(config)
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
        table = Table(title=f"user {item.user_id or '(anonymous)'}: {c['mode']} mode, {c['reader']} reader",
                      title_justify="left")
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


def serve(
    config: Optional[Path] = config_option(),
    host: str = typer.Option("127.0.0.1", help="Interface to bind. Anything but loopback: set $PGENRM_API_KEY too."),
    port: int = typer.Option(8017, min=1, max=65535, help="TCP port."),
    max_wait_ms: float = typer.Option(20.0, min=0, help="Batching window: how long a waiting request waits "
                                                        "for batch-mates."),
    max_batch_requests: int = typer.Option(64, min=1, help="Most caller requests in one backend batch."),
    log_level: str = typer.Option("info", help="uvicorn log level (debug, info, warning, error)."),
    ray: bool = typer.Option(False, "--ray", help="Serve as a Ray Serve deployment (joins $RAY_ADDRESS or a local "
                                                  "`ray start` cluster, else starts one)."),
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
        fail(f"the service needs the server extra: pip install 'pgenrm-plugins[server]' ({exc})")
    from pgenrm_plugins.config import ConfigError

    settings = ServerSettings(max_wait_ms=max_wait_ms, max_batch_requests=max_batch_requests)
    try:
        if ray:
            try:
                from pgenrm_plugins.server import ray_serve
            except ImportError as exc:
                fail(f"--ray needs the ray extra: pip install 'pgenrm-plugins[ray]' ({exc})")
            err.print(f"deploying {replicas} replicas on Ray; serving at http://{host}:{port} once they are up "
                      "(Ctrl-C stops)")
            ray_serve.run(str(config) if config else None, host=host, port=port, settings=settings, replicas=replicas,
                          replica_cpus=replica_cpus, replica_gpus=replica_gpus)
        else:
            run_service(str(config) if config else None, host=host, port=port, settings=settings, log_level=log_level)
    except ConfigError as exc:
        fail(str(exc))


def list_plugins(kind: Optional[str] = typer.Option(None, help=f"Only this kind: {', '.join(plugins.KINDS)}.")):
    """List registered backends, embedders, stores, adapters and loaders, with their distribution."""
    kinds = [kind] if kind else list(plugins.KINDS)
    table = Table("kind", "name", "distribution", "description")
    try:
        for k in kinds:
            for name, entry in sorted(plugins.registry(k).items()):
                table.add_row(k, name, entry.distribution, entry.description)
    except plugins.UnknownPluginError as exc:
        fail(str(exc))
    Console().print(table)


def show_config(config: Optional[Path] = config_option()):
    """Validate a config and print it with every default filled in."""
    import yaml

    from pgenrm_plugins.config import ConfigError, load_config

    try:
        cfg = load_config(str(config) if config else None)
    except ConfigError as exc:
        fail(str(exc))
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@hookimpl
def register_commands(cli):
    cli.command("score")(score)
    cli.command("serve")(serve)
    cli.command("plugins")(list_plugins)
    cli.command("config")(show_config)
