"""Registers the verl adapter with pgenrm's plugin manager (entry point `pgenrm_plugins: verl`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins import hookimpl
from pgenrm_plugins.frameworks.parity import per_request
from pgenrm_plugins.hookspecs import Adapter, DatasetLayout


class VerlAdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | dict[str, Any] | None = Field(
        None, description="pgenrm config (YAML/TOML path or dict); empty = $PGENRM_CONFIG, else the embedded default"
    )


def build_reward(options: VerlAdapterOptions | None = None):
    """verl's `compute_score` bound to its own judge (what `pkg://pgenrm_verl.reward` gives verl, with
    this config instead of the module's)."""
    from functools import partial

    from pgenrm_verl.reward import compute_score

    options = options or VerlAdapterOptions()
    return partial(compute_score, pgenrm_config=options.config) if options.config is not None else compute_score


def parity_rewards(requests, scorer) -> list[list[float]]:
    """The requests as verl hands them to a reward function (for `pgenrm compare adapters`): one
    call per completion, all at once, the user in `extra_info`, with `scorer`'s judge."""
    import asyncio

    from pgenrm_plugins.frameworks.coalescing import SampleCoalescer
    from pgenrm_verl.reward import score_sample

    coalescer = SampleCoalescer(scorer=scorer)

    async def run():
        calls = []
        for r in requests:
            row = r.model_dump(mode="json")
            extra_info = {k: row[k] for k in ("user_id", "history", "persona", "reference", "prompt")}
            extra_info["index"] = len(calls)  # verl's preprocessing adds such keys; they are ignored
            calls += [score_sample(coalescer, dict(extra_info), c, ground_truth=row["reference"] or "")
                      for c in r.completions]
        return await asyncio.gather(*calls)

    try:
        flat = [s.reward for s in asyncio.run(run())]
    finally:
        coalescer.close()
    return per_request(flat, requests)


DATA_SOURCE = "pgenrm/personalized"


def dataset_record(r: dict[str, Any]) -> dict[str, Any]:
    """A training row as verl reads it: the user in `extra_info` (same keys on every row), the
    reference also as `reward_model.ground_truth`, which verl requires."""
    return {
        "data_source": DATA_SOURCE,
        "prompt": r["prompt"],
        "ability": "personalization",
        "reward_model": {"style": "model", "ground_truth": r["reference"]},
        "extra_info": {"user_id": r["user_id"], "history": json.dumps(r["history"]),
                       "reference": r["reference"], "index": r["index"]},
    }


@hookimpl
def register_adapters(register):
    register(Adapter(
        "verl", build_reward, options=VerlAdapterOptions,
        description="verl compute_score: reward.custom_reward_function.path=pkg://pgenrm_verl.reward; "
                    "manager: reward.reward_manager.name=pgenrm",
        parity_rewards=parity_rewards,
        dataset=DatasetLayout(dataset_record, "train.parquet", ("prompt", "reward_model", "extra_info")),
    ))
