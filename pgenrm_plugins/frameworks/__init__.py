"""What the framework adapters share; the core (scoring, backends, prototypes) never imports it.

    user_fields.py  a user's fields out of a framework's per-sample data, errors naming the column
    batching.py     concurrent requests -> backend batches, one (user, prompt) group merged into one
    coalescing.py   per-sample callers (verl, OpenRLHF) on one judge, through the batcher
    logs.py         a result's numbers for a framework's metric channel, the same keys everywhere
    openrlhf.py     OpenRLHF's reward protocol: query/prompt/label in, rewards and extra_logs out
    parity.py       the same requests through the core API and every adapter (`pgenrm compare adapters`)
    prepare.py      PersonalRewardBench rows -> each framework's training file
"""
