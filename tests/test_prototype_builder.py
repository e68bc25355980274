"""The prototype builder and the paper's updater, on the real judge, the real embedder and a real
SQLite store. Texts are short and syntheses are capped at a few tokens to keep this fast."""

from __future__ import annotations

import json

import numpy as np
import pytest
from prototype_helpers import load_embedder, make_rows, write_jsonl

from pgenrm_plugins.datasets.bench import BadRowsError
from pgenrm_plugins.prototypes.builder import add_user, auto_k, build_prototypes, kmeans, pair_embeddings
from pgenrm_plugins.prototypes.sources import SourceSettings, render_synthesis
from pgenrm_plugins.prototypes.sqlite_store import SQLiteStore
from pgenrm_plugins.prototypes.updater import UpdaterSettings, refine_prototypes

SMALL = SourceSettings(max_items=3, max_chars=200, max_new_tokens=24, seed=3)
FEW_EPOCHS = UpdaterSettings(epochs=3, seed=3)


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


class Interrupted(Exception):
    """Stands for the build being killed after a committed batch."""


def test_updater_lowers_the_loss_and_is_deterministic(tmp_path, embedder):
    store = SQLiteStore(path=str(tmp_path / "s.sqlite"))
    build = store.begin_build({"t": 1})
    from pgenrm_plugins.datasets.bench import load_bench
    from pgenrm_plugins.prototypes.base import UserRecord

    data = load_bench(write_jsonl(tmp_path / "rows.jsonl", make_rows()))
    users = [UserRecord(user_id=u, history=h) for u, h in data.histories().items()]
    pairs = pair_embeddings(embedder, users, SMALL)
    assert all(p.prompts.shape == (3, embedder.dim) for p in pairs)
    user_vectors = np.stack([p.chosen.mean(0) / np.linalg.norm(p.chosen.mean(0)) for p in pairs])
    centroids, labels = kmeans(user_vectors, 2, seed=0)
    settings = UpdaterSettings(epochs=6, seed=5)
    first = refine_prototypes(centroids, labels.tolist(), pairs, settings)
    again = refine_prototypes(centroids, labels.tolist(), pairs, settings)
    assert first.loss_after < first.loss_before
    assert first.agreement_after >= first.agreement_before
    assert first.agreement_after > 0.5
    assert np.array_equal(first.centroids, again.centroids)  # same seed, same prototypes
    assert np.allclose(np.linalg.norm(first.centroids, axis=1), 1.0, atol=1e-5)  # re-normalised
    assert first.examples == 8 * 3
    store.close()
    assert build  # the store was only a place to stand; nothing published


def test_render_synthesis_reads_the_json_or_keeps_the_text():
    ok = render_synthesis('<evaluation>\n{"preferences": {"style": "short", "content": "facts", "values": "time"},'
                          ' "criteria": [{"name": "Brevity", "weight": 70}, {"name": "Accuracy", "weight": 30}]}'
                          '\n</evaluation>')
    assert ok.parsed and ok.text == "Style: short\nContent: facts\nValues: time\nCriteria: Brevity (70), Accuracy (30)"
    raw = render_synthesis('<evaluation>\n{"preferences": {"style": "likes short answers and')
    assert raw.text.startswith('{"preferences"') and "short answers" in raw.text and not raw.parsed


def test_build_with_the_judge_resumes_after_an_interruption(tmp_path, judge, embedder):
    rows = write_jsonl(tmp_path / "rows.jsonl", make_rows(3, 3))
    store = SQLiteStore(path=str(tmp_path / "protos.sqlite"))
    # an earlier build (from the histories) that readers must keep seeing during the rebuild
    before = build_prototypes(rows, store, embedder, skip_judge=True, k=2, source_settings=SMALL, updater=FEW_EPOCHS)
    assert before.source == "history" and store.prototypes().meta["source"] == "history"

    def stop_after_first_batch(n_staged):
        raise Interrupted(n_staged)

    with pytest.raises(Interrupted):
        build_prototypes(rows, store, embedder, backend=judge, k=2, batch_size=2, source_settings=SMALL,
                         updater=FEW_EPOCHS, on_batch_staged=stop_after_first_batch)
    current = store.prototypes()
    assert current.meta["source"] == "history"  # the old build is still the current one, whole
    assert store.stats()["users"] == 6 and store.stats()["unfinished_builds"] == 1

    report = build_prototypes(rows, store, embedder, backend=judge, k=2, batch_size=2, source_settings=SMALL,
                              updater=FEW_EPOCHS)
    assert report.resumed_users == 2  # the committed batch was not synthesised again
    assert report.users == 6 and sum(report.population.values()) == 6 and 1 <= report.k <= 2
    meta = store.prototypes().meta
    assert meta["source"] == "synthesis" and meta["embedder"] == embedder.name == store.prototypes().embedder
    assert meta["judge"] == "transformers" and meta["source_settings"]["max_new_tokens"] == 24
    assert meta["updater"]["examples"] == 6 * 3
    users = list(store.users())
    assert all(u.synthesis and u.synthesis.strip() for u in users)  # each member has the judge's synthesis
    assert all(u.prototype_id is not None and len(u.history) == 3 for u in users)
    assert store.stats()["unfinished_builds"] == 0
    store.close()


def test_bad_rows_are_reported_by_line_or_refused(tmp_path, embedder):
    rows = make_rows(2, 2, train=2)
    good = [json.dumps(r) for r in rows]
    missing_user = dict(rows[0])
    del missing_user["user_id"]
    empty_chosen = {**rows[0], "chosen": {"role": "assistant", "content": "  "}}
    bad_split = {**rows[0], "split": "dev"}
    lines = (good[:1] + [json.dumps(missing_user)] + good[1:3] + [json.dumps(empty_chosen), json.dumps(bad_split)]
             + good[3:])
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n")

    store = SQLiteStore(path=str(tmp_path / "protos.sqlite"))
    with pytest.raises(BadRowsError) as refused:
        build_prototypes(path, store, embedder, skip_judge=True, strict=True, source_settings=SMALL, updater=FEW_EPOCHS)
    assert "3 bad row(s)" in str(refused.value)
    assert "line 2:" in str(refused.value) and "line 5:" in str(refused.value) and "line 6:" in str(refused.value)
    assert store.prototypes() is None and store.stats()["unfinished_builds"] == 0  # nothing was begun

    report = build_prototypes(path, store, embedder, skip_judge=True, source_settings=SMALL, updater=FEW_EPOCHS)
    by_line = {e.line: e.message for e in report.bad_rows}
    assert sorted(by_line) == [2, 5, 6]
    assert "user_id" in by_line[2] and "chosen" in by_line[5] and "split" in by_line[6]
    assert report.users == 4 and report.k == auto_k(4) == 1
    assert store.prototypes().meta["bad_rows"] == 3
    store.close()


def test_add_user_places_without_rebuilding(tmp_path, embedder):
    rows = write_jsonl(tmp_path / "rows.jsonl", make_rows(3, 3))
    store = SQLiteStore(path=str(tmp_path / "protos.sqlite"))
    build_prototypes(rows, store, embedder, skip_judge=True, k=2, source_settings=SMALL, updater=FEW_EPOCHS)
    version = store.version()
    members = {u.user_id: u.prototype_id for u in store.users()}
    history = [{"prompt": q, "chosen": b, "rejected": long} for q, b, long in
               zip(("How do I boil an egg?", "How can I sleep better?"), ("Boil it 9 minutes.", "Fixed bedtime."),
                   ("Put the egg in cold water, bring it to a boil, then simmer nine minutes.",
                    "Keep a fixed bedtime, dim the lights an hour before and keep the room cool."))]
    record = add_user(store, embedder, "newcomer", history)
    assert store.version() > version
    stored = store.get_user("newcomer")
    assert stored.prototype_id == record.prototype_id and len(stored.history) == 2
    # placed with the brief users, who chose the same kind of answers
    brief_protos = {p for u, p in members.items() if u.startswith("brief")}
    assert record.prototype_id in brief_protos
    with pytest.raises(ValueError, match="give a history"):
        add_user(store, embedder, "nobody", [])
    store.close()


def test_contrast_source_places_users_by_the_direction_they_choose_in(tmp_path, embedder):
    """Brief and thorough users see the same pairs and choose opposite sides: their contrast vectors
    point in opposite directions, so two prototypes split them by type, and a neighbour is always of
    the user's own type."""
    rows = write_jsonl(tmp_path / "rows.jsonl", make_rows(3, 3))
    store = SQLiteStore(path=str(tmp_path / "protos.sqlite"))
    report = build_prototypes(rows, store, embedder, source="contrast", k=2, source_settings=SMALL, updater=FEW_EPOCHS)
    assert report.source == "contrast" and store.prototypes().meta["source"] == "contrast"
    users = {u.user_id: u for u in store.users()}
    by_prototype = {}
    for user_id, record in users.items():
        by_prototype.setdefault(record.prototype_id, set()).add(user_id.split("-")[0])
    assert sorted(map(sorted, by_prototype.values())) == [["brief"], ["long"]]
    for user_id, record in users.items():
        found = store.nearest(np.asarray(record.embedding), top_k=2, exclude=[user_id])
        assert all(n.user_id.split("-")[0] == user_id.split("-")[0] for n in found.neighbours)
    with pytest.raises(ValueError, match="source 'nope'"):
        build_prototypes(rows, store, embedder, source="nope")
