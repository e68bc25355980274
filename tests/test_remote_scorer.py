"""One shared scorer for every framework: the `scorer:` config section sends the adapters' requests
to a running service (a real uvicorn server with the real embedded judge); samples of one group
from two workers are merged there; an unreachable service gets the failure policy."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import httpx
import pytest
from test_server import HISTORY, JUDGE_CONFIG, LiveServer, Recording

from pgenrm_plugins.frameworks.coalescing import SampleCoalescer
from pgenrm_plugins.frameworks.user_fields import FieldSource, read_user_fields
from pgenrm_plugins.scoring import RemoteScorer, Scorer, ScoringError
from pgenrm_plugins.server.app import create_app
from pgenrm_plugins.testing.serve import free_port, metric
from pgenrm_plugins.types import ScoreRequest

PROMPT = "How can I fall asleep faster?"
COMPLETIONS = ["Keep a fixed bedtime.", "Stop screens an hour before bed.", "Sleep is complicated.", "Warm milk."]
SOURCE = FieldSource("verl", "extra_info", "fix the extra_info")


def remote(url: str, **reward) -> dict:
    return {**JUDGE_CONFIG, "scorer": {"url": url, "max_retries": 1, "backoff_s": 0.05}, "reward": reward}


@pytest.fixture()
def service(judge):
    scorer = Recording(Scorer(JUDGE_CONFIG, backend=judge))
    with LiveServer(create_app(scorer, {"max_wait_ms": 1500, "max_batch_requests": 4})) as srv:
        yield srv, scorer


def direct(judge) -> list[float]:
    request = ScoreRequest(user_id="bea", history=HISTORY, prompt=PROMPT, completions=COMPLETIONS)
    return Scorer(JUDGE_CONFIG, backend=judge).score([request])[0].rewards


def test_trl_reward_scores_through_the_service_and_builds_no_judge(service, judge):
    from pgenrm_trl import SyncPGenRMReward

    srv, scorer = service
    reward = SyncPGenRMReward(remote(srv.url))
    report = reward.score_batch([PROMPT] * 4, COMPLETIONS, user_id=["bea"] * 4, history=[json.dumps(HISTORY)] * 4)
    assert isinstance(reward.scorer, RemoteScorer)
    assert report.rewards == pytest.approx(direct(judge), abs=1e-5)
    [c] = report.components
    assert c.served_by["replica"].endswith(f":{__import__('os').getpid()}")  # this process's uvicorn thread
    assert len(scorer.calls) == 1


def test_a_group_split_across_two_workers_is_merged_by_the_service(service, judge):
    """Two verl reward workers (two judges of their own, as `reward.num_workers=2` makes) each get
    half of one GRPO group; the service merges the halves into one request."""
    srv, scorer = service
    workers = [SampleCoalescer(remote(srv.url), max_wait_ms=5) for _ in range(2)]
    fields = read_user_fields({"user_id": "bea", "history": HISTORY}, SOURCE)

    async def rollout():
        return await asyncio.gather(*(workers[i % 2].ascore(fields, PROMPT, c) for i, c in enumerate(COMPLETIONS)))

    try:
        results = asyncio.run(rollout())
        text = httpx.get(f"{srv.url}/metrics").text
    finally:
        for w in workers:
            w.close()
    assert [r.reward for r in results] == pytest.approx(direct(judge), abs=1e-5)
    assert metric(text, "pgenrm_batch_score_requests_sum") == 1.0  # one (user, prompt) request for both workers
    assert metric(text, "pgenrm_batch_completions_sum") == 4.0
    assert [r.components["pgenrm_merged_completions"] for r in results] == [4.0] * 4


def test_an_unreachable_service_gets_the_failure_policy_never_none():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    [result] = RemoteScorer(__import__("pgenrm_plugins").load_config(remote(url))).score(
        [{"prompt": PROMPT, "completions": COMPLETIONS[:2]}])
    assert result.rewards == [0.5, 0.5] and result.components.failure_kinds == {"service_unavailable": 1}
    assert result.components.failed_completions == [0, 1]
    judge = SampleCoalescer(remote(url))
    try:
        sample = judge.score(read_user_fields({"user_id": "u"}, SOURCE), PROMPT, "x")
    finally:
        judge.close()
    assert sample.reward == 0.5 and sample.components["pgenrm_neutral"] == 1.0
    from pgenrm_plugins import load_config

    with pytest.raises(ScoringError, match="did not score 1 requests"):
        RemoteScorer(load_config(remote(url, failure_policy="raise"))).score([{"prompt": PROMPT, "completions": ["x"]}])


def test_the_client_side_imports_no_torch(service):
    srv, _ = service
    code = ("import sys, json\n"
            "from pgenrm_plugins.frameworks.coalescing import SampleCoalescer\n"
            "from pgenrm_plugins.frameworks.user_fields import FieldSource, read_user_fields\n"
            f"j = SampleCoalescer({{'scorer': {{'url': {srv.url!r}}}}})\n"
            "f = read_user_fields({'user_id': 'bea'}, FieldSource('verl', 'extra_info', 'fix'))\n"
            "r = j.score(f, 'Hi', 'Hello.')\n"
            "j.close()\n"
            "print(json.dumps([r.reward, 'torch' in sys.modules, 'transformers' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    reward, torch_loaded, transformers_loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0.0 <= reward <= 1.0 and not torch_loaded and not transformers_loaded


def test_grpo_trainer_one_step_scoring_through_the_service(service, tmp_path):
    """TRL's GRPOTrainer with `pgenrm_trl`'s reward in remote mode: the rewards are logged, and the
    service judged the step's one group of 4 completions in one request."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from pgenrm_plugins.backends.embedded import embedded_model_dir
    from pgenrm_trl import PGenRMReward

    srv, scorer = service
    dataset = Dataset.from_list([{"prompt": PROMPT, "user_id": "bea", "history": json.dumps(HISTORY)}] * 4)
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, num_generations=4,
                      per_device_train_batch_size=4, max_completion_length=12, report_to=[], logging_steps=1,
                      seed=0, save_strategy="no")
    trainer = GRPOTrainer(model=str(embedded_model_dir()), reward_funcs=[PGenRMReward(remote(srv.url))], args=args,
                          train_dataset=dataset)
    trainer.train()
    [entry] = [e for e in trainer.state.log_history if "rewards/pgenrm/mean" in e]
    assert 0.0 <= entry["rewards/pgenrm/mean"] <= 1.0 and entry["pgenrm/neutral"] == 0.0
    assert entry["pgenrm/groups"] == 1.0
    assert [len(r.completions) for batch in scorer.calls for r in batch] == [4]


# -- faults against a real service; `ContentScorer` stands in for the judge where a test needs a
# -- judge that fails or stalls on cue (its reward is a pure function of the content) -----------------

def remote_judge(url: str, **reward):
    from pgenrm_plugins import load_config

    return RemoteScorer(load_config(remote(url, **reward)))


def test_a_503_is_retried_and_scored_once():
    from test_server import ContentScorer

    scorer = ContentScorer(fail_first=1)
    with LiveServer(create_app(scorer, {"max_wait_ms": 1})) as srv:
        [result] = remote_judge(srv.url).score([{"user_id": "u", "prompt": PROMPT, "completions": ["a"]}])
    assert result.components.failed_completions == [] and len(result.rewards) == 1
    assert len(scorer.calls) == 2  # the failed batch, then the one retry that scored it: once


def test_a_service_slower_than_its_deadline_answers_the_retry_from_the_first_computation():
    from test_server import ContentScorer

    scorer = ContentScorer(delay_s=1.0)
    with LiveServer(create_app(scorer, {"max_wait_ms": 1, "deadline_s": 0.4})) as srv:
        client = remote_judge(srv.url)
        client.client.backoff_s = 0.7  # the retry comes after the first computation has finished
        [result] = client.score([{"user_id": "u", "prompt": PROMPT, "completions": ["a"]}])
    assert result.components.failed_completions == [] and len(scorer.calls) == 1


def test_a_service_killed_mid_step_gives_counted_neutral_rewards():
    import threading

    from test_server import ContentScorer

    scorer = ContentScorer(delay_s=3.0)
    srv = LiveServer(create_app(scorer, {"max_wait_ms": 1}), graceful_s=0.1)
    out = {}
    with srv:
        client = remote_judge(srv.url)
        worker = threading.Thread(target=lambda: out.setdefault("r", client.score(
            [{"user_id": "u", "prompt": PROMPT, "completions": ["a", "b"]}])))
        worker.start()
        time.sleep(0.5)
        srv.server.force_exit = True  # killed while the request is in flight
        srv.stop()
        worker.join(60)
    [result] = out["r"]
    assert result.rewards == [0.5, 0.5] and result.components.failure_kinds == {"service_unavailable": 1}
    assert client.unavailable == 2 and len(scorer.calls) == 1  # never scored twice


def test_a_shared_batcher_left_open_shuts_down_when_dropped():
    """An owner that never calls close() leaves no loop thread (and no pending worker task, which
    the interpreter would report at exit) behind: dropping the batcher drains and stops it."""
    import gc

    from pgenrm_plugins.frameworks.coalescing import SharedBatcher

    batcher = SharedBatcher(lambda requests: [])
    thread = batcher._thread
    assert thread.is_alive()
    del batcher
    gc.collect()
    assert not thread.is_alive()
    closed = SharedBatcher(lambda requests: [])
    closed.close()
    closed.close()  # twice is harmless
    assert not closed._thread.is_alive()
