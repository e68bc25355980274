"""Synthetic users with known latent preferences, written as PersonalRewardBench rows.

Every answer is built from the real content of `answer_bank.BANK` and has five visible style
attributes, each +1 or -1:

    length     +1 detailed (all four supporting points)   -1 brief (two points)
    structure  +1 a list (numbered, lettered or bulleted)  -1 prose paragraphs
    tone       +1 formal (no contractions)                -1 casual (contractions, chatty opener)
    examples   +1 a concrete example                      -1 none
    caveats    +1 a caveat (when the advice does not hold) -1 none

A user is a weight per attribute: their latent type's weights plus per-user noise. For each row
two answers to the same question are drawn and the user picks one by Bradley-Terry on the weighted
attributes, P(pick a) = sigmoid(sharpness * w.(a - b)): mostly their taste, sometimes not.
Some users are cold-start: they have test rows and only `cold_start_pairs` train rows (the paper's
"new users with limited feedback"; 0 makes them no-history users).

Users also *state* their preferences, partially and in words, as PRISM's survey does: each user's
`self_description` is written from their weights (a few phrasings per attribute; strong preferences
only, some left unsaid, some users say nothing). It goes to a users file next to the rows
(`rows.jsonl` -> `rows.users.jsonl`) that `load_bench` joins by `user_id`; a judge never needs it
at scoring time, and training may read it.

Two options make sets that test whether a judge reads preferences or memorises them:
- `vary`: the attributes on which the two answers of a row may differ (default all). Training on
  `vary` without one attribute and testing on `vary=(that one,)` holds that attribute out.
- `rendering`: how the attributes are written (`RENDERINGS`: list marks, openers, sign-offs,
  caveat and example leads). `alt` shares no mark with the others; `"default,plain,lively"` draws
  each row's among three. Train on a mix without `alt` and test on `alt` to hold the wording out.

The latent truth (types, each user's weights, each row's attributes) goes to a sidecar JSON next
to the rows (`rows.jsonl` -> `rows.truth.json`); the rows themselves are plain PersonalRewardBench
rows that `pgenrm_plugins.datasets.bench.load_bench` reads like the real sets.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pgenrm_plugins.datasets.answer_bank import BANK, Topic
from pgenrm_plugins.datasets.bench import users_file_for

ATTRIBUTES = ("length", "structure", "tone", "examples", "caveats")

# Latent types: weight per attribute (positive = prefers the +1 side). Chosen so that the
# population as a whole is nearly indifferent: a single global preference cannot do well.
TYPES: dict[str, dict[str, Any]] = {
    "skimmer": {"description": "wants short, scannable lists, no extras",
                "weights": {"length": -1.0, "structure": 0.8, "tone": -0.2, "examples": -0.5, "caveats": -0.8}},
    "scholar": {"description": "wants thorough prose with examples and nuance",
                "weights": {"length": 1.0, "structure": -0.7, "tone": 0.5, "examples": 0.8, "caveats": 0.5}},
    "professional": {"description": "wants formal, structured answers",
                     "weights": {"length": 0.2, "structure": 1.0, "tone": 1.0, "examples": -0.2, "caveats": 0.3}},
    "friend": {"description": "wants a casual, chatty reply with an example, not a lecture",
               "weights": {"length": -0.5, "structure": -0.8, "tone": -1.0, "examples": 0.7, "caveats": -0.3}},
    "cautious": {"description": "wants every caveat and a fuller answer",
                 "weights": {"length": 0.5, "structure": 0.0, "tone": 0.3, "examples": 0.2, "caveats": 1.0}},
}

@dataclass(frozen=True)
class Marks:
    """How one rendering writes the attributes on the surface: openers and sign-offs per register,
    caveat leads, list marks (`{i}`: 1, 2, ...; `{a}`: a, b, ...) and the example's lead."""
    openers: dict[str, tuple[str, ...]]
    closers: dict[str, tuple[str, ...]]
    caveat_lead: dict[str, tuple[str, ...]]
    list_marks: tuple[str, ...]
    example_lead: str


# The same five attributes in four sets of words and marks. `alt` shares none of its marks with the
# others: train on the rest and test on it to see whether a judge reads the attribute or the phrasing.
RENDERINGS: dict[str, Marks] = {
    "default": Marks(
        openers={"formal": ("Certainly.", "Here is an overview.", "A reliable approach is as follows.",
                            "This is a common question."),
                 "casual": ("Oh, good question!", "Sure thing!", "Ah, I get this one a lot.",
                            "Okay, so here's the deal.")},
        closers={"formal": ("I hope this information is useful.",
                            "Please let me know if further detail would be helpful.",
                            "I trust this answers your question."),
                 "casual": ("Hope that helps!", "Good luck, you've got this!", "Have fun with it!")},
        caveat_lead={"formal": ("One caveat: ", "Please note: "),
                     "casual": ("Heads up, though: ", "Just so you know: ")},
        list_marks=("{i}. ",), example_lead="For example"),
    "alt": Marks(
        openers={"formal": ("Good day.", "The following should help.", "In brief, the answer is this."),
                 "casual": ("Hey, no worries!", "Right, so!", "Oh, love this one!")},
        closers={"formal": ("With kind regards.", "I remain available for any follow-up questions."),
                 "casual": ("Cheers!", "Catch you later!", "You'll smash it!")},
        caveat_lead={"formal": ("It should be noted that ", "A limitation: "),
                     "casual": ("Quick warning: ", "Oh and fair warning: ")},
        list_marks=("- ", "* ", "\u2022 "), example_lead="For instance"),
    "plain": Marks(
        openers={"formal": ("Good question.", "Here is what matters.", "The answer is straightforward."),
                 "casual": ("Yeah, easy one!", "Ooh, fun!", "Alright, let's see.")},
        closers={"formal": ("That covers the essentials.", "I hope this clarifies matters."),
                 "casual": ("Enjoy!", "Go for it!", "Have a blast!")},
        caveat_lead={"formal": ("Keep in mind that ", "An exception: "),
                     "casual": ("Watch out: ", "Careful, though: ")},
        list_marks=("{i}) ",), example_lead="As an example"),
    "lively": Marks(
        openers={"formal": ("Thank you for asking.", "Allow me to explain.", "Let me set this out clearly."),
                 "casual": ("Yay, love this!", "Ha, great one!", "So, here's my take!")},
        closers={"formal": ("Best wishes with it.", "Thank you for the question."),
                 "casual": ("Rock on!", "Easy peasy!", "Nice one, good luck!")},
        caveat_lead={"formal": ("Bear in mind that ", "A word of warning: "),
                     "casual": ("Fair warning: ", "Small catch: ")},
        list_marks=("({a}) ", "{a}. "), example_lead="To illustrate"),
}

# Each attribute's two sides as a criterion a judge can check one reply against (name,
# description, and the words of a persona), and as a user would say it (several phrasings: users
# do not all say it alike).
CRITERIA: dict[tuple[str, int], tuple[str, str, str]] = {
    ("length", 1): ("Thorough", "covers every main point in detail", "thorough detail"),
    ("length", -1): ("Brief", "a short answer with only the key points", "short answers"),
    ("structure", 1): ("Listed", "the points laid out as a list", "lists"),
    ("structure", -1): ("Prose", "flowing paragraphs, no list", "flowing prose"),
    ("tone", 1): ("Formal", "a formal register, no contractions or chatty opener", "a formal tone"),
    ("tone", -1): ("Casual", "a relaxed, chatty tone with contractions", "a casual tone"),
    ("examples", 1): ("Example", "includes a concrete example", "concrete examples"),
    ("examples", -1): ("No example", "gets to the point without an example", "no examples"),
    ("caveats", 1): ("Caveats", "says when the advice may not hold", "caveats"),
    ("caveats", -1): ("No caveats", "no warnings or disclaimers", "no caveats"),
}


def criterion_name(key: tuple[str, int]) -> str:
    """An (attribute, side)'s criterion as a synthesis writes it and a check asks it: "Name: description"."""
    return f"{CRITERIA[key][0]}: {CRITERIA[key][1]}"


_STATED: dict[tuple[str, int], tuple[str, ...]] = {
    ("length", 1): ("I like thorough answers that cover everything.", "Give me the full picture, details included.",
                    "I prefer detailed replies."),
    ("length", -1): ("Keep it short.", "I prefer brief answers.", "I have no time for long replies."),
    ("structure", 1): ("Numbered lists help me.", "I like answers laid out as steps.", "Structure it as a list."),
    ("structure", -1): ("I prefer flowing prose to lists.", "Write in paragraphs, not bullet points.",
                        "Lists feel robotic to me."),
    ("tone", 1): ("I appreciate a formal, professional tone.", "Please stay formal.",
                  "I like replies that sound professional."),
    ("tone", -1): ("Talk to me like a friend.", "A casual, relaxed tone suits me.", "No need to be formal with me."),
    ("examples", 1): ("Concrete examples help me understand.", "Show me an example.", "I learn best from examples."),
    ("examples", -1): ("Skip the examples.", "I don't need examples.", "Examples just slow me down."),
    ("caveats", 1): ("Tell me when advice might not apply.", "I want to know the caveats.",
                     "Warn me about exceptions."),
    ("caveats", -1): ("No need for warnings or disclaimers.", "Spare me the caveats.", "Don't hedge everything."),
}
STATED_MIN_WEIGHT = 0.3  # weaker preferences go unsaid
STATED_SHARE = 0.6  # each strong preference is stated with this chance
SILENT_USERS = 0.2  # share of users who state nothing at all
# How many attributes the two answers of a row differ on, drawn per row from this list: mostly two.
# `diffs=(1,)` makes every choice turn on one attribute, the plainest evidence a history can show.
DEFAULT_DIFFS = (1, 2, 2, 3)

_CONTRACTIONS = [
    ("do not", "don't"), ("does not", "doesn't"), ("is not", "isn't"), ("are not", "aren't"),
    ("cannot", "can't"), ("will not", "won't"), ("have not", "haven't"), ("it is", "it's"),
    ("that is", "that's"), ("you are", "you're"), ("you will", "you'll"), ("there is", "there's"),
    ("what is", "what's"), ("you would", "you'd"), ("they are", "they're"), ("I am", "I'm"),
]


def _contract(text: str) -> str:
    """Casual register: 'do not' -> 'don't', keeping a capital first letter."""
    for long, short in _CONTRACTIONS:
        pattern = re.compile(rf"\b{re.escape(long)}\b", re.IGNORECASE)
        text = pattern.sub(lambda m, s=short: s[0].upper() + s[1:] if m.group(0)[0].isupper() else s, text)
    return text


def render_answer(topic: Topic, attrs: dict[str, int], rng: random.Random, rendering: str = "default") -> str:
    """One answer to `topic.question` with the given attributes (+1/-1 each)."""
    if rendering not in RENDERINGS:
        raise ValueError(f"rendering {rendering!r}: expected one of {', '.join(RENDERINGS)}")
    marks = RENDERINGS[rendering]
    tone = "formal" if attrs["tone"] > 0 else "casual"
    points = topic.points if attrs["length"] > 0 else topic.points[:2]
    if attrs["structure"] > 0:
        # one draw only where there is a choice: the rows of a seed stay what they were
        mark = rng.choice(marks.list_marks) if len(marks.list_marks) > 1 else marks.list_marks[0]
        body = [topic.core, "\n".join(mark.format(i=i, a="abcdefgh"[i - 1]) + p for i, p in enumerate(points, 1))]
    elif attrs["length"] > 0:  # two paragraphs
        body = [f"{topic.core} {points[0]}", " ".join(points[1:])]
    else:
        body = [" ".join((topic.core, *points))]
    parts = [f"{rng.choice(marks.openers[tone])} {body[0]}", *body[1:]]
    if attrs["examples"] > 0:
        parts.append(topic.example.replace("For example", marks.example_lead))
    if attrs["caveats"] > 0:
        lead = rng.choice(marks.caveat_lead[tone])
        caveat = topic.caveat if lead.endswith(": ") else topic.caveat[0].lower() + topic.caveat[1:]
        parts.append(lead + caveat)
    parts.append(rng.choice(marks.closers[tone]))
    text = "\n\n".join(parts)
    return _contract(text) if tone == "casual" else text


def renderings_of(rendering: str | Sequence[str]) -> tuple[str, ...]:
    """'default', 'default,plain' or a sequence of names -> the names, checked."""
    names = tuple(n.strip() for n in (rendering.split(",") if isinstance(rendering, str) else rendering) if n.strip())
    unknown = [n for n in names if n not in RENDERINGS]
    if not names or unknown:
        raise ValueError(f"rendering {', '.join(map(repr, unknown)) or 'empty'}: expected one of "
                         f"{', '.join(RENDERINGS)}, or several joined by commas (each row drawn among them)")
    return names


def side(weight: float) -> int:
    return 1 if weight > 0 else -1


def stated_preferences(weights: dict[str, float], rng: random.Random) -> tuple[str | None, list[str]]:
    """What a user says about their taste: some of their strong preferences, in one of a few
    phrasings each, in a random order; None for a user who says nothing. Also the attributes said."""
    if rng.random() < SILENT_USERS:
        return None, []
    said = [a for a in ATTRIBUTES if abs(weights[a]) >= STATED_MIN_WEIGHT and rng.random() < STATED_SHARE]
    rng.shuffle(said)
    if not said:
        return None, []
    return " ".join(rng.choice(_STATED[(a, side(weights[a]))]) for a in said), said


_LIST_LINE = re.compile(r"(\d+[.)]|\([a-h]\)|[a-h]\.|[-*\u2022]) ")


def detect_attributes(text: str) -> dict[str, int]:
    """The attributes as they show in the text itself (no metadata), in any rendering: list lines,
    contractions and chatty openers, an example's lead, a caveat's lead. Length is not detectable
    from one answer alone without knowing the question, so it is left out (compare two answers'
    lengths instead)."""
    lines = text.splitlines()
    casual = any(text.startswith(o) for m in RENDERINGS.values() for o in m.openers["casual"]) or any(
        short in text for _, short in _CONTRACTIONS)
    return {
        "structure": 1 if any(_LIST_LINE.match(line) for line in lines) else -1,
        "tone": -1 if casual else 1,
        "examples": 1 if any(m.example_lead in text for m in RENDERINGS.values()) else -1,
        "caveats": 1 if any(lead in text for m in RENDERINGS.values() for leads in m.caveat_lead.values()
                            for lead in leads) else -1,
    }


@dataclass
class SyntheticBench:
    rows: list[dict[str, Any]]
    truth: dict[str, Any] = field(default_factory=dict)


def row_key(row: dict[str, Any]) -> str:
    """Identifies a row by its content, so the truth can be matched to rows in any order."""
    blob = json.dumps([row["user_id"], row["context"], row["chosen"]["content"], row["rejected"]["content"]],
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def utility(weights: dict[str, float], attrs: dict[str, int]) -> float:
    return sum(weights[a] * attrs[a] for a in ATTRIBUTES)


def generate(
    n_users: int = 20,
    rows_per_user: int = 10,
    seed: int = 0,
    *,
    test_per_user: int | None = None,
    val_per_user: int = 0,
    cold_start_fraction: float = 0.2,
    n_types: int = len(TYPES),
    user_noise: float = 0.25,
    sharpness: float = 3.0,
    vary: tuple[str, ...] | list[str] = ATTRIBUTES,
    rendering: str | Sequence[str] = "default",
    diffs: tuple[int, ...] | list[int] = DEFAULT_DIFFS,
    cold_start_pairs: int = 1,
) -> SyntheticBench:
    """Rows plus the latent truth. Deterministic for a given set of arguments.

    Warm users get `rows_per_user` rows: `test_per_user` test (default a quarter, at least one),
    `val_per_user` val, the rest train. Cold-start users get the test and val rows and
    `cold_start_pairs` train rows (0: no history at all)."""
    if n_users < 1 or rows_per_user < 2:
        raise ValueError("n_users must be >= 1 and rows_per_user >= 2 (at least one train and one test row)")
    if not 1 <= n_types <= len(TYPES):
        raise ValueError(f"n_types must be between 1 and {len(TYPES)}")
    if not 0 <= cold_start_fraction < 1:
        raise ValueError("cold_start_fraction must be in [0, 1)")
    vary = tuple(vary)
    unknown = [a for a in vary if a not in ATTRIBUTES]
    if not vary or unknown:
        raise ValueError(f"vary: {', '.join(unknown) or 'empty'}; expected attributes among {', '.join(ATTRIBUTES)}")
    renderings = renderings_of(rendering)
    diffs = tuple(diffs)
    if not diffs or any(not 1 <= d <= len(ATTRIBUTES) for d in diffs):
        raise ValueError(f"diffs {list(diffs)}: each must be between 1 and {len(ATTRIBUTES)} (attributes a row's "
                         "two answers differ on)")
    if not 0 <= cold_start_pairs < rows_per_user:
        raise ValueError(f"cold_start_pairs={cold_start_pairs}: must be between 0 and rows_per_user - 1")
    test_n = test_per_user if test_per_user is not None else max(1, rows_per_user // 4)
    if test_n < 1 or test_n + val_per_user >= rows_per_user:
        raise ValueError(f"rows_per_user={rows_per_user} leaves no train rows after {test_n} test "
                         f"and {val_per_user} val rows")
    rng = random.Random(seed)
    # Stated preferences draw from their own generator: the rows of a seed stay what they were.
    said_rng = random.Random(f"stated-{seed}")
    rendering_rng = random.Random(f"rendering-{seed}")  # likewise the renderings of a mixed set
    type_names = list(TYPES)[:n_types]
    order = list(range(n_users))
    rng.shuffle(order)
    user_type = {i: type_names[pos % n_types] for pos, i in enumerate(order)}
    n_cold = round(cold_start_fraction * n_users)
    if cold_start_fraction > 0 and n_users >= 3:
        n_cold = max(1, n_cold)
    cold = set(rng.sample(range(n_users), n_cold))

    rows: list[dict[str, Any]] = []
    truth_rows: list[dict[str, Any]] = []
    users: dict[str, Any] = {}
    width = max(3, len(str(n_users - 1)))
    for i in range(n_users):
        user_id = f"u{i:0{width}d}"
        kind = user_type[i]
        weights = {a: round(TYPES[kind]["weights"][a] + rng.gauss(0.0, user_noise), 4) for a in ATTRIBUTES}
        persona, said = stated_preferences(weights, said_rng)
        users[user_id] = {"type": kind, "weights": weights, "cold_start": i in cold, "stated": said,
                          "self_description": persona}
        splits = ["test"] * test_n + ["val"] * val_per_user
        train_n = cold_start_pairs if i in cold else rows_per_user - len(splits)
        splits = ["train"] * train_n + splits
        topics = list(BANK)
        rng.shuffle(topics)
        for j, split in enumerate(splits):
            topic = topics[j % len(topics)]
            a = {name: rng.choice((-1, 1)) for name in ATTRIBUTES}
            b = dict(a)
            for name in rng.sample(vary, min(len(vary), rng.choice(diffs))):
                b[name] = -b[name]
            p_a = 1.0 / (1.0 + math.exp(-sharpness * (utility(weights, a) - utility(weights, b))))
            picked_a = rng.random() < p_a
            chosen_attrs, rejected_attrs = (a, b) if picked_a else (b, a)
            written = rendering_rng.choice(renderings) if len(renderings) > 1 else renderings[0]
            row = {
                "user_id": user_id,
                "split": split,
                "context": [{"role": "user", "content": topic.question}],
                "chosen": {"role": "assistant", "content": render_answer(topic, chosen_attrs, rng, written)},
                "rejected": {"role": "assistant", "content": render_answer(topic, rejected_attrs, rng, written)},
            }
            rows.append(row)
            truth_rows.append({
                "key": row_key(row), "user_id": user_id, "split": split, "area": topic.area,
                "chosen": chosen_attrs, "rejected": rejected_attrs,
                "p_chosen": round(p_a if picked_a else 1.0 - p_a, 4),
                **({"rendering": written} if len(renderings) > 1 else {}),
            })
    truth = {
        "generator": "pgenrm_plugins.datasets.synthetic",
        "params": {"n_users": n_users, "rows_per_user": rows_per_user, "seed": seed, "test_per_user": test_n,
                   "val_per_user": val_per_user, "cold_start_fraction": cold_start_fraction, "n_types": n_types,
                   "user_noise": user_noise, "sharpness": sharpness, "vary": list(vary),
                   "rendering": ",".join(renderings), "diffs": list(diffs), "cold_start_pairs": cold_start_pairs},
        "attributes": list(ATTRIBUTES),
        "types": {name: TYPES[name] for name in type_names},
        "users": users,
        "rows": truth_rows,
    }
    return SyntheticBench(rows, truth)


def generate_rows(n_users: int = 20, rows_per_user: int = 10, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """PersonalRewardBench rows of `n_users` synthetic users (see `generate` for the options)."""
    return generate(n_users=n_users, rows_per_user=rows_per_user, seed=seed, **options).rows


def user_rows(bench: SyntheticBench) -> list[dict[str, Any]]:
    """The users file's rows, in PRISM's survey field names: one per user who stated anything."""
    return [{"user_id": u, "self_description": info["self_description"]}
            for u, info in bench.truth["users"].items() if info.get("self_description")]


def truth_path_for(rows_path: str | Path) -> Path:
    """Where the latent truth of a rows file lives: `rows.jsonl` -> `rows.truth.json`."""
    p = Path(rows_path)
    return p.with_name(p.stem + ".truth.json")


def load_truth(rows_path: str | Path) -> dict[str, Any] | None:
    p = truth_path_for(rows_path)
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None


def _write_atomically(path: Path, write) -> None:
    """Write to a temporary file and rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """JSONL (.jsonl) or parquet (.parquet), by suffix."""
    path = Path(path)
    if path.suffix == ".jsonl":
        def write(tmp: Path) -> None:
            with open(tmp, "w", encoding="utf-8") as f:
                for row in rows:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif path.suffix == ".parquet":
        def write(tmp: Path) -> None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist(rows), tmp)
    else:
        raise ValueError(f"{path}: the output must end in .jsonl or .parquet")
    _write_atomically(path, write)
    return path


def write_bench(path: str | Path, bench: SyntheticBench) -> tuple[Path, Path]:
    """The rows, the users' stated preferences (`users_file_for`) and the truth next to them
    (`truth_path_for`)."""
    rows_path = write_rows(path, bench.rows)
    write_rows(users_file_for(rows_path), user_rows(bench))
    truth_path = truth_path_for(rows_path)
    _write_atomically(truth_path, lambda tmp: tmp.write_text(json.dumps(bench.truth, indent=1), encoding="utf-8"))
    return rows_path, truth_path
