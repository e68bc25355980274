"""Recipes: every GPU recipe's arguments go through its framework's own parser (so a recipe that
drifts from the pinned TRL / verl / OpenRLHF fails here), data preparation runs on the synthetic
users, and a bad path or a missing column stops the run before any framework starts."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from pgenrm_plugins import plugins
from pgenrm_plugins.config import load_config
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.datasets.synthetic import generate_rows, write_rows
from pgenrm_plugins.frameworks.prepare import prepare
from pgenrm_plugins.recipes import RecipeError, list_recipes, load_recipe, preflight, run

GPU_RECIPES = ["trl-grpo", "verl-grpo", "verl-ppo", "openrlhf-grpo", "openrlhf-ppo",
               "personalize-trl", "personalize-verl", "personalize-openrlhf"]
PERSONALIZE = Path(__file__).resolve().parent.parent / "recipes" / "personalize-gpu"


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "rows.jsonl"
    write_rows(path, generate_rows(n_users=6, rows_per_user=4, seed=3))
    return load_bench(path)


@pytest.fixture(scope="module")
def prepared(bench, tmp_path_factory):
    """Each framework's training file, written by the shared data preparation."""
    root = tmp_path_factory.mktemp("prepared")
    return {fw: prepare(bench, fw, root / fw) for fw in plugins.adapters()}


def overrides(recipe, prepared) -> dict[str, str]:
    return {"data_file": str(prepared[recipe.framework])}


def test_every_recipe_is_listed_with_its_files():
    assert set(GPU_RECIPES) <= set(list_recipes())
    for name in GPU_RECIPES:
        recipe = load_recipe(name)
        assert (recipe.folder / "README.md").is_file(), f"{name} has no README"
        load_config(recipe.values()["pgenrm_config"])  # the judge config parses


def test_trl_recipe_parses_with_trl_parser(prepared):
    from trl.scripts.grpo import make_parser

    recipe = load_recipe("trl-grpo")
    argv, env = recipe.render(overrides(recipe, prepared))
    assert argv[:2] == ["trl", "grpo"]
    # --use_cpu: the one CPU override, since TrainingArguments refuses bf16 without a GPU.
    script_args, training_args, model_args, _ = make_parser().parse_args_and_config(
        args=[*argv[2:], "--use_cpu", "true"])
    assert script_args.reward_funcs == ["pgenrm_trl.reward"]
    assert training_args.num_generations == 8 and training_args.remove_unused_columns is False
    assert model_args.model_name_or_path == "Qwen/Qwen3-1.7B"
    assert "PGENRM_CONFIG" in env


def test_trl_dataset_loads_the_way_trl_cli_loads_it(prepared):
    from datasets import load_dataset

    split = load_dataset(str(prepared["trl"].parent))["train"]
    assert {"prompt", "user_id", "history", "reference"} <= set(split.column_names)
    assert split[0]["prompt"][-1]["role"] == "user"


@pytest.mark.parametrize("name", ["verl-grpo", "verl-ppo", "personalize-verl"])
def test_verl_recipes_compose_with_verl_hydra_config(name, prepared):
    import verl
    from hydra import compose, initialize_config_dir
    from verl.trainer.ppo.reward import get_custom_reward_fn

    recipe = load_recipe(name)
    argv, _ = recipe.render(overrides(recipe, prepared))
    assert argv[:3] == ["python3", "-m", "verl.trainer.main_ppo"]
    config_dir = Path(verl.__file__).parent / "trainer" / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=argv[3:])
    assert cfg.reward.custom_reward_function.path == "pkg://pgenrm_verl.reward"
    assert cfg.algorithm.adv_estimator == ("gae" if name == "verl-ppo" else "grpo")
    # verl's own loader finds our compute_score from that config
    assert callable(get_custom_reward_fn(cfg))
    if name == "personalize-verl":  # the per-user policy is saved, for the crossover evaluation
        assert cfg.trainer.save_freq > 0 and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.04


def openrlhf_parse(argv: list[str]) -> argparse.Namespace:
    """Run the argument part of `python -m openrlhf.cli.train_ppo_ray`: its own parser and checks,
    everything in its `__main__` block except the final `train(args)` (which needs GPUs)."""
    source = Path(importlib.util.find_spec("openrlhf.cli.train_ppo_ray").origin).read_text()
    main = next(n for n in ast.parse(source).body if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    assert ast.unparse(main.body[-1]) == "train(args)", "OpenRLHF's entry point changed: re-check the recipes"
    # The module's standard-library imports, not its ray/vLLM ones.
    stdlib = [n for n in ast.parse(source).body if isinstance(n, (ast.Import, ast.ImportFrom))
              and all(a.name.split(".")[0] in sys.stdlib_module_names for a in n.names)
              and (not isinstance(n, ast.ImportFrom) or n.module.split(".")[0] in sys.stdlib_module_names)]
    body = stdlib + main.body[:-1]
    namespace: dict = {}
    saved = sys.argv
    sys.argv = ["train_ppo_ray", *argv]
    try:
        exec(compile(ast.Module(body=body, type_ignores=[]), "train_ppo_ray", "exec"), namespace)
    finally:
        sys.argv = saved
    return namespace["args"]


@pytest.mark.parametrize("name", ["openrlhf-grpo", "openrlhf-ppo", "personalize-openrlhf"])
def test_openrlhf_recipes_parse_with_openrlhf_argparse(name, prepared):
    recipe = load_recipe(name)
    argv, _ = recipe.render(overrides(recipe, prepared))
    assert argv[:3] == ["python3", "-m", "openrlhf.cli.train_ppo_ray"]
    args = openrlhf_parse(argv[3:])
    assert args.reward.remote_url == ["http://127.0.0.1:8017/get_reward"]
    assert args.data.label_key == "label" and args.data.input_key == "prompt"
    assert args.algo.advantage.estimator == ("gae" if name == "openrlhf-ppo" else "group_norm")
    # the prepared label is the JSON the adapter and the service read
    row = json.loads(prepared["openrlhf"].read_text().splitlines()[0])
    assert set(json.loads(row["label"])) >= {"user_id", "history"}
    if name == "personalize-openrlhf":  # a KL loss, and the final actor saved where the evaluation reads it
        assert args.algo.kl.use_loss and args.algo.kl.init_coef == 0.04
        assert args.ckpt.output_dir == "out/personalize-openrlhf/u001-h8"


def test_openrlhf_parser_rejects_a_drifted_flag():
    """The check above can fail: an old (pre-0.11) flag name is refused by OpenRLHF's parser."""
    with pytest.raises(SystemExit):
        openrlhf_parse(["--pretrain", "x"])


def test_prepared_files_carry_leave_one_out_history(bench, prepared):
    rows = [json.loads(line) for line in prepared["trl"].read_text().splitlines()]
    assert len(rows) == len(bench.split("train"))
    for row in rows:
        history = json.loads(row["history"])
        # the prompt's own chosen answer is never in its history
        assert all(h["chosen"] != row["reference"] or h["prompt"] != row["prompt"] for h in history)


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_preflight_passes_on_prepared_data(name, prepared, tmp_path):
    recipe = load_recipe(name)
    config = tmp_path / "pgenrm.yaml"
    config.write_text("reward: {mode: group}\n")
    sets = {**overrides(recipe, prepared), "pgenrm_config": str(config)}
    assert preflight(recipe, sets) == []
    assert run(recipe, sets, dry_run=True)[0] in ("trl", "python3")


def test_bad_path_stops_at_once_with_the_fix(tmp_path):
    recipe = load_recipe("verl-grpo")
    with pytest.raises(RecipeError) as err:
        run(recipe, {"data_file": str(tmp_path / "nope.parquet")}, dry_run=True)
    assert "data_file" in str(err.value) and "pgenrm recipe prepare verl-grpo" in str(err.value)


def test_missing_column_is_named(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"prompt": [{"role": "user", "content": "hi"}], "user_id": "u1"}) + "\n")
    problems = preflight(load_recipe("trl-grpo"), {"data_file": str(data)})
    assert any("lacks column(s) history" in p for p in problems)


def test_missing_store_is_named(prepared, tmp_path):
    config = tmp_path / "pgenrm.yaml"
    config.write_text("prototypes: {enabled: true}\n"
                      f"store: {{name: sqlite, options: {{path: {tmp_path / 'no.sqlite'}}}}}\n")
    recipe = load_recipe("openrlhf-grpo")
    problems = preflight(recipe, {**overrides(recipe, prepared), "pgenrm_config": str(config)})
    assert any("pgenrm prototypes build" in p for p in problems)


def test_unknown_var_is_refused():
    with pytest.raises(RecipeError, match="unknown var"):
        load_recipe("trl-grpo").render({"polcy": "x"})


# -- the GPU personalization recipes: one user a run, the judge with that user's history -----------------
def test_personalize_trl_parses_with_trl_parser_for_one_user(prepared):
    from trl.scripts.grpo import make_parser

    recipe = load_recipe("personalize-trl")
    argv, env = recipe.render({**overrides(recipe, prepared), "user": "u005"})
    script_args, training_args, model_args, _ = make_parser().parse_args_and_config(
        args=[*argv[2:], "--use_cpu", "true"])
    assert script_args.reward_funcs == ["pgenrm_trl.reward"]
    assert model_args.model_name_or_path == "Qwen/Qwen2.5-1.5B-Instruct"
    # trl-grpo's fixed settings, with a KL to the base policy and completions long enough to show a taste
    assert training_args.beta == 0.04 and training_args.max_completion_length == 512
    assert training_args.remove_unused_columns is False
    assert training_args.output_dir.endswith("u005-h8")
    config = load_config(env["PGENRM_CONFIG"])
    assert not config.prototypes.enabled and config.reward.max_chars >= 6 * 512


@pytest.mark.parametrize("name", ["personalize-trl", "personalize-verl", "personalize-openrlhf"])
def test_personalize_user_and_history_reach_data_and_output(name):
    values = load_recipe(name).values({"user": "u005", "max_history": "0"})
    assert values["data_file"].startswith(f"out/recipe-data/{name}/u005-h0/")
    assert values["output_dir"] == f"out/{name}/u005-h0"


def test_prepare_restricts_to_one_user(bench, tmp_path):
    user = bench.split("train")[0].user_id
    path = prepare(bench, "trl", tmp_path, user=user)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == sum(r.user_id == user for r in bench.split("train"))
    assert {r["user_id"] for r in rows} == {user}
    with pytest.raises(ValueError, match="user 'nobody' has no train rows"):
        prepare(bench, "trl", tmp_path, user="nobody")


def test_recipe_prepare_reads_user_and_max_history(tmp_path):
    from typer.testing import CliRunner

    from pgenrm_plugins.cli import app

    rows = tmp_path / "rows.jsonl"
    write_rows(rows, generate_rows(n_users=4, rows_per_user=6, seed=1, cold_start_fraction=0.0))
    for history in ("8", "0"):
        out = tmp_path / f"h{history}"
        result = CliRunner().invoke(app, ["recipe", "prepare", "personalize-openrlhf", "--data", str(rows),
                                          "--set", "user=u001", "--set", f"max_history={history}",
                                          "--set", f"data_dir={out}"])
        assert result.exit_code == 0, result.output
        labels = [json.loads(json.loads(line)["label"]) for line in (out / "train.jsonl").read_text().splitlines()]
        assert labels and {x["user_id"] for x in labels} == {"u001"}
        assert all((len(x["history"]) > 0) == (history == "8") for x in labels)


def run_evaluate(argv, capsys) -> str:
    spec = importlib.util.spec_from_file_location("personalize_evaluate", PERSONALIZE / "evaluate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(argv) == 0
    return capsys.readouterr().out


def test_personalize_evaluate_pair_and_crossover_on_saved_policies(tmp_path, capsys):
    """The evaluation reads saved policy folders; the same folder for both users: no crossover, exactly."""
    from pgenrm_plugins.backends.embedded import embedded_model_dir
    from pgenrm_plugins.datasets.synthetic import generate, write_bench

    rows, _ = write_bench(tmp_path / "rows.jsonl", generate(10, 20, 0, cold_start_fraction=0.0))
    assert run_evaluate(["--data", str(rows), "--pair"], capsys).startswith("u001 (professional) u005 (friend)")
    policy = str(embedded_model_dir())
    out = run_evaluate(["--data", str(rows), "--base", policy, "--policy", f"u001={policy}",
                        "--policy", f"u005={policy}", "--max-new-tokens", "6", "--limit", "2",
                        "--bootstrap", "50", "--out", str(tmp_path / "eval")], capsys)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert len(results["heldout"]) == 2 and results["stats"]["crossover"]["mean"] == 0.0
    assert "crossover +0.000" in out
