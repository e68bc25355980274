"""Shared by the prototype builder, scoring and CLI tests: the real embedder loaded once per process,
and small PersonalRewardBench rows of two kinds of users (short texts keep the judge fast)."""

from __future__ import annotations

import json
from functools import lru_cache

QUESTIONS = [
    "How do I boil an egg?", "How can I sleep better?", "How do I learn to swim?",
    "How should I water a cactus?", "How can I save money on food?", "How do I stretch my back?",
]
BRIEF = ["Boil it 9 minutes.", "Fixed bedtime, no screens.", "Take a class.", "Rarely; let soil dry.",
         "Cook at home.", "Lie flat, knees up."]
LONG = [
    "Put the egg in cold water, bring it to a boil, then simmer nine minutes and cool it in ice water so it peels.",
    "Keep a fixed bedtime, dim the lights an hour before, avoid coffee after noon and keep the bedroom cool.",
    "Start in shallow water with an instructor, learn to float and breathe first, then practise strokes weekly.",
    "Water deeply but rarely: every two or three weeks in summer, less in winter, and only when the soil is dry.",
    "Plan meals for the week, buy staples in bulk, cook at home in batches and freeze portions for later.",
    "Lie on your back, pull one knee to the chest for thirty seconds, switch sides, then do a gentle twist.",
]


@lru_cache(maxsize=1)
def load_embedder():
    from pgenrm_plugins.config import EmbedderConfig

    return EmbedderConfig().build("embedder")  # all-MiniLM-L6-v2 from the wheel, offline


def make_rows(n_brief: int = 4, n_long: int = 4, train: int = 3) -> list[dict]:
    """Brief users prefer the short answer, thorough users the long one; each has `train` train
    rows and one test row."""
    rows = []
    for kind, n in (("brief", n_brief), ("long", n_long)):
        for u in range(n):
            for j in range(train + 1):
                q = (u + j) % len(QUESTIONS)
                short, long = BRIEF[q], LONG[q]
                chosen, rejected = (short, long) if kind == "brief" else (long, short)
                rows.append({
                    "user_id": f"{kind}-{u}", "split": "train" if j < train else "test",
                    "context": [{"role": "user", "content": QUESTIONS[q]}],
                    "chosen": {"role": "assistant", "content": chosen},
                    "rejected": {"role": "assistant", "content": rejected},
                })
    return rows


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)
