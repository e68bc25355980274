"""How the judge is shown a user's past choices: in full, or as the contrast of each pair."""

from __future__ import annotations

import random

from pgenrm_plugins.chain import prompts
from pgenrm_plugins.datasets.answer_bank import BANK
from pgenrm_plugins.datasets.synthetic import render_answer
from pgenrm_plugins.types import HistoryItem

BASE = {"length": 1, "structure": -1, "tone": 1, "examples": -1, "caveats": -1}


def test_contrast_shows_only_what_differs():
    topic = BANK[0]
    chosen = render_answer(topic, {**BASE, "examples": 1}, random.Random(0))
    rejected = render_answer(topic, BASE, random.Random(0))  # same opener and closer: only the example differs
    only_chosen, only_rejected = prompts.contrast(chosen, rejected)
    words = topic.example.split()
    assert only_chosen == [" ".join(["¶", *words[:prompts.FRAGMENT_WORDS], "…"])] and only_rejected == []


def test_contrast_marks_line_starts_and_keeps_sentences_whole():
    chosen = "Sure thing! Water when dry.\n\n1. Check the soil.\n2. Drain it.\n\nHave fun!"
    rejected = "Certainly. Water when dry.\n\nCheck the soil. Drain it.\n\nI hope this helps."
    only_chosen, only_rejected = prompts.contrast(chosen, rejected)
    assert only_chosen == ["Sure thing!", "¶ 1. Check the soil.", "¶ 2. Drain it.", "¶ Have fun!"]
    assert only_rejected == ["Certainly.", "¶ Check the soil. Drain it.", "¶ I hope this helps."]
    # a common word or two between changes does not cut a sentence into scraps
    a, b = "Oh, put the pot on the hob and wait.", "Well, set the kettle on the stove and wait."
    assert prompts.contrast(a, b) == (["Oh, put the pot on the hob"], ["Well, set the kettle on the stove"])


def test_unrelated_texts_are_shown_whole():
    assert prompts.contrast("Paris is the capital of France.", "Boil the egg for nine minutes, then cool it.") is None
    item = HistoryItem(prompt="Q?", chosen="Paris is the capital of France.", rejected="Boil the egg for nine minutes.")
    block = prompts.history_block([item], None, max_items=4, max_chars=200, render="contrast")
    assert "Preferred: Paris is the capital of France.\nRejected: Boil the egg" in block


def test_full_rendering_is_unchanged_and_contrast_is_shorter():
    topic = BANK[1]
    rng = random.Random(1)
    items = [HistoryItem(prompt=topic.question, chosen=render_answer(topic, {**BASE, "tone": -1}, rng),
                         rejected=render_answer(topic, {**BASE, "structure": 1}, rng)) for _ in range(3)]
    full = prompts.history_block(items, None, max_items=3, max_chars=2000)
    shown = prompts.history_block(items, None, max_items=3, max_chars=2000, render="contrast")
    assert f"Preferred: {items[0].chosen}\nRejected: {items[0].rejected}" in full
    assert shown.count("\n+ Casual") == 0 and shown.count("[") == 3 and len(shown) < len(full) / 2
    first = shown.split("\n\n")[0].splitlines()
    assert first[0] == f"[1] Prompt: {topic.question}" and all(line[:2] in ("+ ", "- ") for line in first[1:])
