"""TRL's AsyncGRPOTrainer path (`trl.experimental.async_grpo`, TRL 1.16) with TRL's own code.

AsyncGRPOTrainer scores rewards in a rollout process it starts with the `spawn` context and
`CUDA_VISIBLE_DEVICES=""`, so every reward function is pickled into it. Here:

- `pgenrm_trl.reward` and a `PGenRMReward` pickle as their config, and the copy scores as the
  original, with an in-process judge and through a real `pgenrm serve`;
- TRL's `AsyncRolloutWorker` accepts the reward at its pickling check, spawns its real rollout
  process, and that process's real generate and score loops pass the dataset's columns to the
  reward as keyword arguments; the reward scores through the service, with the same rewards as
  the in-process judge;
- a reward that holds a judge loaded in this process is refused by that check, with the fix;
- a config that puts the judge on a GPU warns once in a process that sees no GPU.

What cannot run here, and what stands in for it: vLLM. The worker refuses to start unless vLLM is
installed (`is_vllm_available`, patched to True here: nothing in the worker imports vLLM), and
the rollout process asks the policy's vLLM server for every turn (`_generate_one_turn`, a POST to
`/v1/completions`), replaced by `CannedRolloutLoop` with fixed answers. The trainer itself, its
training step and its NCCL weight sync to the vLLM server need that server and GPUs, and do not
run here.
"""

from __future__ import annotations

import json
import pickle
import queue
import time
import warnings

import pytest
import yaml
from test_recipes import bench, prepared  # noqa: F401  (module fixtures)
from test_trl_adapter import FAST, HISTORY, OTHER_HISTORY, SLEEP, TEA, trl_call
from trl.experimental.async_grpo import async_rollout_worker
from trl.experimental.async_grpo.async_rollout_worker import AsyncRolloutWorker, _AsyncRolloutLoop

import pgenrm_trl
from pgenrm_plugins.scoring import lazy
from pgenrm_plugins.testing.serve import free_port, metric, pgenrm_serve
from pgenrm_trl import PGenRMReward

ANSWERS = {
    SLEEP: ["Keep a fixed bedtime.", "Sleep is complicated and many factors matter."],
    TEA: ["Use water at 80 C for two minutes.", "Just pour boiling water on it and wait."],
}
ROWS = [  # the training dataset, as `pgenrm recipe prepare` writes it for TRL
    {"prompt": [{"role": "user", "content": SLEEP}], "user_id": "brief-bea", "history": json.dumps(HISTORY),
     "reference": "Try counting sheep."},
    {"prompt": [{"role": "user", "content": TEA}], "user_id": "thorough-tom", "history": json.dumps(OTHER_HISTORY),
     "reference": "Steep it briefly."},
]


def columns_of(rows):
    """TRL's layout: every dataset column but the prompt, one value per completion."""
    return {key: [row[key] for row in rows] for key in ("user_id", "history", "reference")}


def batch(rows=ROWS):
    """Each row's prompt with each of its answers, as TRL passes a conversational batch."""
    prompts, completions, per_completion = [], [], []
    for row in rows:
        for answer in ANSWERS[row["prompt"][-1]["content"]]:
            prompts.append(row["prompt"])
            completions.append([{"role": "assistant", "content": answer}])
            per_completion.append(row)
    return prompts, completions, columns_of(per_completion)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One real `pgenrm serve` (the embedded judge, its own process) and the config its callers
    read: the same settings plus `scorer.url`, which the service itself ignores."""
    port = free_port()
    path = tmp_path_factory.mktemp("served") / "pgenrm.yaml"
    path.write_text(yaml.safe_dump({**FAST, "scorer": {"url": f"http://127.0.0.1:{port}", "timeout_s": 300}}))
    with pgenrm_serve(path, port) as service:
        yield path, service


def requests_seen(service) -> float:
    """Score requests the service has answered, scored anew or from its cache of recent answers."""
    text = service.metrics()
    return metric(text, "pgenrm_cache_hits_total") + metric(text, "pgenrm_cache_misses_total")


@pytest.fixture(scope="module")
def in_process(judge):
    """The rewards the in-process judge gives `batch()`: what every other route must match."""
    return trl_call(PGenRMReward(FAST, backend=judge), *batch()[:2], **batch()[2])


def test_the_ready_instance_pickles_and_its_copy_scores_as_the_original(in_process, tmp_path, monkeypatch):
    config = tmp_path / "pgenrm.yaml"
    config.write_text(yaml.safe_dump(FAST))
    monkeypatch.setenv("PGENRM_CONFIG", str(config))
    before = pgenrm_trl.reward.loaded

    data = pickle.dumps(pgenrm_trl.reward)
    copy = pickle.loads(data)
    assert len(data) < 2000  # the config travels, never a judge
    assert (copy.__name__, type(copy), copy.loaded) == ("pgenrm", PGenRMReward, False)
    try:
        # The copy reads $PGENRM_CONFIG and builds its own judge where it is first called, as the
        # original does: the same rewards as the in-process judge with that config.
        assert trl_call(copy, *batch()[:2], **batch()[2]) == in_process
        assert copy.loaded and pgenrm_trl.reward.loaded == before  # the original is untouched
    finally:
        copy.close()


def test_a_remote_reward_pickles_after_use_and_scores_the_same(served, in_process):
    path, service = served
    original = PGenRMReward(path)
    remote = trl_call(original, *batch()[:2], **batch()[2])
    assert original.loaded  # its client (with its locks) is built: it stays in this process

    copy = pickle.loads(pickle.dumps(original))
    assert not copy.loaded and copy.config == original.config
    assert trl_call(copy, *batch()[:2], **batch()[2]) == remote
    # Same rewards in-process and remote.
    assert remote == pytest.approx(in_process, abs=1e-5)
    assert requests_seen(service) >= 4  # two groups from each: both reached the service
    original.close()
    copy.close()


# -- TRL's AsyncRolloutWorker -----------------------------------------------------------------------
class CannedRolloutLoop(_AsyncRolloutLoop):
    """TRL's rollout loop, run whole in its spawned process, except the one call to vLLM: each
    turn's answer comes from `answers` (by prompt, in turn) instead of POST /v1/completions."""

    def __init__(self, *, answers: dict[str, list[str]], **kwargs):
        super().__init__(**kwargs)
        self._answers = answers
        self._given = {prompt: 0 for prompt in answers}

    async def _generate_one_turn(self, prompt_ids: list[int]) -> tuple[list[int], list[float]]:
        text = self.tokenizer.decode(prompt_ids)
        prompt = next(p for p in self._answers if p in text)
        answer = self._answers[prompt][self._given[prompt] % len(self._answers[prompt])]
        self._given[prompt] += 1
        ids = self.tokenizer.encode(answer, add_special_tokens=False) + self.eos_token_ids
        return ids, [0.0] * len(ids)


class CannedRolloutWorker(AsyncRolloutWorker):
    _loop_cls = CannedRolloutLoop


@pytest.fixture
def vllm_gate(monkeypatch):
    """AsyncRolloutWorker checks that vLLM is installed; it cannot be here, and nothing the worker
    runs in this test uses it. Its logging needs accelerate's state, which the trainer makes."""
    from accelerate.state import PartialState

    PartialState()
    monkeypatch.setattr(async_rollout_worker, "is_vllm_available", lambda *a, **k: True)


@pytest.fixture(scope="module")
def processing_class():
    from transformers import AutoTokenizer
    from trl.chat_template_utils import qwen3_schema

    from pgenrm_plugins.backends.embedded import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(str(embedded_model_dir()))
    # SmolLM2's ChatML template is not one TRL knows; its answers parse as Qwen3's (same turn tokens).
    tokenizer.response_schema = qwen3_schema
    return tokenizer


def worker_kwargs(processing_class, reward_funcs):
    from datasets import Dataset

    return dict(model_name="smollm2-135m", dataset=Dataset.from_list(ROWS), reward_funcs=reward_funcs,
                processing_class=processing_class, eos_token_ids=[processing_class.convert_tokens_to_ids("<|im_end|>")],
                num_generations=2, max_inflight_tasks=4, queue_maxsize=4, max_tokens=32, answers=ANSWERS)


def test_trls_pickling_check_refuses_a_reward_holding_a_loaded_judge(judge, processing_class, vllm_gate):
    worker = CannedRolloutWorker(**worker_kwargs(processing_class, [PGenRMReward(FAST, backend=judge)]))
    with pytest.raises(TypeError, match="must be picklable") as err:
        worker.start()
    assert "scorer.url" in str(err.value.__cause__)  # ours, chained: what to do instead
    assert worker._process is None  # refused before any process started


def test_trls_rollout_process_scores_dataset_columns_through_the_service(served, in_process, processing_class,
                                                                         vllm_gate, monkeypatch):
    path, service = served
    # The one-line switch: the ready instance, settings from $PGENRM_CONFIG (inherited by the child).
    monkeypatch.setenv("PGENRM_CONFIG", str(path))
    worker = CannedRolloutWorker(**worker_kwargs(processing_class, [pgenrm_trl.reward]))
    requests_before = requests_seen(service)
    samples = []
    worker.start()  # TRL's pickling check, then its spawned process with CUDA_VISIBLE_DEVICES=""
    try:
        deadline = time.monotonic() + 240
        while len(samples) < 4:  # the first two groups (TRL cycles the dataset for ever)
            worker.check_health(stale_after_s=240)  # the child's traceback, if it failed
            assert time.monotonic() < deadline, "the rollout process scored nothing in 240 s"
            try:
                samples.append(worker.rollout_buffer.get(timeout=1))
            except queue.Empty:
                pass
    finally:
        worker.stop()

    assert sorted(s.group_id for s in samples) == [0, 0, 1, 1]
    assert not pgenrm_trl.reward.loaded  # scored over there, not here
    # Each sample's reward, as the rollout process logged it, against the in-process judge on the
    # same prompt and answer with that dataset row's columns.
    expected = {(p[-1]["content"], c[0]["content"]): r for p, c, r in zip(*batch()[:2], in_process)}
    for s in samples:
        assert s.completion == [{"role": "assistant", "content": s.completion[0]["content"]}]
        key = (s.prompt[-1]["content"], s.completion[0]["content"])
        assert s.metrics["rewards/pgenrm"] == pytest.approx(expected[key], abs=1e-5), key
    # One request per group (a reward call merges its group): the rollout process scored through
    # the service, not with a judge of its own.
    assert requests_seen(service) >= requests_before + 2


def test_the_dataset_columns_change_the_reward(judge, in_process):
    """So the check above would fail if the rollout process lost the user's columns."""
    prompts, completions, columns = batch()
    without_history = trl_call(PGenRMReward(FAST, backend=judge), prompts, completions,
                               user_id=columns["user_id"], reference=columns["reference"])
    assert without_history != pytest.approx(in_process, abs=1e-5)


# -- a GPU judge where no GPU is visible -------------------------------------------------------------
VLLM_JUDGE = {"backend": {"name": "vllm", "options": {"model": "Tongyi-ConvAI/P-GenRM-8B-PRISM"}}}


def test_a_gpu_judge_warns_once_where_no_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(lazy, "_warned_gpu_hidden", False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what TRL's rollout process sets
    reward = pickle.loads(pickle.dumps(PGenRMReward(VLLM_JUDGE)))
    with pytest.warns(RuntimeWarning, match=r"backend.name: vllm.*sees none.*scorer: \{url"):
        with pytest.raises(ImportError):  # no vLLM here: the judge cannot start (on a GPU node: on no GPU)
            reward.scorer
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second warning would raise here instead of the ImportError
        with pytest.raises(ImportError):
            pickle.loads(pickle.dumps(PGenRMReward(VLLM_JUDGE))).scorer


@pytest.mark.parametrize("case", ["gpu visible", "served"])
def test_no_warning_when_the_gpu_is_visible_or_the_judge_is_served(case, monkeypatch):
    monkeypatch.setattr(lazy, "_warned_gpu_hidden", False)
    config = dict(VLLM_JUDGE)
    if case == "gpu visible":
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        config["scorer"] = {"url": "http://127.0.0.1:9"}  # a client only: nothing is contacted yet
    reward = pickle.loads(pickle.dumps(PGenRMReward(config)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            reward.scorer
        except ImportError:
            assert case == "gpu visible"  # vLLM is not installed here
    assert lazy._warned_gpu_hidden is False


# -- the recipe ---------------------------------------------------------------------------------------
def test_async_grpo_recipe_parses_with_trl_parser(prepared, monkeypatch):  # noqa: F811
    import importlib.util
    import sys

    from pgenrm_plugins.config import load_config
    from pgenrm_plugins.recipes import load_recipe, preflight

    recipe = load_recipe("trl-async-grpo")
    sets = {"data_dir": str(prepared["trl"].parent)}
    argv, env = recipe.render(sets)
    assert argv[:3] == ["accelerate", "launch", "--num_processes=1"]
    spec = importlib.util.spec_from_file_location("async_grpo_train", argv[3])
    train = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, train)  # as `python train.py` would have it, for its dataclass
    spec.loader.exec_module(train)
    # --use_cpu: the one CPU override, since TrainingArguments refuses bf16 without a GPU.
    script_args, training_args, model_args = train.make_parser().parse_args_and_config(
        args=[*argv[4:], "--use_cpu", "true"])
    assert type(training_args).__name__ == "AsyncGRPOConfig"
    assert training_args.num_generations == 8 and training_args.vllm_server_base_url == "http://127.0.0.1:8001"
    assert model_args.model_name_or_path == "Qwen/Qwen3-1.7B"
    assert script_args.dataset_name == str(prepared["trl"].parent)
    # The reward's config points it at the service; the service's judge is the GPU recipes' one.
    assert load_config(env["PGENRM_CONFIG"]).scorer.url == "http://127.0.0.1:8017"
    assert (recipe.folder / "README.md").is_file()
    assert preflight(recipe, sets) == []
