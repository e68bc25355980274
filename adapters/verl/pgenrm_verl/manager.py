"""The `pgenrm` reward manager for verl: `reward.reward_manager.name=pgenrm`.

Registered by name in verl's own registry when `import verl` loads the `verl.plugins` entry-point
group (every process, Ray reward workers included; see pyproject.toml). Unlike the naive manager
with our `compute_score`, it needs no `reward.custom_reward_function` and no prompt in
`extra_info`: it reads the prompt from the sample's `raw_prompt` (verl's `data.return_raw_chat`,
on by default).

verl's `RewardLoopWorker.compute_score_batch` calls `run_single` once per sample, all samples of its
chunk at once; the calls are coalesced (`pgenrm_plugins.frameworks.coalescing`) so every (user, prompt) group
in the chunk is scored as ONE request (persona and criteria derived once, all completions judged
against them) and all groups go to the judge in one `Scorer.score` call.
"""

from __future__ import annotations

from verl import DataProto
from verl.experimental.reward_loop.reward_manager import register
from verl.experimental.reward_loop.reward_manager.base import RewardManagerBase

from pgenrm_verl.reward import coalescer_for, score_sample

NAME = "pgenrm"


@register(NAME)
class PGenRMRewardManager(RewardManagerBase):
    """P-GenRM over whole (user, prompt) groups; the judge is `pgenrm_verl.reward`'s (configure() or
    `$PGENRM_CONFIG`), or verl's reward model server when verl runs one."""

    def __init__(self, config, tokenizer, compute_score=None, reward_router_address=None, reward_model_tokenizer=None):
        super().__init__(config, tokenizer, compute_score)
        self.reward_router_address = reward_router_address
        self.coalescer = coalescer_for(reward_router_address, reward_model_tokenizer)

    async def run_single(self, data: DataProto) -> dict:
        item = data[-1:][0]  # multi-sequence outputs: the last sequence carries the reward (as naive does)
        response_ids = item.batch["responses"]
        length = int(item.batch["attention_mask"][-response_ids.shape[-1]:].sum())
        response = await self.loop.run_in_executor(
            None, lambda: self.tokenizer.decode(response_ids[:length], skip_special_tokens=True))
        extra_info = item.non_tensor_batch.get("extra_info")
        reward_model = item.non_tensor_batch.get("reward_model") or {}
        result = await score_sample(
            self.coalescer, extra_info, response, raw_prompt=item.non_tensor_batch.get("raw_prompt"),
            ground_truth=reward_model.get("ground_truth") if isinstance(reward_model, dict) else None,
        )
        return {"reward_score": result.reward, "reward_extra_info": {"score": result.reward, **result.components}}
