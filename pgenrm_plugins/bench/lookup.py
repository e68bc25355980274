"""`pgenrm bench lookup`: prototype lookup latency (nearest prototype + top-k members) against store
size, for each store, with the time to fill the store, to load the in-memory index, and the memory
the index holds.

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
from typing import Any, Sequence

import numpy as np
from rich.console import Console
from rich.table import Table

from pgenrm_plugins.config import StoreConfig
from pgenrm_plugins.prototypes.base import PrototypeSet, UserRecord

BATCH = 50_000


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    v = rng.standard_normal((n, dim), dtype=np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def fill(store, size: int, dim: int, k: int, seed: int = 0) -> None:
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
    return float(np.percentile(np.asarray(seconds) * 1000.0, q))


def measure(store, dim: int, top_k: int, queries: int, seed: int = 1) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    store.index.refresh()  # the first lookup after a publish pays this once
    load_s = time.perf_counter() - start
    qs = _unit(rng, queries + 10, dim)
    for q in qs[:10]:  # warm-up
        store.nearest(q, top_k)
    lookups = []
    for q in qs[10:]:
        t = time.perf_counter()
        found = store.nearest(q, top_k)
        lookups.append(time.perf_counter() - t)
        assert len(found.neighbours) == top_k
    # add_user bumps the version: the next lookup patches the index instead of reloading it.
    adds, patched = [], []
    for i, v in enumerate(_unit(rng, 10, dim)):
        t = time.perf_counter()
        store.add_user(UserRecord(f"added-{i}", embedding=v))
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        store.nearest(v, top_k)
        patched.append(time.perf_counter() - t)
    return {
        "load_s": load_s,
        "lookup_ms_median": _percentile_ms(lookups, 50),
        "lookup_ms_p95": _percentile_ms(lookups, 95),
        "index_bytes": store.index.memory_bytes(),
        "add_user_ms_median": _percentile_ms(adds, 50),
        "lookup_after_add_ms_median": _percentile_ms(patched, 50),
        "full_index_loads": store.index.loads,
    }


def run_lookup(sizes: Sequence[int], dim: int = 384, prototypes: int = 100, top_k: int = 8,
               stores: Sequence[str] = ("sqlite", "postgres"), output: Path | None = None,
               queries: int = 200, postgres_dsn: str | None = None, workdir: Path | None = None,
               console: Console | None = None) -> dict[str, Any]:
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
                try:
                    with console.status(f"{store_name}: filling {size:,} members x {dim}..."):
                        t = time.perf_counter()
                        fill(store, size, dim, prototypes)
                        fill_s = time.perf_counter() - t
                    with console.status(f"{store_name}: {queries} lookups at {size:,} members..."):
                        row = {"store": store_name, "members": size, "dim": dim, "prototypes": prototypes,
                               "top_k": top_k, "queries": queries, "fill_s": fill_s,
                               **measure(store, dim, top_k, queries)}
                    results.append(row)
                    console.print(f"{store_name} {size:,}: lookup median {row['lookup_ms_median']:.3f} ms, "
                                  f"p95 {row['lookup_ms_p95']:.3f} ms", highlight=False)
                finally:
                    _drop(store, store_name, options)
    finally:
        if local_pg is not None:
            local_pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    table = Table(title=f"prototype lookup: nearest of {prototypes} prototypes + top-{top_k} members, dim {dim}",
                  title_justify="left")
    for col in ("store", "members", "fill s", "index load s", "lookup ms (median)", "lookup ms (p95)",
                "index MiB", "add_user ms", "lookup after add ms"):
        table.add_column(col, justify="left" if col == "store" else "right")
    for r in results:
        table.add_row(r["store"], f"{r['members']:,}", f"{r['fill_s']:.1f}", f"{r['load_s']:.2f}",
                      f"{r['lookup_ms_median']:.3f}", f"{r['lookup_ms_p95']:.3f}", f"{r['index_bytes'] / 2**20:.0f}",
                      f"{r['add_user_ms_median']:.2f}", f"{r['lookup_after_add_ms_median']:.3f}")
    console.print(table)
    report = {
        "benchmark": "lookup",
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "numpy": np.__version__},
        "results": results,
    }
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report


def _drop(store, store_name: str, options: dict[str, Any]) -> None:
    """Free the disk and memory of one size before the next."""
    store.close()
    if store_name == "postgres":
        import psycopg

        with psycopg.connect(store.dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {options['schema']} CASCADE")
    else:
        for suffix in ("", "-wal", "-shm"):
            Path(options["path"] + suffix).unlink(missing_ok=True)
