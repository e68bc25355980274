"""OpenRLHF's reward-function file for P-GenRM: `--reward.remote_url /abs/path/reward_func.py`.

Print this file's path with `pgenrm adapters path openrlhf`. OpenRLHF loads it by path (importlib,
once per rollout actor) and calls `reward_func(queries, prompts, labels)` per sample; the work is
done by the installed package `pgenrm_openrlhf`, so this file stays a thin shim and never needs
copying or editing. Settings come from `$PGENRM_CONFIG`.
"""

from pgenrm_openrlhf.reward import reward_func  # noqa: F401
