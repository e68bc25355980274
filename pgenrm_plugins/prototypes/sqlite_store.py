"""The `sqlite` store (the embedded default): one SQLite file in WAL mode.

Tables: `meta` (schema version, current build, version counter), `builds`, `users` (history as
JSON, persona, synthesis, embedding as a float32 blob), `memberships`, `prototypes` (centroids).
Every write is one transaction (`BEGIN IMMEDIATE`, so concurrent writers queue instead of failing
half-way), and every multi-statement read one read transaction: WAL gives it a snapshot, so a
reader sees the build that was current when it started even while another process publishes.
`synchronous=FULL`: a committed batch survives a crash of the machine too, not only of the process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins.hookspecs import hookimpl
from pgenrm_plugins.prototypes import common
from pgenrm_plugins.prototypes.base import CachedSynthesis, Lookup, Members, PrototypeSet, StoreError, UserRecord
from pgenrm_plugins.prototypes.index import MemberIndex, Storage, assemble

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value);
CREATE TABLE IF NOT EXISTS builds (
    build_id INTEGER PRIMARY KEY AUTOINCREMENT,
    params_key TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('staging', 'published', 'retired')),
    created_at REAL NOT NULL,
    published_at REAL,
    embedder TEXT,
    meta TEXT
);
CREATE INDEX IF NOT EXISTS builds_by_params ON builds (params_key, state);
CREATE TABLE IF NOT EXISTS users (
    build_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    history TEXT NOT NULL,
    persona TEXT,
    synthesis TEXT,
    embedding BLOB,
    changed_version INTEGER NOT NULL DEFAULT 0,  -- the version add_user wrote it at, 0 when staged
    PRIMARY KEY (build_id, user_id)
);
CREATE INDEX IF NOT EXISTS users_changed ON users (build_id, changed_version);
CREATE TABLE IF NOT EXISTS memberships (
    build_id INTEGER NOT NULL,
    user_id TEXT NOT NULL,
    prototype_id INTEGER NOT NULL,
    PRIMARY KEY (build_id, user_id)
);
CREATE INDEX IF NOT EXISTS memberships_by_prototype ON memberships (build_id, prototype_id);
CREATE TABLE IF NOT EXISTS prototypes (
    build_id INTEGER NOT NULL,
    prototype_id INTEGER NOT NULL,
    centroid BLOB NOT NULL,
    PRIMARY KEY (build_id, prototype_id)
);
""" + common.SYNTHESES_TABLE.format(t="syntheses") + ";\n"

_UPSERT_USER = """
INSERT INTO users (build_id, user_id, history, persona, synthesis, embedding, changed_version)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (build_id, user_id) DO UPDATE SET history = excluded.history, persona = excluded.persona,
    synthesis = excluded.synthesis, embedding = excluded.embedding, changed_version = excluded.changed_version
"""


class SQLiteOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field("pgenrm-prototypes.sqlite", min_length=1, description="the store file (created when missing)")
    busy_timeout_s: float = Field(60, gt=0, description="how long a writer waits for another writer's transaction")
    keep_old_builds: bool = Field(False,
                                  description="keep replaced builds' rows instead of deleting them after publish")
    index_storage: Storage = Field(
        "fp16", description="how the in-memory member index stores embeddings: fp16 (half of fp32, near exact), "
        "sq8 (a quarter, approximate ranks) or fp32")


class SQLiteStore(common.SQLStore):
    name = "sqlite"

    def __init__(self, options: SQLiteOptions | None = None, **kwargs: Any):
        self.options = options or SQLiteOptions(**kwargs)
        self.path = Path(self.options.path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._init_connections()
        self._centroids_cache: dict[str, np.ndarray] = {}
        self._init_schema()
        self.index = MemberIndex(self, storage=self.options.index_storage)

    # -- connections ----------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, timeout=self.options.busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"{self.path}: cannot open as a SQLite store ({exc}); "
                             "point store.options.path at another file") from None
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE", conn: sqlite3.Connection | None = None):
        conn = conn or self._conn
        conn.execute(f"BEGIN {mode}")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _write(self):
        return self._transaction()  # BEGIN IMMEDIATE: SQLite's write lock is the whole file's

    def _init_schema(self) -> None:
        with self._transaction() as c:
            has_meta = c.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
            if has_meta:
                row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                found = int(row[0]) if row else 0
                if found > common.SCHEMA_VERSION:
                    raise common.too_new(f"store file {self.path}", found)
            # statement by statement: executescript() would COMMIT the check above away
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    c.execute(statement)
            c.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (common.SCHEMA_VERSION,))
            c.execute("INSERT OR IGNORE INTO meta VALUES ('version', 0)")
            c.execute("INSERT OR IGNORE INTO meta VALUES ('current_build', NULL)")

    # -- building -------------------------------------------------------------------------------
    def begin_build(self, params: dict[str, Any]) -> str:
        key = common.params_key(params)
        with self._transaction() as c:
            row = c.execute("SELECT build_id FROM builds WHERE params_key = ? AND state = 'staging' "
                            "ORDER BY build_id DESC LIMIT 1", (key,)).fetchone()
            if row:
                return str(row[0])
            cur = c.execute("INSERT INTO builds (params_key, state, created_at) VALUES (?, 'staging', ?)",
                            (key, time.time()))
            return str(cur.lastrowid)

    def stage_users(self, build_id: str, users: Iterable[UserRecord]) -> None:
        with self._transaction() as c:
            bid = self._staging(c, build_id)

            def rows():
                for user in users:
                    r = common.UserRow.of(common.check_user(user))
                    yield bid, r.user_id, r.history, r.persona, r.synthesis, r.embedding, 0

            c.executemany(_UPSERT_USER, rows())

    def publish(self, build_id: str, prototypes: PrototypeSet, assignments: dict[str, int]) -> None:
        centroids = common.check_prototypes(prototypes)
        k, dim = centroids.shape
        with self._transaction() as c:
            bid = self._staging(c, build_id)
            self._check_embeddings(c, bid, build_id, dim)
            c.executemany("INSERT INTO memberships VALUES (?, ?, ?)",
                          ((bid, uid, common.check_assignment(uid, p, k)) for uid, p in assignments.items()))
            self._check_memberships(c, bid, build_id)
            c.executemany("INSERT INTO prototypes VALUES (?, ?, ?)",
                          ((bid, i, common.encode_vector(row)) for i, row in enumerate(centroids)))
            c.execute("UPDATE builds SET state = 'retired' WHERE state = 'published'")
            c.execute("UPDATE builds SET state = 'published', published_at = ?, embedder = ?, meta = ? "
                      "WHERE build_id = ?",
                      (time.time(), prototypes.embedder, json.dumps(prototypes.meta, default=str), bid))
            c.execute("UPDATE meta SET value = ? WHERE key = 'current_build'", (bid,))
            c.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        if not self.options.keep_old_builds:
            self._collect_garbage()

    # -- reading the current build --------------------------------------------------------------
    def _iter_users(self, where: str, params: Sequence) -> Iterator[UserRecord]:
        # Its own connection and read transaction: one consistent snapshot for the whole iteration,
        # and the thread's connection is not left inside an open statement meanwhile.
        conn = self._open()
        try:
            with self._transaction("DEFERRED", conn) as c:
                for row in c.execute(self.users_query(f"{where} ORDER BY u.user_id"), params):
                    yield common.to_record(*row)
        finally:
            conn.close()

    def prototypes(self) -> PrototypeSet | None:
        with self._transaction("DEFERRED") as c:
            row = c.execute("SELECT build_id, embedder, meta FROM builds "
                            f"WHERE build_id = {self.current_build}").fetchone()
            if row is None:
                return None
            return PrototypeSet(self._centroids(c, row[0]).copy(), row[1], json.loads(row[2] or "{}"))

    def nearest(self, embedding: np.ndarray, top_k: int, exclude: Sequence[str] = ()) -> Lookup | None:
        return self.index.nearest(embedding, top_k, exclude)

    def version(self) -> int:
        return int(self._conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])

    # -- what the in-memory index reads ------------------------------------------------------------
    def load_members(self) -> Members | None:
        with self._transaction("DEFERRED") as c:
            version = int(c.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            bid = c.execute("SELECT value FROM meta WHERE key = 'current_build'").fetchone()[0]
            if bid is None:
                return None
            count = c.execute("SELECT count(*) FROM memberships WHERE build_id = ?", (bid,)).fetchone()[0]
            rows = c.execute("SELECT m.prototype_id, m.user_id, u.embedding FROM memberships m "
                             "JOIN users u USING (build_id, user_id) WHERE m.build_id = ? ORDER BY m.prototype_id",
                             (bid,))
            return assemble(str(bid), version, self._centroids(c, bid), count, rows)

    def member_changes(self, build_id: str, since_version: int) -> Members | None:
        with self._transaction("DEFERRED") as c:
            version = int(c.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            bid = c.execute("SELECT value FROM meta WHERE key = 'current_build'").fetchone()[0]
            if bid is None or str(bid) != build_id:
                return None
            rows = c.execute("SELECT m.prototype_id, m.user_id, u.embedding FROM users u JOIN memberships m "
                             "USING (build_id, user_id) WHERE u.build_id = ? AND u.changed_version > ?",
                             (bid, since_version)).fetchall()
            return assemble(build_id, version, self._centroids(c, bid), len(rows), rows)

    # -- incremental ----------------------------------------------------------------------------
    def add_user(self, user: UserRecord) -> int:
        common.check_user(user, need_embedding=True)
        r = common.UserRow.of(user)
        with self._transaction() as c:
            bid = c.execute("SELECT value FROM meta WHERE key = 'current_build'").fetchone()[0]
            if bid is None:
                raise StoreError(f"{self.path} has no published build yet: run `pgenrm prototypes build` first")
            p = common.nearest_prototype(self._centroids(c, bid), user.embedding)
            version = int(c.execute("UPDATE meta SET value = value + 1 WHERE key = 'version' "
                                    "RETURNING value").fetchone()[0])
            c.execute(_UPSERT_USER, (bid, r.user_id, r.history, r.persona, r.synthesis, r.embedding, version))
            c.execute("INSERT INTO memberships VALUES (?, ?, ?) ON CONFLICT (build_id, user_id) "
                      "DO UPDATE SET prototype_id = excluded.prototype_id", (bid, r.user_id, p))
        user.prototype_id = p
        return p

    # -- the synthesis cache ----------------------------------------------------------------------
    def get_syntheses(self, keys: Sequence[str]) -> dict[str, CachedSynthesis]:
        keys, rows = list(dict.fromkeys(keys)), []
        with self._transaction("DEFERRED") as c:
            for start in range(0, len(keys), 500):  # under SQLite's bound-parameter limit
                chunk = keys[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                rows += c.execute(f"SELECT key, text, weights FROM syntheses WHERE key IN ({marks})", chunk).fetchall()
        return common.cached_syntheses(rows)

    def put_syntheses(self, entries: Mapping[str, CachedSynthesis]) -> None:
        rows = common.synthesis_rows(entries)
        with self._transaction() as c:
            c.executemany(common.PUT_SYNTHESIS.format(t="syntheses", p="?"), rows)

    def stats(self) -> dict[str, Any]:
        with self._transaction("DEFERRED") as c:
            version = int(c.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0])
            build = c.execute("SELECT build_id, embedder, meta, published_at FROM builds "
                              f"WHERE build_id = {self.current_build}").fetchone()
            staging = c.execute("SELECT count(*) FROM builds WHERE state = 'staging'").fetchone()[0]
            out: dict[str, Any] = {
                "store": self.name, "path": str(self.path), "schema_version": common.SCHEMA_VERSION,
                "version": version, "unfinished_builds": staging, "build_id": None, "users": 0, "prototypes": 0,
                "population": {}, "syntheses": c.execute("SELECT count(*) FROM syntheses").fetchone()[0],
            }
            if build:
                bid = build[0]
                population = dict(c.execute("SELECT prototype_id, count(*) FROM memberships WHERE build_id = ? "
                                            "GROUP BY prototype_id ORDER BY prototype_id", (bid,)).fetchall())
                k = len(self._centroids(c, bid))
                out.update(
                    build_id=str(bid), embedder=build[1], meta=json.loads(build[2] or "{}"), published_at=build[3],
                    users=c.execute("SELECT count(*) FROM users WHERE build_id = ?", (bid,)).fetchone()[0],
                    prototypes=k, population={p: population.get(p, 0) for p in range(k)},
                )
        out["file_bytes"] = sum(os.path.getsize(f) for f in (self.path, Path(f"{self.path}-wal")) if f.exists())
        out["index_members"], out["index_bytes"] = self.index.size, self.index.memory_bytes()
        return out


@hookimpl
def register_stores(register):
    register(
        "sqlite",
        SQLiteStore,
        options=SQLiteOptions,
        description="one SQLite file (WAL): users, histories, embeddings, prototypes; the embedded default",
    )
