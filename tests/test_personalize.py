"""The personalization recipe (`pgenrm recipe run personalize-cpu`); real TRL `GRPOTrainer` runs with
the embedded SmolLM2-135M policy, tiny sizes. The greedy probe it shares with the demo: test_probe.py.

- the truth reward: the latent utility of the synthetic users, degenerate answers, finished or cut off;
- the judge rewards (`judge`, `judge-no-history`) run one tiny step of the recipe end to end;
- the recipe is listed, renders to this interpreter and module, and needs no data file.
"""

from __future__ import annotations

import json
import sys

import pytest

from pgenrm_plugins.datasets.synthetic import TYPES, generate
from pgenrm_trl.personalize.probe import degenerate_reason
from pgenrm_trl.personalize.rewards import StepRecorder, TruthReward
from pgenrm_trl.personalize.run import (
    opposite_users,
    parse_args,
    split_questions,
    summarize,
    training_rows,
    user_history,
)
from pgenrm_trl.personalize.truth import LengthScale, bootstrap_mean, latent_utility

SKIMMER, SCHOLAR = TYPES["skimmer"]["weights"], TYPES["scholar"]["weights"]
SCALE = LengthScale.for_budget(128)
SHORT_LIST = "Sure thing! Here's how:\n1. Pour boiling water.\n2. Use a plunger."
LONG_PROSE = ("A reliable approach is as follows. Begin by removing any visible debris from the drain opening and "
              "then pour a kettle of boiling water slowly into the basin, which loosens grease that has collected "
              "in the pipe. For example, a mixture of baking soda and vinegar left for fifteen minutes and flushed "
              "with hot water clears most kitchen clogs. Should the water still drain slowly, a plunger or a drain "
              "snake will usually remove what remains in the trap beneath the sink.")


# -- the truth -------------------------------------------------------------------------------------
def test_degenerate_reasons():
    assert degenerate_reason("") == "empty" and degenerate_reason("   \n") == "empty"
    assert degenerate_reason("To" + "-" * 30) == "looping"
    assert degenerate_reason(" ".join(["keep the room cool"] * 8)) == "looping"
    assert degenerate_reason(LONG_PROSE, finished=False) == "cut off"
    assert degenerate_reason(LONG_PROSE) is None and degenerate_reason(SHORT_LIST) is None


def test_latent_utility_orders_answers_oppositely_for_opposite_types():
    assert latent_utility(SKIMMER, SHORT_LIST, SCALE) > latent_utility(SKIMMER, LONG_PROSE, SCALE)
    assert latent_utility(SCHOLAR, LONG_PROSE, SCALE) > latent_utility(SCHOLAR, SHORT_LIST, SCALE)
    for weights in (SKIMMER, SCHOLAR):
        for text in (SHORT_LIST, LONG_PROSE):
            assert 0.0 <= latent_utility(weights, text, SCALE) <= 1.0
            assert latent_utility(weights, text, SCALE, finished=False) == pytest.approx(
                latent_utility(weights, text, SCALE) / 2)
        assert latent_utility(weights, "", SCALE) == 0.0 and latent_utility(weights, "Hi" + "!" * 20, SCALE) == 0.0
    assert SCALE.attribute("word " * 5) == -1.0 and SCALE.attribute("word " * 200) == 1.0


def test_truth_reward_reads_cut_off_from_trl_completion_ids():
    reward = TruthReward(SCHOLAR, SCALE, stop_ids={2})
    finished, cut = reward(prompts=["q", "q"], completions=[LONG_PROSE, LONG_PROSE],
                           completion_ids=[[5, 6, 2], [5, 6, 7]])
    assert finished == pytest.approx(latent_utility(SCHOLAR, LONG_PROSE, SCALE)) and cut == pytest.approx(finished / 2)
    conversational = reward(prompts=["q"], completions=[[{"role": "assistant", "content": LONG_PROSE}]],
                            completion_ids=[[5, 2]])
    assert conversational == [finished]


def test_recorder_notes_both_users_utilities_per_step():
    import asyncio
    from types import SimpleNamespace

    recorder = StepRecorder(TruthReward(SKIMMER, SCALE, {2}), {"a": SKIMMER, "b": SCHOLAR}, SCALE, {2})
    rewards = asyncio.run(recorder(prompts=["q", "q"], completions=[SHORT_LIST, ""], completion_ids=[[1, 2], [2]],
                                   trainer_state=SimpleNamespace(global_step=4)))
    assert rewards[1] == 0.0 and recorder.__name__ == "truth"
    first, second = recorder.rows
    assert first["step"] == 5 and first["utility/a"] == rewards[0] and first["utility/a"] > first["utility/b"]
    assert first["degenerate"] is None and second["degenerate"] == "empty"


def test_crossover_statistics():
    assert bootstrap_mean([1.0, 1.0, 1.0], n=50) == (1.0, 1.0, 1.0)
    mean, lo, hi = bootstrap_mean([0.0, 1.0, 2.0, 3.0], n=500)
    assert mean == 1.5 and 0.0 <= lo < mean < hi <= 3.0
    base = {"a": [0.4, 0.5], "b": [0.5, 0.4]}
    # the policy for a gains for a and loses for b; the policy for b the other way: a crossover
    stats = summarize({"base": base, "a": {"a": [0.6, 0.7], "b": [0.3, 0.2]}, "b": {"a": [0.2, 0.3], "b": [0.7, 0.6]}},
                      "a", "b", n=200, seed=0)
    assert stats["policies"]["a"]["own_minus_other"]["mean"] == pytest.approx(0.4)
    assert stats["crossover"]["mean"] == pytest.approx(0.8) and stats["crossover"]["lo"] > 0
    # both policies moving the same way (no personalization): no crossover
    same = {"a": [0.6, 0.7], "b": [0.3, 0.2]}
    flat = summarize({"base": base, "a": same, "b": same}, "a", "b", n=200, seed=0)
    assert flat["crossover"]["mean"] == pytest.approx(0.0)


def test_users_prompts_and_rows():
    bench = generate(n_users=10, rows_per_user=8, seed=0, cold_start_fraction=0.0)
    a, b = opposite_users(bench.truth)
    assert bench.truth["users"][a]["type"] != bench.truth["users"][b]["type"]
    train, heldout = split_questions(12, seed=0)
    assert len(heldout) == 12 and not set(train) & set(heldout)
    history = user_history(bench.rows, a)
    assert history and all(set(h) == {"prompt", "chosen", "rejected"} for h in history)
    with_history, without = training_rows(train, a, history), training_rows(train, a, None)
    assert json.loads(with_history[0]["history"]) == history and json.loads(without[0]["history"]) == []
    assert with_history[0]["prompt"] == [{"role": "user", "content": train[0]}] and with_history[0]["user_id"] == a


# -- the recipe ------------------------------------------------------------------------------------
def test_recipe_is_listed_and_renders_to_this_module():
    from pgenrm_plugins.recipes import list_recipes, load_recipe, preflight, run

    assert "personalize-cpu" in list_recipes()
    recipe = load_recipe("personalize-cpu")
    assert (recipe.folder / "README.md").is_file()
    assert preflight(recipe) == []  # it makes its own data
    argv = run(recipe, {"reward": "judge-no-history", "steps": "3"}, dry_run=True)
    assert argv[:3] == [sys.executable, "-m", "pgenrm_trl.personalize"]
    args = parse_args(argv[3:])  # the module's own parser takes every argument
    assert args.reward == "judge-no-history" and args.steps == 3 and str(args.out) == "out/personalize-judge-no-history"
    with pytest.raises(SystemExit):
        parse_args(run(recipe, {"reward": "judge-without-history"}, dry_run=True)[3:])


@pytest.mark.parametrize("reward", ["judge", "judge-no-history"])
def test_judge_rewards_run_one_tiny_step(reward, tmp_path):
    from pgenrm_trl.personalize.run import main

    out = tmp_path / reward
    assert main(["--out", str(out), "--reward", reward, "--steps", "1", "--prompts-per-step", "1",
                 "--generations", "2", "--max-completion", "12", "--heldout", "2", "--bootstrap", "50",
                 "--threads", "1"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["steps"]) == set(results["users"]) and len(results["users"]) == 2
    for steps in results["steps"].values():
        (step, value), = steps["reward"].items()  # one step, every completion scored by the judge
        assert step == "1" and 0.0 <= value <= 1.0
        assert set(steps["degenerate"]) == {"1"}
    assert set(results["stats"]["crossover"]) == {"mean", "lo", "hi"}
    assert (out / "utilities.png").stat().st_size > 0
    assert f"({reward} reward)" in (out / "report.md").read_text()
