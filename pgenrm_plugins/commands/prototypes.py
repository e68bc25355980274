"""`pgenrm prototypes ...`: build a prototype store, add users to it, warm its synthesis cache,
show what is in it.

STORE is where the prototypes live: a file path means the SQLite store in that file (created when
missing); a `postgresql://...` URL means the PostgreSQL store at that database. Without --store,
the config's `store:` section is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer
from rich.console import Console
from rich.table import Table

from pgenrm_plugins.commands import err, fail
from pgenrm_plugins.hookspecs import hookimpl

if TYPE_CHECKING:
    from pgenrm_plugins.prototypes.base import PrototypeStore

app = typer.Typer(
    help="User prototypes: cluster users by their preferences, so similar users can help score each other.\n\n"
    "Start with: pgenrm data synth --users 40 --out rows.jsonl; "
    "pgenrm prototypes build --data rows.jsonl --store protos.sqlite --skip-judge; "
    "pgenrm prototypes show --store protos.sqlite --plot protos.png",
    no_args_is_help=True,
)

StoreOption = typer.Option(
    None, "--store", "-s",
    help="A SQLite file path (created when missing), or a postgresql:// URL. Default: the config's `store:` section.",
)
ConfigOption = typer.Option(
    None, "--config", "-c",
    help="YAML or TOML config (judge, embedder, store); default: $PGENRM_CONFIG, else the embedded defaults.",
)


def store_choice(store: str | None, config):
    """The StoreConfig for --store (path -> sqlite, postgresql:// -> postgres), else the config's."""
    from pgenrm_plugins.config import StoreConfig

    if store is None:
        if config.store is None:
            fail("no store given: pass --store PATH.sqlite (or a postgresql:// URL), or set `store:` in the config")
        return config.store
    if store.startswith(("postgresql://", "postgres://")):
        name, options = "postgres", {"dsn": store}
    else:
        name, options = "sqlite", {"path": store}
    if config.store is not None and config.store.name == name:  # keep the config's other options
        options = {**config.store.options, **options}
    return StoreConfig(name=name, options=options)


def _load(config_path: Optional[Path]):
    from pgenrm_plugins.config import ConfigError, load_config

    try:
        return load_config(str(config_path) if config_path else None)
    except ConfigError as exc:
        fail(str(exc))


def _open_store(store: str | None, config):
    from pgenrm_plugins.plugins import UnknownPluginError
    from pgenrm_plugins.prototypes.base import StoreError

    choice = store_choice(store, config)
    try:
        return choice.build("store")
    except (StoreError, UnknownPluginError, ValueError, ImportError) as exc:
        fail(f"store {choice.name}: {exc}")


def _embedder(config):
    with err.status("loading the embedder..."):
        try:
            return config.embedder.build("embedder")
        except Exception as exc:  # noqa: BLE001 - any loading failure is reported the same way
            fail(f"embedder {config.embedder.name}: {exc}")


def _judge(config):
    with err.status("loading the judge..."):
        return config.backend.build("backend")


@app.command("build")
def build(
    data: Path = typer.Option(..., "--data", "-d", help="PersonalRewardBench rows (.jsonl or .parquet). "
                                                        "Each user's train rows are their history."),
    store: Optional[str] = StoreOption,
    config: Optional[Path] = ConfigOption,
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Number of prototypes (capped by the number of users). "
                                                             "Default: about one per 8 users, at most 100."),
    skip_judge: bool = typer.Option(False, "--skip-judge", help="Embed each user's history itself instead of a "
                                                                "preference synthesis written by the judge "
                                                                "(much faster, no judge needed); "
                                                                "the same as --source history."),
    source: Optional[str] = typer.Option(None, "--source", help="What places a user: synthesis (the judge's, "
                                                                "the default), history (prompt + preferred reply), or "
                                                                "contrast (what only the preferred reply says, "
                                                                "minus what only the rejected one says; no judge), or "
                                                                "analysis (PART 1 of a chain in the config's "
                                                                "chain.format, as the P-GenRM-8B pipeline embeds)."),
    strict: bool = typer.Option(False, "--strict", help="Refuse the whole file if any row is bad, instead of "
                                                        "reporting bad rows by line and skipping them."),
    batch_size: int = typer.Option(16, min=1, help="Users per judge call and per committed batch: an interrupted "
                                                   "build resumes after the last committed batch."),
    epochs: int = typer.Option(8, min=0, help="Epochs of the prototype updater (0: plain k-means prototypes)."),
    seed: Optional[int] = typer.Option(None, help="Seed of k-means and the updater; "
                                                  "default: the config's sampling.seed."),
):
    """Build user prototypes from PersonalRewardBench rows and publish them into STORE.

    For each user with train rows, the judge writes a preference synthesis (with --skip-judge the history itself
    is embedded instead); users are embedded, clustered with k-means and the prototypes refined with the paper's
    updater.

    Readers of STORE see the previous build until the new one is published in one transaction. After an
    interruption, run the same command again: it resumes with the users not yet committed.
    """
    from dataclasses import replace

    from pgenrm_plugins.datasets.bench import BadRowsError
    from pgenrm_plugins.prototypes.base import StoreError
    from pgenrm_plugins.prototypes.builder import build_prototypes
    from pgenrm_plugins.prototypes.sources import JUDGE_SOURCES, SourceSettings
    from pgenrm_plugins.prototypes.updater import UpdaterSettings

    cfg = _load(config)
    if not data.is_file():
        fail(f"--data: file not found: {data}")
    the_store = _open_store(store, cfg)
    embedder = _embedder(cfg)
    source = source or ("history" if skip_judge else "synthesis")
    backend = _judge(cfg) if source in JUDGE_SOURCES else None
    seed = cfg.sampling.seed if seed is None else seed
    try:
        report = build_prototypes(
            data, the_store, embedder, backend=backend, k=k, source=source, strict=strict,
            batch_size=batch_size, source_settings=SourceSettings(seed=seed, chain_format=cfg.chain.format),
            updater=replace(UpdaterSettings(), epochs=epochs, seed=seed), console=err,
        )
    except BadRowsError as exc:
        fail(f"{exc}\n(--strict refuses a file with bad rows; drop --strict to skip them with a report)")
    except (StoreError, ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    finally:
        the_store.close()
        if backend is not None:
            backend.close()
    u = report.updater
    err.print(
        f"published build {report.build_id}: {report.users} users in {report.k} prototypes "
        f"(source: {report.source}, embedder: {report.embedder}"
        + (f", {report.resumed_users} users resumed from an interrupted run" if report.resumed_users else "") + ")",
        highlight=False,
    )
    if u.get("examples"):
        err.print(f"updater: pairwise agreement {u['agreement_before']:.3f} -> {u['agreement_after']:.3f}, "
                  f"loss {u['loss_before']:.4f} -> {u['loss_after']:.4f} on {u['examples']} pairs", highlight=False)
    err.print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in report.seconds.items()), highlight=False)
    if report.bad_rows:
        err.print(f"[yellow]{len(report.bad_rows)} bad row(s) skipped[/yellow] (listed above by line)", highlight=False)
    if report.users_without_history:
        err.print(f"{len(report.users_without_history)} user(s) have no train rows and are not members "
                  "(they are scored as cold-start users)", highlight=False)


def _read_history(path: Path):
    """A history file: a JSON list of {prompt, chosen, rejected}, a JSON object {"history": [...],
    "persona": "..."}, or JSONL with one {prompt, chosen, rejected} per line."""
    from pydantic import ValidationError

    from pgenrm_plugins.requests_io import describe_validation_error
    from pgenrm_plugins.types import HistoryItem

    if not path.is_file():
        fail(f"--history: file not found: {path}")
    text = path.read_text(encoding="utf-8")
    persona = None
    try:
        whole = json.loads(text)
        entries = [(None, item) for item in whole] if isinstance(whole, list) else None
        if isinstance(whole, dict) and "history" in whole:
            persona = whole.get("persona")
            entries = [(None, item) for item in whole["history"] or []]
        elif isinstance(whole, dict):  # a one-line JSONL file: a single history item
            entries = [(1, whole)]
        if entries is None:
            fail(f"{path}: expected a JSON list of history items or an object with `history`")
    except json.JSONDecodeError:  # JSONL
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    entries.append((number, json.loads(line)))
                except json.JSONDecodeError as exc:
                    fail(f"{path}: line {number}: not valid JSON ({exc.msg} at column {exc.colno})")
    items = []
    for i, (line, item) in enumerate(entries):
        where = f"line {line}" if line else f"item {i}"
        try:
            items.append(HistoryItem.model_validate(item))
        except ValidationError as exc:
            fail(f"{path}: {where}: {describe_validation_error(exc)} "
                  "(each history item is {\"prompt\": ..., \"chosen\": ..., \"rejected\": ...})")
    return items, persona


@app.command("add-user")
def add_user_command(
    user_id: str = typer.Argument(..., help="The user's id (an existing id is updated)."),
    history: Optional[Path] = typer.Option(None, "--history", help="The user's past choices: JSON list or JSONL of "
                                                                   "{\"prompt\", \"chosen\", \"rejected\"}, "
                                                                   "or a JSON object "
                                                                   "{\"history\": [...], \"persona\": \"...\"}."),
    persona: Optional[str] = typer.Option(None, help="A persona text for the user (overrides the file's)."),
    store: Optional[str] = StoreOption,
    config: Optional[Path] = ConfigOption,
):
    """Add or update one user in the current build without rebuilding.

    The user is embedded the way the build embedded its members (the judge's synthesis, or the history itself for a
    --skip-judge build) and placed in the nearest prototype.
    """
    from pgenrm_plugins.prototypes.base import StoreError
    from pgenrm_plugins.prototypes.builder import add_user
    from pgenrm_plugins.prototypes.sources import JUDGE_SOURCES

    items, file_persona = _read_history(history) if history else ([], None)
    persona = persona or file_persona
    if not items and not persona:
        fail("give --history FILE (or at least --persona) to place the user by")
    cfg = _load(config)
    the_store = _open_store(store, cfg)
    backend = None
    try:
        prototypes = the_store.prototypes()
        if prototypes is None:
            fail("the store has no published build yet: run `pgenrm prototypes build` first")
        embedder = _embedder(cfg)
        if (prototypes.meta or {}).get("source") in JUDGE_SOURCES:
            backend = _judge(cfg)
        record = add_user(the_store, embedder, user_id, items, persona=persona, backend=backend)
    except (StoreError, ValueError) as exc:
        fail(str(exc))
    finally:
        the_store.close()
        if backend is not None:
            backend.close()
    err.print(f"user {record.user_id!r} ({len(record.history)} past choices) placed in prototype {record.prototype_id}",
              highlight=False)


def plot_prototypes(store: PrototypeStore, path: Path, max_points: int = 20000, seed: int = 0) -> int:
    """A 2-D PCA picture of the members, coloured by prototype, centroids marked. Returns points drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.decomposition import PCA

    prototypes = store.prototypes()
    ids, vectors, labels = [], [], []
    for user in store.users():
        if user.embedding is not None and user.prototype_id is not None:
            vectors.append(user.embedding)
            labels.append(user.prototype_id)
            ids.append(user.user_id)
    if not vectors:
        raise ValueError("the store has no members to draw")
    vectors, labels = np.stack(vectors), np.array(labels)
    if len(vectors) > max_points:  # a picture of a million points says no more than one of 20,000
        keep = np.random.default_rng(seed).choice(len(vectors), max_points, replace=False)
        vectors, labels = vectors[keep], labels[keep]
    centroids = prototypes.centroids
    both = np.concatenate([vectors, centroids])
    xy = PCA(n_components=2, random_state=seed).fit_transform(both) if len(both) >= 2 else np.zeros((len(both), 2))
    points, marks = xy[: len(vectors)], xy[len(vectors):]
    fig, ax = plt.subplots(figsize=(7, 6), dpi=110)
    cmap = plt.get_cmap("tab20")
    ax.scatter(points[:, 0], points[:, 1], c=[cmap(p % 20) for p in labels], s=14, alpha=0.75, linewidths=0)
    ax.scatter(marks[:, 0], marks[:, 1], c=[cmap(p % 20) for p in range(len(marks))], marker="X", s=160,
               edgecolors="black", linewidths=1.0, label="prototypes")
    for p, (x, y) in enumerate(marks):
        ax.annotate(str(p), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    meta = prototypes.meta or {}
    ax.set_title(f"{len(labels)} users in {len(marks)} prototypes (PCA of {meta.get('source', '?')} embeddings)")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.legend(loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return len(labels)


@app.command("warm")
def warm(
    store: Optional[str] = StoreOption,
    config: Optional[Path] = ConfigOption,
    batch_size: int = typer.Option(16, min=1, help="Members per judge call."),
):
    """Write every member's synthesis, verified on their history, into STORE's synthesis cache now.

    With a synthesis judge, Pro-k scores each user against their neighbours' syntheses. Each is
    written once per store and judge, by the first request that needs it: warm the store before an
    RL run and its first step costs what the later ones do. Use the config the RL run uses: another
    judge or another history view is another cache entry. Run it again after a rebuild or an
    interruption: members already cached are read, not written again.
    """
    from pgenrm_plugins.config import config_dict
    from pgenrm_plugins.prototypes.base import StoreError
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.types import ScoreRequest

    cfg = _load(config)
    section = store_choice(store, cfg)
    settings = config_dict(cfg)
    # c_neighbours 0: each member scores as itself only, which writes the entry its neighbours will read
    settings.update(store=section.model_dump(mode="json"),
                    prototypes={**settings.get("prototypes", {}), "enabled": True, "c_neighbours": 0.0})
    with err.status("loading the judge..."):
        scorer = Scorer(settings)
    try:
        if scorer.criteria_mode != "synthesis":
            fail(f"the judge reads criteria {scorer.criteria_mode!r}: only a synthesis judge (reward.criteria: "
                 "synthesis) keeps syntheses in the store; nothing to warm")
        members = [u for u in scorer.store.users() if u.history]
        if not members:
            fail("the store has no published build with members: run `pgenrm prototypes build` first", code=1)
        written = reused = 0
        for start in range(0, len(members), batch_size):
            # one short request per member: the synthesis and its verification are the work, the
            # member's own last chosen reply is the one completion checked
            batch = [ScoreRequest(user_id=u.user_id, prompt=u.history[-1].prompt,
                                  completions=[u.history[-1].chosen]) for u in members[start:start + batch_size]]
            for result in scorer.score(batch):
                written += result.components.chains_sampled
                reused += result.components.syntheses_reused
            err.print(f"members {start + len(batch)} of {len(members)}: {written} syntheses written, {reused} "
                      "already cached", highlight=False)
        cached = scorer.store.stats().get("syntheses")
    except StoreError as exc:
        fail(str(exc))
    finally:
        scorer.close()
    err.print(f"{len(members)} members: {written} syntheses written, {reused} already cached "
              f"(the store holds {cached} cached syntheses)", highlight=False)


@app.command("show")
def show(
    store: Optional[str] = StoreOption,
    config: Optional[Path] = ConfigOption,
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also write a picture (PNG): members projected to 2-D "
                                                             "by PCA, coloured by prototype."),
):
    """Print the store's sizes and each prototype's population; optionally draw the prototypes."""
    cfg = _load(config)
    the_store = _open_store(store, cfg)
    try:
        stats = the_store.stats()
        if stats.get("build_id") is None:
            fail("the store has no published build yet: run `pgenrm prototypes build` first", code=1)
        meta = stats.get("meta") or {}
        out = Console()
        summary = Table(title="prototype store", show_header=False, title_justify="left")
        summary.add_column("key")
        summary.add_column("value")
        where = stats.get("path") or stats.get("dsn") or ""
        for key, value in (
            ("store", f"{stats.get('store')} {where}".strip()), ("build", stats.get("build_id")),
            ("users", stats.get("users")), ("prototypes", stats.get("prototypes")), ("version", stats.get("version")),
            ("embedder", stats.get("embedder")), ("source", meta.get("source")), ("built at", meta.get("built_at")),
            ("unfinished builds", stats.get("unfinished_builds")), ("cached syntheses", stats.get("syntheses")),
        ):
            summary.add_row(key, str(value))
        updater = meta.get("updater") or {}
        if updater.get("examples"):
            summary.add_row("updater agreement",
                            f"{updater['agreement_before']:.3f} -> {updater['agreement_after']:.3f}")
        out.print(summary)
        population = {int(p): int(n) for p, n in (stats.get("population") or {}).items()}
        total = sum(population.values()) or 1
        table = Table("prototype", "members", "share", title="prototype populations", title_justify="left")
        for p, n in sorted(population.items()):
            table.add_row(str(p), str(n), f"{n / total:6.1%} " + "#" * round(30 * n / total))
        out.print(table)
        if plot is not None:
            drawn = plot_prototypes(the_store, plot, seed=cfg.sampling.seed)
            err.print(f"wrote {plot} ({drawn} users)", highlight=False)
    except ValueError as exc:
        fail(str(exc))
    finally:
        the_store.close()


@hookimpl
def register_commands(cli):
    cli.add_typer(app, name="prototypes")
