"""P-GenRM as verl's custom reward function. The one-line switch (Hydra overrides):

    reward.custom_reward_function.path=pkg://pgenrm_verl.reward reward.custom_reward_function.name=compute_score

verl 0.9 (`experimental/reward_loop/reward_manager/naive.py`) calls, once per sample, by keyword:

    await compute_score(data_source=..., solution_str=<decoded response>, ground_truth=...,
                        extra_info=<the row's extra_info dict>, [reward_router_address=..., reward_model_tokenizer=...])

and turns the returned dict into the reward ("score") and `reward_extra_info` (every other key; the
keys must be the same for every sample, so they are fixed: `pgenrm_plugins.frameworks.logs.LOG_KEYS`).

The user comes from the row's `extra_info`: `user_id` (required; null = anonymous), `history`,
`persona`, `reference` (pairwise mode; else `reward_model.ground_truth` when it is text). verl does
not pass the prompt to reward functions, so it is read from `extra_info.prompt`, else from
`extra_info.raw_prompt` (verl's agent loop copies the dataset prompt there).

Samples arrive one at a time but many at once; they are coalesced (`pgenrm_plugins.frameworks.coalescing`) so
the samples of one (user, prompt) share one persona-and-criteria chain, as in group mode.
When verl runs a reward model server it passes `reward_router_address`: the judge then calls that
server through the OpenAI-compatible backend. Settings come from `$PGENRM_CONFIG` (else the embedded
default), or from `+reward.custom_reward_function.reward_kwargs.pgenrm_config=/abs/pgenrm.yaml`.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

from pgenrm_plugins.frameworks.coalescing import SampleCoalescer, SampleReward
from pgenrm_plugins.frameworks.user_fields import FieldSource, UserFieldError, read_container, read_user_fields

__all__ = ["VERL_SOURCE", "compute_score", "configure", "coalescer_for", "score_sample"]

VERL_SOURCE = FieldSource(
    framework="verl", container="extra_info",
    fix="each row of the parquet files in data.train_files / data.val_files needs an extra_info dict with "
        "user_id (null = anonymous) and optionally history (a list of {prompt, chosen, rejected} or its JSON "
        "string), persona, reference, prompt",
)

_lock = threading.Lock()
_default: SampleCoalescer | None = None
_coalescers: dict[str, SampleCoalescer] = {}  # by (config, router address)


def configure(config=None, *, backend=None, scorer=None, max_wait_ms: float | None = None) -> SampleCoalescer:
    """Set the judge `compute_score` and the `pgenrm` reward manager use in this process (default:
    `$PGENRM_CONFIG`, else the embedded judge, built on the first call). Returns it."""
    global _default
    with _lock:
        old, _default = _default, SampleCoalescer(config, backend=backend, scorer=scorer, max_wait_ms=max_wait_ms)
        stale = list(_coalescers.values())
        _coalescers.clear()
    for coalescer in [old, *stale]:
        if coalescer is not None:
            coalescer.close()
    return _default


def _router_config(config_source, address: str, reward_model_tokenizer=None) -> dict:
    """The config with its backend pointed at verl's reward router (an OpenAI-compatible server)."""
    from pgenrm_plugins.config import load_config

    cfg = load_config(config_source).model_dump(mode="json")
    base = cfg["backend"]["options"] if cfg["backend"]["name"] == "openai" else {}
    # vLLM/SGLang serve the model under its path unless told otherwise; verl hands us the reward
    # model's tokenizer, loaded from that path.
    model = base.get("model") or getattr(reward_model_tokenizer, "name_or_path", None) or "default"
    url = address if address.startswith(("http://", "https://")) else f"http://{address}"
    cfg["backend"] = {"name": "openai", "options": {**base, "base_urls": [f"{url.rstrip('/')}/v1"], "model": model}}
    return cfg


def coalescer_for(reward_router_address: str | None = None, reward_model_tokenizer=None,
                  pgenrm_config=None) -> SampleCoalescer:
    """The coalescer for a call: the default one, or one per (config, reward router address)."""
    global _default
    if reward_router_address is None and pgenrm_config is None:
        with _lock:
            if _default is None:
                _default = SampleCoalescer()
            return _default
    key = json.dumps([pgenrm_config, reward_router_address], sort_keys=True, default=str)
    with _lock:
        if key not in _coalescers:
            source = pgenrm_config
            if source is None and _default is not None:
                source = _default.config  # what configure() set
            if reward_router_address is not None:
                source = _router_config(source, reward_router_address, reward_model_tokenizer)
            _coalescers[key] = SampleCoalescer(source)
        return _coalescers[key]


def _prompt_of(extra_info: dict, raw_prompt: Any = None) -> Any:
    for value in (extra_info.get("prompt"), extra_info.get("raw_prompt"), raw_prompt):
        if value is not None and not (isinstance(value, str) and not value.strip()):
            return value
    return None


async def score_sample(coalescer: SampleCoalescer, extra_info: Any, response: str, *, raw_prompt: Any = None,
                       ground_truth: Any = None) -> SampleReward:
    """One verl sample's reward: read the user, score (coalesced), apply the failure policy."""
    try:
        fields = read_user_fields(read_container(extra_info, VERL_SOURCE), VERL_SOURCE)
        prompt = _prompt_of(extra_info, raw_prompt)
        if fields.prompt is None and prompt is None:
            raise VERL_SOURCE.error("prompt", "missing: verl does not pass the prompt to reward functions; put it in "
                                              "extra_info.prompt (a string or messages), or keep "
                                              "data.return_raw_chat=True (the default) so the agent loop copies it "
                                              "to extra_info.raw_prompt")
        if fields.reference is None and isinstance(ground_truth, str) and ground_truth.strip() \
                and coalescer.config.reward.mode == "pairwise":
            fields = dataclasses.replace(fields, reference=ground_truth)  # reward_model.ground_truth
        return await coalescer.ascore(fields, prompt, response)
    except UserFieldError as exc:
        return coalescer.on_invalid(exc)


async def compute_score(data_source=None, solution_str=None, ground_truth=None, extra_info=None, *,
                        reward_router_address: str | None = None, reward_model_tokenizer=None,
                        pgenrm_config=None, **kwargs) -> dict[str, float]:
    """verl's custom reward function (async). Returns {"score": reward in [0, 1], <the `sample_logs` keys>}."""
    coalescer = coalescer_for(reward_router_address, reward_model_tokenizer, pgenrm_config)
    result = await score_sample(coalescer, extra_info, solution_str or "", ground_truth=ground_truth)
    return {"score": result.reward, **result.components}
