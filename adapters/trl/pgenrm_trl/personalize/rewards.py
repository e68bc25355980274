"""The recipe's rewards as TRL reward functions, and the recorder that measures every completion.

- `TruthReward`: the user's latent utility of the completion (`truth.latent_utility`): the upper
  bound, what a perfect personal judge would say.
- `judge_reward`: the shipped P-GenRM judge through `pgenrm_trl.PGenRMReward`, reading the dataset's
  `history` column (the user's past choices, or `[]` for the non-personal control).
- `StepRecorder` wraps either and notes, per completion and GRPO step, the reward it got, both
  users' latent utilities and whether it is degenerate: the per-step curves of the report.
"""

from __future__ import annotations

import inspect
from typing import Any

from pgenrm_plugins.frameworks.user_fields import completion_text
from pgenrm_trl.personalize.probe import degenerate_reason
from pgenrm_trl.personalize.truth import LengthScale, latent_utility

REWARDS = ("truth", "judge", "judge-no-history")


def finished(ids, stop_ids) -> bool:
    """TRL keeps the end-of-turn token as a completion's last id when it ended on its own."""
    return bool(ids) and ids[-1] in stop_ids


def _finished_list(completion_ids, n, stop_ids) -> list[bool]:
    if completion_ids is None:  # a caller without token ids: treat each text as complete
        return [True] * n
    return [finished(list(ids), stop_ids) for ids in completion_ids]


class TruthReward:
    """TRL reward: the latent utility of each completion for one synthetic user, on [0, 1]."""

    def __init__(self, weights: dict[str, float], scale: LengthScale, stop_ids, name: str = "truth"):
        self.weights, self.scale, self.stop_ids = dict(weights), scale, set(stop_ids)
        self.__name__ = name

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        done = _finished_list(completion_ids, len(texts), self.stop_ids)
        return [latent_utility(self.weights, t, self.scale, f) for t, f in zip(texts, done)]


def judge_reward(max_chars: int, backend=None, name: str = "judge"):
    """The shipped judge (the embedded default config), texts cut at `max_chars` characters."""
    from pgenrm_trl.adapter import PGenRMReward

    return PGenRMReward({"reward": {"max_chars": max_chars}}, backend=backend, name=name)


class StepRecorder:
    """Our reward as TRL sees it (async, so the judge's coroutine runs on TRL's loop), recording
    (step, reward, each user's latent utility, degenerate reason, tokens) for every completion."""

    def __init__(self, reward, users: dict[str, dict[str, float]], scale: LengthScale, stop_ids):
        self.reward, self.users, self.scale, self.stop_ids = reward, users, scale, set(stop_ids)
        self.__name__ = reward.__name__
        self.rows: list[dict[str, Any]] = []

    async def __call__(self, prompts, completions, completion_ids=None, **kwargs):
        rewards = self.reward(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        if inspect.isawaitable(rewards):
            rewards = await rewards
        state = kwargs.get("trainer_state")
        step = state.global_step + 1 if state is not None else 0
        texts = [completion_text(c) for c in completions]
        done = _finished_list(completion_ids, len(texts), self.stop_ids)
        for i, (text, fin, reward) in enumerate(zip(texts, done, rewards)):
            self.rows.append({
                "step": step, "reward": None if reward is None else float(reward),
                "degenerate": degenerate_reason(text, fin),
                "tokens": len(completion_ids[i]) if completion_ids is not None else None,
                **{f"utility/{u}": latent_utility(w, text, self.scale, fin) for u, w in self.users.items()},
            })
        return rewards
