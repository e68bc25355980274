"""P-GenRM for verl. The one-line switch (Hydra overrides of verl's PPO/GRPO trainer):

    reward.custom_reward_function.path=pkg://pgenrm_verl.reward reward.custom_reward_function.name=compute_score

or the reward manager registered through verl's `verl.plugins` entry point:

    reward.reward_manager.name=pgenrm

Each row's `extra_info` needs `user_id` (and optionally `history`, `persona`, `reference`, `prompt`).
Settings come from `$PGENRM_CONFIG`. Importing this package loads neither verl nor a model.
"""

__all__ = ["compute_score", "configure"]


def __getattr__(name):
    if name in __all__:
        from pgenrm_verl import reward

        return getattr(reward, name)
    raise AttributeError(name)
