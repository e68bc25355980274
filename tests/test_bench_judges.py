"""`pgenrm bench judges`: the two shipped judges score the same GRPO steps of the same users, one
after the other. Timings are printed, never asserted."""

from __future__ import annotations

import json

from typer.testing import CliRunner


def test_judges_score_the_same_steps_side_by_side(tmp_path):
    from pgenrm_plugins import plugins
    from pgenrm_plugins.bench.speed import grpo_batch
    from pgenrm_plugins.cli import app

    first, later = grpo_batch(2, 2, step=0), grpo_batch(2, 2, step=1)
    assert [r.history for r in first] == [r.history for r in later]  # the same users...
    assert all(a.prompt != b.prompt for a, b in zip(first, later))  # ...asked something else

    plugins.register_commands(app)
    out = tmp_path / "judges.json"
    result = CliRunner().invoke(app, ["bench", "judges", "--prompts", "1", "--completions", "2", "--steps", "2",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert list(report["judges"]) == ["embedded:smollm2-135m-direct-v1", "embedded:smollm2-135m-synthesis-v1"]
    for row in report["judges"].values():
        assert len(row["seconds"]) == 2 and row["later_rewards_per_s"] > 0 and 0 <= row["agrees"] <= 2
    assert "speed-up" in result.output
