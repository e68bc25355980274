"""P-GenRM for TRL. The one-line switch:

    trl grpo --config grpo.yaml --reward_funcs pgenrm_trl.reward      # settings from $PGENRM_CONFIG

or in Python:

    from pgenrm_trl import PGenRMReward
    trainer = GRPOTrainer(model=..., reward_funcs=[PGenRMReward("pgenrm.yaml")], train_dataset=...)

The dataset needs a `user_id` column (and optionally `history`, `persona`, `reference`).
Importing this package loads no model: the judge is built on the first reward call.
"""

from pgenrm_trl.adapter import (
    BatchReport,
    InvalidRowError,
    MissingColumnError,
    PGenRMReward,
    SyncPGenRMReward,
)

__all__ = ["BatchReport", "InvalidRowError", "MissingColumnError", "PGenRMReward", "SyncPGenRMReward", "reward"]

#: Ready instance for `--reward_funcs pgenrm_trl.reward`: reads `$PGENRM_CONFIG` (else the embedded
#: default) when TRL first calls it.
reward = PGenRMReward()
