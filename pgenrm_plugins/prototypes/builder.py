"""Build user prototypes from PersonalRewardBench rows (`pgenrm prototypes build`).

Stages, each with its own progress bar:

1. read the rows (`data.load_bench`); bad rows are reported by line and skipped, or refused with
   `strict=True`. Each user's train rows are their history.
2. users, batch by batch: the judge writes each user's preference synthesis (or, with
   `skip_judge`, the history itself is the source), the source is embedded, and the batch is staged
   into the store in one transaction. A killed build resumes here: `begin_build` with the same
   params returns the unfinished build and its staged users are skipped.
3. k-means (scikit-learn) over the user embeddings into K prototypes, K capped by the users.
4. the paper's updater refines the prototypes with the members' own pairs (`updater.py`); users
   are then assigned to their nearest refined prototype, the rule `nearest()` searches by.
5. publish: the store makes the build current in one transaction.
"""

from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.prototypes.base import PrototypeSet, UserRecord
from pgenrm_plugins.prototypes.sources import JUDGE_SOURCES, SourceSettings, embed_users, prompt_text
from pgenrm_plugins.prototypes.updater import UpdaterSettings, UserPairs, refine_prototypes
from pgenrm_plugins.requests_io import LineError

if TYPE_CHECKING:
    from pgenrm_plugins.backends.base import Backend
    from pgenrm_plugins.prototypes.base import Embedder, PrototypeStore

# Prototypes aim at about this many members each when K is not given: the paper takes the top 4-8
# members of a prototype as neighbours, so a prototype needs more than that to choose from.
MEMBERS_PER_PROTOTYPE = 8
MAX_AUTO_K = 100  # the paper's K


def auto_k(n_users: int) -> int:
    return max(1, min(MAX_AUTO_K, n_users // MEMBERS_PER_PROTOTYPE))


@dataclass
class BuildReport:
    build_id: str
    users: int
    resumed_users: int  # already staged by an earlier, interrupted run of the same build
    k: int
    source: str
    embedder: str
    bad_rows: list[LineError] = field(default_factory=list)
    users_without_history: list[str] = field(default_factory=list)  # only val/test rows: not members
    population: dict[int, int] = field(default_factory=dict)
    updater: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _quiet_progress():
    """A stand-in for rich's Progress when no console is given (library use, tests)."""

    class _Quiet:
        def add_task(self, *a, **k):
            return 0

        def advance(self, *a, **k):
            pass

        def update(self, *a, **k):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    return _Quiet()


def _progress(console):
    if console is None:
        return _quiet_progress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)


@contextmanager
def _phase(progress, seconds: dict[str, float], name: str, label: str, total: int, completed: int = 0):
    """One timed phase of a build with its own progress bar; yields `advance(n)`."""
    task = progress.add_task(label, total=total, completed=completed)
    started = time.perf_counter()
    yield lambda n: progress.advance(task, n)
    seconds[name] = time.perf_counter() - started


def _embed_unique(embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Embed each distinct text once (prompts and answers repeat across users)."""
    unique = list(dict.fromkeys(texts))
    vectors = embedder.embed(unique)
    row = {t: i for i, t in enumerate(unique)}
    return vectors[[row[t] for t in texts]]


def pair_embeddings(embedder: Embedder, users: list[UserRecord], settings: SourceSettings,
                    advance: Callable[[int], None] | None = None, chunk: int = 64) -> list[UserPairs]:
    """Each user's pairs (prompt, chosen, rejected), embedded for the updater, `chunk` users per call."""
    clip = settings.max_chars
    out = []
    for start in range(0, len(users), chunk):
        group = users[start:start + chunk]
        texts = []
        for user in group:
            texts += [prompt_text(h.prompt, clip) for h in user.history]
            texts += [h.chosen[:clip] for h in user.history] + [h.rejected[:clip] for h in user.history]
        vectors = _embed_unique(embedder, texts)
        at = 0
        for user in group:
            n = len(user.history)
            out.append(UserPairs(vectors[at:at + n], vectors[at + n:at + 2 * n], vectors[at + 2 * n:at + 3 * n]))
            at += 3 * n
        if advance is not None:
            advance(len(group))
    return out


def kmeans(embeddings: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit centroids [K, dim] and labels; K is capped by the number of distinct embeddings."""
    from sklearn.cluster import KMeans

    distinct = len(np.unique(np.round(embeddings, 6), axis=0))
    k = max(1, min(k, distinct))
    km = KMeans(n_clusters=k, random_state=seed, n_init=4).fit(embeddings)
    centroids = km.cluster_centers_.astype(np.float32)
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    return centroids, km.labels_.astype(int)


def assign_nearest(embeddings: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels by nearest centroid, with prototypes left empty dropped and the rest renumbered."""
    labels = np.argmax(embeddings @ centroids.T, axis=1)
    used = np.unique(labels)
    renumber = {int(old): new for new, old in enumerate(used)}
    return centroids[used], np.array([renumber[int(p)] for p in labels])


def build_prototypes(
    rows_path: str | Path,
    store: PrototypeStore,
    embedder: Embedder,
    *,
    backend: Backend | None = None,
    k: int | None = None,
    skip_judge: bool = False,
    source: str | None = None,
    strict: bool = False,
    batch_size: int = 16,
    source_settings: SourceSettings = SourceSettings(),
    updater: UpdaterSettings = UpdaterSettings(),
    console=None,
    on_batch_staged: Callable[[int], None] | None = None,
) -> BuildReport:
    """Build and publish the prototypes of the users in `rows_path` into `store`.

    `source` is what is embedded (`sources.SOURCES`; default `synthesis`, or `history` with
    `skip_judge`). `backend` is the judge, needed for `synthesis`. `k=None` picks about one
    prototype per eight users. `on_batch_staged(n_staged)` is called after each committed batch."""
    from pgenrm_plugins.prototypes.sources import SOURCES

    source = source or ("history" if skip_judge else "synthesis")
    if source not in SOURCES:
        raise ValueError(f"source {source!r}: expected one of {', '.join(SOURCES)}")
    rows_path = Path(rows_path)
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    data = load_bench(rows_path, strict=strict)  # strict: BadRowsError listing every bad line
    for error in data.errors:
        if console is not None:
            console.print(f"[yellow]skipped[/yellow] {rows_path}: {error}", highlight=False)
    histories = data.histories("train")
    personas = data.personas()  # stated preferences: stored with the member, read when it lends its synthesis
    without = [u for u in data.users() if u not in histories]
    if not histories:
        raise ValueError(f"{rows_path}: no user has train rows, so there is nothing to build prototypes from "
                         "(a user's rows with split 'train' are their history)")
    if source in JUDGE_SOURCES and backend is None:
        raise ValueError(f"building from the {source} source needs the judge: pass backend=..., or skip_judge=True")
    seconds["read"] = time.perf_counter() - started

    params = {
        "data_sha256": _file_digest(rows_path), "k": k, "source": source, "embedder": embedder.name,
        "source_settings": source_settings.as_meta(),
        "judge": getattr(backend, "name", None) if source in JUDGE_SOURCES else None,
        "judge_model": (str(getattr(getattr(backend, "options", None), "model", None)) if source in JUDGE_SOURCES
                        else None),
    }
    build_id = store.begin_build(params)
    staged = {u.user_id for u in store.staged_users(build_id)}
    todo = [u for u in histories if u not in staged]
    unparsed = 0  # syntheses whose JSON could not be read (their raw text is embedded), this run

    with _progress(console) as progress:
        phase = partial(_phase, progress, seconds)
        # -- users: synthesis (or history), embedding, staging; resumable -----------------------
        label = f"judge {source} + embedding" if source in JUDGE_SOURCES else f"embedding histories ({source})"
        with phase("users", label, len(histories), completed=len(staged)) as advance:
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                pairs = [(histories[u], personas.get(u)) for u in batch]
                vectors, syntheses = embed_users(embedder, source, pairs, source_settings, backend=backend)
                unparsed += sum(1 for syn in syntheses if syn is not None and not syn.parsed)
                store.stage_users(build_id, [
                    UserRecord(user_id=u, history=histories[u], persona=personas.get(u),
                               synthesis=s.text if s else None, embedding=v)
                    for u, v, s in zip(batch, vectors, syntheses)
                ])
                advance(len(batch))
                if on_batch_staged is not None:
                    on_batch_staged(len(staged) + start + len(batch))

        members = list(store.staged_users(build_id))
        embeddings = np.stack([u.embedding for u in members]).astype(np.float32)
        k_used = min(k if k is not None else auto_k(len(members)), len(members))
        with phase("kmeans", "k-means", 1) as advance:
            centroids, labels = kmeans(embeddings, k_used, seed=updater.seed)
            advance(1)
        with phase("pair_embeddings", "embedding history pairs", len(members)) as advance:
            user_pairs = pair_embeddings(embedder, members, source_settings, advance)
        with phase("updater", "prototype updater (epochs)", updater.epochs) as advance:
            refined = refine_prototypes(centroids, labels.tolist(), user_pairs, updater, progress=advance)
            final, assignments = assign_nearest(embeddings, refined.centroids)
            moved = int(sum(1 for a, b in zip(labels, np.argmax(embeddings @ refined.centroids.T, axis=1))
                            if a != b))
        meta = {
            "source": source,
            "embedder": embedder.name,
            "source_settings": source_settings.as_meta(),
            "k": int(len(final)),
            "k_requested": k,
            "users": len(members),
            "data": rows_path.name,
            "data_sha256": params["data_sha256"],
            "bad_rows": len(data.errors),
            "users_without_history": len(without),
            "judge": params["judge"],
            "judge_model": params["judge_model"],
            "syntheses_unparsed": unparsed if source in JUDGE_SOURCES else None,  # counted in this run only
            "updater": {**refined.meta(), "moved_users": moved},
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with phase("publish", "publish", 1) as advance:
            store.publish(build_id, PrototypeSet(final, embedder.name, meta),
                          {u.user_id: int(p) for u, p in zip(members, assignments)})
            advance(1)
    seconds["total"] = time.perf_counter() - started
    population = {int(p): int(n) for p, n in zip(*np.unique(assignments, return_counts=True))}
    return BuildReport(
        build_id=build_id, users=len(members), resumed_users=len(staged), k=int(len(final)), source=source,
        embedder=embedder.name, bad_rows=list(data.errors), users_without_history=without, population=population,
        updater=meta["updater"], seconds=seconds, meta=meta,
    )


def add_user(store: PrototypeStore, embedder: Embedder, user_id: str, history, persona: str | None = None,
             backend: Backend | None = None) -> UserRecord:
    """Add or update one user of the current build without rebuilding: embedded the way the build
    embedded its members, placed in the nearest prototype. Returns the stored record."""
    from pgenrm_plugins.prototypes.base import StoreError
    from pgenrm_plugins.prototypes.sources import embed_like_build
    from pgenrm_plugins.types import HistoryItem

    if not isinstance(user_id, str) or not user_id.strip():
        raise ValueError("user_id must be a non-empty string")
    items = [h if isinstance(h, HistoryItem) else HistoryItem.model_validate(h) for h in history]
    if not items and not persona:
        raise ValueError(f"user {user_id!r}: give a history (or at least a persona) to place the user by")
    prototypes = store.prototypes()
    if prototypes is None:
        raise StoreError("the store has no published build yet: run `pgenrm prototypes build` first")
    if (prototypes.meta or {}).get("source") in JUDGE_SOURCES and backend is None:
        raise ValueError("this store was built from the judge's texts, so adding a user needs the judge (backend=...)")
    vectors, syntheses = embed_like_build(prototypes, embedder, [(items, persona)], backend=backend)
    record = UserRecord(user_id=user_id, history=items, persona=persona,
                        synthesis=syntheses[0].text if syntheses[0] else None, embedding=vectors[0])
    record.prototype_id = store.add_user(record)
    return record
