"""The OpenRLHF adapter (`pgenrm_openrlhf`) against OpenRLHF 0.11.2's own code and the real judge, on CPU.

- OpenRLHF's `SingleTurnAgentExecutor` loads our `reward_func.py` with its own `.py` loader (the
  path `pgenrm adapters path openrlhf` prints) and calls it from `execute`, several rollouts at once,
  as a rollout actor does; the result goes through `SamplesGenerator._process_response_into_experience`.
- vLLM cannot be installed here (no GPU), so two stand-ins, both named as such: `FakeEngine` returns a
  fixed response's token ids where vLLM's engine would generate, and a stub `vllm` module satisfies
  the imports of OpenRLHF's `samples_generator` / `vllm_engine` modules (nothing of it is called).
- Bad labels: an error naming the `label` column and `--data.label_key`, or a counted neutral reward.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import subprocess
import sys
import types
from dataclasses import dataclass

import pytest

import pgenrm_openrlhf.reward as openrlhf_reward
from pgenrm_plugins.frameworks.logs import LOG_KEYS
from pgenrm_plugins.frameworks.openrlhf import prompt_of

SAMPLE_COMPONENT_KEYS = tuple("pgenrm_" + k for k in LOG_KEYS)  # what every sample logs

FAST = {"sampling": {"chains": 1, "max_new_tokens": 32, "seed": 7}}
HISTORY = [{"prompt": "What is a good name for a cat?", "chosen": "Miso.",
            "rejected": "Choosing a name is personal! Many people pick names from food or books."}]
SLEEP = [{"role": "user", "content": "How can I fall asleep faster?"}]
TEA = [{"role": "system", "content": "You are concise."}, {"role": "user", "content": "How should I brew green tea?"}]


# -- stand-ins for vLLM ------------------------------------------------------------------------------
def install_vllm_stub(monkeypatch):
    """Only for imports: OpenRLHF's rollout modules import vllm at the top; nothing here calls it."""
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.0.0-stub"

    class SamplingParams:  # the attributes OpenRLHF's executor reads
        def __init__(self, max_tokens=None, logprobs=None, **kw):
            self.max_tokens, self.logprobs = max_tokens, logprobs
            self.__dict__.update(kw)

    vllm.SamplingParams = SamplingParams
    inputs, utils = types.ModuleType("vllm.inputs"), types.ModuleType("vllm.utils")
    inputs.TokensPrompt = dict
    utils.random_uuid = lambda: "stub"
    vllm.inputs, vllm.utils = inputs, utils
    for name, module in (("vllm", vllm), ("vllm.inputs", inputs), ("vllm.utils", utils)):
        monkeypatch.setitem(sys.modules, name, module)
    return vllm


@dataclass
class _Output:
    token_ids: list
    text: str
    finish_reason: str = "stop"
    logprobs: list | None = None


class FakeEngine:
    """Stands in for vLLM's AsyncLLMEngine: the n-th call for a prompt 'generates' its n-th fixed answer."""

    def __init__(self, tokenizer, answers: dict[str, list[str]]):
        self.tokenizer, self.answers = tokenizer, {k: list(v) for k, v in answers.items()}

    async def generate(self, prompt_token_ids, sampling_params, multi_modal_data=None):
        prompt = self.tokenizer.decode(prompt_token_ids)
        text = next(queue for key, queue in self.answers.items() if key in prompt).pop(0) + "<|im_end|>"
        await asyncio.sleep(0)
        return types.SimpleNamespace(outputs=[_Output(self.tokenizer(text, add_special_tokens=False)["input_ids"],
                                                      text)])


# -- fixtures ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from pgenrm_plugins.backends.embedded import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir()))


@pytest.fixture
def module_coalescer(judge):
    scorer = openrlhf_reward.configure(FAST, backend=judge)
    yield scorer
    openrlhf_reward.configure(FAST, backend=judge)


@pytest.fixture
def executor():
    """OpenRLHF's own executor, loading our file with its own loader, as --reward.remote_url does
    (OpenRLHF splits the flag on commas into a list)."""
    from openrlhf.utils.agent import SingleTurnAgentExecutor

    from pgenrm_openrlhf.plugin import reward_file

    ex = SingleTurnAgentExecutor(remote_rm_url=[str(reward_file())])
    assert ex.reward_func is not None and ex.reward_func.__module__ == "pgenrm_openrlhf.reward"
    return ex


def label(user_id="brief-bea", **extra) -> str:
    return json.dumps({"user_id": user_id, "history": HISTORY, **extra})


def run_rollouts(executor, tokenizer, engine, rollouts, sampling_params_cls):
    """Several rollouts at once on one loop, as OpenRLHF's rollout actor runs them."""
    async def main():
        return await asyncio.gather(*(
            executor.execute(prompt, lab, sampling_params_cls(max_tokens=32), max_length=512,
                             hf_tokenizer=tokenizer, llm_engine=engine)
            for prompt, lab in rollouts))
    return asyncio.run(main())


def templated(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


# -- the one-line switch ----------------------------------------------------------------------------
def test_path_command_prints_the_file_openrlhf_loads():
    from pgenrm_openrlhf.plugin import reward_file

    out = subprocess.run([sys.executable, "-c", "from pgenrm_plugins.cli import main; main()",
                          "adapters", "path", "openrlhf"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    path = out.stdout.strip()
    assert path == str(reward_file()) and path.startswith("/") and path.endswith("reward_func.py")
    text = open(path).read()
    assert "from pgenrm_openrlhf.reward import reward_func" in text  # a thin shim over the package


def test_executor_calls_our_reward_func_and_samples_are_coalesced(judge, module_coalescer, executor, tokenizer,
                                                                  monkeypatch):
    vllm = install_vllm_stub(monkeypatch)
    from openrlhf.trainer.ppo_utils.samples_generator import SamplesGenerator

    from pgenrm_plugins.scoring import Scorer

    sleep_prompt, tea_prompt = templated(tokenizer, SLEEP), templated(tokenizer, TEA)
    answers = {"fall asleep": ["Keep a fixed bedtime.", "Sleep is complicated and many factors matter."],
               "green tea": ["Use water at 80 C for two minutes.", "Just pour boiling water on it and wait."]}
    # bea's label carries the exact prompt; tom's prompt is read back from OpenRLHF's ChatML text.
    bea = label("brief-bea", prompt=SLEEP)
    tom = label("thorough-tom", persona="Likes precise numbers.")
    rollouts = [(sleep_prompt, bea), (tea_prompt, tom), (sleep_prompt, bea), (tea_prompt, tom)]  # 4 in flight at once
    engine = FakeEngine(tokenizer, answers)
    outputs = run_rollouts(executor, tokenizer, engine, rollouts, vllm.SamplingParams)
    by_user = {"brief-bea": [outputs[0]["reward"], outputs[2]["reward"]],
               "thorough-tom": [outputs[1]["reward"], outputs[3]["reward"]]}

    for out in outputs:
        reward = out["reward"]
        assert reward is not None and reward.shape == (1,) and 0.0 <= float(reward) <= 1.0
        assert set(out["extra_logs"]) == set(SAMPLE_COMPONENT_KEYS)  # fixed keys, numbers
        assert all(math.isfinite(float(v)) for v in out["extra_logs"].values())
        assert float(out["extra_logs"]["pgenrm_merged_completions"]) == 2.0  # both rollouts of a prompt, one request
        # What OpenRLHF makes of it: the experience's reward and train/<key> logs.
        experience = SamplesGenerator._process_response_into_experience(object.__new__(SamplesGenerator), out,
                                                                        max_len=512)
        assert float(experience.rewards[0]) == pytest.approx(float(reward))
        assert float(experience.info["pgenrm_invalid"][0]) == 0.0

    # The core API on the same requests gives the same rewards.
    extracted = prompt_of(tea_prompt)
    assert extracted[-1] == TEA[-1]
    core = Scorer(FAST, backend=judge).score([
        {"user_id": "brief-bea", "history": HISTORY, "prompt": SLEEP, "completions": answers["fall asleep"]},
        {"user_id": "thorough-tom", "history": HISTORY, "persona": "Likes precise numbers.", "prompt": extracted,
         "completions": answers["green tea"]},
    ])
    assert [float(r) for r in by_user["brief-bea"]] == pytest.approx(core[0].rewards, abs=1e-6)
    assert [float(r) for r in by_user["thorough-tom"]] == pytest.approx(core[1].rewards, abs=1e-6)


# -- bad labels ---------------------------------------------------------------------------------------------
BAD_LABELS = [
    ('{"history": []}', "column 'label.user_id': missing"),
    ('{"user": "bea"}', "column 'label': unknown keys ['user']"),
    ("not json", "column 'label': not valid JSON"),
    (json.dumps({"user_id": "bea", "history": "[{\"prompt\": \"x\"}]"}),
     "column 'label.history': item 0: field 'chosen'"),
]


def test_bad_label_under_neutral_policy_is_a_counted_neutral_reward(module_coalescer, executor, tokenizer, monkeypatch):
    vllm = install_vllm_stub(monkeypatch)
    prompt = templated(tokenizer, SLEEP)
    engine = FakeEngine(tokenizer, {"fall asleep": ["Keep a fixed bedtime."] * len(BAD_LABELS)})
    outputs = run_rollouts(executor, tokenizer, engine, [(prompt, bad) for bad, _ in BAD_LABELS], vllm.SamplingParams)
    for out in outputs:
        assert out["reward"] is not None and float(out["reward"]) == 0.5  # reward.neutral_value, never None
        assert float(out["extra_logs"]["pgenrm_invalid"]) == 1.0 and float(out["extra_logs"]["pgenrm_neutral"]) == 1.0
    assert module_coalescer.invalid_samples == len(BAD_LABELS)
    assert not module_coalescer.loaded  # no judge call was needed


def test_bad_label_under_raise_policy_names_the_column_and_the_flag(judge, tokenizer, caplog):
    openrlhf_reward.configure({**FAST, "reward": {"failure_policy": "raise"}}, backend=judge)
    try:
        prompt = templated(tokenizer, SLEEP)
        query = prompt + "Keep a fixed bedtime.<|im_end|>"
        for bad, expected in BAD_LABELS:
            with pytest.raises(ValueError) as exc:
                openrlhf_reward.reward_func([query], [prompt], [bad])
            assert f"OpenRLHF: {expected}" in str(exc.value) and "--data.label_key" in str(exc.value)
        # OpenRLHF's executor swallows a raising reward_func (reward None, logged at info level), so the
        # reason is logged at ERROR level first, where the operator sees it.
        errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "pgenrm_openrlhf.reward"]
        assert len(errors) == len(BAD_LABELS) and "--data.label_key" in errors[0].getMessage()
    finally:
        openrlhf_reward.configure(FAST, backend=judge)


def test_reward_func_return_shape(module_coalescer, tokenizer):
    prompt = templated(tokenizer, SLEEP)
    out = openrlhf_reward.reward_func([prompt + "Keep a fixed bedtime.<|im_end|>"], [prompt], [label()])
    assert set(out) == {"rewards", "scores", "extra_logs"}
    assert out["rewards"].shape == (1,) and out["scores"].tolist() == out["rewards"].tolist()
    assert list(out["extra_logs"]) == list(SAMPLE_COMPONENT_KEYS)
