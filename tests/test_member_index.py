"""The in-memory member index (faiss IVF) over a real SQLite store: exact enough, patched by add_user,
and reloaded in the background when a new build is published, never answering from a mix."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from pydantic import ValidationError

from pgenrm_plugins.prototypes.base import PrototypeSet, StoreError, UserRecord
from pgenrm_plugins.prototypes.index import MemberIndex
from pgenrm_plugins.prototypes.sqlite_store import SQLiteOptions, SQLiteStore


def unit(rng, n, dim):
    v = rng.standard_normal((n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def publish(store, prefix, n, k, dim, seed):
    rng = np.random.default_rng(seed)
    vectors, centroids = unit(rng, n, dim), unit(rng, k, dim)
    users = [UserRecord(f"{prefix}{i:05d}", embedding=v) for i, v in enumerate(vectors)]
    build = store.begin_build({"prefix": prefix})
    for start in range(0, n, 500):
        store.stage_users(build, users[start:start + 500])
    assignments = {u.user_id: int(np.argmax(centroids @ u.embedding)) for u in users}
    store.publish(build, PrototypeSet(centroids, "test-embedder", {"k": k}), assignments)
    return centroids


def exact(store, query, top_k, exclude=(), extra=()):
    """Brute force over what the store holds now (and `extra` users, placed as add_user would):
    nearest prototype, then its members by similarity."""
    centroids = store.prototypes().centroids
    p = int(np.argmax(centroids @ query))
    users = [*store.users(), *(UserRecord(u.user_id, embedding=u.embedding,
                                          prototype_id=int(np.argmax(centroids @ u.embedding))) for u in extra)]
    members = [u for u in users if u.prototype_id == p and u.user_id not in exclude]
    members.sort(key=lambda u: -float(u.embedding @ query))
    return p, [(u.user_id, float(u.embedding @ query)) for u in members[:top_k]]


def ids(lookup):
    return [n.user_id for n in lookup.neighbours]


@pytest.fixture
def store(tmp_path):
    s = SQLiteStore(path=str(tmp_path / "members.sqlite"))
    yield s
    s.close()


@pytest.mark.parametrize("storage", ["fp32", "fp16"])
def test_matches_exact_search(tmp_path, storage):
    store = SQLiteStore(path=str(tmp_path / "s.sqlite"), index_storage=storage)
    publish(store, "u", 1500, k=6, dim=64, seed=1)
    for q in unit(np.random.default_rng(2), 20, 64):
        found = store.nearest(q, 8, exclude=["u00007"])
        p, expected = exact(store, q, 8, exclude=["u00007"])
        assert found.prototype_id == p and ids(found) == [uid for uid, _ in expected]
        tolerance = 1e-5 if storage == "fp32" else 2e-3  # float16 keeps ~3 decimal digits per component
        assert [n.similarity for n in found.neighbours] == pytest.approx([s for _, s in expected], abs=tolerance)
    store.close()


def test_sq8_ranking_agrees_with_exact_search(tmp_path):
    """SQ8 keeps 8 bits per dimension: ranks may swap where two similarities are closer than its
    error. Stated tolerance at d=384: at least 95% of the exact top-8 found (mean over queries),
    and every similarity within 0.01 of its exact value."""
    store = SQLiteStore(path=str(tmp_path / "s.sqlite"), index_storage="sq8")
    publish(store, "u", 3000, k=10, dim=384, seed=3)
    vectors = {u.user_id: u.embedding for u in store.users()}
    shares = []
    for q in unit(np.random.default_rng(4), 40, 384):
        found = store.nearest(q, 8)
        p, expected = exact(store, q, 8)
        assert found.prototype_id == p
        shares.append(len(set(ids(found)) & {uid for uid, _ in expected}) / 8)
        for n in found.neighbours:
            assert n.similarity == pytest.approx(float(vectors[n.user_id] @ q), abs=0.01)
    assert np.mean(shares) >= 0.95, shares
    assert store.index.memory_bytes() < 3000 * 384 * 4 / 3  # a quarter of float32, plus ids
    store.close()


def test_users_rewritten_by_add_user_are_found_at_their_new_place_only(store):
    publish(store, "u", 400, k=4, dim=16, seed=5)
    q = unit(np.random.default_rng(6), 1, 16)[0]
    before = store.nearest(q, 5)
    # Re-embed the five nearest: their old rows still sit in the loaded index and must be skipped
    # (more than the first top-k asked for, so the index has to ask for more).
    rng = np.random.default_rng(7)
    for uid in ids(before):
        store.add_user(UserRecord(uid, embedding=unit(rng, 1, 16)[0]))
    store.add_user(UserRecord("newcomer", embedding=q))
    for query in [q, *unit(rng, 5, 16)]:
        found = store.nearest(query, 5, exclude=["u00001"])
        p, expected = exact(store, query, 5, exclude=["u00001"])
        assert found.prototype_id == p and ids(found) == [uid for uid, _ in expected]
    assert ids(store.nearest(q, 1)) == ["newcomer"]
    assert store.index.loads == 1  # patched, not reloaded


def test_lookups_during_a_background_reload_answer_from_the_old_build_then_the_new(store):
    dim, top_k = 16, 6
    publish(store, "a-", 600, k=5, dim=dim, seed=10)
    queries = unit(np.random.default_rng(11), 8, dim)
    old = {i: exact(store, q, top_k) for i, q in enumerate(queries)}
    assert [ids(store.nearest(q, top_k)) for q in queries] == [[u for u, _ in old[i][1]] for i in range(8)]

    # Make the next load slow: it waits for `release` before reading the store, and a user is added
    # right after its snapshot (the swap must patch it in).
    started, release = threading.Event(), threading.Event()
    real_load = store.load_members
    later = UserRecord("b-later", embedding=-queries[0])

    def slow_load():
        started.set()
        assert release.wait(60), "the test never released the load"
        members = real_load()
        store.add_user(UserRecord(later.user_id, embedding=later.embedding))
        return members

    store.load_members = slow_load
    publish(store, "b-", 900, k=7, dim=dim, seed=12)
    store.add_user(UserRecord("b-late", embedding=queries[0]))  # the new build's, before its load
    new = {i: exact(store, q, top_k, extra=[later]) for i, q in enumerate(queries)}
    answers = {"a-": old, "b-": new}

    problems, seen = [], []

    def check(i, lookup):
        """One build's exact answer: every neighbour from one build, and its order and prototype."""
        builds = {n.user_id[:2] for n in lookup.neighbours}
        if len(builds) != 1:
            problems.append(f"a mix of builds {sorted(builds)}")
            return
        (build,) = builds
        p, expected = answers[build][i]
        if lookup.prototype_id != p or ids(lookup) != [u for u, _ in expected]:
            problems.append(f"query {i}: {ids(lookup)} is not build {build}'s answer {expected}")
        seen.append(build)

    def during_load():
        for _ in range(20):
            for i, q in enumerate(queries):
                check(i, store.nearest(q, top_k))

    reader = threading.Thread(target=during_load)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "a lookup waited for the background load"
    assert started.is_set() and not release.is_set()
    assert not problems, problems[:3]
    assert set(seen) == {"a-"}  # the old build's answers while the new one loads

    # Readers keep going through the swap: each answer is one build's, and once "b-" they stay there.
    stop, orders = threading.Event(), []

    def through_swap():
        order = []
        while not stop.is_set():
            for i, q in enumerate(queries):
                lookup = store.nearest(q, top_k)
                check(i, lookup)
                order.append(lookup.neighbours[0].user_id[:2])
        orders.append(order)

    readers = [threading.Thread(target=through_swap) for _ in range(2)]
    for t in readers:
        t.start()
    release.set()
    store.index.refresh()  # waits for the load
    stop.set()
    for t in readers:
        t.join(timeout=30)
    assert not problems, problems[:3]
    for order in orders:
        assert order == sorted(order)  # "a-" ... then "b-", never back
    for i, q in enumerate(queries):
        check(i, store.nearest(q, top_k))
    assert ids(store.nearest(queries[0], 1)) == ["b-late"]
    assert ids(store.nearest(later.embedding, 1)) == ["b-later"]  # added after the load's snapshot
    assert store.index.loads == 2 and not problems


def test_a_failed_background_load_keeps_the_old_build(store):
    publish(store, "a-", 300, k=4, dim=16, seed=20)
    q = unit(np.random.default_rng(21), 1, 16)[0]
    assert {n.user_id[:2] for n in store.nearest(q, 4).neighbours} == {"a-"}
    real_load, failures = store.load_members, []

    def failing_load():
        if not failures:
            failures.append(1)
            raise StoreError("disk on fire")
        return real_load()

    store.load_members = failing_load
    old_build = store.index.build_id
    publish(store, "b-", 300, k=4, dim=16, seed=22)
    with pytest.raises(StoreError, match="disk on fire"):
        store.index.refresh()  # starts the load and waits for it
    assert store.index.build_id == old_build  # lookups still answer from the old build
    store.index.refresh()  # the next catch-up tries again
    assert store.index.build_id != old_build
    assert {n.user_id[:2] for n in store.nearest(q, 4).neighbours} == {"b-"}


def test_bad_storage_is_refused(store):
    with pytest.raises(ValidationError, match="index_storage"):
        SQLiteOptions(index_storage="int4")
    with pytest.raises(ValueError, match="storage must be one of fp16, sq8, fp32"):
        MemberIndex(store, storage="int4")
    with pytest.raises(ValueError, match="top_k"):
        store.nearest(np.ones(4, np.float32), -1)
