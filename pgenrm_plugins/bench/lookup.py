"""`pgenrm bench lookup`: prototype lookup latency (nearest prototype + top-k members) against store
size, for each store and each member index side by side (the hand-written baseline, faiss with
float32, float16 or SQ8 storage), with the time to fill the store, to load the index, the memory it
holds, lookups answered while a build reloads, and how many of the exact top-k each index finds.

The members are synthetic: random unit vectors, each assigned to its nearest of K random unit
centroids (what k-means would give on such data, at a fraction of the cost). They go in through the
stores' public interface (`begin_build`, `stage_users` in batches, `publish`), like a real build.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from pgenrm_plugins.config import StoreConfig
from pgenrm_plugins.prototypes.base import PrototypeSet, UserRecord

if TYPE_CHECKING:
    from pgenrm_plugins.prototypes.base import PrototypeStore

BATCH = 50_000


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store: PrototypeStore, size: int, dim: int, k: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    centroids = _unit(rng, k, dim)
    assignments: dict[str, int] = {}
    build = store.begin_build({"bench": "lookup", "size": size, "dim": dim, "k": k, "seed": seed})
    for start in range(0, size, BATCH):
        vectors = _unit(rng, min(BATCH, size - start), dim)
        nearest = np.argmax(vectors @ centroids.T, axis=1)
        batch = []
        for i, (v, p) in enumerate(zip(vectors, nearest)):
            uid = f"user-{start + i:07d}"
            assignments[uid] = int(p)
            batch.append(UserRecord(uid, embedding=v))
        store.stage_users(build, batch)
    store.publish(build, PrototypeSet(centroids, "bench:random-unit-vectors", {"k": k}), assignments)


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000.0, q)) if seconds else float("nan")


def _timed_lookups(store: PrototypeStore, queries: np.ndarray, top_k: int) -> tuple[list[float], list]:
    times, found = [], []
    for q in queries:
        t = time.perf_counter()
        lookup = store.nearest(q, top_k)
        times.append(time.perf_counter() - t)
        assert len(lookup.neighbours) == top_k
        found.append(lookup)
    return times, found


def _agreement(found: list, exact: list, top_k: int) -> float:
    """Mean share of the exact top-k that the index returned too."""
    return float(np.mean([len({n.user_id for n in a.neighbours} & {n.user_id for n in b.neighbours}) / top_k
                          for a, b in zip(found, exact)]))


def measure(store: PrototypeStore, index, name: str, dim: int, top_k: int, queries: int, reference=None,
            reload: bool = False,
            seed: int = 1) -> dict[str, Any]:
    """One index over `store`: load, lookups, lookups while the same build reloads, add_user.
    `reference`: an exact index over the same store, to check the top-k against."""
    import faiss

    rng = np.random.default_rng(seed)
    store.index = index  # the store's nearest() asks its index
    start = time.perf_counter()
    index.refresh()  # the first lookup ever pays this once
    load_s = time.perf_counter() - start
    qs = _unit(rng, queries + 10, dim)
    _timed_lookups(store, qs[:10], top_k)  # warm-up
    lookups, found = _timed_lookups(store, qs[10:], top_k)
    row: dict[str, Any] = {
        "index": name, "load_s": load_s, **{f"load_{k}": v for k, v in getattr(index, "last_load", {}).items()},
        "lookup_ms_median": _percentile_ms(lookups, 50), "lookup_ms_p95": _percentile_ms(lookups, 95),
        "index_bytes": index.memory_bytes(),
    }
    if reference is not None:
        exact = [reference.nearest(q, top_k) for q in qs[10:]]
        row["top_k_agreement"] = _agreement(found, exact, top_k)
        row["max_similarity_error"] = max(abs(a.similarity - b.similarity) for f, e in zip(found, exact)
                                          for a, b in zip(f.neighbours, e.neighbours))
    if name != "baseline":  # does faiss want one OpenMP thread for one small query?
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            row["lookup_ms_median_omp1"] = _percentile_ms(_timed_lookups(store, qs[10:], top_k)[0], 50)
        finally:
            faiss.omp_set_num_threads(threads)
    if reload:  # lookups while the build loads again, as after a publish
        during = []
        if name == "baseline":  # it reloads in the lookup that notices the new build
            index._state = index._loaded_version = None
            during = _timed_lookups(store, qs[10:11], top_k)[0]
        else:
            loading = index.reload()
            i = 10
            while not loading.done():
                during += _timed_lookups(store, qs[i:i + 1], top_k)[0]
                i = 10 + (i - 9) % queries
            loading.result()
        row.update(reload_lookups=len(during), reload_lookup_ms_median=_percentile_ms(during, 50),
                   reload_lookup_ms_max=max(during) * 1000.0 if during else float("nan"))
    # add_user bumps the version: the next lookup patches the index instead of reloading it.
    adds, patched = [], []
    for i, v in enumerate(_unit(rng, 10, dim)):
        t = time.perf_counter()
        store.add_user(UserRecord(f"added-{name}-{i}", embedding=v))
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.nearest(v, top_k)
        patched.append(time.perf_counter() - t)
    if reference is not None:
        reference.refresh()  # it follows the store too, so it stays the exact answer
    row.update(add_user_ms_median=_percentile_ms(adds, 50), lookup_after_add_ms_median=_percentile_ms(patched, 50),
               full_index_loads=index.loads)
    return row


def run_lookup(sizes: Sequence[int], dim: int = 384, prototypes: int = 100, top_k: int = 8,
               stores: Sequence[str] = ("sqlite", "postgres"), output: Path | None = None,
               queries: int = 200, postgres_dsn: str | None = None, workdir: Path | None = None,
               indexes: Sequence[str] = ("baseline", "fp32", "fp16", "sq8"),
               console: Console | None = None) -> dict[str, Any]:
    from pgenrm_plugins.bench.lookup_baseline import BaselineIndex
    from pgenrm_plugins.prototypes.index import STORAGES, MemberIndex

    for name in indexes:
        if name != "baseline" and name not in STORAGES:
            raise ValueError(f"--indexes: unknown index {name!r}; use baseline and/or {', '.join(STORAGES)}")
    console = console or Console()
    results: list[dict[str, Any]] = []
    local_pg = None
    tmp = Path(tempfile.mkdtemp(prefix="pgenrm-bench-lookup-", dir=workdir))
    try:
        for store_name in stores:
            for size in sizes:
                if store_name == "sqlite":
                    options: dict[str, Any] = {"path": str(tmp / f"lookup-{size}.sqlite")}
                elif store_name == "postgres":
                    import os

                    dsn = postgres_dsn or os.environ.get("PGENRM_POSTGRES_DSN")
                    if not dsn:
                        if local_pg is None:
                            from pgenrm_plugins.testing.postgres import LocalPostgres

                            with console.status("starting a private PostgreSQL server..."):
                                local_pg = LocalPostgres().start()
                        dsn = local_pg.dsn
                    options = {"dsn": dsn, "schema": f"bench_{uuid.uuid4().hex[:10]}", "search": "memory"}
                else:
                    raise ValueError(f"--stores: unknown store {store_name!r}; use sqlite and/or postgres")
                store = StoreConfig(name=store_name, options=options).build("store")
                default = store.index.storage
                store.index.close()
                reference = None
                try:
                    with console.status(f"{store_name}: filling {size:,} members x {dim}..."):
                        t = time.perf_counter()
                        fill(store, size, dim, prototypes)
                        fill_s = time.perf_counter() - t
                    for name in indexes:
                        index = BaselineIndex(store) if name == "baseline" else MemberIndex(store, storage=name)
                        with console.status(f"{store_name}: {name}, {queries} lookups at {size:,} members..."):
                            row = {"store": store_name, "members": size, "dim": dim, "prototypes": prototypes,
                                   "top_k": top_k, "queries": queries, "fill_s": fill_s,
                                   **measure(store, index, name, dim, top_k, queries, reference,
                                             reload=name in ("baseline", default))}
                        results.append(row)
                        console.print(f"{store_name} {size:,} {name}: lookup median {row['lookup_ms_median']:.3f} ms, "
                                      f"p95 {row['lookup_ms_p95']:.3f} ms, load {row['load_s']:.2f} s", highlight=False)
                        if name == "baseline":
                            reference = index  # exact within the probed list: what the others are checked against
                        else:
                            index.close()
                    reference = None
                finally:
                    _drop(store, store_name, options)
    finally:
        if local_pg is not None:
            local_pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    table = Table(title=f"prototype lookup: nearest of {prototypes} prototypes + top-{top_k} members, dim {dim}",
                  title_justify="left")
    for col in ("store", "members", "index", "load s", "lookup ms median", "p95", "median, 1 omp thread",
                "during reload: median / max ms", "MiB", f"top-{top_k} agree", "add_user ms", "lookup after add ms"):
        table.add_column(col, justify="left" if col in ("store", "index") else "right")

    def num(r, key, fmt):
        return format(r[key], fmt) if key in r else "-"

    for r in results:
        reload = (f"{r['reload_lookup_ms_median']:.3f} / {r['reload_lookup_ms_max']:.1f} ({r['reload_lookups']})"
                  if "reload_lookups" in r else "-")
        table.add_row(r["store"], f"{r['members']:,}", r["index"], f"{r['load_s']:.2f}",
                      f"{r['lookup_ms_median']:.3f}", f"{r['lookup_ms_p95']:.3f}",
                      num(r, "lookup_ms_median_omp1", ".3f"), reload, f"{r['index_bytes'] / 2**20:.0f}",
                      num(r, "top_k_agreement", ".4f"),
                      f"{r['add_user_ms_median']:.2f}", f"{r['lookup_after_add_ms_median']:.3f}")
    console.print(table)
    console.print("during reload: lookups answered while the same build loads again (count in brackets); the "
                  "baseline loads in the lookup that notices the new build. agree: share of the baseline's exact "
                  "top-k found.", highlight=False)
    import faiss

    report = {
        "benchmark": "lookup",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "numpy": np.__version__, "faiss": faiss.__version__,
                    "faiss_omp_threads": faiss.omp_get_max_threads()},
        "results": results,
    }
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report


def _drop(store: PrototypeStore, store_name: str, options: dict[str, Any]) -> None:
    """Free the disk and memory of one size before the next."""
    store.close()
    if store_name == "postgres":
        import psycopg

        with psycopg.connect(store.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {options['schema']} CASCADE")
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(options["path"] + suffix).unlink(missing_ok=True)
