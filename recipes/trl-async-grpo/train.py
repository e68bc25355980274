"""Personalized asynchronous GRPO: TRL's AsyncGRPOTrainer with P-GenRM as the reward.

TRL 1.16 has no `trl` command for AsyncGRPOTrainer, so this is the short script its docs have you
write, reading its settings as `trl grpo` does: a YAML `--config` and flags, through TRL's own parser
(`TrlParser` over `AsyncGRPOConfig`). The reward is `pgenrm_trl.reward`; TRL pickles it into the
rollout process it spawns, where no GPU is visible, and there it reads `$PGENRM_CONFIG`, which
points it at one `pgenrm serve` on the GPU (`scorer.url`).

    accelerate launch recipes/trl-async-grpo/train.py --config recipes/trl-async-grpo/async_grpo.yaml \
        --model_name_or_path Qwen/Qwen3-1.7B --dataset_name out/recipe-data/trl ...
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PolicyArguments:
    # Not TRL's ModelConfig: its `dtype` clashes with AsyncGRPOConfig's, and the trainer takes only
    # the model's name (the vLLM server serves the same model).
    model_name_or_path: str = field(metadata={"help": "the policy: a model id or folder, also served by vLLM"})


def make_parser():
    from trl import ScriptArguments, TrlParser
    from trl.experimental.async_grpo import AsyncGRPOConfig

    return TrlParser((ScriptArguments, AsyncGRPOConfig, PolicyArguments))


def main(script_args, training_args, model_args: PolicyArguments) -> None:
    from datasets import load_dataset
    from trl.experimental.async_grpo import AsyncGRPOTrainer

    import pgenrm_trl

    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    trainer = AsyncGRPOTrainer(
        model=model_args.model_name_or_path,
        reward_funcs=[pgenrm_trl.reward],
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main(*make_parser().parse_args_and_config())
