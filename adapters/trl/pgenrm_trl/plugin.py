"""Registers the TRL adapter with pgenrm's plugin manager (entry point `pgenrm_plugins: trl`)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins import hookimpl


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


@hookimpl
def register_adapters(register):
    register(
        "trl",
        build_reward,
        options=TRLAdapterOptions,
        description="TRL GRPOTrainer/RLOOTrainer reward callable; CLI: --reward_funcs pgenrm_trl.reward",
    )
