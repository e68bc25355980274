"""Prototype-level scaling in the scorer, on the real judge, the real embedder and a real SQLite
store built from small rows; and the `pgenrm prototypes` commands through typer's CliRunner."""

from __future__ import annotations

import json
import math

import pytest
from conftest import make_config
from prototype_helpers import load_embedder, make_rows, write_jsonl
from typer.testing import CliRunner

from pgenrm_plugins import cli
from pgenrm_plugins.commands import prototypes as commands
from pgenrm_plugins.config import ConfigError, load_config
from pgenrm_plugins.prototypes.builder import build_prototypes
from pgenrm_plugins.prototypes.sources import SourceSettings
from pgenrm_plugins.prototypes.sqlite_store import SQLiteStore
from pgenrm_plugins.prototypes.updater import UpdaterSettings
from pgenrm_plugins.scoring import load_scorer

SMALL = SourceSettings(max_items=3, max_chars=200, max_new_tokens=24, seed=3)
PROMPT = "How do I make tea?"
COMPLETIONS = ["Steep a bag 3 minutes.",
               "Heat water to 90 C, warm the pot, steep loose leaves for three minutes, then strain."]


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


@pytest.fixture(scope="module")
def store_path(tmp_path_factory, embedder):
    folder = tmp_path_factory.mktemp("protos")
    rows = write_jsonl(folder / "rows.jsonl", make_rows(3, 3))
    store = SQLiteStore(path=str(folder / "protos.sqlite"))
    build_prototypes(rows, store, embedder, skip_judge=True, k=2, source_settings=SMALL,
                     updater=UpdaterSettings(epochs=2))
    store.close()
    return str(folder / "protos.sqlite")


def scorer_for(store_path, judge, embedder, **prototypes):
    # one chain per side and short chains: every neighbour is a full scoring of the same completions
    cfg = make_config(sampling={"chains": 1, "max_new_tokens": 32},
                      prototypes={"enabled": True, "top_k": 2, **prototypes}, reward={"max_history": 3},
                      store={"name": "sqlite", "options": {"path": store_path}})
    return load_scorer(cfg, backend=judge, embedder=embedder)


def test_known_unknown_and_cold_start_users(store_path, judge, embedder):
    scorer = scorer_for(store_path, judge, embedder, c_self=0.25, c_neighbours=0.75)
    known = {"user_id": "brief-0", "prompt": PROMPT, "completions": COMPLETIONS}
    unknown = {"user_id": "visitor", "prompt": PROMPT, "completions": COMPLETIONS,
               "history": [{"prompt": "How do I boil an egg?", "chosen": "Boil it 9 minutes.",
                            "rejected": "Put the egg in cold water, bring it to a boil, then simmer nine minutes."}]}
    cold = {"prompt": PROMPT, "completions": COMPLETIONS}
    results = scorer.score([known, unknown, cold])  # one batch: all sides in the same backend calls
    members = {u.user_id: u for u in scorer.store.users()}
    for result, placement in zip(results, ("stored", "placed", "cold_start")):
        c = result.components
        assert c.placement == placement
        assert all(0.0 <= r <= 1.0 and math.isfinite(r) for r in result.rewards)
        assert isinstance(c.prototype_id, int) and 0 <= c.prototype_id < 2
        assert 1 <= len(c.neighbours_used) <= 2
        for nb in c.neighbours_used:
            assert nb.user_id in members and members[nb.user_id].prototype_id == c.prototype_id
            assert -1.0 <= nb.similarity <= 1.0 and len(nb.rewards) == 2
        assert c.chains_sampled == len(c.neighbours_used) + (c.own is not None)
    k, u, cs = (r.components for r in results)
    assert "brief-0" not in [nb.user_id for nb in k.neighbours_used]  # never one's own neighbour
    # the known user's stored history was used: the self side scored
    assert k.own is not None and u.own is not None
    # c_self / c_neighbours combination, renormalised over the sides that scored
    for result in results[:2]:
        c = result.components
        for ci, reward in enumerate(result.rewards):
            if c.own[ci] is not None and c.neighbours[ci] is not None:
                assert reward == pytest.approx(0.25 * c.own[ci] + 0.75 * c.neighbours[ci])
            else:
                assert reward in (c.own[ci], c.neighbours[ci])
    # cold start: no history, so neighbours alone
    assert cs.own is None
    assert results[2].rewards == pytest.approx([v for v in cs.neighbours])
    # the neighbours' mean is the mean of their rewards
    for ci in range(2):
        scored = [nb.rewards[ci] for nb in k.neighbours_used if nb.rewards[ci] is not None]
        assert k.neighbours[ci] == pytest.approx(sum(scored) / len(scored))


def test_a_side_with_no_weight_is_not_scored(store_path, judge, embedder):
    only_neighbours = scorer_for(store_path, judge, embedder, c_self=0.0, c_neighbours=1.0, top_k=1)
    c = only_neighbours.score_one({"user_id": "long-1", "prompt": PROMPT, "completions": COMPLETIONS[:1]}).components
    assert c.own is None and len(c.neighbours_used) == 1
    only_self = scorer_for(store_path, judge, embedder, c_self=1.0, c_neighbours=0.0)
    result = only_self.score_one({"user_id": "long-1", "prompt": PROMPT, "completions": COMPLETIONS[:1]})
    c = result.components
    assert c.neighbours is None and c.neighbours_used == [] and result.rewards == c.own


def test_prototype_scaling_through_the_batcher_with_merged_requests(store_path, judge, embedder):
    """Two callers send one completion each for the same (user, prompt): the batcher merges them
    into one request, and each caller gets exactly its own slice of every per-completion field,
    the neighbours' rewards included."""
    import asyncio

    from pgenrm_plugins.scoring.batching import Batcher
    from pgenrm_plugins.types import ScoreRequest

    scorer = scorer_for(store_path, judge, embedder, c_self=0.25, c_neighbours=0.75)
    base = {"user_id": "brief-0", "prompt": PROMPT}
    whole = scorer.score_one({**base, "completions": COMPLETIONS}).components
    batcher = Batcher(scorer.score, max_wait_ms=500)

    async def two_callers():
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([ScoreRequest(**base, completions=[c])]) for c in COMPLETIONS))
        finally:
            await batcher.stop()

    parts = [part for (part,) in asyncio.run(two_callers())]
    assert batcher.batches == 1 and len(whole.neighbours_used) >= 1
    for ci, part in enumerate(parts):
        c = part.components
        assert c.merged_completions == 2 and len(part.rewards) == 1
        assert (c.own, c.neighbours, c.chains_scored) == ([whole.own[ci]], [whole.neighbours[ci]],
                                                          [whole.chains_scored[ci]])
        assert [nb.rewards for nb in c.neighbours_used] == [[nb.rewards[ci]] for nb in whole.neighbours_used]
        assert [nb.user_id for nb in c.neighbours_used] == [nb.user_id for nb in whole.neighbours_used]


def test_prototype_scaling_can_show_fewer_history_pairs_per_side(store_path, judge, embedder):
    # the P-GenRM-8B scripts show 3 pairs per chain under prototype scaling, 6 otherwise
    from pgenrm_plugins.types import ScoreRequest

    request = ScoreRequest(user_id="brief-0", prompt=PROMPT, completions=COMPLETIONS)
    [plan] = scorer_for(store_path, judge, embedder, max_history=1).scaling.plan([request])
    jobs = plan.jobs()
    assert len(jobs) >= 2 and all(len(job.history) == 1 for job in jobs)
    [full] = scorer_for(store_path, judge, embedder).scaling.plan([request])
    assert [job.history[-1] for job in full.jobs()] == [job.history[0] for job in jobs]  # the most recent pair
    assert all(len(job.history) > 1 for job in full.jobs())


def test_prototypes_need_a_store_and_some_weight():
    with pytest.raises(ConfigError) as missing:
        load_config({"prototypes": {"enabled": True}})
    assert "store:" in str(missing.value) and "prototypes build" in str(missing.value)
    with pytest.raises(ConfigError, match="c_self and c_neighbours are both 0"):
        load_config({"prototypes": {"enabled": True, "c_self": 0, "c_neighbours": 0},
                     "store": {"name": "sqlite", "options": {"path": "x.sqlite"}}})


# -- the CLI -------------------------------------------------------------------------------------

runner = CliRunner()
if not any(group.name == "prototypes" for group in cli.app.registered_groups):
    cli.plugins.register_commands(cli.app)  # what `pgenrm` does at start-up


def test_cli_build_add_user_show(tmp_path, embedder, monkeypatch):
    # the real embedder, loaded once for the whole file instead of once per command
    monkeypatch.setattr(commands, "_embedder", lambda config: embedder)
    rows = write_jsonl(tmp_path / "rows.jsonl", make_rows(3, 3))
    store = str(tmp_path / "cli.sqlite")

    result = runner.invoke(cli.app, ["prototypes", "--help"], terminal_width=200)
    assert result.exit_code == 0 and all(c in result.output for c in ("build", "add-user", "show"))

    result = runner.invoke(cli.app, ["prototypes", "build", "--data", rows, "--store", store, "--skip-judge",
                                     "--k", "2", "--epochs", "2"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "published build" in result.output and "6 users in 2 prototypes" in result.output

    history = tmp_path / "history.jsonl"
    history.write_text(json.dumps({"prompt": "How do I boil an egg?", "chosen": "Boil it 9 minutes.",
                                   "rejected": "Put the egg in cold water and simmer it nine minutes."}) + "\n")
    result = runner.invoke(cli.app, ["prototypes", "add-user", "walk-in", "--history", str(history), "--store", store],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "user 'walk-in' (1 past choices) placed in prototype" in result.output

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "chosen": ""}) + "\n")
    result = runner.invoke(cli.app, ["prototypes", "add-user", "x", "--history", str(bad), "--store", store],
                           terminal_width=200)
    assert result.exit_code == 2 and "line 1" in result.output and "chosen" in result.output

    picture = tmp_path / "pics" / "protos.png"
    result = runner.invoke(cli.app, ["prototypes", "show", "--store", store, "--plot", str(picture)],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "prototype populations" in result.output and "users" in result.output
    assert "wrote" in result.output and "(7 users)" in result.output
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000


def test_cli_build_strict_refuses_bad_rows(tmp_path, embedder, monkeypatch):
    monkeypatch.setattr(commands, "_embedder", lambda config: embedder)
    rows = make_rows(1, 1, train=1)
    (tmp_path / "rows.jsonl").write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[1], "split": "dev"}) + "\n")
    store = str(tmp_path / "s.sqlite")
    result = runner.invoke(cli.app, ["prototypes", "build", "--data", str(tmp_path / "rows.jsonl"), "--store", store,
                                     "--skip-judge", "--strict"], terminal_width=200)
    assert result.exit_code == 2
    assert "line 2:" in result.output and "split" in result.output and "--strict refuses" in result.output


def test_cli_warm_writes_each_members_synthesis_that_neighbours_then_reuse(store_path, tmp_path, judge, embedder):
    import re
    import shutil

    store = str(shutil.copy(store_path, tmp_path / "warm.sqlite"))  # the module's store stays as built
    short = tmp_path / "short.yaml"
    short.write_text("sampling: {max_new_tokens: 48}\n")  # the shipped synthesis judge, short syntheses

    def warm():
        result = runner.invoke(cli.app, ["prototypes", "warm", "--store", store, "-c", str(short)], terminal_width=200)
        assert result.exit_code == 0, result.output
        members, written, cached = map(int, re.search(r"(\d+) members: (\d+) syntheses written, (\d+) already cached",
                                                      result.output).groups())
        return members, written, cached

    members, written, cached = warm()
    assert members == 6 and written >= 1 and written + cached == members  # members with the same view share one
    assert warm() == (members, 0, members)  # run again: everything is read, nothing written

    cfg = load_config(str(short)).model_dump(mode="json", exclude_unset=True)
    scorer = load_scorer({**cfg, "prototypes": {"enabled": True, "top_k": 2},
                          "store": {"name": "sqlite", "options": {"path": store}}}, backend=judge, embedder=embedder)
    (result,) = scorer.score([{"user_id": "visitor", "prompt": PROMPT, "completions": COMPLETIONS,
                               "history": [{"prompt": "How do I boil an egg?", "chosen": "Boil it 9 minutes.",
                                            "rejected": "Put the egg in cold water, then simmer nine minutes."}]}])
    c = result.components
    assert c.criteria_mode == "synthesis" and c.neighbours_used
    assert c.chains_sampled == 1 and c.syntheses_reused == len(c.neighbours_used)  # only the visitor's is new
