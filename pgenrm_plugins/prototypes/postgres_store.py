"""The `postgres` store: the same builds, users and prototypes as the SQLite store, in PostgreSQL,
for many nodes writing and reading the same users (psycopg 3).

- Vectors are float32 `bytea` columns (plain PostgreSQL, 1.5 KiB per 384-d user, stored inline).
- Every write is one transaction; users are upserted (`ON CONFLICT DO UPDATE`), so nodes staging
  or adding the same user do not fail; the single `meta` row is locked by publish and add_user, so
  the version counter never skips or repeats and two publishes never interleave.
- Multi-statement reads run in one REPEATABLE READ transaction: one snapshot, never a mix of builds.
- Member search: in memory (`index.py`) by default. When the database has the pgvector extension,
  embeddings are also written to a `vector` column and, with `search: pgvector` (or `auto`), the
  top-k inside the nearest prototype is one `ORDER BY embedding_v <=> query LIMIT k` query.
  This machine's PostgreSQL has no pgvector, so that path is exercised only by the test that runs
  against a server that has it (PGENRM_TEST_POSTGRES_DSN).
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from pgenrm_plugins.hookspecs import hookimpl
from pgenrm_plugins.prototypes import common
from pgenrm_plugins.prototypes.base import (
    CachedSynthesis,
    Lookup,
    Members,
    Neighbour,
    PrototypeSet,
    StoreError,
    UserRecord,
)
from pgenrm_plugins.prototypes.index import MemberIndex, Storage, assemble

DSN_ENV = "PGENRM_POSTGRES_DSN"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS {s}.meta (
    id int PRIMARY KEY CHECK (id = 1),
    schema_version int NOT NULL,
    version bigint NOT NULL,
    current_build bigint
);
CREATE TABLE IF NOT EXISTS {s}.builds (
    build_id bigserial PRIMARY KEY,
    params_key text NOT NULL,
    state text NOT NULL CHECK (state IN ('staging', 'published', 'retired')),
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    embedder text,
    meta jsonb,
    has_vector boolean NOT NULL DEFAULT false
);
-- one unfinished build per params: nodes that begin the same build concurrently share it
CREATE UNIQUE INDEX IF NOT EXISTS builds_one_staging ON {s}.builds (params_key) WHERE state = 'staging';
CREATE TABLE IF NOT EXISTS {s}.users (
    build_id bigint NOT NULL,
    user_id text NOT NULL,
    history text NOT NULL,
    persona text,
    synthesis text,
    embedding bytea,
    changed_version bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (build_id, user_id)
);
CREATE INDEX IF NOT EXISTS users_changed ON {s}.users (build_id, changed_version);
CREATE TABLE IF NOT EXISTS {s}.memberships (
    build_id bigint NOT NULL,
    user_id text NOT NULL,
    prototype_id int NOT NULL,
    PRIMARY KEY (build_id, user_id)
);
CREATE INDEX IF NOT EXISTS memberships_by_prototype ON {s}.memberships (build_id, prototype_id);
CREATE TABLE IF NOT EXISTS {s}.prototypes (
    build_id bigint NOT NULL,
    prototype_id int NOT NULL,
    centroid bytea NOT NULL,
    PRIMARY KEY (build_id, prototype_id)
);
INSERT INTO {s}.meta VALUES (1, {schema_version}, 0, NULL) ON CONFLICT (id) DO NOTHING;
""" + common.SYNTHESES_TABLE.format(t="{s}.syntheses") + ";\n"

_USER_COLUMNS = "user_id, history, persona, synthesis, embedding"


class PostgresOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    dsn: str | None = Field(None, description=f"libpq connection string or URL; default: env {DSN_ENV}")
    db_schema: str = Field("pgenrm", alias="schema",
                           description="PostgreSQL schema holding the tables (created when missing)")
    search: Literal["auto", "memory", "pgvector"] = Field(
        "auto",
        description="member search: in memory, or pgvector's operators (auto: pgvector when the extension is installed)"
    )
    keep_old_builds: bool = Field(False,
                                  description="keep replaced builds' rows instead of deleting them after publish")
    index_storage: Storage = Field(
        "fp16", description="how the in-memory member index stores embeddings: fp16 (half of fp32, near exact), "
        "sq8 (a quarter, approximate ranks) or fp32")

    @field_validator("db_schema")
    @classmethod
    def _identifier(cls, v: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", v):
            raise ValueError(f"schema {v!r} must be a lower-case SQL identifier (letters, digits, _)")
        return v


class PostgresStore(common.SQLStore):
    name = "postgres"
    P = "%s"

    def __init__(self, options: PostgresOptions | None = None, **kwargs: Any):
        try:
            import psycopg
        except ImportError as exc:
            raise StoreError("the postgres store needs psycopg: pip install 'pgenrm-plugins[postgres]' "
                             f"({exc})") from None
        self._psycopg = psycopg
        self.options = options or PostgresOptions(**kwargs)
        self.dsn = self.options.dsn or os.environ.get(DSN_ENV)
        if not self.dsn:
            raise StoreError("store.options.dsn: no PostgreSQL DSN given; "
                             f"set it (e.g. postgresql://user@host/db) or ${DSN_ENV}")
        self.s = self.options.db_schema
        self._init_connections()
        self._centroids_cache: dict[str, np.ndarray] = {}
        self._pgvector = False
        self._init_schema()
        self.index = MemberIndex(self, storage=self.options.index_storage)

    # -- connections ----------------------------------------------------------------------------
    def _open(self):
        try:
            return self._psycopg.connect(self.dsn, autocommit=True)
        except self._psycopg.OperationalError as exc:
            raise StoreError(f"store.options.dsn: cannot connect to PostgreSQL: {str(exc).strip()}") from None

    @contextmanager
    def _snapshot(self, conn=None):
        """A read-only REPEATABLE READ transaction: every statement in it sees the same snapshot."""
        conn = conn or self._conn
        with conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield conn

    def table(self, name: str) -> str:
        return f"{self.s}.{name}"

    @property
    def current_build(self) -> str:
        return f"(SELECT current_build FROM {self.s}.meta WHERE id = 1)"

    @contextmanager
    def _write(self):
        conn = self._conn
        with conn.transaction():
            yield conn

    def _lock(self, kind: str) -> str:
        return f" FOR {kind}"

    def _init_schema(self) -> None:
        conn = self._conn
        with conn.transaction():
            # many nodes may open the store at once: one creates the tables, the others wait
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"pgenrm-schema:{self.s}",))
            exists = conn.execute("SELECT to_regclass(%s)", (f"{self.s}.meta",)).fetchone()[0]
            if exists:
                found = conn.execute(f"SELECT schema_version FROM {self.s}.meta WHERE id = 1").fetchone()
                if found and found[0] > common.SCHEMA_VERSION:
                    raise common.too_new(f"PostgreSQL schema {self.s!r}", found[0])
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {self.s}")
            conn.execute(_SCHEMA.format(s=self.s, schema_version=common.SCHEMA_VERSION))
        self._pgvector = self._setup_pgvector(conn)

    def _setup_pgvector(self, conn) -> bool:
        if self.options.search == "memory":
            return False
        installed = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
        if not installed:
            available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'").fetchone()
            if available:
                try:
                    conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                    installed = True
                except self._psycopg.Error:  # no privilege: search in memory instead
                    installed = False
        if not installed:
            if self.options.search == "pgvector":
                raise StoreError("store.options.search is pgvector, but the server has no pgvector extension "
                                 "(CREATE EXTENSION vector as a superuser), or use search: memory")
            return False
        conn.execute(f"ALTER TABLE {self.s}.users ADD COLUMN IF NOT EXISTS embedding_v vector")
        return True

    @staticmethod
    def _vector_text(blob: bytes | None) -> str | None:
        if blob is None:
            return None
        return "[" + ",".join(repr(float(x)) for x in np.frombuffer(blob, dtype="<f4")) + "]"

    # -- building -------------------------------------------------------------------------------
    def begin_build(self, params: dict[str, Any]) -> str:
        key = common.params_key(params)
        conn = self._conn
        with conn.transaction():
            row = conn.execute(
                f"INSERT INTO {self.s}.builds (params_key, state) VALUES (%s, 'staging') "
                "ON CONFLICT (params_key) WHERE state = 'staging' DO NOTHING RETURNING build_id", (key,)).fetchone()
            if row is None:
                row = conn.execute(f"SELECT build_id FROM {self.s}.builds WHERE params_key = %s AND state = 'staging'",
                                   (key,)).fetchone()
        return str(row[0])

    def stage_users(self, build_id: str, users: Iterable[UserRecord]) -> None:
        conn = self._conn
        vec_col = ", embedding_v" if self._pgvector else ""
        with conn.transaction():
            bid = self._staging(conn, build_id, "SHARE")  # publish waits for this batch, and vice versa
            conn.execute("CREATE TEMP TABLE staged (ord bigint, user_id text, history text, persona text, "
                         "synthesis text, embedding bytea, vtext text) ON COMMIT DROP")
            with conn.cursor().copy(f"COPY staged (ord, {_USER_COLUMNS}, vtext) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "text", "text", "text", "bytea", "text"])
                for i, user in enumerate(users):
                    r = common.UserRow.of(common.check_user(user))
                    vtext = self._vector_text(r.embedding) if self._pgvector else None
                    copy.write_row((i, r.user_id, r.history, r.persona, r.synthesis, r.embedding, vtext))
            # The same user twice in one batch: the last one wins, as in SQLite.
            conn.execute(
                f"INSERT INTO {self.s}.users (build_id, {_USER_COLUMNS}{vec_col}) "
                f"SELECT DISTINCT ON (user_id) %s, {_USER_COLUMNS}{', vtext::vector' if self._pgvector else ''} "
                "FROM staged ORDER BY user_id, ord DESC "
                "ON CONFLICT (build_id, user_id) DO UPDATE SET history = excluded.history, persona = excluded.persona, "
                "synthesis = excluded.synthesis, embedding = excluded.embedding"
                + (", embedding_v = excluded.embedding_v" if self._pgvector else ""), (bid,))

    def publish(self, build_id: str, prototypes: PrototypeSet, assignments: dict[str, int]) -> None:
        centroids = common.check_prototypes(prototypes)
        k, dim = centroids.shape
        s, conn = self.s, self._conn
        with conn.transaction():
            bid = self._staging(conn, build_id, "UPDATE")
            conn.execute(f"SELECT 1 FROM {s}.meta WHERE id = 1 FOR UPDATE")  # publishes and add_users queue here
            self._check_embeddings(conn, bid, build_id, dim)
            with conn.cursor().copy(f"COPY {s}.memberships (build_id, user_id, prototype_id) "
                                    "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "int4"])
                for uid, p in assignments.items():
                    copy.write_row((bid, uid, common.check_assignment(uid, p, k)))
            self._check_memberships(conn, bid, build_id)
            with conn.cursor().copy(f"COPY {s}.prototypes FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "int4", "bytea"])
                for i, row in enumerate(centroids):
                    copy.write_row((bid, i, common.encode_vector(row)))
            has_vector = self._pgvector and not conn.execute(
                f"SELECT 1 FROM {s}.users WHERE build_id = %s AND embedding_v IS NULL LIMIT 1", (bid,)).fetchone()
            conn.execute(f"UPDATE {s}.builds SET state = 'retired' WHERE state = 'published'")
            conn.execute(f"UPDATE {s}.builds SET state = 'published', published_at = now(), embedder = %s, meta = %s, "
                         "has_vector = %s WHERE build_id = %s",
                         (prototypes.embedder, json.dumps(prototypes.meta, default=str), has_vector, bid))
            conn.execute(f"UPDATE {s}.meta SET current_build = %s, version = version + 1 WHERE id = 1", (bid,))
        if not self.options.keep_old_builds:
            self._collect_garbage()
        # Fresh statistics after a bulk load, or the planner may scan every member for one user.
        for table in ("users", "memberships"):
            conn.execute(f"ANALYZE {s}.{table}")

    # -- reading the current build --------------------------------------------------------------
    def _iter_users(self, where: str, params: Sequence) -> Iterator[UserRecord]:
        # Own connection, one snapshot, a server-side cursor: a million users stream in pages.
        conn = self._open()
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                with conn.cursor(name="pgenrm_users") as cur:
                    cur.itersize = 2000
                    cur.execute(self.users_query(f"{where} ORDER BY u.user_id"), params)
                    for row in cur:
                        yield common.to_record(*row)
        finally:
            conn.close()

    def prototypes(self) -> PrototypeSet | None:
        conn = self._conn
        with self._snapshot(conn):
            row = conn.execute(f"SELECT b.build_id, b.embedder, b.meta FROM {self.s}.builds b JOIN {self.s}.meta m "
                               "ON m.current_build = b.build_id").fetchone()
            return None if row is None else PrototypeSet(self._centroids(conn, row[0]).copy(), row[1], row[2] or {})

    def nearest(self, embedding: np.ndarray, top_k: int, exclude: Sequence[str] = ()) -> Lookup | None:
        if self._pgvector:
            found = self._nearest_pgvector(embedding, top_k, exclude)
            if found is not False:
                return found
        return self.index.nearest(embedding, top_k, exclude)

    def _nearest_pgvector(self, embedding, top_k: int, exclude: Sequence[str]):
        """Top-k by pgvector's cosine distance; False when the current build lacks vector columns."""
        conn = self._conn
        with self._snapshot(conn):
            row = conn.execute(f"SELECT b.build_id, b.has_vector FROM {self.s}.builds b JOIN {self.s}.meta m "
                               "ON m.current_build = b.build_id").fetchone()
            if row is None:
                return None
            if not row[1]:
                return False
            centroids = self._centroids(conn, row[0])
            q = common.as_unit_vector(embedding, "nearest(embedding)")
            p = common.nearest_prototype(centroids, q)
            qtext = self._vector_text(common.encode_vector(q))
            rows = conn.execute(
                f"SELECT u.user_id, 1 - (u.embedding_v <=> %s::vector) FROM {self.s}.memberships m "
                f"JOIN {self.s}.users u USING (build_id, user_id) WHERE m.build_id = %s AND m.prototype_id = %s "
                "AND NOT (m.user_id = ANY(%s)) ORDER BY u.embedding_v <=> %s::vector LIMIT %s",
                (qtext, row[0], p, list(exclude), qtext, top_k)).fetchall()
            return Lookup(p, float(centroids[p] @ q), [Neighbour(uid, float(sim)) for uid, sim in rows])

    def version(self) -> int:
        return int(self._conn.execute(f"SELECT version FROM {self.s}.meta WHERE id = 1").fetchone()[0])

    # -- what the in-memory index reads ------------------------------------------------------------
    def load_members(self) -> Members | None:
        conn = self._open()  # own connection: the server-side cursor lives in its own transaction
        try:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                version, bid = conn.execute(f"SELECT version, current_build FROM {self.s}.meta WHERE id = 1").fetchone()
                if bid is None:
                    return None
                count = conn.execute(f"SELECT count(*) FROM {self.s}.memberships WHERE build_id = %s",
                                     (bid,)).fetchone()[0]
                centroids = self._centroids(conn, bid)
                with conn.cursor(name="pgenrm_members", binary=True) as cur:
                    cur.itersize = 20000
                    cur.execute(f"SELECT m.prototype_id, m.user_id, u.embedding FROM {self.s}.memberships m "
                                f"JOIN {self.s}.users u USING (build_id, user_id) WHERE m.build_id = %s "
                                "ORDER BY m.prototype_id", (bid,))
                    return assemble(str(bid), int(version), centroids, count, cur)
        finally:
            conn.close()

    def member_changes(self, build_id: str, since_version: int) -> Members | None:
        conn = self._conn
        with self._snapshot(conn):
            version, bid = conn.execute(f"SELECT version, current_build FROM {self.s}.meta WHERE id = 1").fetchone()
            if bid is None or str(bid) != build_id:
                return None
            rows = conn.execute(f"SELECT m.prototype_id, m.user_id, u.embedding FROM {self.s}.users u "
                                f"JOIN {self.s}.memberships m USING (build_id, user_id) "
                                "WHERE u.build_id = %s AND u.changed_version > %s", (bid, since_version)).fetchall()
            return assemble(build_id, int(version), self._centroids(conn, bid), len(rows), rows)

    # -- incremental ----------------------------------------------------------------------------
    def add_user(self, user: UserRecord) -> int:
        common.check_user(user, need_embedding=True)
        r = common.UserRow.of(user)
        s, conn = self.s, self._conn
        with conn.transaction():
            # The meta row lock orders concurrent add_users and publishes: versions never repeat.
            version, bid = conn.execute(f"SELECT version, current_build FROM {s}.meta WHERE id = 1 "
                                        "FOR UPDATE").fetchone()
            if bid is None:
                raise StoreError(f"PostgreSQL schema {s!r} has no published build yet: "
                                 "run `pgenrm prototypes build` first")
            p = common.nearest_prototype(self._centroids(conn, bid), user.embedding)
            version += 1
            vec = ", embedding_v" if self._pgvector else ""
            conn.execute(
                f"INSERT INTO {s}.users (build_id, {_USER_COLUMNS}, changed_version{vec}) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s{', %s::vector' if self._pgvector else ''}) "
                "ON CONFLICT (build_id, user_id) DO UPDATE SET history = excluded.history, persona = excluded.persona, "
                "synthesis = excluded.synthesis, embedding = excluded.embedding, "
                "changed_version = excluded.changed_version"
                + (", embedding_v = excluded.embedding_v" if self._pgvector else ""),
                (bid, r.user_id, r.history, r.persona, r.synthesis, r.embedding, version)
                + ((self._vector_text(r.embedding),) if self._pgvector else ()))
            conn.execute(f"INSERT INTO {s}.memberships VALUES (%s, %s, %s) ON CONFLICT (build_id, user_id) "
                         "DO UPDATE SET prototype_id = excluded.prototype_id", (bid, r.user_id, p))
            conn.execute(f"UPDATE {s}.meta SET version = %s WHERE id = 1", (version,))
        user.prototype_id = p
        return p

    # -- the synthesis cache ----------------------------------------------------------------------
    def get_syntheses(self, keys: Sequence[str]) -> dict[str, CachedSynthesis]:
        rows = self._conn.execute(f"SELECT key, text, weights FROM {self.s}.syntheses WHERE key = ANY(%s)",
                                  (list(dict.fromkeys(keys)),)).fetchall()
        return common.cached_syntheses(rows)

    def put_syntheses(self, entries: Mapping[str, CachedSynthesis]) -> None:
        rows = common.synthesis_rows(entries)
        conn = self._conn
        with conn.transaction(), conn.cursor() as cur:
            cur.executemany(common.PUT_SYNTHESIS.format(t=f"{self.s}.syntheses", p="%s"), rows)

    def stats(self) -> dict[str, Any]:
        s, conn = self.s, self._conn
        with self._snapshot(conn):
            version, bid = conn.execute(f"SELECT version, current_build FROM {s}.meta WHERE id = 1").fetchone()
            staging = conn.execute(f"SELECT count(*) FROM {s}.builds WHERE state = 'staging'").fetchone()[0]
            out: dict[str, Any] = {
                "store": self.name, "schema": s, "schema_version": common.SCHEMA_VERSION, "version": int(version),
                "unfinished_builds": staging, "build_id": None, "users": 0, "prototypes": 0, "population": {},
                "search": "pgvector" if self._pgvector else "memory",
                "syntheses": conn.execute(f"SELECT count(*) FROM {s}.syntheses").fetchone()[0],
            }
            if bid is not None:
                embedder, meta, published_at = conn.execute(
                    f"SELECT embedder, meta, published_at FROM {s}.builds WHERE build_id = %s", (bid,)).fetchone()
                population = dict(conn.execute(f"SELECT prototype_id, count(*) FROM {s}.memberships "
                                               "WHERE build_id = %s GROUP BY prototype_id", (bid,)).fetchall())
                k = len(self._centroids(conn, bid))
                out.update(
                    build_id=str(bid), embedder=embedder, meta=meta or {}, published_at=published_at.timestamp(),
                    users=conn.execute(f"SELECT count(*) FROM {s}.users WHERE build_id = %s", (bid,)).fetchone()[0],
                    prototypes=k, population={p: population.get(p, 0) for p in range(k)},
                )
        out["index_members"], out["index_bytes"] = self.index.size, self.index.memory_bytes()
        return out


@hookimpl
def register_stores(register):
    register(
        "postgres",
        PostgresStore,
        options=PostgresOptions,
        description=f"PostgreSQL shared by many nodes (option dsn or ${DSN_ENV}); pgvector search when installed",
    )
