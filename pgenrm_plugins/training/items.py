"""Training items for the judge's score slot, drawn from PersonalRewardBench rows.

One item is one step's worth of work that shares one prefix: a train user, a *view* of their
history (a few of their pairs, in a random order, as `history_view` shows them at scoring time),
and several candidates scored after it: the chosen and the rejected response of other pairs of the
same user (never one shown in the view), and sometimes a degenerate copy of a response (cut off,
looping, empty), which must always score low. Targets are digits: `HIGH` for a chosen response,
`LOW` for a rejected or degenerate one; `pairs` says which candidates the user compared.

Items are a pure function of (rows, settings, index): a resumed run draws the same items.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field

from pgenrm_plugins.datasets.bench import BenchData
from pgenrm_plugins.types import HistoryItem, Prompt

HIGH, LOW = "9", "1"


@dataclass(frozen=True)
class Candidate:
    prompt: Prompt
    response: str
    target: str  # HIGH or LOW
    kind: str  # chosen | rejected | degenerate
    versus: str | None = None  # compared with this reply (A = response, B = versus), else judged alone


@dataclass(frozen=True)
class Item:
    user_id: str
    history: list[HistoryItem]
    candidates: list[Candidate]
    pairs: list[tuple[int, int]] = field(default_factory=list)  # (preferred index, other index)


@dataclass(frozen=True)
class ItemSettings:
    history_pairs: int = 3  # pairs shown in a view (the scorer's reward.max_history)
    targets: int = 2  # pairs scored after one view
    degenerate_rate: float = 0.35  # chance that an item adds one degenerate candidate
    compare: bool = False  # candidates are the pairs themselves, in both orders (A/B)
    seed: int = 0


def degenerate(text: str, rng: random.Random) -> str:
    """A broken copy of a real response: what a collapsing policy writes. Never a good answer."""
    words = text.split()
    kind = rng.choice(("cut", "loop", "stutter", "dashes", "empty"))
    if kind == "cut" and len(text) > 40:  # stops mid-word, well before the end
        return text[: rng.randint(12, max(13, len(text) // 3))].rstrip()
    if kind == "loop" and words:
        phrase = " ".join(words[: rng.randint(3, 8)])
        return " ".join([phrase] * rng.randint(4, 10))
    if kind == "stutter" and words:
        return " ".join([words[0]] * rng.randint(8, 30))
    if kind == "dashes" and words:
        return words[0] + rng.choice(("-", ".", "!", "?")) * rng.randint(16, 60)
    return rng.choice(("", ".", "...", "I", "Sure"))


class ItemSource:
    """Draws items from the train rows of `data`: users with at least history_pairs + 1 pairs."""

    def __init__(self, data: BenchData, settings: ItemSettings):
        self.settings = settings
        self.histories = {u: h for u, h in sorted(data.histories("train").items()) if len(h) > settings.history_pairs}
        if not self.histories:
            raise ValueError(f"no user has more than {settings.history_pairs} train rows: nothing to learn from "
                             "(lower --history-pairs or bring users with longer histories)")
        self.users = list(self.histories)

    def __len__(self) -> int:
        return len(self.users)

    def item(self, index: int) -> Item:
        s = self.settings
        rng = random.Random(int.from_bytes(hashlib.blake2b(json.dumps([s.seed, index]).encode(),
                                                            digest_size=8).digest(), "big"))
        user = self.users[rng.randrange(len(self.users))]
        pairs = list(self.histories[user])
        rng.shuffle(pairs)
        shown = pairs[: s.history_pairs]
        targets = pairs[s.history_pairs:][: s.targets]
        candidates: list[Candidate] = []
        compared: list[tuple[int, int]] = []
        for pair in targets:
            c = len(candidates)
            candidates += [Candidate(pair.prompt, pair.chosen, HIGH, "chosen"),
                           Candidate(pair.prompt, pair.rejected, LOW, "rejected")]
            compared.append((c, c + 1))
        if rng.random() < s.degenerate_rate:
            j = rng.randrange(len(targets))
            source = candidates[2 * j + rng.randrange(2)]
            candidates.append(Candidate(source.prompt, degenerate(source.response, rng), LOW, "degenerate"))
            compared.append((2 * j + (0 if source.kind == "chosen" else 1), len(candidates) - 1))
        if s.compare:
            candidates, compared = _as_comparisons(candidates, compared)
        return Item(user, shown, candidates, compared)


def _as_comparisons(singles: list[Candidate], pairs: list[tuple[int, int]]):
    """Each compared pair (winner, loser) as two candidates, winner as A (HIGH) and loser as A
    (LOW): the order of the two replies never carries the answer."""
    out: list[Candidate] = []
    for w, loser in pairs:
        win, lose = singles[w], singles[loser]
        out += [Candidate(win.prompt, win.response, HIGH, win.kind, versus=lose.response),
                Candidate(win.prompt, lose.response, LOW, lose.kind, versus=win.response)]
    return out, [(2 * i, 2 * i + 1) for i in range(len(pairs))]


def item_conversations(item: Item, max_chars: int, render: str = "full") -> list[list[dict]]:
    """The exact conversations the scorer builds for these candidates (`criteria: none`)."""
    from pgenrm_plugins.chain import prompts

    return [prompts.direct_question(item.history, None, c.prompt, c.response, max_items=len(item.history),
                                    max_chars=max_chars, render=render, versus=c.versus) for c in item.candidates]

