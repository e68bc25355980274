"""The prototype contract: what an embedder and a store must do. Both stores (SQLite, PostgreSQL)
implement `PrototypeStore`; the builder and the scorer only ever see this interface. A store that
searches its members with the in-memory index (index.py) also hands them over as a `MemberSource`.

A store holds *builds*. A build is a set of users (history, synthesis, embedding) plus the
prototypes computed from them. The builder stages users into a new build batch by batch (so an
interrupted build resumes where it stopped) and then `publish`es it in one transaction: readers
see the previous build until that commit and the new one after it, never a mix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from pgenrm_plugins.types import HistoryItem


@runtime_checkable
class Embedder(Protocol):
    name: str  # recorded in each build: a store is only searched with the embedder that built it
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """float32 array [len(texts), dim], each row L2-normalised (dot product = cosine)."""


@dataclass
class UserRecord:
    user_id: str
    history: list[HistoryItem] = field(default_factory=list)
    persona: str | None = None
    synthesis: str | None = None  # the judge's preference synthesis; None when built from history text
    embedding: np.ndarray | None = None  # float32 [dim], unit norm
    prototype_id: int | None = None


@dataclass(frozen=True)
class CachedSynthesis:
    """A synthesis a judge wrote (`reward.criteria: synthesis`), and the weights its verification
    against the history it was written from gave its criteria (None: not verified yet)."""

    text: str
    weights: list[float] | None = None


@dataclass(frozen=True)
class Neighbour:
    user_id: str
    similarity: float


@dataclass(frozen=True)
class Lookup:
    """Nearest prototype of a query embedding and the top-k most similar members inside it."""

    prototype_id: int
    similarity: float
    neighbours: list[Neighbour]


@dataclass
class PrototypeSet:
    centroids: np.ndarray  # float32 [K, dim], unit rows; prototype id = row index
    embedder: str
    meta: dict[str, Any] = field(default_factory=dict)  # k, updater settings, source of the embeddings...


class StoreError(RuntimeError):
    """The store cannot do what was asked (schema too new, no published build, ...); says what to do."""


@runtime_checkable
class PrototypeStore(Protocol):
    # -- building -----------------------------------------------------------------------------
    def begin_build(self, params: dict[str, Any]) -> str:
        """A build id. An unfinished build with the same `params` is resumed (same id returned)."""

    def stage_users(self, build_id: str, users: Iterable[UserRecord]) -> None:
        """Add or replace users of an unpublished build, committed together (one transaction)."""

    def staged_users(self, build_id: str) -> Iterator[UserRecord]:
        """Users staged so far in that build (what a resumed build can skip)."""

    def publish(self, build_id: str, prototypes: PrototypeSet, assignments: dict[str, int]) -> None:
        """Make the build current in one transaction: its users, memberships and prototypes."""

    # -- reading the current build ------------------------------------------------------------
    def get_user(self, user_id: str) -> UserRecord | None: ...

    def users(self) -> Iterator[UserRecord]: ...

    def prototypes(self) -> PrototypeSet | None:
        """The current build's prototypes, or None when nothing was published yet."""

    def nearest(self, embedding: np.ndarray, top_k: int, exclude: Sequence[str] = ()) -> Lookup | None:
        """Nearest prototype, then the top-k members inside it by cosine similarity (`exclude`:
        user ids to skip, e.g. the user being scored). None when nothing was published."""

    def version(self) -> int:
        """Changes whenever the current build changes (publish, add_user): cheap to poll."""

    # -- incremental --------------------------------------------------------------------------
    def add_user(self, user: UserRecord) -> int:
        """Add or update one user of the current build, placed in its nearest prototype; returns it."""

    # -- the synthesis cache (shared by every scorer that opens the store) ----------------------
    def get_syntheses(self, keys: Sequence[str]) -> dict[str, CachedSynthesis]:
        """The cached syntheses among `keys` (keys say the judge and what it read; see
        scoring/syntheses.py); keys not cached are absent. Independent of builds."""

    def put_syntheses(self, entries: Mapping[str, CachedSynthesis]) -> None:
        """Cache syntheses in one transaction. A key already cached keeps its text (the same judge
        reading the same view writes the same text); it gains weights when it had none."""

    def stats(self) -> dict[str, Any]:
        """Sizes for `pgenrm prototypes show`: users, prototypes, population per prototype, version."""

    def close(self) -> None: ...


@dataclass
class Members:
    """Members of one build as the store hands them over: rows sorted by prototype id."""

    build_id: str
    version: int
    centroids: np.ndarray  # float32 [K, dim]
    ids: np.ndarray  # object [n]
    prototype_ids: np.ndarray  # int32 [n], non-decreasing for a full load
    vectors: np.ndarray  # float32 [n, dim]


class MemberSource(Protocol):
    """What the in-memory member index (index.py) reads from a store."""

    def version(self) -> int: ...

    def load_members(self) -> Members | None:
        """The current build's centroids and members, sorted by prototype, read in one snapshot."""

    def member_changes(self, build_id: str, since_version: int) -> Members | None:
        """Members of `build_id` written after `since_version` (add_user), with the version read in
        the same snapshot; None when the current build is no longer `build_id`."""
