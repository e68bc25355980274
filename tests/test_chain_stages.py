"""`pgenrm train psi` / `pgenrm train cre`: the chain stages, with real parts only (TRL's
GRPOTrainer, peft LoRA, the real embedded SmolLM2-135M as teacher, policy and judge).

What is and is not tested here, honestly:
- CRE: a real 1-step GRPO run whose folder loads in the transformers backend and scores in group
  mode with generated criteria; a rerun resumes from its checkpoint instead of starting over.
- PSI: the untrained 135M teacher keeps no chain (measured: docs/training.md), and the tiny budget
  used here (32 new tokens, too few to hold a whole chain) makes that certain, so the test covers
  the teacher log, its resumption and the clear "nothing kept" error, not SFTTrainer. No chain is
  ever hand-written for training.
- The small hand-written chains below are parser fixtures for the keep rule and the rewards only.
No accuracy is asserted: a step teaches nothing.
"""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import parse_chain
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.datasets.synthetic import generate, write_bench
from pgenrm_plugins.training.chain_pairs import canonical_chain, draw_pairs, raw_chain, verdict
from pgenrm_plugins.training.cre_stage import chain_rewards
from pgenrm_plugins.training.psi_stage import TeacherLog
from pgenrm_plugins.training.settings import CRESettings, PSISettings

TINY = dict(history_pairs=1, max_chars=80, threads=1)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path, _ = write_bench(tmp_path_factory.mktemp("chains") / "rows.jsonl",
                          generate(8, 6, seed=3, cold_start_fraction=0.0))
    return path


@pytest.fixture(scope="module")
def app():
    """A CLI with every plugin's commands, as `pgenrm` builds it at start-up."""
    import typer

    from pgenrm_plugins import plugins

    app = typer.Typer()
    app.command()(lambda: None)  # typer needs one command of its own to build a group
    plugins.register_commands(app)
    return app


def chain(a: float, b: float) -> str:
    """A parser fixture: one criterion, A scored `a`, B scored `b`, the prefill's opening included."""
    return (prompts.CHAIN_PREFILL + 'brief"}, "criteria": [{"name": "Brevity", "weight": 100}], '
            f'"scores": {{"A": {{"per_criterion": {{"Brevity": {a}}}, "total": {a}}}, '
            f'"B": {{"per_criterion": {{"Brevity": {b}}}, "total": {b}}}}}}}\n{prompts.CLOSE}')


def test_pairs_are_seeded_never_in_their_own_history_and_flip_a_b(rows):
    bench = load_bench(rows)
    pairs = draw_pairs(bench, 24, history_pairs=2, seed=1)
    assert pairs == draw_pairs(bench, 24, history_pairs=2, seed=1)
    truth = {(r.chosen.content, r.rejected.content) for r in bench.split("train")}
    for p in pairs:
        shown = {h.chosen for h in p.history} | {h.rejected for h in p.history}
        assert not set(p.responses) & shown and len(p.history) == 2
        chosen = p.responses[0 if p.chosen == "A" else 1]
        other = p.responses[1 if p.chosen == "A" else 0]
        assert (chosen, other) in truth and p.flipped == (p.chosen == "B")
        messages = p.messages(80)
        assert messages[-1]["role"] == "user" and "[Response B]" in messages[-1]["content"]
    assert {p.chosen for p in pairs} == {"A", "B"}
    assert [p.chosen for p in pairs] != [p.chosen for p in draw_pairs(bench, 24, history_pairs=2, seed=2)]


def test_keep_rule_and_canonical_chain():
    assert verdict(chain(8, 3), "A")[0] == "right" and verdict(chain(8, 3), "B")[0] == "wrong"
    assert verdict(chain(5, 5), "A")[0] == "tie"  # a tie is never kept
    outcome, failure = verdict(prompts.CHAIN_PREFILL + "brief", "A")
    assert outcome == "unparsed" and failure.kind
    _, parsed = verdict(chain(8, 3.5), "A")
    text = canonical_chain(parsed)
    assert text.startswith(prompts.CHAIN_PREFILL) and text.endswith(prompts.CLOSE)
    again = parse_chain(text, labels=("A", "B"))
    assert again.repairs == () and again.scores["A"].total == 8 and again.scores["B"].total == 3.5
    assert raw_chain(chain(8, 3) + " and more") == chain(8, 3)


def test_rewards_read_the_completion_after_the_prefill():
    outcome, fmt = chain_rewards(prefill=True)
    completions = [chain(8, 3)[len(prompts.CHAIN_PREFILL):], chain(2, 9)[len(prompts.CHAIN_PREFILL):], "brief and then"]
    labels = ["A", "A", "A"]
    assert (outcome(prompts=["p"] * 3, completions=completions, chosen_label=labels, trainer_state=None)
            == [1.0, 0.0, 0.0])
    assert fmt(prompts=["p"] * 3, completions=completions, chosen_label=labels) == [1.0, 1.0, 0.0]
    outcome, _ = chain_rewards(prefill=False)  # conversational completions, no prefill
    assert outcome(completions=[[{"role": "assistant", "content": chain(1, 9)}]], chosen_label=["B"]) == [1.0]


def test_teacher_log_keeps_indexed_samples_and_survives_a_torn_line(tmp_path):
    log = TeacherLog(tmp_path / "teacher.jsonl")
    log.append([{"key": "k", "first": 0, "texts": ["t0", "t1"]}])
    with log.path.open("a") as f:
        f.write('{"key": "k", "first": 2, "tex')  # a crash mid-write
    log = TeacherLog(log.path)
    assert log.have("k") == ["t0", "t1"] and log.torn == 1
    log.append([{"key": "k", "first": 2, "texts": ["t2"]}])
    assert TeacherLog(log.path).have("k") == ["t0", "t1", "t2"]


def test_psi_with_the_135m_teacher_logs_resumes_and_says_clearly_that_nothing_was_kept(rows, tmp_path, app):
    from pgenrm_plugins.training.psi_stage import train_psi

    out = tmp_path / "psi"
    tiny = PSISettings(pairs=2, samples=2, teacher_max_new_tokens=32, steps=1, **TINY)
    with pytest.raises(ValueError, match=r"PSI kept no chain.*wrote 4 chains, of which 0 parsed.*--teacher-config"):
        train_psi(rows, out, tiny, progress=False)  # the default teacher: the untrained embedded base
    lines = [json.loads(line) for line in (out / "teacher.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(len(r["texts"]) == 2 and r["texts"][0].startswith(prompts.CHAIN_PREFILL)
                                   for r in lines)
    assert {r["chosen"] for r in lines} <= {"A", "B"}
    summary = json.loads((out / "teacher_summary.json").read_text())
    assert summary["chains_sampled"] == 4 and summary["kept"] == 0 and summary["keep_rate"] == 0.0

    # the same teacher named by a config file, one more sample per pair: only those two are asked
    teacher = tmp_path / "teacher.yaml"
    teacher.write_text("backend: {name: transformers, options: {model: embedded-base}}\n")
    result = CliRunner().invoke(app, ["train", "psi", "--data", str(rows), "--out", str(out), "--teacher-config",
                                          str(teacher), "--pairs", "2", "--samples", "3",
                                          "--teacher-max-new-tokens", "32",
                                          "--history-pairs", "1", "--max-chars", "80", "--threads", "1"],
                                terminal_width=200)
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "error: PSI kept no chain" in said and "wrote 6 chains, of which 0 parsed" in said
    summary = json.loads((out / "teacher_summary.json").read_text())
    assert summary["chains_sampled"] == 6 and summary["chains_sampled_this_run"] == 2
    assert summary["pairs_asked_this_run"] == 2 and len((out / "teacher.jsonl").read_text().splitlines()) == 4
    assert not (out / "adapter_config.json").exists()  # no judge is written from nothing


def test_cre_rejects_a_missing_init_folder(rows, tmp_path, app):
    result = CliRunner().invoke(app, ["train", "cre", "--data", str(rows), "--out", str(tmp_path / "j"),
                                          "--init", str(tmp_path / "nowhere")], terminal_width=200)
    assert result.exit_code == 2 and "not a judge folder" in " ".join(result.output.split())


def test_tiny_cre_trains_resumes_and_its_folder_scores_with_generated_criteria(rows, tmp_path):
    from pgenrm_plugins.backends.judge_folder import read_manifest
    from pgenrm_plugins.backends.transformers_backend import TransformersBackend, TransformersOptions
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.training.cre_stage import ProcessReward, train_cre

    out = tmp_path / "cre"
    tiny = CRESettings(steps=1, pairs=2, num_generations=2, max_completion_length=24, lora_rank=2, lora_layers=2,
                       save_steps=1, **TINY)
    manifest = train_cre(rows, out, tiny, progress=False)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert (out / "checkpoints" / "checkpoint-1").is_dir()
    saved = read_manifest(out)
    assert saved.protocol == "chain-v1" and saved.stage == "cre" and saved.criteria == "generated"
    assert saved.data_hash and saved.base == "embedded" and saved.process_reward is None
    assert "no process reward" in saved.objective
    assert saved.scoring.reward == {"criteria": "generated", "max_history": 1, "max_chars": 80}
    m = manifest["metrics"]
    assert m["steps"] == 1 and m["completions_this_run"] == 2 and math.isfinite(m["seconds_per_step"])
    assert all(math.isfinite(m[k]) and 0.0 <= m[k] <= 1.0 for k in ("outcome_mean", "format_mean"))

    # the same call resumes from checkpoint-1: nothing is trained again
    again = train_cre(rows, out, tiny, progress=False)
    assert again["metrics"]["steps"] == 1 and again["metrics"]["seconds_per_step"] is None

    backend = TransformersBackend(TransformersOptions(model=str(out), threads=1))
    assert backend.manifest.stage == "cre"
    scorer = Scorer({"backend": {"name": "transformers", "options": {"model": str(out)}},
                     "sampling": {"chains": 1, "max_new_tokens": 24, "seed": 1},
                     "reward": {"mode": "group", "criteria": "generated"}}, backend=backend)
    assert scorer.criteria_mode == "generated" and scorer.config.reward.max_chars == 80  # the manifest's defaults
    history = [{"prompt": "Name a cat.", "chosen": "Miso.", "rejected": "Naming is personal; many options exist."}]
    [result] = scorer.score([{"user_id": "u", "history": history, "prompt": "How do I boil an egg?",
                              "completions": ["Boil it 9 minutes.", "Eggs are versatile and there are many ways."]}])
    assert len(result.rewards) == 2 and all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in result.rewards)
    assert result.components.criteria_mode == "generated" and result.components.chains_sampled == 1

    # the process reward, asked of a real backend (here the trained judge itself)
    from pgenrm_plugins.types import HistoryItem

    _, parsed = verdict(chain(8, 3), "A")
    process = ProcessReward(backend, max_items=1, max_chars=80)
    values = process([[HistoryItem.model_validate(history[0])]] * 2, [parsed, None])
    assert 0.0 <= values[0] <= 1.0 and values[1] == 0.0
