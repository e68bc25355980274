"""Personalized GRPO that can be measured: greedy probes of a policy, synthetic users' latent utility,
and the `personalize-cpu` recipe (`python -m pgenrm_trl.personalize`, see `run`)."""

from pgenrm_trl.personalize.probe import Answer, degenerate_reason, generation_mode, greedy_answer, greedy_answers

__all__ = ["Answer", "degenerate_reason", "generation_mode", "greedy_answer", "greedy_answers"]
