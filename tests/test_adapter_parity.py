"""Parity: the same requests through the core API and the TRL, verl and OpenRLHF adapters (each in its
framework's own call shape, found through the adapter registry) give identical rewards, same judge
and seed; and `pgenrm compare adapters` prints that table."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from pgenrm_plugins import plugins
from pgenrm_plugins.frameworks.parity import DEFAULT_REQUESTS, adapter_parity
from pgenrm_plugins.scoring import Scorer
from pgenrm_plugins.types import ScoreRequest

# Short chains: the criteria may be cut off (then the fallback criterion scores), which exercises the
# same translation paths at a fraction of the cost on 2 CPU cores.
FAST = {"sampling": {"chains": 1, "max_new_tokens": 16, "seed": 7}}


def test_core_and_three_adapters_give_identical_rewards(judge):
    requests = [ScoreRequest.model_validate(r) for r in DEFAULT_REQUESTS]
    table = adapter_parity(requests, Scorer(FAST, backend=judge))
    assert not table.errors
    assert list(table.columns) == ["core", "trl", "verl", "openrlhf"]
    core = table.columns["core"]
    assert [len(r) for r in core] == [len(r.completions) for r in requests]
    assert all(0.0 <= x <= 1.0 for r in core for x in r)
    assert len({x for r in core for x in r}) > 1  # the judge tells the completions apart
    for name, rewards in table.columns.items():
        for got, want in zip(rewards, core):
            assert got == pytest.approx(want, abs=1e-6), name
    assert table.max_difference() <= 1e-6


def test_parity_holds_in_pairwise_mode(judge):
    request = ScoreRequest.model_validate({**DEFAULT_REQUESTS[0], "reference": "Try counting sheep."})
    request = request.model_copy(update={"completions": request.completions[:2]})
    table = adapter_parity([request], Scorer({**FAST, "reward": {"mode": "pairwise"}}, backend=judge),
                           adapters=["trl", "verl"])
    assert list(table.columns) == ["core", "trl", "verl"]
    assert table.max_difference() <= 1e-6


def test_compare_adapters_command_prints_the_table(tmp_path):
    (tmp_path / "fast.yaml").write_text("sampling: {chains: 1, max_new_tokens: 8, seed: 7}\n")
    row = {"user_id": "cli-cat",
           "history": [{"prompt": "Name a cat", "chosen": "Miso.", "rejected": "Names are personal..."}],
           "prompt": "How can I fall asleep faster?", "completions": ["Keep a fixed bedtime.", "Sleep is complicated."]}
    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    app = typer.Typer()
    app.command()(lambda: None)  # typer needs one command of its own to build a group
    plugins.register_commands(app)
    result = CliRunner().invoke(app, ["compare", "adapters", "-i", str(tmp_path / "in.jsonl"),
                                      "-c", str(tmp_path / "fast.yaml")],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    for column in ("core", "trl", "verl", "openrlhf", "cli-cat", "Keep a fixed bedtime."):
        assert column in result.output
    assert "identical: trl, verl, openrlhf match the core API" in result.output


def test_compare_is_a_group_and_reads_bad_input_clearly(tmp_path):
    app = typer.Typer()
    app.command()(lambda: None)
    plugins.register_commands(app)
    result = CliRunner().invoke(app, ["compare", "--help"], terminal_width=200)
    assert result.exit_code == 0 and "adapters" in result.output
    (tmp_path / "in.jsonl").write_text('{"prompt": "hi", "completions": []}\n')
    result = CliRunner().invoke(app, ["compare", "adapters", "-i", str(tmp_path / "in.jsonl")], terminal_width=200)
    assert result.exit_code == 2 and "line 1: field 'completions'" in result.output
