"""The hand-written member index that `prototypes/index.py` (faiss) replaced, kept only as the
baseline `pgenrm bench lookup` measures the library against, in the same run.

The current build's member embeddings sit in one contiguous float32 matrix sorted by prototype,
with `offsets[p]:offsets[p + 1]` the rows of prototype p. A lookup is one small matrix product
over the K centroids (argmax = nearest prototype), then one over that prototype's rows and a
partial sort (`argpartition`) for the top k. A new build reloads everything, synchronously, in the
lookup that notices it; add_user's users are patched in as a side list.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from typing import Sequence

import numpy as np

from pgenrm_plugins.prototypes.base import Lookup, Members, MemberSource, Neighbour
from pgenrm_plugins.prototypes.common import as_unit_vector, nearest_prototype

try:
    from threadpoolctl import ThreadpoolController  # comes with scikit-learn

    _blas = ThreadpoolController()
except ImportError:  # pragma: no cover - then BLAS keeps its own thread count
    _blas = None


class _OneBlasThread:
    """A lookup's products are small (N/K rows): one BLAS thread does them fastest, and on a shared
    CPU a multi-threaded BLAS is 10x slower (its threads wait for each other; measured 20 ms against
    1.6 ms at 1M members). The limit is process-wide, so concurrent lookups share it: the first one
    in sets it, the last one out restores what was there."""

    def __init__(self):
        self._lock = threading.Lock()
        self._active = 0
        self._limiter = None

    def __enter__(self):
        with self._lock:
            if self._active == 0 and _blas is not None:
                self._limiter = _blas.limit(limits=1, user_api="blas")
            self._active += 1

    def __exit__(self, *exc):
        with self._lock:
            self._active -= 1
            if self._active == 0 and self._limiter is not None:
                self._limiter.restore_original_limits()
                self._limiter = None


_one_blas_thread = _OneBlasThread()


@dataclass(frozen=True)
class _State:
    """One immutable view of the index: a lookup reads one state, a refresh swaps in a new one."""

    members: Members
    offsets: np.ndarray  # int64 [K + 1]
    dead: np.ndarray | None = None  # bool [n]: rows replaced by a later add_user
    extra_ids: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    extra_protos: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int32))
    extra_vectors: np.ndarray | None = None
    version: int = 0


class BaselineIndex:
    def __init__(self, source: MemberSource, rebuild_fraction: float = 0.05):
        self.source = source
        self.rebuild_fraction = rebuild_fraction
        self._state: _State | None = None
        self._loaded_version: int | None = None  # version seen, also when nothing was published
        self._row_of: dict[str, int] | None = None  # user id -> main row, built on the first patch
        self._lock = threading.Lock()
        self.loads = 0  # full loads so far (reported by the benchmark)

    # -- keeping up with the store ----------------------------------------------------------------
    def refresh(self) -> None:
        version = self.source.version()
        if version == self._loaded_version:
            return
        with self._lock:
            if version == self._loaded_version:
                return
            state = self._state
            if state is not None:
                changes = self.source.member_changes(state.members.build_id, state.version)
                if changes is not None and self._patch(state, changes):
                    return
            self._full_load()

    def _full_load(self) -> None:
        members = self.source.load_members()
        self._row_of = None
        self.loads += 1
        if members is None:
            self._state, self._loaded_version = None, self.source.version()
            return
        k = members.centroids.shape[0]
        if np.any(np.diff(members.prototype_ids) < 0):  # the stores sort; a plugin store might not
            order = np.argsort(members.prototype_ids, kind="stable")
            members = replace(members, ids=members.ids[order], prototype_ids=members.prototype_ids[order],
                              vectors=np.ascontiguousarray(members.vectors[order]))
        offsets = np.searchsorted(members.prototype_ids, np.arange(k + 1)).astype(np.int64)
        self._state = _State(members, offsets, version=members.version)
        self._loaded_version = members.version

    def _patch(self, state: _State, changes: Members) -> bool:
        """Fold add_user changes into a new state; False when a full reload is the better deal."""
        main = state.members
        if self._row_of is None:
            self._row_of = {uid: i for i, uid in enumerate(main.ids)}
        extra = {uid: (p, v) for uid, p, v in zip(state.extra_ids, state.extra_protos,
                                                  state.extra_vectors if state.extra_vectors is not None else [])}
        dead = state.dead.copy() if state.dead is not None else np.zeros(len(main.ids), dtype=bool)
        for uid, p, v in zip(changes.ids, changes.prototype_ids, changes.vectors):
            row = self._row_of.get(uid)
            if row is not None:
                dead[row] = True
            extra[uid] = (int(p), v)
        if len(extra) > max(1000, self.rebuild_fraction * len(main.ids)):
            return False
        dim = main.centroids.shape[1]
        ids = np.empty(len(extra), dtype=object)
        ids[:] = list(extra)
        self._state = _State(
            main, state.offsets, dead if dead.any() else None, ids,
            np.fromiter((p for p, _ in extra.values()), dtype=np.int32, count=len(extra)),
            np.stack([v for _, v in extra.values()]).astype(np.float32) if extra else np.empty((0, dim), np.float32),
            changes.version,
        )
        self._loaded_version = changes.version
        return True

    # -- searching ------------------------------------------------------------------------------
    def nearest(self, embedding, top_k: int, exclude: Sequence[str] = ()) -> Lookup | None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.refresh()
        state = self._state
        if state is None:
            return None
        with _one_blas_thread:
            return self._search(state, embedding, top_k, exclude)

    @staticmethod
    def _search(state: _State, embedding, top_k: int, exclude: Sequence[str]) -> Lookup:
        m = state.members
        q = as_unit_vector(embedding, "nearest(embedding)")
        p = nearest_prototype(m.centroids, q)
        proto_similarity = float(m.centroids[p] @ q)
        lo, hi = int(state.offsets[p]), int(state.offsets[p + 1])
        scores = m.vectors[lo:hi] @ q
        ids = m.ids[lo:hi]
        if state.dead is not None:
            scores[state.dead[lo:hi]] = -np.inf
        if len(state.extra_ids):
            mine = state.extra_protos == p
            if mine.any():
                scores = np.concatenate([scores, state.extra_vectors[mine] @ q])
                ids = np.concatenate([ids, state.extra_ids[mine]])
        excluded = set(exclude)
        want = min(len(scores), top_k + len(excluded))
        if want == 0:
            return Lookup(p, proto_similarity, [])
        top = np.argpartition(-scores, want - 1)[:want] if want < len(scores) else np.arange(len(scores))
        top = top[np.argsort(-scores[top], kind="stable")]
        neighbours = []
        for i in top:
            if scores[i] == -np.inf or ids[i] in excluded:
                continue
            neighbours.append(Neighbour(str(ids[i]), float(scores[i])))
            if len(neighbours) == top_k:
                break
        return Lookup(p, proto_similarity, neighbours)

    # -- reporting ---------------------------------------------------------------------------------
    def memory_bytes(self) -> int:
        """Bytes held: the matrices, and the member ids (the strings and the array pointing at them)."""
        state = self._state
        if state is None:
            return 0
        m = state.members
        total = m.vectors.nbytes + m.centroids.nbytes + m.prototype_ids.nbytes + m.ids.nbytes + state.offsets.nbytes
        total += sum(len(s) + 49 for s in m.ids)  # an ASCII str costs 49 bytes + its length in CPython
        if state.extra_vectors is not None:
            total += state.extra_vectors.nbytes + state.extra_ids.nbytes
        if state.dead is not None:
            total += state.dead.nbytes
        return int(total)

    @property
    def size(self) -> int:
        state = self._state
        return 0 if state is None else len(state.members.ids)

    def close(self) -> None:
        pass
