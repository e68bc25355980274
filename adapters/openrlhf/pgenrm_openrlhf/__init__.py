"""P-GenRM for OpenRLHF. The one-line switch (file form, runs the judge inside each rollout actor):

    --reward.remote_url $(pgenrm adapters path openrlhf) --data.label_key label

or the HTTP form, one shared judge behind `pgenrm serve`:

    --reward.remote_url http://HOST:8017/get_reward --data.label_key label

Each row's `label` is a JSON string {"user_id": ..., "history": [...], "persona": optional}.
Importing this package loads neither OpenRLHF nor a model.
"""

__all__ = ["configure", "reward_file", "reward_func"]


def __getattr__(name):
    if name == "reward_file":
        from pgenrm_openrlhf.plugin import reward_file

        return reward_file
    if name in __all__:
        from pgenrm_openrlhf import reward

        return getattr(reward, name)
    raise AttributeError(name)
