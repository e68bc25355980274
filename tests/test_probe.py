"""The greedy probe (`pgenrm_trl.personalize.probe`) that the demo and the personalization recipe
use to read a policy's answer: eval mode, the KV cache, gradient checkpointing off, as TRL generates.

An untrained policy's greedy answer must be the same before and after a zero-learning-rate step of
TRL's real `GRPOTrainer` (which leaves the model in train mode with gradient checkpointing on; generating
in that state gave `To-------` in the demo's report).
"""

from __future__ import annotations

import pytest

from pgenrm_trl.personalize.probe import generation_mode, greedy_answers

PROBE = [{"role": "user", "content": "How can I unclog a slow kitchen sink?"}]


@pytest.fixture(scope="module")
def policy_parts():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pgenrm_plugins.backends.embedded import embedded_model_dir

    path = str(embedded_model_dir())
    return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)


# -- the probe --------------------------------------------------------------------------------------
def test_probe_answer_is_unchanged_by_a_zero_learning_rate_grpo_step(policy_parts, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig, GRPOTrainer

    path, tokenizer, _ = policy_parts
    policy = AutoModelForCausalLM.from_pretrained(path)
    before = greedy_answers(policy, tokenizer, [PROBE], 24)[0]
    assert before.text and not policy.training

    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, max_steps=1, num_generations=2,
                      per_device_train_batch_size=2, max_completion_length=8, learning_rate=0.0,
                      gradient_checkpointing=True, report_to=[], save_strategy="no", seed=0)
    dataset = Dataset.from_list([{"prompt": PROBE}, {"prompt": [{"role": "user", "content": "Name a colour."}]}])
    def longer_is_better(completions, **kwargs):
        return [float(len(str(c))) for c in completions]

    trainer = GRPOTrainer(model=policy, reward_funcs=[longer_is_better], args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1
    # What the demo found after training: the model in train mode, gradient checkpointing on.
    assert trainer.model.training and trainer.model.is_gradient_checkpointing

    after = greedy_answers(trainer.model, tokenizer, [PROBE], 24)[0]
    assert after.text == before.text and after.tokens == before.tokens
    # The probe puts back what it found, so training could go on.
    assert trainer.model.training and trainer.model.is_gradient_checkpointing


def test_generation_mode_restores_train_mode_checkpointing_and_cache(policy_parts):
    _, _, model = policy_parts
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    try:
        with generation_mode(model):
            assert not model.training and not model.is_gradient_checkpointing and model.config.use_cache
        assert model.training and model.is_gradient_checkpointing and model.config.use_cache is False
    finally:
        model.gradient_checkpointing_disable()
        model.config.use_cache = True
        model.eval()


def test_greedy_batches_agree_with_single_prompts(policy_parts):
    """Left padding in a batch does not change an answer."""
    _, tokenizer, model = policy_parts
    other = [{"role": "user", "content": "What should I pack for a day hike in the mountains in summer?"}]
    batched = greedy_answers(model, tokenizer, [PROBE, other], 16)
    assert [a.text for a in batched] == [greedy_answers(model, tokenizer, [p], 16)[0].text for p in (PROBE, other)]
    assert all(a.tokens == 16 and not a.finished and a.degenerate == "cut off" for a in batched)
