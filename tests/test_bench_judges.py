"""`pgenrm bench judges` and `pgenrm bench prototypes`: the same GRPO steps of the same users,
scored by the shipped judges / by self alone and self + Pro-k, one after the other. Timings are
printed, never asserted."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from typer.testing import CliRunner


def _cli():
    from pgenrm_plugins import plugins
    from pgenrm_plugins.cli import app

    if not any(group.name == "bench" for group in app.registered_groups):
        plugins.register_commands(app)
    return app


def test_judges_score_the_same_steps_side_by_side(tmp_path):
    from pgenrm_plugins.bench.speed import grpo_batch

    first, later = grpo_batch(2, 2, step=0), grpo_batch(2, 2, step=1)
    assert [r.history for r in first] == [r.history for r in later]  # the same users...
    assert all(a.prompt != b.prompt for a, b in zip(first, later))  # ...asked something else

    out = tmp_path / "judges.json"
    result = CliRunner().invoke(_cli(), ["bench", "judges", "--prompts", "1", "--completions", "2", "--steps", "2",
                                         "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["judges"]) == ["embedded:smollm2-135m-direct-v1", "embedded:smollm2-135m-synthesis-v1"]
    for row in report["judges"].values():
        assert len(row["seconds"]) == 2 and row["later_rewards_per_s"] > 0 and 0 <= row["agrees"] <= 2
    assert "speed-up" in result.output


def test_prototypes_cost_against_self_alone_on_a_copy_of_the_store(tmp_path):
    from prototype_helpers import load_embedder, make_rows, write_jsonl

    from pgenrm_plugins.prototypes.builder import build_prototypes
    from pgenrm_plugins.prototypes.sources import SourceSettings
    from pgenrm_plugins.prototypes.sqlite_store import SQLiteStore
    from pgenrm_plugins.prototypes.updater import UpdaterSettings

    path = tmp_path / "protos.sqlite"
    store = SQLiteStore(path=str(path))
    build_prototypes(write_jsonl(tmp_path / "rows.jsonl", make_rows(3, 3)), store, load_embedder(), skip_judge=True,
                     k=2, source_settings=SourceSettings(max_items=3, max_chars=200, max_new_tokens=24, seed=3),
                     updater=UpdaterSettings(epochs=2))
    store.close()
    before = hashlib.sha256(Path(path).read_bytes()).hexdigest()

    out, short = tmp_path / "pro.json", tmp_path / "short.yaml"
    short.write_text("sampling: {max_new_tokens: 48}\n")  # short syntheses: this checks the run, not the judge
    result = CliRunner().invoke(_cli(), ["bench", "prototypes", "--store", str(path), "--top-k", "2", "--prompts", "1",
                                         "--completions", "2", "--steps", "2", "--output", str(out), "-c", str(short)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    alone, pro = report["setups"]["self alone"], report["setups"]["self + Pro-2"]
    assert alone["neighbours_per_request"] == 0 and 1 <= pro["neighbours_per_request"] <= 2
    assert len(alone["seconds"]) == len(pro["seconds"]) == 2 and pro["cost_vs_first"] > 0
    assert hashlib.sha256(Path(path).read_bytes()).hexdigest() == before  # the store itself is never written

    result = CliRunner().invoke(_cli(), ["bench", "prototypes", "--store", str(tmp_path / "none.sqlite")])
    assert result.exit_code != 0 and "prototypes build" in result.output
