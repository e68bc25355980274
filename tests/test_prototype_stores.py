"""Both prototype stores, through the same tests: a real SQLite file, and a real PostgreSQL server
(started from the distribution's binaries for the session, or $PGENRM_TEST_POSTGRES_DSN).

Crashes are real: a subprocess is SIGKILLed in the middle of a staging or publishing transaction
(it kills itself from inside the iterable the store is consuming, so the kill lands mid-write
every time), and the store is then reopened and checked.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid

import numpy as np
import pytest

from pgenrm_plugins.config import EmbedderConfig, StoreConfig
from pgenrm_plugins.prototypes.base import PrototypeSet, PrototypeStore, StoreError, UserRecord
from pgenrm_plugins.testing.postgres import LocalPostgres, find_bindir

DIM = 16


# -- stores -----------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def postgres_dsn():
    dsn = os.environ.get("PGENRM_TEST_POSTGRES_DSN")
    if dsn:
        yield dsn
        return
    if find_bindir() is None:
        reason = "no PostgreSQL server binaries (/usr/lib/postgresql/*/bin/initdb): apt-get install postgresql"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL store tests, but {reason} (.ci/run installs it)")
        pytest.skip(reason)
    with LocalPostgres() as pg:
        yield pg.dsn


@pytest.fixture(params=["sqlite", "postgres"])
def spec(request, tmp_path):
    """(store name, options): each `open_store(spec)` is another connection to the same storage,
    as another process or node would have."""
    if request.param == "sqlite":
        yield {"name": "sqlite", "options": {"path": str(tmp_path / "prototypes.sqlite")}}
        return
    dsn = request.getfixturevalue("postgres_dsn")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    yield {"name": "postgres", "options": {"dsn": dsn, "schema": schema}}
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def open_store(spec) -> PrototypeStore:
    return StoreConfig.model_validate(spec).build("store")


@pytest.fixture
def store(spec):
    s = open_store(spec)
    yield s
    s.close()


# -- data -------------------------------------------------------------------------------------------
def unit(rng, n, dim=DIM):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def make_users(prefix, n, seed):
    rng = np.random.default_rng(seed)
    emb = unit(rng, n)
    return [
        UserRecord(f"{prefix}{i:04d}", history=[{"prompt": f"q{i}", "chosen": "short", "rejected": "long answer"}],
                   persona=f"persona {i}", synthesis=f"likes {prefix} {i}", embedding=emb[i])
        for i in range(n)
    ]


def cluster(users, k, seed):
    centroids = unit(np.random.default_rng(seed), k)
    assignments = {u.user_id: int(np.argmax(centroids @ u.embedding)) for u in users}
    return PrototypeSet(centroids, "test-embedder", {"k": k}), assignments


def publish_build(store, prefix, n, k=4, seed=0):
    users = make_users(prefix, n, seed)
    build = store.begin_build({"prefix": prefix, "n": n})
    for start in range(0, n, 50):
        store.stage_users(build, users[start:start + 50])
    protos, assignments = cluster(users, k, seed + 1)
    store.publish(build, protos, assignments)
    return users, protos, assignments


def brute_force(users, protos, assignments, query, top_k, exclude=()):
    p = int(np.argmax(protos.centroids @ query))
    members = [u for u in users if assignments[u.user_id] == p and u.user_id not in exclude]
    members.sort(key=lambda u: -float(u.embedding @ query))
    return p, [u.user_id for u in members[:top_k]]


# -- the contract -------------------------------------------------------------------------------------
def test_nothing_published_yet(store):
    assert store.version() == 0
    assert store.prototypes() is None
    assert store.nearest(np.ones(DIM, np.float32), 3) is None
    assert store.get_user("nobody") is None
    assert list(store.users()) == []
    with pytest.raises(StoreError, match="no published build"):
        store.add_user(make_users("x", 1, 0)[0])


def test_stage_resume_publish_and_read(spec, store):
    users = make_users("u", 120, seed=1)
    build = store.begin_build({"k": 4, "source": "rows.jsonl"})
    assert store.begin_build({"source": "rows.jsonl", "k": 4}) == build  # same params: resumed
    assert store.begin_build({"k": 5, "source": "rows.jsonl"}) != build
    store.stage_users(build, users[:70])
    # Another connection (a restarted builder) resumes the same build and sees what was staged.
    other = open_store(spec)
    assert other.begin_build({"k": 4, "source": "rows.jsonl"}) == build
    assert {u.user_id for u in other.staged_users(build)} == {u.user_id for u in users[:70]}
    other.stage_users(build, users[60:])  # overlapping batch: users are replaced, not duplicated
    assert len(list(store.staged_users(build))) == 120
    assert store.version() == 0 and store.prototypes() is None  # staging is invisible to readers

    protos, assignments = cluster(users, 4, seed=2)
    store.publish(build, protos, assignments)
    assert store.version() == 1
    with pytest.raises(StoreError, match="already published"):
        store.stage_users(build, users[:1])

    got = store.get_user("u0007")
    assert got.history[0].prompt == "q7" and got.history[0].chosen == "short"
    assert (got.persona, got.synthesis) == ("persona 7", "likes u 7")
    assert got.embedding.dtype == np.float32
    np.testing.assert_allclose(got.embedding, users[7].embedding, rtol=1e-6)
    assert got.prototype_id == assignments["u0007"]
    assert store.get_user("nobody") is None
    assert sorted(u.user_id for u in other.users()) == [u.user_id for u in users]

    current = other.prototypes()
    np.testing.assert_allclose(current.centroids, protos.centroids, rtol=1e-6)
    assert current.embedder == "test-embedder" and current.meta == {"k": 4}

    stats = other.stats()
    assert stats["users"] == 120 and stats["prototypes"] == 4 and stats["version"] == 1
    assert sum(stats["population"].values()) == 120
    assert stats["population"] == {p: list(assignments.values()).count(p) for p in range(4)}
    other.close()


def test_nearest_matches_brute_force(store):
    users, protos, assignments = publish_build(store, "m", 400, k=5, seed=3)
    rng = np.random.default_rng(4)
    for query in unit(rng, 10):
        found = store.nearest(query, top_k=6)
        p, expected = brute_force(users, protos, assignments, query, 6)
        assert found.prototype_id == p
        assert [n.user_id for n in found.neighbours] == expected
        sims = [n.similarity for n in found.neighbours]
        assert sims == sorted(sims, reverse=True)
        assert found.similarity == pytest.approx(float(protos.centroids[p] @ query), abs=1e-5)
    # `exclude` skips the user being scored; the rest of the top-k moves up.
    me = users[0]
    found = store.nearest(me.embedding, top_k=3, exclude=[me.user_id])
    assert me.user_id not in [n.user_id for n in found.neighbours]
    assert [n.user_id for n in found.neighbours] == brute_force(users, protos, assignments, me.embedding, 3,
                                                                [me.user_id])[1]
    assert store.nearest(me.embedding, top_k=3).neighbours[0].user_id == me.user_id
    with pytest.raises(StoreError, match="dimension 8"):
        store.nearest(np.ones(8, np.float32), 3)


def test_add_user_is_incremental_and_seen_by_other_nodes(spec, store):
    users, protos, assignments = publish_build(store, "a", 200, seed=5)
    reader = open_store(spec)  # another node holding its own in-memory index
    query = unit(np.random.default_rng(6), 1)[0]
    before = reader.nearest(query, 3)
    assert reader.version() == 1

    newcomer = UserRecord("new-user", history=[{"prompt": "p", "chosen": "c", "rejected": "r"}], embedding=query)
    p = store.add_user(newcomer)
    assert p == int(np.argmax(protos.centroids @ query)) == newcomer.prototype_id
    assert store.version() == 2
    after = reader.nearest(query, 3)
    assert after.neighbours[0].user_id == "new-user" and after.neighbours[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [n.user_id for n in after.neighbours[1:]] == [n.user_id for n in before.neighbours[:2]]
    assert reader.get_user("new-user").prototype_id == p

    # Updating an existing user moves it: its old row is not found any more, its new one is.
    moved = users[0]
    old_p = assignments[moved.user_id]
    # Not the newcomer's prototype: its embedding (the query) would tie with the target at similarity 1.
    target = next(c for i, c in enumerate(protos.centroids) if i not in (old_p, p))
    moved.embedding = target
    new_p = store.add_user(moved)
    assert new_p != old_p and store.version() == 3
    assert reader.nearest(target, 1).neighbours[0].user_id == moved.user_id
    stale = users[1].embedding if assignments[users[1].user_id] == old_p else None
    if stale is not None:
        assert moved.user_id not in [n.user_id for n in reader.nearest(stale, 200).neighbours]
    assert reader.stats()["users"] == 201
    assert reader.index.loads == 1  # patched in place, not reloaded
    reader.close()



def test_synthesis_cache_is_shared_first_text_wins_and_weights_are_added_once(spec, store):
    from pgenrm_plugins.prototypes.base import CachedSynthesis

    assert store.get_syntheses(["k1"]) == {}  # no build needed: the cache is independent of builds
    text = "Persona: brief.\nCriteria:\n- Brief: short (90)"
    store.put_syntheses({"k1": CachedSynthesis(text), "k2": CachedSynthesis("Persona: x", [10.0])})
    other = open_store(spec)  # another worker
    assert other.get_syntheses(["k1", "k2", "k3"]) == {"k1": CachedSynthesis(text, None),
                                                       "k2": CachedSynthesis("Persona: x", [10.0])}
    other.put_syntheses({"k1": CachedSynthesis("another text", [45.0, -5.0]), "k2": CachedSynthesis("y", [1.0])})
    assert store.get_syntheses(["k1", "k2"]) == {"k1": CachedSynthesis(text, [45.0, -5.0]),
                                                 "k2": CachedSynthesis("Persona: x", [10.0])}
    with pytest.raises(TypeError, match="k9"):
        store.put_syntheses({"k8": CachedSynthesis("fine"), "k9": CachedSynthesis(None)})
    assert store.get_syntheses(["k8"]) == {}  # nothing of a refused batch is written
    assert store.stats()["syntheses"] == 2
    other.close()

def test_concurrent_writers_never_lose_a_version(spec, store):
    publish_build(store, "c", 50, seed=7)
    errors = []

    def writer(w):
        try:
            node = open_store(spec)
            for i, u in enumerate(make_users(f"w{w}-", 10, seed=10 + w)):
                node.add_user(u)
            node.close()
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert store.version() == 1 + 30
    assert store.stats()["users"] == 80


def test_bad_publish_is_refused_and_leaves_the_build_staged(store):
    users = make_users("b", 20, seed=8)
    build = store.begin_build({"bad": True})
    store.stage_users(build, users)
    protos, assignments = cluster(users, 3, seed=9)
    with pytest.raises(StoreError, match="no prototype for staged user 'b0003'"):
        store.publish(build, protos, {k: v for k, v in assignments.items() if k != "b0003"})
    with pytest.raises(StoreError, match=r"out of range: there are 3 prototypes"):
        store.publish(build, protos, {**assignments, "b0001": 7})
    with pytest.raises(StoreError, match="'ghost', who was not staged"):
        store.publish(build, protos, {**assignments, "ghost": 0})
    with pytest.raises(StoreError, match="zero or not finite"):
        store.stage_users(build, [UserRecord("z", embedding=np.zeros(DIM))])
    with pytest.raises(StoreError, match="user_id must be a non-empty string"):
        store.stage_users(build, [UserRecord("", embedding=np.ones(DIM))])
    store.stage_users(build, [UserRecord("no-embedding")])
    with pytest.raises(StoreError, match="'no-embedding' has no embedding"):
        store.publish(build, protos, {**assignments, "no-embedding": 0})
    assert store.version() == 0 and store.prototypes() is None  # nothing of it became visible
    store.stage_users(build, [UserRecord("no-embedding", embedding=np.ones(DIM))])
    store.publish(build, protos, {**assignments, "no-embedding": 0})
    assert store.stats()["users"] == 21


# -- crashes and concurrent readers ---------------------------------------------------------------------
_CHILD = r"""
import json, os, signal, sys
import numpy as np
from pgenrm_plugins.config import StoreConfig
sys.path.insert(0, os.path.dirname(sys.argv[3]))
from test_prototype_stores import make_users, cluster
spec, what = json.loads(sys.argv[1]), sys.argv[2]
store = StoreConfig.model_validate(spec).build("store")
users = make_users("new", 300, seed=42)
build = store.begin_build({"rebuild": 1})

def die_after(items, n):
    for i, item in enumerate(items):
        if i == n:
            print("killing myself mid-write", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        yield item

if what == "stage":
    store.stage_users(build, die_after(users[100:], 150))
else:
    store.stage_users(build, users[100:])
    protos, assignments = cluster(users, 6, seed=43)

    class DyingAssignments(dict):
        def items(self):
            return die_after(super().items(), 200)

    store.publish(build, protos, DyingAssignments(assignments))
print("not killed", flush=True)
"""


def snapshot(store):
    return ({u.user_id: (u.synthesis, u.prototype_id, u.embedding.tobytes()) for u in store.users()},
            store.prototypes().centroids.tobytes(), store.version())


@pytest.mark.parametrize("where", ["stage", "publish"])
def test_killed_build_leaves_the_previous_build_intact(spec, store, where):
    users, protos, assignments = publish_build(store, "old", 150, k=4, seed=11)
    before = snapshot(store)
    query = users[3].embedding
    lookup_before = store.nearest(query, 5)
    build = store.begin_build({"rebuild": 1})
    store.stage_users(build, make_users("new", 300, seed=42)[:100])  # a first batch, committed

    child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(spec), where, __file__],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "killing myself mid-write" in child.stdout

    reopened = open_store(spec)
    assert snapshot(reopened) == before  # the published build, exactly as it was
    assert reopened.nearest(query, 5) == lookup_before
    assert reopened.stats()["users"] == 150
    # The interrupted build resumes: the batch committed before the crash is there, the killed one is not.
    assert reopened.begin_build({"rebuild": 1}) == build
    staged = {u.user_id for u in reopened.staged_users(build)}
    expected = 300 if where == "publish" else 100
    assert len(staged) == expected
    new_users = make_users("new", 300, seed=42)
    reopened.stage_users(build, new_users[len(staged):])
    protos2, assignments2 = cluster(new_users, 6, seed=43)
    reopened.publish(build, protos2, assignments2)
    assert reopened.stats()["users"] == 300 and reopened.version() == 2
    assert reopened.get_user("old0001") is None
    reopened.close()


def test_readers_during_rebuilds_see_old_or_new_never_a_mix(spec, store):
    generations = {}
    users, _, _ = publish_build(store, "g0-", 120, seed=20)
    generations["g0-"] = {u.user_id for u in users}
    seen, problems, done = [], [], threading.Event()

    def read():
        reader = open_store(spec)
        try:
            while True:
                last_round = done.is_set()  # this read starts after the last publish
                ids = {u.user_id for u in reader.users()}
                prefix = next(iter(ids))[:3]
                if ids != generations.get(prefix):
                    problems.append(f"users(): {len(ids)} users, prefixes {sorted({i[:3] for i in ids})}")
                lookup = reader.nearest(np.ones(DIM, np.float32), 10)
                prefixes = {n.user_id[:3] for n in lookup.neighbours}
                if len(prefixes) > 1:
                    problems.append(f"nearest(): neighbours from builds {sorted(prefixes)}")
                seen.append(prefix)
                if last_round and len(seen) >= 3:
                    break
        except Exception as exc:
            problems.append(repr(exc))
        finally:
            reader.close()

    thread = threading.Thread(target=read)
    thread.start()
    for g in range(1, 4):
        users = make_users(f"g{g}-", 120 + 40 * g, seed=20 + g)
        generations[f"g{g}-"] = {u.user_id for u in users}
        build = store.begin_build({"generation": g})
        for start in range(0, len(users), 40):
            store.stage_users(build, users[start:start + 40])
        store.publish(build, *cluster(users, 4, seed=30 + g))
    done.set()
    thread.join(timeout=120)
    assert not problems, problems[:5]
    assert seen and seen[-1] == "g3-"


def test_newer_schema_is_refused(spec, store):
    store.close()
    if spec["name"] == "sqlite":
        import sqlite3

        with sqlite3.connect(spec["options"]["path"]) as conn:
            conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
        where = spec["options"]["path"]
    else:
        import psycopg

        with psycopg.connect(spec["options"]["dsn"], autocommit=True) as conn:
            conn.execute(f"UPDATE {spec['options']['schema']}.meta SET schema_version = 99")
        where = spec["options"]["schema"]
    with pytest.raises(StoreError, match=f"{where}.* has schema version 99, "
                                         "but this pgenrm-plugins understands up to 1"):
        open_store(spec)


def test_store_options_are_validated():
    from pydantic import ValidationError

    from pgenrm_plugins.config import ConfigError  # noqa: F401  (options errors come from pydantic)

    with pytest.raises(ValidationError, match="lower-case SQL identifier"):
        StoreConfig(name="postgres", options={"dsn": "x", "schema": "Robert'); DROP"}).build("store")
    with pytest.raises(ValidationError, match="Extra inputs"):
        StoreConfig(name="sqlite", options={"pth": "x"}).build("store")


def test_postgres_without_dsn_says_what_to_set(monkeypatch):
    monkeypatch.delenv("PGENRM_POSTGRES_DSN", raising=False)
    with pytest.raises(StoreError, match=r"store.options.dsn: no PostgreSQL DSN given.*PGENRM_POSTGRES_DSN"):
        StoreConfig(name="postgres").build("store")


# -- the real embedder ----------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def minilm():
    return EmbedderConfig().build("embedder")  # the embedded default, from the wheel, offline


def test_real_embedder_places_similar_users_together(spec, store, minilm):
    texts = {
        "terse-1": "Prefers short, direct answers with no filler; bullet points over paragraphs.",
        "terse-2": "Wants brief replies that get straight to the point, without long explanations.",
        "chef": "Enjoys detailed recipes for Italian cooking, with stories about regional dishes.",
        "gardener": "Likes practical advice on growing tomatoes and caring for a vegetable garden.",
    }
    emb = minilm.embed(list(texts.values()))
    assert emb.shape == (4, 384) and emb.dtype == np.float32 and minilm.dim == 384
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] and sims[0, 1] > sims[0, 3]

    users = [UserRecord(uid, synthesis=t, embedding=e) for (uid, t), e in zip(texts.items(), emb)]
    build = store.begin_build({"embedder": minilm.name})
    store.stage_users(build, users)
    centroid = emb.mean(axis=0)
    store.publish(build, PrototypeSet(centroid[None, :] / np.linalg.norm(centroid), minilm.name), {u: 0 for u in texts})
    query = minilm.embed(["Keep it concise: one or two sentences, no rambling."])[0]
    found = store.nearest(query, top_k=2)
    assert {n.user_id for n in found.neighbours} == {"terse-1", "terse-2"}
    assert store.prototypes().embedder == "minilm:all-MiniLM-L6-v2"
