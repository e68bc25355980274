"""`pgenrm train`: items, and a tiny real run of the score stage (transformers' Trainer, peft LoRA,
the real SmolLM2-135M) whose saved folder loads in the transformers backend and scores. Accuracy is
not asserted here: a few steps teach nothing; `pgenrm bench accuracy` measures the shipped judge."""

from __future__ import annotations

import json
import math

import pytest

from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.datasets.synthetic import generate, write_bench
from pgenrm_plugins.training.items import HIGH, LOW, ItemSettings, ItemSource, degenerate


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path, _ = write_bench(tmp_path_factory.mktemp("train") / "rows.jsonl",
                          generate(8, 6, seed=3, cold_start_fraction=0.0))
    return path


def test_items_are_a_function_of_the_index_and_never_show_a_target(rows):
    source = ItemSource(load_bench(rows), ItemSettings(history_pairs=2, targets=2, seed=1, degenerate_rate=0.5))
    for i in range(20):
        item = source.item(i)
        assert item == source.item(i)
        shown = {h.chosen for h in item.history} | {h.rejected for h in item.history}
        assert not any(c.response in shown for c in item.candidates)
        assert len(item.history) == 2
        for a, b in item.pairs:  # chosen over rejected, or a real response over its broken copy
            assert item.candidates[a].kind != "degenerate" and item.candidates[b].target == LOW
            assert item.candidates[a].target == HIGH or item.candidates[b].kind == "degenerate"
        assert all(c.target == LOW for c in item.candidates if c.kind in ("rejected", "degenerate"))
    kinds = {c.kind for i in range(40) for c in source.item(i).candidates}
    assert kinds == {"chosen", "rejected", "degenerate"}
    assert source.item(0) != ItemSource(load_bench(rows), ItemSettings(history_pairs=2, seed=2)).item(0)


def test_compared_items_put_each_pair_both_ways(rows):
    settings = dict(history_pairs=2, targets=2, seed=1, degenerate_rate=0.5)
    singles = ItemSource(load_bench(rows), ItemSettings(**settings))
    compared = ItemSource(load_bench(rows), ItemSettings(**settings, compare=True))
    for i in range(10):
        one, two = singles.item(i), compared.item(i)
        assert one.history == two.history and len(two.candidates) == 2 * len(one.pairs)
        for (a, b), (w, loser) in zip(two.pairs, one.pairs):
            first, second = two.candidates[a], two.candidates[b]
            assert (first.response, first.versus) == (one.candidates[w].response, one.candidates[loser].response)
            assert (second.response, second.versus) == (one.candidates[loser].response, one.candidates[w].response)
            assert (first.target, second.target) == (HIGH, LOW)


def test_items_need_users_with_enough_history(rows):
    with pytest.raises(ValueError, match="no user has more than 9 train rows"):
        ItemSource(load_bench(rows), ItemSettings(history_pairs=9))


def test_degenerate_copies_are_broken():
    import random

    text = ("Keep the same bedtime every night and give your body a calm hour before it. Stop using screens "
            "about an hour before bed, because bright light delays melatonin. Keep the bedroom cool and dark.")
    rng = random.Random(0)
    for _ in range(50):
        broken = degenerate(text, rng)
        assert broken != text and len(set(broken.split())) < len(set(text.split()))


def test_tiny_score_stage_trains_resumes_and_its_folder_scores(rows, tmp_path):
    from pgenrm_plugins.backends.judge_folder import read_manifest
    from pgenrm_plugins.backends.transformers_backend import TransformersBackend, TransformersOptions
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.training.score_stage import train_score
    from pgenrm_plugins.training.settings import ScoreSettings

    out = tmp_path / "judge"
    tiny = ScoreSettings(steps=2, grad_accum=1, lora_rank=2, lora_layers=2, history_pairs=2, targets=1, max_chars=160,
                         history_render="contrast", compare=True, seed=0)
    manifest = train_score(rows, out, tiny, progress=False)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert manifest["metrics"]["steps"] == 2 and math.isfinite(manifest["metrics"]["final_loss"])
    assert read_manifest(out).criteria == "none" and read_manifest(out).data_hash
    assert (out / "checkpoints" / "checkpoint-2").is_dir()

    # the same command with more steps resumes from checkpoint-2 instead of starting over
    manifest = train_score(rows, out, tiny.model_copy(update={"steps": 3}), progress=False)
    assert manifest["metrics"]["steps"] == 3
    log = json.loads((out / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert log["global_step"] == 3
    # ... but not with settings that change what is learnt: it names them and the way out
    with pytest.raises(ValueError, match=r"--learning-rate 0\.0003 \(now 0\.001\).*--fresh"):
        train_score(rows, out, tiny.model_copy(update={"learning_rate": 1e-3}), progress=False)

    backend = TransformersBackend(TransformersOptions(model=str(out)))
    assert backend.manifest.protocol == "direct-v1"
    scorer = Scorer({"backend": {"name": "transformers", "options": {"model": str(out)}},
                     "sampling": {"chains": 2}, "reward": {"max_history": 2, "max_chars": 160}}, backend=backend)
    assert scorer.criteria_mode == "none"  # `auto` follows the judge's manifest, and so does the rest
    assert scorer.config.reward.compare and scorer.config.reward.history_render == "contrast"
    [result] = scorer.score([{"user_id": "u",
                              "history": [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}],
                              "prompt": "How do I boil an egg?", "completions": ["Boil it 9 minutes.", "Eggs."]}])
    assert len(result.rewards) == 2 and all(0.0 <= r <= 1.0 and math.isfinite(r) for r in result.rewards)
    assert result.components.criteria_mode == "none" and result.components.chains_sampled == 2
    assert result.components.reader == "logprob"


# -- the manifest: a typed model every backend reads ----------------------------------------------

def test_a_served_export_keeps_its_scoring_block(tmp_path):
    """A judge exported by `pgenrm train export` and served by vLLM or an OpenAI-compatible server
    (`backend.options.model` naming the folder) is read with the settings its manifest records."""
    from pgenrm_plugins.backends.judge_folder import (
        JudgeManifest,
        judge_settings,
        manifest_for_backend,
        shipped_judge,
        with_judge_defaults,
        write_manifest,
    )
    from pgenrm_plugins.config import load_config
    from pgenrm_plugins.scoring.scorer import resolve_criteria

    shipped = JudgeManifest.model_validate_json((shipped_judge() / "pgenrm_judge.json").read_text())
    folder = tmp_path / "exported"
    folder.mkdir()
    write_manifest(folder, shipped.model_copy(update={"merged_from": "judges/x"}))
    for backend in ({"name": "vllm", "options": {"model": str(folder)}},
                    {"name": "openai", "options": {"base_urls": ["http://127.0.0.1:1"], "model": str(folder)}}):
        config = load_config({"backend": backend, "reward": {"max_chars": 300}})
        manifest = manifest_for_backend(config.backend)
        assert isinstance(manifest, JudgeManifest) and manifest.merged_from == "judges/x"
        assert manifest.scoring.reward == shipped.scoring.reward
        filled = with_judge_defaults(config).reward
        recorded = shipped.scoring.reward
        assert (filled.max_history, filled.history_render, filled.max_chars) == \
            (recorded["max_history"], recorded["history_render"], 300)  # what the config sets wins
        assert ("reward", "max_chars") not in judge_settings(config) and resolve_criteria(config) == shipped.criteria


def test_a_config_handed_on_as_a_dict_is_still_read_the_judges_way():
    """A Ray replica or a benchmark's setup builds its scorer from a dict of the config: only what
    the config set travels, so the judge's manifest still fills the rest (a full dump set every key,
    and replicas read the shipped judge without its manifest's settings)."""
    from pgenrm_plugins.backends.judge_folder import JudgeManifest, shipped_judge, with_judge_defaults
    from pgenrm_plugins.config import config_dict, load_config

    shipped = JudgeManifest.model_validate_json((shipped_judge() / "pgenrm_judge.json").read_text())
    handed = config_dict({"sampling": {"chains": 2}, "reward": {"max_chars": 300}})
    assert handed == {"sampling": {"chains": 2}, "reward": {"max_chars": 300}}
    read = with_judge_defaults(load_config(handed))
    recorded = shipped.scoring.reward
    assert (read.sampling.chains, read.reward.max_chars) == (2, 300)  # what the config sets wins
    assert (read.reward.max_history, read.reward.verify_history, read.reward.extra_criteria) == \
        (recorded["max_history"], recorded["verify_history"], recorded["extra_criteria"])


def test_a_merged_judge_is_told_apart_by_what_it_was_merged_from(tmp_path):
    """Caches key results by `judge_fingerprint`: two exported folders must not share one."""
    from pgenrm_plugins.backends.judge_folder import JudgeManifest, judge_fingerprint, shipped_judge, write_manifest
    from pgenrm_plugins.config import load_config

    def fingerprint(folder):
        return judge_fingerprint(load_config({"backend": {"name": "vllm", "options": {"model": str(folder)}}}).backend)

    shipped = fingerprint(shipped_judge())
    first, second = tmp_path / "a", tmp_path / "b"
    for folder, weights in ((first, b"1" * 8), (second, b"2" * 9)):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(weights)
    assert fingerprint(first) != fingerprint(second)  # no record: the weight files tell them apart
    write_manifest(first, JudgeManifest(merged_from="x", merged_fingerprint=shipped))
    assert fingerprint(first) == shipped  # `pgenrm train export` records the adapter's


@pytest.mark.parametrize("manifest, field", [
    ({"criteria": "sometimes"}, "criteria"),
    ({"seed": "zero"}, "seed"),
    ({"scoring": {"reward": {"max_hist": 3}}}, "reward.max_hist"),
    ({"scoring": {"reward": {"max_history": -1}}}, "reward.max_history"),
    ({"scoring": {"backend": {"name": "vllm"}}}, "scoring.backend"),
])
def test_a_malformed_manifest_names_the_file_and_the_field(tmp_path, manifest, field):
    from pgenrm_plugins.backends.judge_folder import ManifestError, read_manifest, write_manifest

    (tmp_path / "pgenrm_judge.json").write_text(json.dumps({"base": "embedded", **manifest}))
    with pytest.raises(ManifestError, match="pgenrm_judge.json") as info:
        read_manifest(tmp_path)
    assert field in str(info.value)
    # `pgenrm config` with a config naming that folder: one error line naming both, exit 2
    from typer.testing import CliRunner

    from pgenrm_plugins import cli

    config = tmp_path / "judge.yaml"
    config.write_text(json.dumps({"backend": {"name": "transformers", "options": {"model": str(tmp_path)}}}))
    shown = CliRunner().invoke(cli.app, ["config", "--config", str(config)])
    assert shown.exit_code == 2 and "error:" in shown.output and field in shown.output, shown.output
    with pytest.raises(ManifestError, match=field):  # a dict is validated before it is written
        write_manifest(tmp_path, {"base": "embedded", **manifest})
    (tmp_path / "pgenrm_judge.json").write_text("{not json")
    with pytest.raises(ManifestError, match="pgenrm_judge.json: not valid JSON"):
        read_manifest(tmp_path)


def test_unknown_manifest_keys_survive_a_round_trip(tmp_path):
    from pgenrm_plugins.backends.judge_folder import read_manifest, shipped_judge, write_manifest

    written = {**json.loads((shipped_judge() / "pgenrm_judge.json").read_text()),
               "hardware": {"gpu": "H200", "hours": 0.1}, "schema": 2}
    (tmp_path / "pgenrm_judge.json").write_text(json.dumps(written))
    manifest = read_manifest(tmp_path)
    assert manifest.hardware == {"gpu": "H200", "hours": 0.1} and manifest.criteria == written["criteria"]
    manifest.seed = 5
    write_manifest(tmp_path / ".", manifest)
    assert json.loads((tmp_path / "pgenrm_judge.json").read_text()) == {**written, "seed": 5}  # nothing added


def test_a_shipped_judge_is_named_embedded_name_and_a_wrong_name_lists_the_shipped_ones():
    from pgenrm_plugins.backends.judge_folder import judge_folder, shipped_judge, shipped_judges
    from pgenrm_plugins.config import ConfigError, load_config

    assert shipped_judges()[shipped_judge().name] == shipped_judge()
    for name, folder in shipped_judges().items():
        config = load_config({"backend": {"name": "transformers", "options": {"model": f"embedded:{name}"}}})
        assert judge_folder(config.backend) == folder
    config = load_config({"backend": {"name": "transformers", "options": {"model": "embedded:nope"}}})
    with pytest.raises(ConfigError, match=f"embedded:{shipped_judge().name}"):
        judge_folder(config.backend)
