"""Registers the TRL adapter with pgenrm's plugin manager (entry point `pgenrm_plugins: trl`)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins import hookimpl
from pgenrm_plugins.hookspecs import Adapter, DatasetLayout


class TRLAdapterOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: str | dict[str, Any] | None = Field(
        None, description="pgenrm config (YAML/TOML path or dict); empty = $PGENRM_CONFIG, else the embedded default"
    )
    name: str = Field("pgenrm", description="reward name: TRL logs rewards/<name>/mean")
    synchronous: bool = Field(False, description="plain __call__ instead of async (for callers that cannot await)")


def build_reward(options: TRLAdapterOptions | None = None):
    from pgenrm_trl.adapter import PGenRMReward, SyncPGenRMReward

    options = options or TRLAdapterOptions()
    cls = SyncPGenRMReward if options.synchronous else PGenRMReward
    return cls(options.config, name=options.name)


def parity_rewards(requests, scorer) -> list[list[float]]:
    """The requests in TRL's call shape, with `scorer`'s judge (for `pgenrm compare adapters`): one flat
    keyword batch, one row per completion, every dataset column a list (history as a JSON string)."""
    from pgenrm_trl.adapter import SyncPGenRMReward

    prompts, completions, spans = [], [], []
    columns: dict[str, list] = {"user_id": [], "history": [], "persona": [], "reference": []}
    for r in requests:
        row = r.model_dump(mode="json")
        spans.append((len(completions), len(completions) + len(r.completions)))
        for completion in r.completions:
            prompts.append(row["prompt"])
            completions.append(completion)
            columns["user_id"].append(row["user_id"])
            columns["history"].append(json.dumps(row["history"]))
            columns["persona"].append(row["persona"])
            columns["reference"].append(row["reference"])
    reward = SyncPGenRMReward(scorer=scorer)
    flat = reward(prompts=prompts, completions=completions, completion_ids=None, trainer_state=None,
                  log_extra=None, log_metric=None, **columns)
    return [flat[a:b] for a, b in spans]


def dataset_record(r: dict[str, Any]) -> dict[str, Any]:
    """A training row as TRL reads it: every field its own column (history as JSON text)."""
    return {"prompt": r["prompt"], "user_id": r["user_id"], "history": json.dumps(r["history"]),
            "reference": r["reference"]}


@hookimpl
def register_adapters(register):
    register(Adapter(
        "trl", build_reward, options=TRLAdapterOptions,
        description="TRL GRPOTrainer/RLOOTrainer reward callable; CLI: --reward_funcs pgenrm_trl.reward",
        parity_rewards=parity_rewards,
        dataset=DatasetLayout(dataset_record, "train.jsonl", ("prompt", "user_id", "history")),
    ))
