"""The TRL adapter (`pgenrm_trl`) against TRL 1.16's real code and the real embedded judge, on CPU.

- the reward callable with the exact keyword call TRL makes (plain and conversational data),
- a real 2-step `GRPOTrainer` run with SmolLM2-135M as the policy and P-GenRM as the reward,
- bad input: a missing `user_id` column, unreadable `history` rows, wrong lengths.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from collections import defaultdict

import pytest

import pgenrm_trl
from pgenrm_trl import (
    InvalidRowError,
    MissingColumnError,
    PGenRMReward,
    SyncPGenRMReward,
)

FAST = {"sampling": {"chains": 1, "max_new_tokens": 32, "seed": 7}}

HISTORY = [
    {"prompt": "What is a good name for a cat?", "chosen": "Miso.",
     "rejected": "Choosing a name is personal! Many people pick names from food or books."},
]
OTHER_HISTORY = [
    {"prompt": "How do I boil an egg?",
     "chosen": "Put the egg in boiling water for nine minutes, then cool it in cold water.",
     "rejected": "Boil it."},
]
SLEEP = "How can I fall asleep faster?"
TEA = "How should I brew green tea?"
SLEEP_ANSWERS = ["Keep a fixed bedtime.", "Sleep is complicated and many factors matter."]
TEA_ANSWERS = ["Use water at 80 C for two minutes.", "Just pour boiling water on it and wait."]


class Recorder:
    """TRL's `log_metric` / `log_extra` callbacks, recording what the reward logged."""

    def __init__(self):
        self.metrics = defaultdict(list)
        self.extra = defaultdict(list)

    def log_metric(self, name, value):
        self.metrics[name].append(value)

    def log_extra(self, column, values):
        self.extra[column].extend(values)


def trl_call(reward, prompts, completions, recorder=None, **columns):
    """Call `reward` exactly as `GRPOTrainer._calculate_rewards` does (keywords, extra kwargs),
    through TRL's own async detection."""
    from trl.trainer.utils import is_async_callable

    recorder = recorder or Recorder()
    kwargs = dict(
        prompts=prompts, completions=completions, completion_ids=[[1, 2, 3] for _ in completions],
        trainer_state=None, log_extra=recorder.log_extra, log_metric=recorder.log_metric, **columns,
    )
    if is_async_callable(reward):
        return asyncio.run(reward(**kwargs))
    return reward(**kwargs)


@pytest.fixture(scope="module")
def reward(judge):
    return PGenRMReward(FAST, backend=judge)


def flat_batch():
    """Two users x two completions each, in TRL's layout: one entry per completion."""
    prompts = [SLEEP, SLEEP, TEA, TEA]
    completions = SLEEP_ANSWERS + TEA_ANSWERS
    return prompts, completions, {
        "user_id": ["brief-bea", "brief-bea", "thorough-tom", "thorough-tom"],
        "history": [HISTORY, HISTORY, OTHER_HISTORY, OTHER_HISTORY],
        "answer": ["unused", "unused", "unused", "unused"],  # an unrelated dataset column
    }


# -- how TRL sees the object ---------------------------------------------------------------------
def test_trl_sees_a_named_async_plain_callable():
    import torch
    from trl.trainer.utils import get_callable_name, is_async_callable

    for obj in (pgenrm_trl.reward, PGenRMReward(FAST)):
        assert not isinstance(obj, torch.nn.Module)  # a Module would be treated as a classifier
        assert get_callable_name(obj) == "pgenrm"  # -> rewards/pgenrm/mean
        assert is_async_callable(obj)
    assert not is_async_callable(SyncPGenRMReward(FAST))
    assert get_callable_name(PGenRMReward(FAST, name="persona_rm")) == "persona_rm"


def test_import_is_lazy_and_the_instance_is_ready():
    code = (
        "import sys, pgenrm_trl\n"
        "assert not pgenrm_trl.reward.loaded\n"
        "print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_registered_as_a_plugin_of_its_own_distribution():
    from pgenrm_plugins import plugins

    entry = plugins.get("adapter", "trl")
    assert entry.distribution == "pgenrm-trl"
    assert "--reward_funcs pgenrm_trl.reward" in entry.description
    built = entry.factory(entry.options.model_validate({"config": FAST, "name": "p"}))
    assert isinstance(built, PGenRMReward) and built.__name__ == "p" and not built.loaded


def test_cli_dotted_path_resolves_to_the_ready_instance_reading_pgenrm_config(tmp_path, monkeypatch):
    import importlib

    # What `trl grpo --reward_funcs pgenrm_trl.reward` does (trl/scripts/grpo.py: rsplit + getattr).
    module_path, attr = "pgenrm_trl.reward".rsplit(".", 1)  # noqa: SIM905 - as TRL does it
    obj = getattr(importlib.import_module(module_path), attr)
    assert isinstance(obj, PGenRMReward) and obj is pgenrm_trl.reward

    # The YAML's `env:` block sets PGENRM_CONFIG before the first call; the instance reads it then.
    from pgenrm_plugins.config import CONFIG_ENV

    path = tmp_path / "pgenrm.yaml"
    path.write_text("sampling: {chains: 3}\nreward: {mode: pointwise}\n")
    monkeypatch.setenv(CONFIG_ENV, str(path))
    fresh = PGenRMReward()
    assert fresh.config.sampling.chains == 3 and fresh.config.reward.mode == "pointwise"
    assert not fresh.loaded


# -- the call shape --------------------------------------------------------------------------------
def test_plain_batch_groups_order_and_metrics(reward):
    prompts, completions, columns = flat_batch()
    rec = Recorder()
    rewards = trl_call(reward, prompts, completions, rec, **columns)
    assert isinstance(rewards, list) and len(rewards) == 4
    assert all(isinstance(r, float) and 0.0 <= r <= 1.0 for r in rewards)

    # One Scorer.score call with one request per (user, prompt) group: same rewards, same order.
    direct = reward.scorer.score([
        {"user_id": "brief-bea", "history": HISTORY, "prompt": SLEEP, "completions": SLEEP_ANSWERS},
        {"user_id": "thorough-tom", "history": OTHER_HISTORY, "prompt": TEA, "completions": TEA_ANSWERS},
    ])
    assert rewards == pytest.approx(direct[0].rewards + direct[1].rewards, abs=1e-4)

    # Every metric once per call, numbers only.
    assert rec.metrics["pgenrm/groups"] == [2.0]
    assert rec.metrics["pgenrm/chains_sampled"] == [2.0]  # one chain (or synthesis) per group
    if reward.scorer.criteria_mode == "none":  # judge J's format reads one digit: nothing generated
        assert rec.metrics["pgenrm/generated_tokens"] == [0.0]
    else:  # criteria chains (the untrained base), or one synthesis per user (the shipped judge)
        assert rec.metrics["pgenrm/generated_tokens"][0] > 0
    for name in ("parse_failures", "criteria_fallbacks", "neutral", "invalid", "seconds"):
        (value,) = rec.metrics[f"pgenrm/{name}"]
        assert isinstance(value, float) and math.isfinite(value)
    assert rec.metrics["pgenrm/invalid"] == [0.0]

    # Interleaved (non-consecutive) completions of the same groups: each still gets its own reward.
    # (Through the synchronous variant, which must give the same numbers.)
    order = [2, 0, 3, 1]
    sync = SyncPGenRMReward(FAST, scorer=reward.scorer)
    shuffled = trl_call(sync, [prompts[i] for i in order], [completions[i] for i in order],
                        **{k: [v[i] for i in order] for k, v in columns.items()})
    assert shuffled == pytest.approx([rewards[i] for i in order], abs=1e-4)


def test_conversational_batch(reward):
    sleep = [{"role": "system", "content": "You are concise."}, {"role": "user", "content": SLEEP}]
    tea = [{"role": "user", "content": TEA}]
    prompts = [sleep, sleep, tea, tea]
    completions = [[{"role": "assistant", "content": c}] for c in SLEEP_ANSWERS + TEA_ANSWERS]
    rec = Recorder()
    rewards = trl_call(
        reward, prompts, completions, rec,
        user_id=["u1", "u1", "u2", "u2"],
        history=[json.dumps(HISTORY)] * 2 + [None, None],  # a JSON string, and no history at all
        persona=[None, None, "Likes precise numbers.", "Likes precise numbers."],
    )
    assert len(rewards) == 4 and all(math.isfinite(r) and 0.0 <= r <= 1.0 for r in rewards)
    assert rec.metrics["pgenrm/groups"] == [2.0]
    assert rec.metrics["pgenrm/invalid"] == [0.0]


# -- bad input ----------------------------------------------------------------------------------------
def test_missing_user_id_column_names_it_and_the_fix():
    r = PGenRMReward(FAST)  # never loads a judge: the check comes first
    with pytest.raises(MissingColumnError) as exc:
        trl_call(r, ["Hi"], ["Hello"], history=[[]])
    message = str(exc.value)
    assert "'user_id'" in message and "Add a 'user_id' column" in message
    assert "remove_unused_columns=False" in message and "history" in message
    assert not r.loaded


def test_wrong_lengths_are_errors_not_bad_rewards():
    r = PGenRMReward(FAST)
    with pytest.raises(ValueError, match="column 'user_id': expected 2 values"):
        trl_call(r, ["Hi", "Hi"], ["a", "b"], user_id=["u1"])
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        trl_call(r, ["Hi", "Hi"], ["a"], user_id=["u1", "u1"])
    assert not r.loaded


def test_bad_history_rows_get_a_counted_neutral_reward(reward):
    prompts, completions, columns = flat_batch()
    columns["history"] = [HISTORY, HISTORY, "{not json", "{not json"]
    rec = Recorder()
    rewards = trl_call(reward, prompts, completions, rec, **columns)
    assert len(rewards) == 4 and all(r is not None and math.isfinite(r) for r in rewards)
    assert rewards[2:] == [0.5, 0.5]  # reward.neutral_value
    assert rec.metrics["pgenrm/invalid"] == [2.0]
    assert rec.metrics["pgenrm/neutral"][0] >= 2.0
    assert rec.metrics["pgenrm/groups"] == [1.0]

    # A history item with a missing field is unreadable too (validated by the core's types).
    columns["history"] = [HISTORY, HISTORY, [{"prompt": "x", "chosen": "y"}]] * 1 + [[{"prompt": "x", "chosen": "y"}]]
    rec = Recorder()
    rewards = trl_call(reward, prompts, completions, rec, **columns)
    assert rewards[2:] == [0.5, 0.5] and rec.metrics["pgenrm/invalid"] == [2.0]


def test_bad_history_raises_under_raise_policy(judge):
    r = PGenRMReward({**FAST, "reward": {"failure_policy": "raise"}}, backend=judge)
    prompts, completions, columns = flat_batch()
    columns["history"] = [HISTORY, HISTORY, 42, 42]
    with pytest.raises(InvalidRowError, match="column 'history'"):
        trl_call(r, prompts, completions, **columns)


# -- a real GRPO run ---------------------------------------------------------------------------------
def test_grpo_trainer_trains_two_steps_with_pgenrm(judge, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from pgenrm_plugins.backends.embedded import embedded_model_dir

    dataset = Dataset.from_list([
        {"prompt": SLEEP, "user_id": "brief-bea", "history": json.dumps(HISTORY)},
        {"prompt": TEA, "user_id": "thorough-tom", "history": json.dumps(OTHER_HISTORY)},
        {"prompt": "Suggest a name for a dog.", "user_id": "brief-bea", "history": json.dumps(HISTORY)},
        {"prompt": "How do I keep basil alive?", "user_id": "thorough-tom", "history": "[]"},
    ])
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=2, num_generations=4,
        per_device_train_batch_size=4, max_completion_length=16, report_to=[], logging_steps=1,
        seed=0, save_strategy="no",
    )
    reward = PGenRMReward(FAST, backend=judge)
    trainer = GRPOTrainer(
        model=str(embedded_model_dir()), reward_funcs=[reward], args=args, train_dataset=dataset,
    )
    assert trainer._has_async_funcs  # TRL runs our coroutine on its background loop
    trainer.train()

    assert trainer.state.global_step == 2
    logged = [entry for entry in trainer.state.log_history if "rewards/pgenrm/mean" in entry]
    assert len(logged) == 2
    for entry in logged:
        assert math.isfinite(entry["rewards/pgenrm/mean"]) and 0.0 <= entry["rewards/pgenrm/mean"] <= 1.0
        assert entry["pgenrm/groups"] == 1.0  # 4 completions of one prompt: one group, one criteria chain
        assert entry["pgenrm/chains_sampled"] == 1.0
        assert entry["pgenrm/invalid"] == 0.0


def test_rloo_trainer_takes_the_same_reward(judge, tmp_path):
    from datasets import Dataset
    from trl import RLOOConfig, RLOOTrainer

    from pgenrm_plugins.backends.embedded import embedded_model_dir

    dataset = Dataset.from_list([
        {"prompt": SLEEP, "user_id": "brief-bea", "history": json.dumps(HISTORY)},
        {"prompt": TEA, "user_id": "thorough-tom", "history": json.dumps(OTHER_HISTORY)},
    ])
    args = RLOOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, num_generations=4,
        per_device_train_batch_size=4, max_completion_length=16, report_to=[], logging_steps=1,
        seed=0, save_strategy="no",
    )
    trainer = RLOOTrainer(
        model=str(embedded_model_dir()), reward_funcs=[PGenRMReward(FAST, backend=judge)],
        args=args, train_dataset=dataset,
    )
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "rewards/pgenrm/mean" in entry]
    assert trainer.state.global_step == 1 and len(logged) == 1
    assert math.isfinite(logged[0]["rewards/pgenrm/mean"]) and logged[0]["pgenrm/groups"] == 1.0
