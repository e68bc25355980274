"""What both stores share: `SQLStore`, the store core (connections, staging, publish's checks,
garbage collection, the centroid cache), the schema version, how a user row is encoded, and the
checks that keep bad input out of a store (each error names the field and the fix). A store keeps
only what its engine needs: its tables, its transactions, its bulk loading and streaming."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from pydantic import TypeAdapter, ValidationError

from pgenrm_plugins.prototypes.base import CachedSynthesis, PrototypeSet, StoreError, UserRecord
from pgenrm_plugins.types import HistoryItem


class ThreadConnections:
    """One database connection per thread (neither sqlite3 connections nor a psycopg transaction may be
    shared by concurrent threads), all closed together. A store subclasses it and defines `_open()`."""

    def _init_connections(self) -> None:
        self._local = threading.local()
        self._connections: list = []
        self._connections_lock = threading.Lock()

    def _open(self):
        raise NotImplementedError

    @staticmethod
    def _is_closed(conn) -> bool:
        return bool(getattr(conn, "closed", False))  # psycopg reports it; sqlite3 connections have no flag

    @property
    def _conn(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or self._is_closed(conn):
            conn = self._local.conn = self._open()
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
        self._local = threading.local()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class SQLStore(ThreadConnections):
    """The store core both SQL stores build on. A store says how its engine marks a parameter (`P`),
    where a table lives (`table`), how to write (`_write`: one transaction) and how a staging build
    is locked (`_lock`); the rest of the build's life is written here once."""

    P = "?"
    current_build = "(SELECT value FROM meta WHERE key = 'current_build')"  # SQL: the current build's id
    index: Any  # the store's MemberIndex
    _centroids_cache: dict[str, np.ndarray]

    def table(self, name: str) -> str:
        return name

    def _write(self) -> AbstractContextManager:
        raise NotImplementedError

    def _lock(self, kind: str) -> str:
        """The clause that locks a build's row for this transaction ('' where the write lock is global)."""
        return ""

    def _iter_users(self, where: str, params: Sequence) -> Iterator[UserRecord]:
        raise NotImplementedError  # each engine streams in its own way

    def users_query(self, where: str) -> str:
        """Users with their prototype, `where` the caller says (u: users, m: memberships)."""
        return ("SELECT u.user_id, u.history, u.persona, u.synthesis, u.embedding, m.prototype_id "
                f"FROM {self.table('users')} u LEFT JOIN {self.table('memberships')} m USING (build_id, user_id) "
                f"{where}")

    def get_user(self, user_id: str) -> UserRecord | None:
        row = self._conn.execute(self.users_query(f"WHERE u.build_id = {self.current_build} AND u.user_id = {self.P}"),
                                 (user_id,)).fetchone()
        return to_record(*row) if row else None

    def users(self) -> Iterator[UserRecord]:
        yield from self._iter_users(f"WHERE u.build_id = {self.current_build}", ())

    def staged_users(self, build_id: str) -> Iterator[UserRecord]:
        yield from self._iter_users(f"WHERE u.build_id = {self.P}", (int(build_id),))

    def _staging(self, c, build_id: str, lock: str = "SHARE") -> int:
        """The build's id, checked to be still staging (locked against publish when the engine can)."""
        try:
            bid = int(build_id)
        except (TypeError, ValueError):
            raise StoreError(f"unknown build {build_id!r}; call begin_build first") from None
        row = c.execute(f"SELECT state FROM {self.table('builds')} WHERE build_id = {self.P}{self._lock(lock)}",
                        (bid,)).fetchone()
        if row is None:
            raise StoreError(f"unknown build {build_id!r}; call begin_build first")
        if row[0] != "staging":
            raise StoreError(f"build {build_id} is already {row[0]}; start a new one with begin_build")
        return bid

    def _check_embeddings(self, c, bid: int, build_id: str, dim: int) -> None:
        """Before publish: every staged user has an embedding of the prototypes' dimension."""
        bad = c.execute(f"SELECT user_id FROM {self.table('users')} WHERE build_id = {self.P} AND "
                        f"(embedding IS NULL OR length(embedding) <> {self.P}) LIMIT 1", (bid, dim * 4)).fetchone()
        if bad:
            raise StoreError(f"build {build_id}: user {bad[0]!r} has no embedding of dimension {dim} "
                             "(the prototypes' dimension); stage it again with one")

    def _check_memberships(self, c, bid: int, build_id: str) -> None:
        """After the assignments are written: they name exactly the staged users."""
        users, memberships, p = self.table("users"), self.table("memberships"), self.P
        stray = c.execute(f"SELECT m.user_id FROM {memberships} m LEFT JOIN {users} u USING (build_id, user_id) "
                          f"WHERE m.build_id = {p} AND u.user_id IS NULL LIMIT 1", (bid,)).fetchone()
        if stray:
            raise StoreError(f"assignments names user {stray[0]!r}, who was not staged in build {build_id}")
        missing = c.execute(f"SELECT u.user_id FROM {users} u LEFT JOIN {memberships} m USING (build_id, user_id) "
                            f"WHERE u.build_id = {p} AND m.user_id IS NULL LIMIT 1", (bid,)).fetchone()
        if missing:
            raise StoreError(f"assignments has no prototype for staged user {missing[0]!r}; assign every staged user")

    def _collect_garbage(self) -> None:
        """Delete replaced builds, one transaction each: readers still on them keep their snapshot."""
        retired = self._conn.execute(f"SELECT build_id FROM {self.table('builds')} WHERE state = 'retired'").fetchall()
        for (bid,) in retired:
            with self._write() as c:
                for name in ("memberships", "prototypes", "users", "builds"):
                    c.execute(f"DELETE FROM {self.table(name)} WHERE build_id = {self.P}", (bid,))

    def _centroids(self, c, bid) -> np.ndarray:
        key = str(bid)
        if key not in self._centroids_cache:  # a build's prototypes never change once published
            rows = c.execute(f"SELECT centroid FROM {self.table('prototypes')} WHERE build_id = {self.P} "
                             "ORDER BY prototype_id", (bid,)).fetchall()
            self._centroids_cache[key] = np.stack([decode_vector(r[0]) for r in rows])
        return self._centroids_cache[key]

    def close(self) -> None:
        index = getattr(self, "index", None)
        if index is not None:
            index.close()  # its background loader reads through these connections
        super().close()


# Bumped whenever a store's tables change; a store refuses a file or database written by a newer one.
SCHEMA_VERSION = 1

_history_adapter = TypeAdapter(list[HistoryItem])


def too_new(where: str, found: int) -> StoreError:
    return StoreError(
        f"{where} has schema version {found}, but this pgenrm-plugins understands up to {SCHEMA_VERSION}: "
        "upgrade pgenrm-plugins (pip install -U pgenrm-plugins) or point the store at another file/database"
    )


def params_key(params: Mapping[str, Any]) -> str:
    """Canonical JSON of build params: the same params resume the same unfinished build."""
    try:
        return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise StoreError(f"begin_build(params): params must be JSON-serialisable ({exc})") from None


def as_unit_vector(embedding: Any, where: str) -> np.ndarray:
    v = np.asarray(embedding, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v)) if v.size else 0.0
    if v.size == 0 or not np.isfinite(norm) or norm == 0.0:
        raise StoreError(f"{where}: the embedding is empty, zero or not finite; embed the user's text again")
    return v if abs(norm - 1.0) < 1e-4 else v / norm


def encode_vector(v: np.ndarray) -> bytes:
    return np.ascontiguousarray(v, dtype="<f4").tobytes()


def decode_vector(blob: bytes | None) -> np.ndarray | None:
    return None if blob is None else np.frombuffer(blob, dtype="<f4").astype(np.float32)


def check_user(user: UserRecord, *, need_embedding: bool = False) -> UserRecord:
    if not isinstance(user, UserRecord):
        raise StoreError(f"expected a UserRecord, got {type(user).__name__}")
    if not isinstance(user.user_id, str) or not user.user_id:
        raise StoreError(f"user_id must be a non-empty string, got {user.user_id!r}")
    if user.embedding is not None:
        user.embedding = as_unit_vector(user.embedding, f"user {user.user_id!r}.embedding")
    elif need_embedding:
        raise StoreError(f"user {user.user_id!r}.embedding is missing: embed the user's synthesis or history first")
    return user


@dataclass
class UserRow:
    """A user as stored: text columns, the embedding as float32 little-endian bytes."""

    user_id: str
    history: str
    persona: str | None
    synthesis: str | None
    embedding: bytes | None

    @classmethod
    def of(cls, user: UserRecord) -> "UserRow":
        history = [h if isinstance(h, HistoryItem) else HistoryItem.model_validate(h) for h in user.history]
        return cls(
            user.user_id,
            json.dumps([h.model_dump(mode="json") for h in history], ensure_ascii=False),
            user.persona,
            user.synthesis,
            None if user.embedding is None else encode_vector(user.embedding),
        )


def to_record(user_id, history, persona, synthesis, embedding, prototype_id=None) -> UserRecord:
    try:
        items = _history_adapter.validate_json(history) if history else []
    except ValidationError as exc:
        raise StoreError(f"user {user_id!r}: the stored history is not valid ({exc.errors()[0]['msg']})") from None
    return UserRecord(
        user_id=user_id,
        history=items,
        persona=persona,
        synthesis=synthesis,
        embedding=decode_vector(bytes(embedding) if embedding is not None else None),
        prototype_id=None if prototype_id is None else int(prototype_id),
    )


def check_prototypes(prototypes: PrototypeSet) -> np.ndarray:
    c = np.asarray(prototypes.centroids, dtype=np.float32)
    if c.ndim != 2 or c.shape[0] == 0 or c.shape[1] == 0:
        raise StoreError(f"prototypes.centroids must be a [K, dim] array with K >= 1, got shape {c.shape}")
    norms = np.linalg.norm(c, axis=1)
    if not np.all(np.isfinite(norms)) or np.any(norms == 0):
        raise StoreError("prototypes.centroids has a zero or non-finite row; re-run the clustering")
    if not prototypes.embedder:
        raise StoreError("prototypes.embedder is empty: record the name of the embedder that built the build")
    return np.ascontiguousarray(c / norms[:, None], dtype=np.float32)


def check_assignment(user_id: str, prototype_id: Any, k: int) -> int:
    try:
        p = int(prototype_id)
    except (TypeError, ValueError):
        raise StoreError(f"assignments[{user_id!r}] = {prototype_id!r} is not a prototype id (0..{k - 1})") from None
    if not 0 <= p < k:
        raise StoreError(f"assignments[{user_id!r}] = {p} is out of range: there are {k} prototypes (0..{k - 1})")
    return p


def nearest_prototype(centroids: np.ndarray, embedding: np.ndarray) -> int:
    if embedding.shape[0] != centroids.shape[1]:
        raise StoreError(
            f"the embedding has dimension {embedding.shape[0]} but the store's prototypes have {centroids.shape[1]}: "
            "use the embedder that built the store"
        )
    return int(np.argmax(centroids @ embedding))


# -- the synthesis cache: one table, the same in both stores (placeholders differ) ---------------
SYNTHESES_TABLE = "CREATE TABLE IF NOT EXISTS {t} (key TEXT PRIMARY KEY, text TEXT NOT NULL, weights TEXT)"
PUT_SYNTHESIS = ("INSERT INTO {t} AS old (key, text, weights) VALUES ({p}, {p}, {p}) ON CONFLICT (key) DO UPDATE "
                 "SET weights = excluded.weights WHERE old.weights IS NULL AND excluded.weights IS NOT NULL")


def synthesis_rows(entries: Mapping[str, "CachedSynthesis"]) -> list[tuple[str, str, str | None]]:
    rows = []
    for key, entry in entries.items():
        if not isinstance(entry.text, str):
            raise TypeError(f"synthesis {key!r}: text must be a string, got {type(entry.text).__name__}")
        weights = None if entry.weights is None else json.dumps([float(w) for w in entry.weights])
        rows.append((key, entry.text, weights))
    return rows


def cached_syntheses(rows) -> dict[str, "CachedSynthesis"]:
    return {key: CachedSynthesis(text, None if weights is None else json.loads(weights)) for key, text, weights in rows}
