"""`pgenrm score`, `pgenrm serve`, `pgenrm plugins`, `pgenrm config`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from pgenrm_plugins import plugins
from pgenrm_plugins.commands import config_option, err, fail, load_scorer_or_fail
from pgenrm_plugins.hookspecs import hookimpl


def with_store(config: Optional[Path], store: str) -> dict:
    """The config (a file, or the default) as a dict, with prototype scaling on from `store`."""
    from pgenrm_plugins.bench.accuracy.settings import AccuracyError, store_config
    from pgenrm_plugins.config import ConfigError, config_dict

    try:
        cfg = config_dict(str(config) if config else None)
        section = store_config(store)
    except (ConfigError, AccuracyError) as exc:
        fail(str(exc))
    return {**cfg, "store": section, "prototypes": {**cfg.get("prototypes", {}), "enabled": True}}


def score(
    input: Path = typer.Option(..., "--input", "-i", help="Requests, one JSON object per line (.jsonl) "
                                                          "or row (.parquet)."),
    config: Optional[Path] = config_option(),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write results here (JSONL); default: stdout. "
                                                                      "A rerun resumes an unfinished OUTPUT."),
    batch_size: int = typer.Option(8, min=1, help="Requests scored together in one backend call."),
    show: bool = typer.Option(False, help="Print a table of rewards and the first evaluation chain of each request."),
    restart: bool = typer.Option(False, "--restart", help="Score every line again, replacing OUTPUT, instead of "
                                                          "resuming it."),
    store: Optional[str] = typer.Option(None, "--store", help="Score with prototype scaling from this store (a "
                                                              "SQLite file or postgresql:// URL that `pgenrm "
                                                              "prototypes build` wrote): the config's prototypes "
                                                              "section, switched on, with this store."),
):
    """Score completions for users: one result line per request line, in the same order.

    A request line: {"user_id": "u1", "history": [{"prompt": ..., "chosen": ..., "rejected": ...}],
    "prompt": "..." or [{"role": "user", "content": "..."}], "completions": ["...", "..."],
    "reference": "..." (pairwise mode)}. A result line: {"rewards": [...], "components": {...}},
    or {"line": N, "error": "..."} for a line that could not be read.

    Lines are written as they are scored. OUTPUT.run.json records the input's hash and the scoring
    settings; rerunning the same command after a kill keeps OUTPUT's lines and scores the rest.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from pgenrm_plugins.requests_io import InOrder, LineError, file_sha256, iter_rows, read_requests

    try:
        total = sum(1 for _ in iter_rows(input))  # streamed: only counted, for the progress bar
        input_sha256 = file_sha256(input)
    except (FileNotFoundError, plugins.UnknownPluginError, ImportError) as exc:
        fail(str(exc))
    done, record = _resume_point(output, input, input_sha256, restart) if output else (0, None)
    scorer = load_scorer_or_fail(with_store(config, store) if store else config)
    if output:
        settings, store_version = json.loads(scorer.identity())
        run = {"input": str(input), "input_sha256": input_sha256, "settings": settings, "store_version": store_version}
        output.parent.mkdir(parents=True, exist_ok=True)
        _check_or_write_record(output, record, run)
    if done:
        err.print(f"resuming {output}: {done} of {total} lines already scored, scoring the other {total - done}",
                  highlight=False)
    out = open(output, "a", encoding="utf-8") if output else sys.stdout
    writer = InOrder(out, next_index=done)
    batch: list[tuple[int, object]] = []
    bad = scored = rewards = 0
    columns = (TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())
    # Batches can take minutes on a CPU: estimate the time left over the whole run, not rich's last 30 s.
    with Progress(*columns, console=err, transient=True, speed_estimate_period=24 * 3600) as progress:
        task = progress.add_task("scoring", total=total, completed=done, rate="")
        started = time.perf_counter()

        def score_batch():
            nonlocal scored, rewards
            results = [r.model_dump() for r in scorer.score([item for _, item in batch])]
            writer.put({i: json.dumps(r) + "\n" for (i, _), r in zip(batch, results)})
            if show:
                _show([item for _, item in batch], results)
            scored += len(batch)
            rewards += sum(len(r["rewards"]) for r in results)
            batch.clear()
            progress.update(task, completed=writer.next,
                            rate=f"{rewards / (time.perf_counter() - started):.2f} rewards/s")

        try:
            for index, item in enumerate(read_requests(input)):
                bad += isinstance(item, LineError)
                if index < done:  # already in OUTPUT
                    continue
                if isinstance(item, LineError):
                    err.print(f"[yellow]skipped[/yellow] {input}: {item}", highlight=False)
                    writer.put({index: json.dumps({"line": item.line, "error": item.message}) + "\n"})
                else:
                    batch.append((index, item))
                # A bad line waits for the batch above it; enough of them score the batch early, so what
                # waits stays bounded. Batches depend only on the input: a resumed run scores the same ones.
                if len(batch) >= batch_size or (batch and len(writer.waiting) >= batch_size):
                    score_batch()
            if batch:
                score_batch()
            progress.update(task, completed=writer.next)
        finally:
            if output:
                out.close()
    seconds = time.perf_counter() - started
    err.print(f"scored {scored} requests ({rewards} rewards) in {seconds:.1f} s, "
              f"{rewards / seconds if seconds else 0:.2f} rewards/s" + (f"; kept the {done} lines already in {output}"
                                                                        if done else ""), highlight=False)
    if bad:
        err.print(f"{bad} of {total} lines could not be read; their result lines carry the error.")
        raise typer.Exit(1)


def _resume_point(output: Path, input: Path, input_sha256: str, restart: bool) -> tuple[int, dict | None]:
    """How many of OUTPUT's lines a run may keep, and the record of the run that wrote them. Refuses
    an OUTPUT of another input, or one with no record, before the judge is loaded."""
    from pgenrm_plugins.requests_io import complete_lines, read_run_record, run_record_path

    if restart:
        output.unlink(missing_ok=True)
        run_record_path(output).unlink(missing_ok=True)
    if not output.exists():
        return 0, None
    record = read_run_record(output)
    again = "pass --restart to score every line again into it, or choose another --output"
    if record is None:
        fail(f"{output} exists, and no {run_record_path(output).name} beside it says what it was scored from: {again}")
    if record["input_sha256"] != input_sha256:
        fail(f"{output} holds results of another input: it was scored from {record['input']} (sha256 "
             f"{record['input_sha256'][:12]}...), and {input} has sha256 {input_sha256[:12]}...: {again}")
    try:
        return complete_lines(output), record
    except ValueError as exc:
        fail(f"{exc}; or {again}")


def _check_or_write_record(output: Path, record: dict | None, run: dict) -> None:
    """Resuming: the settings must be the ones OUTPUT's lines were scored with, else the error names
    each difference. Starting: record this run's input and settings before the first line."""
    from pgenrm_plugins.requests_io import differences, run_record_path, write_run_record

    if record is None:
        write_run_record(output, run)
        return
    changed = differences({k: record.get(k) for k in ("settings", "store_version")},
                          {k: run[k] for k in ("settings", "store_version")})
    if changed:
        fail(f"{output} was scored with other settings than this run's ({run_record_path(output).name}): "
             f"{'; '.join(changed)}. Rerun with the config it was scored with, pass --restart to score every line "
             "again, or choose another --output")


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
    """Validate a config and print the settings in force: every default filled in, and the judge's
    own settings (its manifest's `scoring` block) where the config leaves them unset, each named."""
    import yaml

    from pgenrm_plugins.backends.judge_folder import judge_settings, with_judge_defaults
    from pgenrm_plugins.config import ConfigError, load_config

    try:
        cfg = load_config(str(config) if config else None)
        filled, in_force = judge_settings(cfg), with_judge_defaults(cfg)  # both read the judge's manifest
    except ConfigError as exc:  # a ManifestError too
        fail(str(exc))
    typer.echo(yaml.safe_dump(in_force.model_dump(mode="json"), sort_keys=False).rstrip())
    if filled:
        typer.echo("# from the judge's manifest (set any of them to override): "
                   + ", ".join(f"{section}.{key}" for section, key in filled))


@hookimpl
def register_commands(cli):
    cli.command("score")(score)
    cli.command("serve")(serve)
    cli.command("plugins")(list_plugins)
    cli.command("config")(show_config)
