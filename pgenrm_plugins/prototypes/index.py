"""The member search both stores use: a faiss IVF index with one probe, held in memory.

The coarse quantizer holds the build's prototypes (an exact inner-product index over the K
centroids), and each prototype's inverted list holds its members, as the store assigned them. A
lookup asks the quantizer for the nearest prototype and scans that one list: about N/K members
touched instead of N. Members are stored as float16 by default (half the memory of float32,
similarities within ~1e-4 of exact), or SQ8 (a quarter; 99% of the exact top-8 found on random
384-d vectors at 1M members, docs/benchmarks.md) or float32 (`storage=`).

The index follows the store's `version()`, polled before each lookup (one indexed read):
- users added or moved by `add_user` are patched in as a small exact side index (their stale rows
  in the main index are skipped), until that grows past `rebuild_fraction` of the index;
- a new build (or a side index grown too large) is loaded in a background thread while lookups keep
  answering from the state they have, then swapped in with one reference assignment. A lookup never
  waits for a load, except the very first one (nothing to answer from yet), and a state is never a
  mix: each one is read in one snapshot of the store. Right after a new build is published, lookups
  therefore answer from the previous build until the new one has loaded (`refresh()` waits for it).
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterable, Literal, Sequence

import numpy as np

from pgenrm_plugins.prototypes.base import Lookup, Members, MemberSource, Neighbour, StoreError
from pgenrm_plugins.prototypes.common import as_unit_vector

if TYPE_CHECKING:  # faiss is imported where an index is built: registering a store needs none
    import faiss

log = logging.getLogger(__name__)

Storage = Literal["fp16", "sq8", "fp32"]
STORAGES: tuple[str, ...] = ("fp16", "sq8", "fp32")


def assemble(build_id: str, version: int, centroids: np.ndarray, count: int, rows: Iterable[Sequence]) -> Members:
    """Members from (prototype_id, user_id, embedding bytes) rows, filled into a preallocated
    matrix chunk by chunk, so loading a million members never holds two copies of them."""
    dim = centroids.shape[1]
    vectors = np.empty((count, dim), dtype=np.float32)
    ids = np.empty(count, dtype=object)
    protos = np.empty(count, dtype=np.int32)
    n = 0
    chunk: list = []

    def flush():
        nonlocal n, chunk
        if not chunk:
            return
        m = len(chunk)
        if n + m > count:
            raise StoreError("the store changed while the index was loading; retry")
        protos[n:n + m] = [r[0] for r in chunk]
        ids[n:n + m] = [r[1] for r in chunk]
        blob = b"".join(bytes(r[2]) for r in chunk)
        if len(blob) != m * dim * 4:
            raise StoreError(f"build {build_id}: a member's embedding does not have the prototypes' dimension {dim}")
        vectors[n:n + m] = np.frombuffer(blob, dtype="<f4").reshape(m, dim)
        n += m
        chunk = []

    for row in rows:
        chunk.append(row)
        if len(chunk) >= 8192:
            flush()
    flush()
    if n != count:
        raise StoreError("the store changed while the index was loading; retry")
    return Members(build_id, version, centroids, ids, protos, vectors)


class _Ids:
    """Member ids as one UTF-8 blob and offsets: ~20 bytes a member, where an array of str takes ~70."""

    def __init__(self, ids: Sequence[str]):
        encoded = [str(i).encode() for i in ids]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        self.offsets[1:] = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        self.blob = b"".join(encoded)

    def __getitem__(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].decode()

    @property
    def nbytes(self) -> int:
        return len(self.blob) + self.offsets.nbytes


@dataclass(frozen=True)
class _Part:
    """An IVF index over some members (faiss id = position in `ids`)."""

    index: faiss.IndexIVF
    ids: _Ids

    def top(self, x: np.ndarray, assign: np.ndarray, coarse: np.ndarray, top_k: int, excluded: set,
            stale: dict | None = None) -> list[tuple[float, str]]:
        """The top_k (similarity, user id) of the probed list, leaving out `excluded` and `stale` ids.
        Asks for more when stale rows took places (rare: users since moved into the side index)."""
        want = top_k + len(excluded)
        while True:
            sims, labels = self.index.search_preassigned(x, want, assign, coarse)
            found = []
            for s, i in zip(sims[0].tolist(), labels[0].tolist()):
                if i < 0:  # the list had fewer than `want` members
                    return found
                uid = self.ids[i]
                if uid not in excluded and (stale is None or uid not in stale):
                    found.append((s, uid))
                    if len(found) == top_k:
                        return found
            want *= 2

    @property
    def nbytes(self) -> int:
        # Each list holds its codes and a 64-bit id per member (filled once per list, so no slack).
        return int(self.index.ntotal * (self.index.code_size + 8)) + self.ids.nbytes


def _ivf(quantizer: faiss.IndexFlatIP, storage: str) -> faiss.IndexIVF:
    import faiss

    d, k = quantizer.d, quantizer.ntotal
    if storage == "fp32":
        return faiss.IndexIVFFlat(quantizer, d, k, faiss.METRIC_INNER_PRODUCT)
    qtype = {"fp16": faiss.ScalarQuantizer.QT_fp16, "sq8": faiss.ScalarQuantizer.QT_8bit}[storage]
    # No residuals: members are coded as they are, so their lists may differ from their nearest centroid.
    return faiss.IndexIVFScalarQuantizer(quantizer, d, k, qtype, faiss.METRIC_INNER_PRODUCT, False)


def _part(quantizer: faiss.IndexFlatIP, storage: str, ids: Sequence[str], protos: np.ndarray,
          vectors: np.ndarray) -> _Part:
    """An index over members sorted by prototype, each list filled once from its own slice (the
    members stay in the lists the store assigned, which after refinement need not be the nearest)."""
    import faiss

    index = _ivf(quantizer, storage)
    if not index.is_trained:  # SQ8: the per-dimension range of the members themselves
        index.train(vectors if len(vectors) else np.zeros((1, quantizer.d), np.float32))
    bounds = np.searchsorted(protos, np.arange(quantizer.ntotal + 1))
    for p in np.flatnonzero(np.diff(bounds)):
        lo, hi = int(bounds[p]), int(bounds[p + 1])
        x = np.ascontiguousarray(vectors[lo:hi], dtype=np.float32)
        lists = np.full(hi - lo, p, dtype=np.int64)
        codes = np.empty((hi - lo, index.code_size), dtype=np.uint8)
        index.encode_vectors(hi - lo, faiss.swig_ptr(x), faiss.swig_ptr(lists), faiss.swig_ptr(codes))
        labels = np.arange(lo, hi, dtype=np.int64)
        index.invlists.add_entries(int(p), hi - lo, faiss.swig_ptr(labels), faiss.swig_ptr(codes))
    index.ntotal = len(vectors)
    return _Part(index, _Ids(ids))


@dataclass(frozen=True)
class _State:
    """One immutable view of the index: a lookup reads one state, a refresh swaps in a new one."""

    build_id: str
    version: int
    quantizer: faiss.IndexFlatIP  # holds the prototypes (its own copy)
    main: _Part
    size: int
    # Users written by add_user since the load: user id -> (prototype, vector); their rows in `main`
    # (if any) are stale and skipped, `side` holds their current ones (exact float32).
    patched: dict = field(default_factory=dict)
    side: _Part | None = None


class MemberIndex:
    def __init__(self, source: MemberSource, storage: Storage = "fp16", rebuild_fraction: float = 0.05):
        if storage not in STORAGES:
            raise ValueError(f"storage must be one of {', '.join(STORAGES)}, got {storage!r}")
        self.source = source
        self.storage = storage
        self.rebuild_fraction = rebuild_fraction
        self._state: _State | None = None
        self._seen: int | None = None  # the store version this index has caught up with
        self._lock = threading.Lock()  # one catch-up at a time; never held during a background load
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgenrm-index-load")
        self._loading: Future | None = None
        self.loads = 0  # full loads so far (reported by the benchmark)
        self.last_load: dict[str, float] = {}  # seconds: reading the store, building the index
        self.last_error: BaseException | None = None  # of the last background load, if it failed

    # -- keeping up with the store ----------------------------------------------------------------
    def _poll(self) -> None:
        version = self.source.version()
        if version == self._seen:
            return
        with self._lock:
            if version != self._seen:
                self._catch_up(version)

    def _catch_up(self, version: int) -> None:
        state = self._state
        if state is None:  # nothing to answer from yet: this one lookup waits for the load
            self._install(self._load())
            if self._state is None:
                self._seen = version
            return
        changes = self.source.member_changes(state.build_id, state.version)
        if changes is None:  # another build is current: load it, answer from this one meanwhile
            self._start_load()
            self._seen = version
            return
        state = self._patched(state, changes)
        self._state, self._seen = state, changes.version
        if len(state.patched) > max(1000, self.rebuild_fraction * state.size):
            self._start_load()  # the side index got large: fold it into a fresh main index

    def _start_load(self) -> None:
        if self._loading is None:
            self._loading = self._loader.submit(self._load_in_background)

    def _load_in_background(self) -> None:
        try:
            state = self._load()
            with self._lock:
                self._loading = None  # under the lock: a catch-up after the swap may start the next load
                self._install(state)
        except Exception as exc:  # keep answering from the old state; the next lookup retries
            log.warning("loading the member index failed, still answering from build %s: %s",
                        self._state.build_id if self._state else None, exc)
            with self._lock:
                self._loading, self._seen, self.last_error = None, None, exc

    def _load(self) -> _State | None:
        import faiss

        t0 = time.perf_counter()
        members = self.source.load_members()
        t1 = time.perf_counter()
        self.loads += 1
        if members is None:
            return None
        if np.any(np.diff(members.prototype_ids) < 0):  # the stores sort; a plugin store might not
            order = np.argsort(members.prototype_ids, kind="stable")
            members.ids, members.prototype_ids = members.ids[order], members.prototype_ids[order]
            members.vectors = members.vectors[order]
        centroids = np.ascontiguousarray(members.centroids, dtype=np.float32)
        quantizer = faiss.IndexFlatIP(centroids.shape[1])
        quantizer.add(centroids)
        main = _part(quantizer, self.storage, members.ids, members.prototype_ids, members.vectors)
        self.last_load = {"read_s": t1 - t0, "build_s": time.perf_counter() - t1}
        return _State(members.build_id, members.version, quantizer, main, len(members.ids))

    def _install(self, state: _State | None) -> None:
        """Swap in a loaded state (caller holds the lock), first patching in what add_user wrote
        after the load's snapshot, so a lookup never goes back to before a user it already saw."""
        if state is not None:
            changes = self.source.member_changes(state.build_id, state.version)
            if changes is not None and len(changes.ids):
                state = self._patched(state, changes)
        self._state = state  # the one assignment lookups see
        self._seen = None if state is None else state.version
        self.last_error = None

    def _patched(self, state: _State, changes: Members) -> _State:
        """A new state with add_user's changes in the side index (rebuilt: it is small)."""
        if not len(changes.ids):
            return replace(state, version=changes.version)
        patched = dict(state.patched)
        for uid, p, v in zip(changes.ids, changes.prototype_ids, changes.vectors):
            patched[str(uid)] = (int(p), v)
        uids = sorted(patched, key=lambda u: patched[u][0])
        protos = np.fromiter((patched[u][0] for u in uids), dtype=np.int64, count=len(uids))
        vectors = np.stack([patched[u][1] for u in uids]).astype(np.float32)
        side = _part(state.quantizer, "fp32", uids, protos, vectors)
        return _State(state.build_id, changes.version, state.quantizer, state.main, state.size, patched, side)

    def refresh(self) -> None:
        """Catch up with the store now, waiting for a load if one is needed (lookups never wait)."""
        while True:
            self._poll()
            loading = self._loading
            if loading is None:
                return
            loading.result()
            if self.last_error is not None:
                raise StoreError(f"loading the member index failed: {self.last_error}") from self.last_error

    def reload(self) -> Future | None:
        """Load the current build again in the background (what a new build triggers); the benchmark
        uses it to measure lookups during a load."""
        with self._lock:
            self._start_load()
            return self._loading

    # -- searching ------------------------------------------------------------------------------
    def nearest(self, embedding, top_k: int, exclude: Sequence[str] = ()) -> Lookup | None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self._poll()
        state = self._state  # read once: the whole lookup uses this one build
        if state is None:
            return None
        return self._search(state, embedding, top_k, exclude)

    @staticmethod
    def _search(state: _State, embedding, top_k: int, exclude: Sequence[str]) -> Lookup:
        q = as_unit_vector(embedding, "nearest(embedding)")
        if q.shape[0] != state.quantizer.d:
            raise StoreError(
                f"the embedding has dimension {q.shape[0]} but the store's prototypes have "
                f"{state.quantizer.d}: use the embedder that built the store")
        x = np.ascontiguousarray(q[None, :])
        coarse, assign = state.quantizer.search(x, 1)
        p = int(assign[0, 0])
        if top_k == 0:
            return Lookup(p, float(coarse[0, 0]), [])
        excluded = set(exclude)
        hits = state.main.top(x, assign, coarse, top_k, excluded, state.patched or None)
        if state.side is not None:
            hits += state.side.top(x, assign, coarse, top_k, excluded)
            hits.sort(key=lambda h: -h[0])  # stable: main before side on equal similarity
        return Lookup(p, float(coarse[0, 0]), [Neighbour(uid, s) for s, uid in hits[:top_k]])

    # -- reporting ---------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Bytes held: the lists (codes and ids), the member ids, the prototypes, the side index."""
        state = self._state
        if state is None:
            return 0
        total = state.main.nbytes + state.quantizer.ntotal * state.quantizer.d * 4  # the prototypes
        if state.side is not None:
            total += state.side.nbytes + sum(v.nbytes + len(u) + 49 for u, (_, v) in state.patched.items())
        return int(total)

    @property
    def size(self) -> int:
        state = self._state
        return 0 if state is None else state.size

    @property
    def build_id(self) -> str | None:
        state = self._state
        return None if state is None else state.build_id

    def close(self) -> None:
        self._loader.shutdown(wait=False, cancel_futures=True)
