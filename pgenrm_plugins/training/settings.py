"""What each training stage is run with, declared once per stage. From each model come:
- the command's options: `commands/train.py` makes each field a typer option (`--learning-rate`),
  its description the help and its bounds the checks;
- the judge manifest's `settings` (`model_dump()`);
- the resume check: `OUT/checkpoints/settings.json` records what a run started with, and resuming
  it with other settings (or other data) stops and names the fields that differ
  (`stage.Checkpoints`), instead of silently training a mix of two runs.

Only pydantic here, so `pgenrm --help` stays quick.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins.training.items import ItemSettings


class StageSettings(BaseModel):
    """The settings every stage has. A stage subclasses this, adds its own fields and may change
    defaults; each field's description is its command-line help."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # May change between a run and its resumption: how a run is carried out, and how long it goes on.
    RUN_ONLY: ClassVar[frozenset[str]] = frozenset({"steps", "save_steps", "threads"})

    steps: int = Field(600, ge=1, description="Optimizer steps.")
    learning_rate: float = Field(3e-4, gt=0, description="LoRA learning rate (cosine schedule).")
    lora_rank: int = Field(16, ge=1, description="LoRA rank (alpha is twice the rank).")
    lora_layers: int = Field(12, ge=1, description="LoRA on the top N decoder layers.")
    max_chars: int = Field(600, ge=64, description="Each text cut to this (becomes the judge's reward.max_chars).")
    save_steps: int = Field(10, ge=1, description="Checkpoint every N steps.")
    seed: int = Field(0, description="Seed of the drawn examples, the LoRA init and the data order.")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (on a busy machine, 1 is often fastest).")

    def apply_threads(self) -> None:
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)


class ScoreSettings(StageSettings):
    grad_accum: int = Field(4, ge=1, description="Items (one history view + its candidates) per optimizer step.")
    history_pairs: int = Field(3, ge=1, description="History pairs in a view (becomes the judge's "
                                                    "reward.max_history).")
    targets: int = Field(2, ge=1, description="Pairs scored after one view.")
    history_render: Literal["full", "contrast"] = Field(
        "full", description="History pairs 'full' or 'contrast' (only where chosen and rejected differ); "
                            "becomes the judge's reward.history_render.")
    compare: bool = Field(False, description="Train comparisons (reply A against reply B, both orders) instead of "
                                             "single replies; becomes the judge's reward.compare.")
    bt_weight: float = Field(1.0, ge=0, description="Weight of the Bradley-Terry term on compared pairs.")

    def items(self) -> ItemSettings:
        return ItemSettings(history_pairs=self.history_pairs, targets=self.targets, compare=self.compare,
                            seed=self.seed)


class SynthesisSettings(StageSettings):
    batch_size: int = Field(8, ge=1, description="Examples per device step.")
    grad_accum: int = Field(1, ge=1, description="Device steps per optimizer step.")
    learning_rate: float = Field(5e-4, gt=0, description="LoRA learning rate (cosine schedule).")
    lora_layers: int = Field(30, ge=1, description="LoRA on the top N decoder layers.")
    max_history: int = Field(8, ge=1, description="Most past pairs in a view (becomes the judge's reward.max_history).")
    max_chars: int = Field(1200, ge=64, description="Each text cut to this (becomes the judge's reward.max_chars).")
    check_share: float = Field(0.5, ge=0, le=1, description="Share of examples that check one reply against every "
                                                             "criterion (the rest: syntheses).")
    persona_rate: float = Field(0.3, ge=0, le=1, description="How often a synthesis example shows the user's "
                                                              "stated persona.")
    empty_rate: float = Field(0.05, ge=0, le=1, description="How often a synthesis example shows no history at all.")
    degenerate_rate: float = Field(0.15, ge=0, le=1, description="How often a check is of a broken copy of a reply.")
    sound_share: float = Field(0.0, ge=0, le=1, description="Share of check examples that ask `Sound` alone, of a "
                                                            "reply in another shape (a sentence or two, another "
                                                            "question's answer, a broken copy).")
    multi_turn_rate: float = Field(0.0, ge=0, le=1, description="How often a check's conversation has an earlier "
                                                                "exchange before the question.")
    criterion_first: bool = Field(False, description="Checks name the criterion before the reply (slower to score: "
                                                     "a reply is read once per criterion); becomes the judge's "
                                                     "reward.criterion_first.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N steps.")


class PSISettings(StageSettings):
    # Pairs per teacher call: how the teacher is asked, not what is learnt.
    RUN_ONLY: ClassVar[frozenset[str]] = StageSettings.RUN_ONLY | {"teacher_batch"}

    pairs: int = Field(32, ge=1, description="(history view, A/B pair) prompts the teacher is asked about.")
    samples: int = Field(8, ge=1, description="Chains sampled per pair (temperature --teacher-temperature).")
    teacher_max_new_tokens: int = Field(384, ge=16, description="Token budget of one chain; a chain cut off before "
                                                                "its closing brace does not parse.")
    teacher_temperature: float = Field(0.9, ge=0, description="Teacher sampling temperature (the paper: 0.9-1.0).")
    teacher_batch: int = Field(4, ge=1, description="Pairs per teacher call; each call is saved to OUT/teacher.jsonl.")
    chain_text: Literal["parsed", "raw"] = Field(
        "parsed", description="What the student learns: 'parsed' (the kept chain as the parser read it, in the "
                              "prompt's exact JSON) or 'raw' (the teacher's text).")
    steps: int = Field(60, ge=1, description="SFT optimizer steps.")
    grad_accum: int = Field(4, ge=1, description="Kept chains per optimizer step.")
    learning_rate: float = Field(2e-4, gt=0, description="LoRA learning rate (cosine schedule).")
    history_pairs: int = Field(3, ge=1, description="History pairs in a view (becomes the judge's "
                                                    "reward.max_history).")


class CRESettings(StageSettings):
    pairs: int = Field(64, ge=1, description="Distinct (history view, A/B pair) prompts.")
    steps: int = Field(50, ge=1, description="GRPO steps.")
    num_generations: int = Field(4, ge=2, description="Chains sampled per prompt (the GRPO group; at least 2: the "
                                                      "advantage compares completions of one prompt).")
    prompts_per_step: int = Field(1, ge=1, description="Prompts per step (batch = this x --num-generations).")
    max_completion_length: int = Field(384, ge=8, description="Token budget of one chain.")
    temperature: float = Field(0.9, ge=0, description="Sampling temperature of the chains.")
    learning_rate: float = Field(5e-5, gt=0, description="LoRA learning rate (constant).")
    beta: float = Field(1.0, description="Outcome reward weight: 1 when the chosen response gets the strictly "
                                         "higher total.")
    format_weight: float = Field(0.25, description="Format reward weight: 1 when the chain parses.")
    alpha: float = Field(0.5, description="Process reward weight (only with a process judge).")
    kl_beta: float = Field(0.0, ge=0, description="GRPO KL coefficient (0: no reference model).")
    prefill: bool = Field(True, description="Start every chain with the scoring prefill, as the judge does at "
                                            "scoring time.")
    history_pairs: int = Field(3, ge=1, description="History pairs in a view (becomes the judge's "
                                                    "reward.max_history).")


__all__ = ["StageSettings", "ScoreSettings", "SynthesisSettings", "PSISettings", "CRESettings"]
