"""The verl adapter (`pgenrm_verl`) against verl 0.9.1's own code and the real embedded judge, on CPU.

- config composed with Hydra from verl's own `ppo_trainer.yaml` plus the one-line overrides;
- a real `DataProto` through verl's `RewardLoopWorker`, in process, with verl's naive reward manager
  calling our `compute_score` (loaded by verl from `pkg://pgenrm_verl.reward`), and with our
  `pgenrm` manager, which verl finds by name after `import verl` loads the `verl.plugins` group;
- `reward_router_address`: the judge calls that server (a real llama.cpp OpenAI-compatible server
  stands in for verl's vLLM/SGLang reward router, which needs a GPU);
- bad user fields: an error naming the column and the verl config key, or a counted neutral reward.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from llama_server import llama_server  # noqa: F401  (module fixture: a real llama.cpp server)

import pgenrm_verl.reward as verl_reward
from pgenrm_plugins.frameworks.logs import LOG_KEYS
from pgenrm_plugins.frameworks.user_fields import UserFieldError

SAMPLE_COMPONENT_KEYS = tuple("pgenrm_" + k for k in LOG_KEYS)  # what every sample logs

FAST = {"sampling": {"chains": 1, "max_new_tokens": 32, "seed": 7}}
ONE_LINE = ["reward.custom_reward_function.path=pkg://pgenrm_verl.reward",
            "reward.custom_reward_function.name=compute_score"]
HISTORY = [{"prompt": "What is a good name for a cat?", "chosen": "Miso.",
            "rejected": "Choosing a name is personal! Many people pick names from food or books."}]
OTHER_HISTORY = [{"prompt": "How do I boil an egg?", "chosen": "Boil it for nine minutes, then cool it in cold water.",
                  "rejected": "Boil it."}]
SLEEP = [{"role": "user", "content": "How can I fall asleep faster?"}]
TEA = [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "How should I brew green tea?"}]
# (prompt messages, response, extra_info without the prompt): two users, two responses each
SAMPLES = [
    (SLEEP, "Keep a fixed bedtime.", {"user_id": "brief-bea", "history": HISTORY}),
    (SLEEP, "Sleep is complicated and many factors matter.", {"user_id": "brief-bea", "history": HISTORY}),
    (TEA, "Use water at 80 C for two minutes.", {"user_id": "thorough-tom", "history": json.dumps(OTHER_HISTORY),
                                                 "persona": "Likes precise numbers."}),
    (TEA, "Just pour boiling water on it and wait.", {"user_id": "thorough-tom", "history": json.dumps(OTHER_HISTORY),
                                                      "persona": "Likes precise numbers."}),
]


@pytest.fixture(scope="module")
def model_dir():
    from pgenrm_plugins.backends.embedded import embedded_model_dir

    return str(embedded_model_dir())


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture
def judge_sample_scorer(judge):
    """The module's judge (what compute_score and the pgenrm manager use), on the session's judge."""
    scorer = verl_reward.configure(FAST, backend=judge)
    yield scorer
    verl_reward.configure(FAST, backend=judge)  # a fresh one, so no test sees another's batch counts


def compose(model_dir, *overrides):
    """verl's own trainer config, composed by Hydra exactly as `python -m verl.trainer.main_ppo ...` does."""
    import verl
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    config_dir = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return hydra_compose(config_name="ppo_trainer",
                             overrides=[f"actor_rollout_ref.model.path={model_dir}", *overrides])


def objects(values):
    out = np.empty(len(values), dtype=object)  # never let numpy turn lists of messages into a 2-D array
    out[:] = values
    return out


def make_batch(tokenizer, samples, prompt_in_extra_info: bool):
    """A real DataProto shaped like verl's rollout output: left-padded prompts, right-padded responses."""
    from tensordict import TensorDict
    from verl import DataProto

    prompts = [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True) for p, _, _ in samples]
    prompts = [p["input_ids"] if isinstance(p, dict) or hasattr(p, "keys") else p for p in prompts]
    responses = [tokenizer(r + "<|im_end|>", add_special_tokens=False)["input_ids"] for _, r, _ in samples]
    plen, rlen, pad = max(map(len, prompts)), max(map(len, responses)) + 2, tokenizer.pad_token_id or 0
    prompt_ids = torch.tensor([[pad] * (plen - len(p)) + p for p in prompts])
    response_ids = torch.tensor([r + [pad] * (rlen - len(r)) for r in responses])
    mask = torch.tensor([[0] * (plen - len(p)) + [1] * len(p) + [1] * len(r) + [0] * (rlen - len(r))
                         for p, r in zip(prompts, responses)])
    batch = TensorDict({"prompts": prompt_ids, "responses": response_ids,
                        "input_ids": torch.cat([prompt_ids, response_ids], 1),
                        "attention_mask": mask, "position_ids": torch.clamp(mask.cumsum(1) - 1, min=0)},
                       batch_size=len(samples))
    extra = [dict(e, prompt=p) if prompt_in_extra_info else dict(e) for p, _, e in samples]
    for i, e in enumerate(extra):
        e["index"] = i  # verl's preprocessing scripts add such keys; the adapter ignores them
    return DataProto(batch=batch, non_tensor_batch={
        "data_source": objects(["personal"] * len(samples)),
        "reward_model": objects([{"ground_truth": "", "style": "model"} for _ in samples]),
        "extra_info": objects(extra),
        "raw_prompt": objects([list(p) for p, _, _ in samples]),
    })


def core_rewards(judge):
    """The same samples through the core API, one request per (user, prompt)."""
    from pgenrm_plugins.scoring import Scorer

    requests = [{"user_id": "brief-bea", "history": HISTORY, "prompt": SLEEP,
                 "completions": [s[1] for s in SAMPLES[:2]]},
                {"user_id": "thorough-tom", "history": OTHER_HISTORY, "persona": "Likes precise numbers.",
                 "prompt": TEA, "completions": [s[1] for s in SAMPLES[2:]]}]
    return [x for r in Scorer(FAST, backend=judge).score(requests) for x in r.rewards]


def run_worker(config, data):
    """verl's RewardLoopWorker in process, driven on its own loop (as its Ray actor would be)."""
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker

    worker = RewardLoopWorker(config)
    try:
        return worker, worker.loop.run_until_complete(worker.compute_score_batch(data))
    except BaseException:  # verl's gather leaves the other samples' tasks pending: end them here
        pending = asyncio.all_tasks(worker.loop)
        for task in pending:
            task.cancel()
        worker.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        raise


def check_outputs(outputs):
    for out in outputs:
        assert isinstance(out["reward_score"], float) and 0.0 <= out["reward_score"] <= 1.0
        assert set(out["reward_extra_info"]) == {"score", *SAMPLE_COMPONENT_KEYS}  # fixed keys, every sample
        assert all(isinstance(v, float) and math.isfinite(v) for v in out["reward_extra_info"].values())


# -- the one-line switch through verl's naive manager --------------------------------------------
def test_compute_score_through_verl_naive_manager_and_reward_loop_worker(judge, judge_sample_scorer, model_dir,
                                                                         tokenizer):
    from verl.experimental.reward_loop.reward_manager import NaiveRewardManager

    config = compose(model_dir, *ONE_LINE)
    data = make_batch(tokenizer, SAMPLES, prompt_in_extra_info=True)
    worker, outputs = run_worker(config, data)
    assert type(worker.reward_manager) is NaiveRewardManager and worker.reward_manager.is_async_reward_score

    check_outputs(outputs)
    rewards = [o["reward_score"] for o in outputs]
    assert rewards == pytest.approx(core_rewards(judge), abs=1e-6)  # the adapter only translates
    # verl calls compute_score once per sample; the two samples of each (user, prompt) were merged
    # into one request, and all four samples went to the judge in one batch.
    assert [o["reward_extra_info"]["pgenrm_merged_completions"] for o in outputs] == [2.0] * 4
    assert [o["reward_extra_info"]["pgenrm_chains_sampled"] for o in outputs] == [1.0] * 4
    assert judge_sample_scorer.batcher.batches == 1

    # What RewardLoopManager.compute_rm_score then does with them: the reward at the last response
    # token, and reward_extra_info as one array per key (keys from the first sample).
    rm_scores = NaiveRewardManager.assemble_rm_scores(data, rewards)
    assert rm_scores.sum(dim=1).tolist() == pytest.approx(rewards)
    extra = {k: np.array([o["reward_extra_info"][k] for o in outputs]) for k in outputs[0]["reward_extra_info"]}
    assert extra["score"].tolist() == pytest.approx(rewards)


def test_pgenrm_manager_found_by_name_through_verl_plugins(judge, judge_sample_scorer, model_dir, tokenizer):
    # A fresh interpreter: `import verl` alone loads our entry point and registers the manager.
    code = ("import verl\n"
            "from verl.experimental.reward_loop.reward_manager import get_reward_manager_cls\n"
            "print(get_reward_manager_cls('pgenrm').__module__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "pgenrm_verl.manager"

    # No custom function, no prompt in extra_info: the manager reads verl's raw_prompt.
    from pgenrm_verl.manager import PGenRMRewardManager

    config = compose(model_dir, "reward.reward_manager.name=pgenrm")
    data = make_batch(tokenizer, SAMPLES, prompt_in_extra_info=False)
    worker, outputs = run_worker(config, data)
    assert type(worker.reward_manager) is PGenRMRewardManager
    check_outputs(outputs)
    assert [o["reward_score"] for o in outputs] == pytest.approx(core_rewards(judge), abs=1e-6)
    assert judge_sample_scorer.batcher.batches == 1  # the whole chunk, both groups, in one judge call


# -- bad user fields ------------------------------------------------------------------------------
def bad_batch(tokenizer):
    samples = [(SLEEP, "Keep a fixed bedtime.", {"user": "brief-bea", "history": HISTORY}),  # user_id misspelt
               (SLEEP, "Count sheep.", {"user_id": "brief-bea", "history": HISTORY})]
    return make_batch(tokenizer, samples, prompt_in_extra_info=True)


def test_missing_user_id_names_the_column_and_the_verl_config_key(judge, model_dir, tokenizer):
    verl_reward.configure({**FAST, "reward": {"failure_policy": "raise"}}, backend=judge)
    try:
        with pytest.raises(UserFieldError) as exc:
            run_worker(compose(model_dir, *ONE_LINE), bad_batch(tokenizer))
        message = str(exc.value)
        assert "verl: column 'extra_info.user_id': missing" in message
        assert "data.train_files" in message and "extra_info" in message
    finally:
        verl_reward.configure(FAST, backend=judge)


def test_missing_user_id_under_neutral_policy_is_a_counted_neutral_reward(judge_sample_scorer, model_dir, tokenizer):
    _, outputs = run_worker(compose(model_dir, *ONE_LINE), bad_batch(tokenizer))
    check_outputs(outputs)
    bad, good = outputs
    assert bad["reward_score"] == 0.5 and bad["reward_extra_info"]["pgenrm_invalid"] == 1.0  # reward.neutral_value
    assert bad["reward_extra_info"]["pgenrm_neutral"] == 1.0
    assert good["reward_extra_info"]["pgenrm_invalid"] == 0.0
    assert judge_sample_scorer.invalid_samples == 1


def test_direct_calls_name_each_bad_field(judge):
    judge_ = verl_reward.configure({**FAST, "reward": {"failure_policy": "raise"}}, backend=judge)
    try:
        cases = [
            ({"user_id": "u", "prompt": "Hi", "history": "{not json"}, "column 'extra_info.history': not valid JSON"),
            ({"user_id": "u", "prompt": "Hi", "history": [{"prompt": "x", "chosen": "y"}]},
             "column 'extra_info.history': item 0: field 'rejected'"),
            ({"user_id": "u"}, "column 'extra_info.prompt': missing"),
            (None, "column 'extra_info': is missing"),
        ]
        for extra_info, expected in cases:
            with pytest.raises(UserFieldError, match="data.train_files") as exc:
                asyncio.run(verl_reward.compute_score(data_source="d", solution_str="Hello.", ground_truth="",
                                                      extra_info=extra_info))
            assert expected in str(exc.value)
        assert not judge_.loaded  # every check came before the judge
    finally:
        verl_reward.configure(FAST, backend=judge)


# -- verl's reward model server ---------------------------------------------------------------------
@pytest.mark.server
def test_reward_router_address_points_the_judge_at_that_server(llama_server, tokenizer):  # noqa: F811
    address = llama_server.base_url.removeprefix("http://").removesuffix("/v1")  # verl passes "ip:port"
    result = asyncio.run(verl_reward.compute_score(
        data_source="d", solution_str="Keep a fixed bedtime.", ground_truth="",
        extra_info={"user_id": "brief-bea", "history": HISTORY, "prompt": SLEEP},
        reward_router_address=address, reward_model_tokenizer=tokenizer, pgenrm_config=FAST,
    ))
    assert 0.0 <= result["score"] <= 1.0 and set(result) == {"score", *SAMPLE_COMPONENT_KEYS}
    coalescer = verl_reward.coalescer_for(address, tokenizer, FAST)
    backend = coalescer.scorer.backend
    assert backend.name == "openai" and backend.options.base_urls == [llama_server.base_url]
    assert backend.options.model == tokenizer.name_or_path  # the served model's path, as vLLM names it
    assert backend.stats.extra[f"requests@{llama_server.base_url}"] >= 1  # the server did the judging
