"""verl's own reward workers sharing one real `pgenrm serve` (its own process, the embedded judge).

verl's `RewardLoopManager` starts `reward.num_workers=2` `RewardLoopWorker` Ray actors (a local Ray
cluster on CPU) and hands each a contiguous chunk of the batch. The batch interleaves two users'
groups, so each group's samples go to both workers. Every worker reads the same config file (the
`scorer:` section points it at the service); the service, started from that file, merges the
halves: its own counters show one criteria chain per group, and the rewards equal those of the
in-process adapter (one verl worker with its own judge) on the same batch.

Costs on the 2-core machine: the service loads the judge (10-30 s), Ray starts and its two actors
import verl (20-60 s).
"""

from __future__ import annotations

import pytest
import yaml
from test_verl_adapter import (  # noqa: F401  (module fixtures)
    FAST,
    HISTORY,
    ONE_LINE,
    OTHER_HISTORY,
    SLEEP,
    TEA,
    compose,
    make_batch,
    model_dir,
    run_worker,
    tokenizer,
)

import pgenrm_verl.reward as verl_reward
from pgenrm_plugins.testing.serve import free_port, metric, pgenrm_serve

# Generated criteria, so that a group has a persona-and-criteria chain to count.
CONFIG = {**FAST, "reward": {"criteria": "generated"}}
BEA = {"user_id": "brief-bea", "history": HISTORY}
TOM = {"user_id": "thorough-tom", "history": OTHER_HISTORY, "persona": "Likes precise numbers."}
# Interleaved: verl's contiguous chunks give worker 0 the first two samples, worker 1 the last two.
SAMPLES = [
    (SLEEP, "Keep a fixed bedtime.", BEA),
    (TEA, "Use water at 80 C for two minutes.", TOM),
    (SLEEP, "Sleep is complicated and many factors matter.", BEA),
    (TEA, "Just pour boiling water on it and wait.", TOM),
]


@pytest.fixture(scope="module")
def shared_config(tmp_path_factory):
    """One file for the service and the workers; the service ignores its scorer: section."""
    port = free_port()
    path = tmp_path_factory.mktemp("shared") / "pgenrm.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "scorer": {"url": f"http://127.0.0.1:{port}", "timeout_s": 300}}))
    return path, port


def test_two_verl_reward_workers_share_one_service_and_one_chain_per_group(shared_config, judge, model_dir,  # noqa: F811
                                                                           tokenizer):  # noqa: F811
    import ray
    from verl.experimental.reward_loop.reward_loop import RewardLoopManager

    path, port = shared_config
    data = make_batch(tokenizer, SAMPLES, prompt_in_extra_info=True)
    chunks = [[e["user_id"] for e in chunk.non_tensor_batch["extra_info"]] for chunk in data.chunk(2)]
    assert chunks == [["brief-bea", "thorough-tom"]] * 2  # what each worker gets: half of each group

    config = compose(model_dir, *ONE_LINE, "reward.num_workers=2",
                     f"+reward.custom_reward_function.reward_kwargs.pgenrm_config={path}")
    # A window wide enough for both workers' requests: actors start their calls a few ms apart.
    with pgenrm_serve(path, port, "--max-wait-ms", "2000") as service:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2,
                 namespace="pgenrm-verl-test")
        try:
            manager = RewardLoopManager(config)
            assert len(manager.reward_loop_workers) == 2
            out = manager.compute_rm_score(data)
        finally:
            ray.shutdown()
        text = service.metrics()

    remote = out.batch["rm_scores"].sum(dim=1).tolist()
    extra = out.non_tensor_batch
    assert all(0.0 <= r <= 1.0 for r in remote)
    assert extra["pgenrm_neutral"].tolist() == [0.0] * 4  # every sample judged, none failed over
    # The service's own counters: four caller requests (two per worker), merged into one request
    # per (user, prompt), judged in one batch, one criteria chain for each group.
    assert metric(text, "pgenrm_batch_items_sum") == 4.0
    assert metric(text, "pgenrm_batch_score_requests_sum") == 2.0
    assert metric(text, "pgenrm_batch_seconds_count") == 1.0
    assert metric(text, "pgenrm_chains_sampled_total") == 2.0
    assert extra["pgenrm_merged_completions"].tolist() == [2.0] * 4  # each group judged whole

    # The in-process adapter on the same batch: one verl worker, its own judge, the same settings.
    verl_reward.configure(CONFIG, backend=judge)
    try:
        _, outputs = run_worker(compose(model_dir, *ONE_LINE), data)
    finally:
        verl_reward.configure(FAST, backend=judge)
    assert remote == pytest.approx([o["reward_score"] for o in outputs], abs=1e-5)
