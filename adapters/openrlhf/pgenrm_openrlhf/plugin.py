"""Registers the OpenRLHF adapter with pgenrm's plugin manager (entry point `pgenrm_plugins: openrlhf`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pgenrm_plugins import hookimpl
from pgenrm_plugins.frameworks.parity import per_request
from pgenrm_plugins.hookspecs import Adapter, DatasetLayout


def reward_file() -> Path:
    """`pgenrm adapters path openrlhf` prints this: the file for `--reward.remote_url`."""
    return Path(__file__).with_name("reward_func.py").resolve()


def build_reward(options=None):
    """OpenRLHF's `reward_func(queries, prompts, labels)` (judge from `$PGENRM_CONFIG`)."""
    from pgenrm_openrlhf.reward import reward_func

    return reward_func


def parity_rewards(requests, scorer) -> list[list[float]]:
    """The requests as OpenRLHF hands them to `reward_func` (for `pgenrm compare adapters`): one call
    per completion, each in its own thread, query = ChatML prompt + completion + end of turn, the user
    (and the exact prompt) in the JSON label; with `scorer`'s judge."""
    from concurrent.futures import ThreadPoolExecutor

    from pgenrm_openrlhf.reward import score_sample
    from pgenrm_plugins.frameworks.coalescing import SampleCoalescer
    from pgenrm_plugins.types import as_messages

    coalescer = SampleCoalescer(scorer=scorer)
    calls = []
    for r in requests:
        row = r.model_dump(mode="json")
        label = json.dumps({k: row[k] for k in ("user_id", "history", "persona", "reference", "prompt")})
        chatml = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in as_messages(r.prompt))
        chatml += "<|im_start|>assistant\n"
        calls += [(chatml + c + "<|im_end|>", chatml, label) for c in r.completions]
    try:
        with ThreadPoolExecutor(max_workers=max(1, len(calls))) as pool:
            flat = [s.reward for s in pool.map(lambda call: score_sample(*call, scorer=coalescer), calls)]
    finally:
        coalescer.close()
    return per_request(flat, requests)


def dataset_record(r: dict[str, Any]) -> dict[str, Any]:
    """A training row as OpenRLHF reads it: the prompt (`--data.apply_chat_template`) and the
    user in one JSON `label` (`--data.label_key label`), the only per-sample field it hands a reward."""
    label = {"user_id": r["user_id"], "history": r["history"], "reference": r["reference"]}
    return {"prompt": r["prompt"], "label": json.dumps(label)}


@hookimpl
def register_adapters(register):
    register(Adapter(
        "openrlhf", build_reward,
        description="OpenRLHF reward_func: --reward.remote_url $(pgenrm adapters path openrlhf) "
                    "--data.label_key label; "
                    "HTTP: pgenrm serve + --reward.remote_url http://HOST:8017/get_reward",
        reward_file=reward_file, parity_rewards=parity_rewards,
        dataset=DatasetLayout(dataset_record, "train.jsonl", ("prompt", "label")),
    ))
