"""The synthesis judge's training (`pgenrm train synthesis`): the paper's PSI, with the user's
stated preferences as the teacher's privileged input, and the scoring step it feeds.

One LoRA adapter learns two densely supervised steps (chain/synthesis.py), mixed in every batch:

    synthesis  a view of a user's past choices (1 to `max_history` pairs, contrast-rendered,
               sometimes with their stated persona) -> the teacher's synthesis: persona and
               weighted criteria, token by token
    checks     (conversation, reply, criterion) -> one digit: 9 if the reply meets it, 1 if it
               does not; a broken copy of a reply (cut off, looping, empty) meets nothing. One check
               example is one reply against every criterion of the vocabulary and `Sound`: with the
               criterion after the reply the rows share that long prefix, which runs once for all
               of them (11 digits of supervision for little more than the cost of one)

Teacher `stated` writes the synthesis from what the user *said* they want (for the generator's
users: their latent weights, the truth behind their words), limited to what the judge is shown:
an attribute is claimed only when a pair in the view turns on it or the shown persona states it.
Its weights are the user's, renormalised over what is claimed; the `Sound` criterion closes every
synthesis. The check targets come from the replies' own attributes. A user with nothing shown gets
"nothing known yet" and `Sound` alone.

Examples are a pure function of (rows, truth, settings, index), so a resumed run draws what an
uninterrupted one would. The loss is the mean over examples of each one's mean cross-entropy: a
synthesis over its tokens, a check example over its digits (read among the nine digits, as the
scorer reads them).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pgenrm_plugins.chain import synthesis as chain
from pgenrm_plugins.chain.parser import Criterion
from pgenrm_plugins.datasets.answer_bank import BANK
from pgenrm_plugins.datasets.bench import BenchData
from pgenrm_plugins.datasets.synthetic import ATTRIBUTES, CRITERIA, criterion_name, row_key, side
from pgenrm_plugins.training.items import HIGH, LOW, degenerate
from pgenrm_plugins.training.settings import SynthesisSettings
from pgenrm_plugins.training.stage import Checkpoints, command_text, lora_model
from pgenrm_plugins.types import HistoryItem, Message, as_messages

PROTOCOL = "synthesis-v1"


def teacher_synthesis(weights: dict[str, float], claimed: set[str]) -> str:
    """Teacher `stated`: persona and criteria for the `claimed` attributes, weighted by the user's
    own weights (90 shared among them in steps of 5, at least 5 each), strongest first; `Sound`
    (10) last. Nothing claimed: nothing known, `Sound` alone."""
    order = sorted((a for a in ATTRIBUTES if a in claimed), key=lambda a: -abs(weights[a]))
    if not order:
        return chain.format_synthesis(chain.NOTHING_KNOWN, [Criterion(chain.SOUND.name, 100.0)])
    total = sum(abs(weights[a]) for a in order) or 1.0
    share = [max(5, 5 * round(18 * abs(weights[a]) / total)) for a in order]
    share[0] += 90 - sum(share)  # the strongest takes the rounding
    if share[0] < 5:  # many small claims: even shares instead
        share = [90 // len(order)] * len(order)
        share[0] += 90 - sum(share)
    criteria = []
    for a, w in zip(order, share):
        criteria.append(Criterion(criterion_name((a, side(weights[a]))), float(w)))
    words = [CRITERIA[(a, side(weights[a]))][2] for a in order]
    persona = "wants " + (words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]) + "."
    return chain.format_synthesis(persona, [*criteria, chain.SOUND])


@dataclass(frozen=True)
class Pair:
    item: HistoryItem
    chosen: dict[str, int]
    rejected: dict[str, int]

    def turns_on(self) -> set[str]:
        return {a for a in ATTRIBUTES if self.chosen[a] != self.rejected[a]}


class StatedTeacher:
    """What teacher `stated` knows of the generator's users: their weights, what they said, and
    each train pair's attributes (from the truth file next to the rows)."""

    def __init__(self, data: BenchData, truth: dict[str, Any] | None):
        if not truth:
            raise ValueError("teacher 'stated' writes syntheses from the users' stated preferences and the truth "
                             "behind them: give rows from `pgenrm data synth` with their NAME.truth.json beside them")
        by_key = {r["key"]: r for r in truth["rows"]}
        self.users = truth["users"]
        self.personas = data.personas()
        self.pairs: dict[str, list[Pair]] = {}
        for row in data.split("train"):
            t = by_key.get(row_key(row.model_dump(mode="json")))
            if t is None:
                raise ValueError(f"user {row.user_id}: a train row has no entry in the truth file (rows and truth "
                                 "from different runs?); regenerate both with `pgenrm data synth`")
            self.pairs.setdefault(row.user_id, []).append(Pair(row.history_item(), t["chosen"], t["rejected"]))
        if not self.pairs:
            raise ValueError("no train rows: nothing to learn from")
        self.user_ids = sorted(self.pairs)

    def synthesis(self, user: str, view: list[Pair], persona_shown: bool) -> str:
        claimed = set().union(*(p.turns_on() for p in view)) if view else set()
        if persona_shown:
            claimed |= set(self.users[user].get("stated") or ())
        return teacher_synthesis(self.users[user]["weights"], claimed)


class SynthesisExamples:
    """index -> (conversation, target text); a pure function of the index."""

    CRITERIA = [(a, d) for a in ATTRIBUTES for d in (1, -1)]  # what a check example asks, with `Sound`

    def __init__(self, teacher: StatedTeacher, settings: SynthesisSettings):
        self.teacher, self.settings = teacher, settings

    def example(self, index: int) -> tuple[list[dict[str, str]], str] | Checks:
        s = self.settings
        rng = random.Random(int.from_bytes(hashlib.blake2b(json.dumps([s.seed, index]).encode(),
                                                            digest_size=8).digest(), "big"))
        user = self.teacher.user_ids[rng.randrange(len(self.teacher.user_ids))]
        pairs = self.teacher.pairs[user]
        if rng.random() < s.check_share:
            if rng.random() < s.sound_share:
                return self._sound(rng)
            return self._check(rng, rng.choice(pairs))
        persona = self.teacher.personas.get(user) if rng.random() < s.persona_rate else None
        view: list[Pair] = []
        if rng.random() >= s.empty_rate:
            view = rng.sample(pairs, rng.randint(1, min(s.max_history, len(pairs))))
        messages = chain.synthesis_messages([p.item for p in view], persona, max_items=s.max_history,
                                            max_chars=s.max_chars)
        return messages, self.teacher.synthesis(user, view, persona is not None)

    def _check(self, rng: random.Random, pair: Pair) -> Checks:
        chosen = rng.random() < 0.5
        reply, attrs = (pair.item.chosen, pair.chosen) if chosen else (pair.item.rejected, pair.rejected)
        broken = rng.random() < self.settings.degenerate_rate
        if broken:
            reply = degenerate(reply, rng) or "."
        asked = [(criterion_name(key), attrs[key[0]] == key[1]) for key in self.CRITERIA]
        asked.append((chain.SOUND.name, True))
        prompt = self._conversation(rng, pair.item.prompt)
        return Checks([chain.criterion_messages(prompt, reply, criterion,
                                                max_chars=self.settings.max_chars,
                                                criterion_first=self.settings.criterion_first)
                       for criterion, _ in asked],
                      [HIGH if met and not broken else LOW for _, met in asked])


    def _sound(self, rng: random.Random) -> Checks:
        """`Sound` alone, of replies the generator's rows never hold: a sentence or two (met), another
        question's answer (not met: it answers something else), a broken copy (not met)."""
        topic, other = rng.sample(BANK, 2)
        short = topic.core if rng.random() < 0.5 else f"{topic.core} {rng.choice(topic.points)}"
        kind = rng.choice(("short", "short", "off-topic", "broken"))
        reply = {"short": short, "off-topic": other.core,
                 "broken": degenerate(short, rng) or "."}[kind]
        messages = chain.criterion_messages(self._conversation(rng, topic.question), reply, chain.SOUND.name,
                                            max_chars=self.settings.max_chars,
                                            criterion_first=self.settings.criterion_first)
        return Checks([messages], [HIGH if kind == "short" else LOW])

    def _conversation(self, rng: random.Random, prompt):
        """The prompt, or (at `multi_turn_rate`) an earlier exchange and then its question: a
        clarifying turn, or another question answered before it."""
        turns = as_messages(prompt)
        if rng.random() >= self.settings.multi_turn_rate or len(turns) != 1:
            return prompt
        if rng.random() < 0.5:
            ask, answer = rng.choice(_CLARIFY)
            return [*turns, Message(role="assistant", content=ask), Message(role="user", content=answer)]
        before = rng.choice(BANK)
        return [Message(role="user", content=before.question), Message(role="assistant", content=before.core), *turns]


# Clarifying turns an assistant asks before it answers, and the user's reply.
_CLARIFY = (
    ("Happy to help. Do you want the short version or the details?", "Just the main points, please."),
    ("Sure. Is this your first time?", "Yes, I'm a complete beginner."),
    ("Could you tell me a little more about your situation?", "Nothing special, I just want general advice."),
    ("Of course. Any constraints I should know about?", "Not really, keep it practical."),
)


@dataclass(frozen=True)
class Checks:
    """One reply against several criteria: a conversation and a target digit per criterion."""
    conversations: list[list[dict[str, str]]]
    targets: list[str]


class TokenizedExamples:
    """`Trainer`-facing dataset: index -> a synthesis's input ids and labels (-100 on the prompt), or
    a check example's shared prefix, each criterion's tail and the target digits."""

    def __init__(self, examples: SynthesisExamples, tokenizer, length: int):
        self.examples, self.tokenizer, self.length = examples, tokenizer, length
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        from pgenrm_plugins.training.score_stage import encode, tokenize_rows

        example = self.examples.example(index)
        if isinstance(example, Checks):
            return tokenize_rows([encode(self.tokenizer, c) for c in example.conversations], example.targets)
        messages, target = example
        prompt = encode(self.tokenizer, messages)
        answer = self.tokenizer(target, add_special_tokens=False)["input_ids"]
        if len(target) > 1:  # a synthesis ends its turn; a digit is read, not ended
            answer = [*answer, self.end]
        return {"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer}


def collate(batch: list[dict], pad_id: int):
    """Syntheses padded into one tensor batch; check examples stay whole (each has its own prefix)."""
    sequences = [b for b in batch if "input_ids" in b]
    return {"sequences": pad_sequences(sequences, pad_id) if sequences else None,
            "checks": [b for b in batch if "prefix" in b]}


def pad_sequences(batch: list[dict[str, list[int]]], pad_id: int):
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):  # right padding: training reads every position
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def example_losses(model, inputs):
    """Each example's mean cross-entropy over its target tokens. The
    vocabulary projection runs on the target positions alone: a prompt of hundreds of tokens would
    otherwise cost a 49k-wide row of logits each."""
    import torch
    import torch.nn.functional as F

    base = model.get_base_model()
    hidden = base.model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
    labels = inputs["labels"][:, 1:]
    keep = labels != -100
    tokens = F.cross_entropy(base.lm_head(hidden[:, :-1][keep]).float(), labels[keep], reduction="none")
    per_example = torch.zeros(labels.shape[0], device=tokens.device).index_add(0, keep.nonzero()[:, 0], tokens)
    return per_example / keep.sum(dim=1).clamp(min=1)


def build_trainer(examples: SynthesisExamples, settings: SynthesisSettings, checkpoints, base_dir: str,
                  progress: bool = True, init: str | Path | None = None):
    """A `transformers.Trainer` over LoRA on the base judge, with the per-example loss; `init`: a
    judge folder whose adapter this run continues (one stage after another) instead of a new one."""
    from functools import partial

    import torch
    from transformers import Trainer, TrainingArguments

    from pgenrm_plugins.backends.transformers_backend import cache_argument
    from pgenrm_plugins.training.score_stage import digit_ids, item_loss

    settings.apply_threads()
    cuda = torch.cuda.is_available()
    model, tokenizer = lora_model(base_dir, settings, init)
    dataset = TokenizedExamples(examples, tokenizer, settings.steps * settings.batch_size * settings.grad_accum)
    pad = tokenizer.pad_token_id  # load_base gives every tokenizer one

    parts: dict[str, list[float]] = {"check_loss": [], "synthesis_loss": []}

    digits, cache_arg = digit_ids(tokenizer), cache_argument(model.get_base_model().forward)

    class SynthesisTrainer(Trainer):
        """The mean example loss; the log also shows each step's loss apart (`check_loss`,
        `synthesis_loss`): a mean over both hides a step that learns nothing."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            losses = []
            if inputs["sequences"] is not None:
                losses.append(example_losses(model, inputs["sequences"]))
                parts["synthesis_loss"].append(float(losses[-1].mean().detach()))
            if inputs["checks"]:
                losses.append(torch.stack([item_loss(model, item, digits, 0.0, cache_arg)
                                           for item in inputs["checks"]]))
                parts["check_loss"].append(float(losses[-1].mean().detach()))
            loss = torch.cat(losses).mean()
            return (loss, None) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            for name, values in parts.items():
                if values and "loss" in logs:
                    logs[name] = round(sum(values) / len(values), 4)
                    values.clear()
            super().log(logs, *args, **kwargs)

    args = TrainingArguments(
        output_dir=str(checkpoints), max_steps=settings.steps, per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.grad_accum, learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=max(1, settings.steps // 20), weight_decay=0.0,
        logging_steps=max(1, min(10, settings.steps // 10)), save_steps=settings.save_steps, save_total_limit=2,
        use_cpu=not cuda, report_to=[], seed=settings.seed, data_seed=settings.seed,
        dataloader_num_workers=4 if cuda else 0, remove_unused_columns=False, disable_tqdm=not progress,
        bf16=cuda, fp16=False,
    )
    trainer = SynthesisTrainer(model=model, args=args, train_dataset=dataset,
                               data_collator=partial(collate, pad_id=pad))
    return trainer, model, tokenizer


def train_synthesis(data: str | Path, out: str | Path, settings: SynthesisSettings | None = None, *,
                    base: str = "embedded", init: str | Path | None = None, fresh: bool = False,
                    progress: bool = True, command: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the synthesis judge on the train rows of `data` (teacher `stated`: the truth file beside
    synthetic rows); write it to `out`; return its manifest. Resumes from OUT/checkpoints. `init`: a
    synthesis judge folder to continue (e.g. the checks alone first, `check_share=1`, then both)."""
    from pgenrm_plugins.backends.judge_folder import base_model_dir, is_adapter, read_manifest, write_manifest
    from pgenrm_plugins.datasets.bench import load_bench
    from pgenrm_plugins.datasets.synthetic import load_truth

    settings = settings or SynthesisSettings()
    init_manifest = None
    if init is not None:
        init = Path(init)
        init_manifest = read_manifest(init) if is_adapter(init) else None
        if init_manifest is None or init_manifest.criteria != "synthesis":
            raise ValueError(f"--init {init}: not a synthesis judge folder (adapter_config.json and a manifest "
                             "with criteria 'synthesis'); give a folder `pgenrm train synthesis` wrote")
        base = init_manifest.base or base
    checkpoints = Checkpoints(out, "synthesis", settings, data, fresh=fresh, init=init)
    teacher = StatedTeacher(load_bench(data, strict=True), load_truth(data))
    run = checkpoints.finished(settings.steps)
    device = "cpu"
    if run is None:
        trainer, _, _ = build_trainer(SynthesisExamples(teacher, settings), settings, checkpoints.dir,
                                      base_model_dir(base), progress=progress, init=init)
        device = "cuda" if trainer.args.device.type == "cuda" else "cpu"
        run = checkpoints.train(trainer)
        del trainer
    last = {k: v for h in run.log_history for k, v in h.items() if k.endswith("_loss") and k != "train_loss"}
    manifest: dict[str, Any] = {
        "protocol": PROTOCOL,
        "criteria": "synthesis",
        "reader": "logprob",
        "stage": "synthesis",
        "base": base,
        "teacher": "stated",
        "objective": "per-example mean token cross-entropy: history view -> the teacher's synthesis, and "
                     "(conversation, reply, criterion) -> 9 met / 1 not met",
        "data": str(data),
        "data_hash": checkpoints.data_hash,
        "train_users": len(teacher.user_ids),
        "seed": settings.seed,
        "settings": settings.model_dump(),
        "init": {"judge": str(init), "data_hash": init_manifest.data_hash,
                 "check_share": (init_manifest.settings or {}).get("check_share")} if init_manifest else None,
        "scoring": {"reward": {"criteria": "synthesis", "max_history": settings.max_history,
                               "max_chars": settings.max_chars, "history_render": "contrast",
                               "criterion_first": settings.criterion_first,
                               # the criteria its checks learnt, checked for every user and weighed
                               # by their choices: a synthesis names at most a few of them
                               "extra_criteria": [criterion_name(key) for key in SynthesisExamples.CRITERIA]},
                    "sampling": {"chains": 1}},
        "command": command_text(command, "synthesis"),
        "metrics": {
            **run.metrics(),
            "device": device,
            **{f"final_{k}": v for k, v in last.items()},  # each step's own loss at the last log
        },
    }
    write_manifest(out, manifest)
    return manifest


__all__ = ["PROTOCOL", "SynthesisSettings", "StatedTeacher", "SynthesisExamples", "Checks", "teacher_synthesis",
           "build_trainer", "train_synthesis"]
