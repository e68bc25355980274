"""The `pgenrm` CLI, run in process on the real embedded judge."""

import json

from conftest import without_work_counters
from typer.testing import CliRunner

from pgenrm_plugins import cli

runner = CliRunner()


def test_help_explains_every_command():
    result = runner.invoke(cli.app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for command in ("score", "serve", "plugins", "config", "bench"):
        assert command in result.output
    result = runner.invoke(cli.app, ["score", "--help"], terminal_width=200)
    assert "--input" in result.output and "one result line per request line" in result.output


def test_score_keeps_order_and_reports_bad_lines(tmp_path, request_row):
    good = json.dumps(request_row)
    lines = [good, "{not json", json.dumps({"prompt": "hi", "completions": []}), json.dumps(["a list"]), good]
    (tmp_path / "in.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "cfg.yaml").write_text("sampling: {chains: 1, max_new_tokens: 32}\n")
    result = runner.invoke(cli.app, ["score", "-i", str(tmp_path / "in.jsonl"), "-c", str(tmp_path / "cfg.yaml"),
                                     "-o", str(tmp_path / "new" / "out.jsonl")], terminal_width=200)
    assert result.exit_code == 1, result.output
    out = [json.loads(line) for line in (tmp_path / "new" / "out.jsonl").read_text().splitlines()]
    assert len(out) == 5
    # same request, same seed, same reward; a synthesis judge reuses the synthesis the first one wrote
    assert len(out[0]["rewards"]) == 3 and without_work_counters(out[0]) == without_work_counters(out[4])
    if out[0]["components"]["criteria_mode"] == "synthesis":
        assert out[0]["components"]["chains_sampled"] == 1 and out[4]["components"]["syntheses_reused"] == 1
    assert out[1]["line"] == 2 and "not valid JSON" in out[1]["error"]
    assert out[2]["line"] == 3 and "field 'completions'" in out[2]["error"]
    assert out[3]["line"] == 4 and "expected a JSON object" in out[3]["error"]
    assert "line 3: field 'completions'" in result.output
    assert "3 of 5 lines could not be read" in result.output


def test_score_with_a_bad_config_names_the_key(tmp_path, request_row):
    (tmp_path / "in.jsonl").write_text(json.dumps(request_row) + "\n")
    (tmp_path / "cfg.yaml").write_text("reward: {mode: listwise}\n")
    result = runner.invoke(cli.app, ["score", "-i", str(tmp_path / "in.jsonl"), "-c", str(tmp_path / "cfg.yaml")])
    assert result.exit_code == 2 and "reward.mode" in result.output


def test_missing_input_file(tmp_path):
    result = runner.invoke(cli.app, ["score", "-i", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "input file not found" in result.output


def test_config_command_prints_defaults():
    result = runner.invoke(cli.app, ["config"])
    assert result.exit_code == 0 and "mode: group" in result.output and "name: transformers" in result.output


def test_train_options_are_the_stage_settings_and_bad_values_name_the_option():
    """Each `pgenrm train` stage's options come from its settings model: every field is an option, and
    a value the model refuses exits 2 naming that option, before any data is read."""
    import typer

    from pgenrm_plugins.training.settings import CRESettings, PSISettings, ScoreSettings, SynthesisSettings

    train = typer.main.get_command(cli.app).commands["train"]
    for stage, settings in (("score", ScoreSettings), ("psi", PSISettings), ("cre", CRESettings),
                            ("synthesis", SynthesisSettings)):
        helps = {o: p.help for p in train.commands[stage].params for o in p.opts}
        for name, field in settings.model_fields.items():
            assert helps[f"--{name.replace('_', '-')}"] == field.description, (stage, name)
    for option, value, said in (("--learning-rate", "0", "greater than 0"),
                                ("--check-share", "2", "less than or equal to 1")):
        result = runner.invoke(cli.app, ["train", "synthesis", "--data", "nowhere.jsonl", "--out", "j",
                                         option, value], terminal_width=200)
        assert result.exit_code == 2 and option in result.output and said in result.output, result.output
