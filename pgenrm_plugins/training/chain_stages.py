"""The chain stages of P-GenRM's training (method item 6), on TRL. The paper's code never released
them; this is our reading of the paper.

    train_psi(data, out)   PSI: a teacher writes evaluation chains for (history, A/B pair); the
                           chains that parse AND give the response the user chose the strictly
                           higher total are kept; TRL's SFTTrainer fine-tunes a LoRA on them.
    train_cre(data, out)   CRE: TRL's GRPOTrainer on the same (history, A/B pair) prompts, reward =
                           beta * outcome (the chosen side gets the strictly higher total)
                           + format (the chain parses) [+ alpha * process: a judge backend rates
                           whether the chain's preferences and criteria follow from the history].

Both write a judge folder like `pgenrm train score` does: a peft LoRA adapter and
`pgenrm_judge.json` (format `chain-v1`, `criteria: generated`), which the transformers backend
loads by path. Both resume: checkpoints go to `OUT/checkpoints`, and the same call continues from
the newest one. PSI also keeps every teacher output in `OUT/teacher.jsonl` (appended and flushed
after each backend call), so a rerun (or a rerun with more --samples) asks only what is missing.

Pairs are drawn with `items.ItemSource` (targets=1, no degenerate copies): a train user, a view of
`history_pairs` of their pairs, and one *other* pair of theirs, so no target pair is ever in its own
history. Which response is shown as A is a seeded coin flip per pair, recorded with the pair.

The prompt is `prompts.full_chain` (history view, current conversation, responses A and B), the
pointwise/pairwise scoring conversation. A judge's reply starts with `prompts.CHAIN_PREFILL` at
scoring time, so both stages train on replies that start with it too: the teacher is asked with
that prefill, and CRE's prompts are the conversation rendered by the judge's chat template with the
prefill appended (`prefill=False` gives TRL the plain conversation instead).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shlex
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from pgenrm_plugins.backends.judge_folder import (
    BASE_MODEL,
    JudgeManifest,
    base_model_dir,
    is_adapter,
    read_manifest,
    write_manifest,
)
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import ParsedChain, ParseFailure, parse_chain
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.training.items import ItemSettings, ItemSource
from pgenrm_plugins.training.run import file_hash, peak_rss_mib
from pgenrm_plugins.training.score_stage import latest_checkpoint
from pgenrm_plugins.types import HistoryItem, Prompt

FORMAT = "chain-v1"
LABELS = ("A", "B")
TEACHER_LOG = "teacher.jsonl"
# The teacher when none is configured: the untrained embedded base, i.e. rejection sampling from
# the judge itself. On CPU it keeps (almost) nothing: see docs/training.md.
DEFAULT_TEACHER: dict[str, Any] = {"backend": {"name": "transformers", "options": {"model": BASE_MODEL}}}
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --- pairs ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChainPair:
    """One training prompt: a history view of one user and one of their other pairs, shown as A/B."""

    index: int
    user_id: str
    history: tuple[HistoryItem, ...]
    prompt: Prompt
    responses: tuple[str, str]  # shown as Response A, Response B
    chosen: str  # "A" or "B": the label of the response the user chose
    flipped: bool  # True: the chosen response is shown as B

    @property
    def other(self) -> str:
        return "B" if self.chosen == "A" else "A"

    def messages(self, max_chars: int) -> list[dict]:
        return prompts.full_chain(list(self.history), None, self.prompt, list(self.responses),
                                  max_items=len(self.history), max_chars=max_chars)


def _seed(*parts: Any) -> int:
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=4).digest(), "big") & 0x7FFFFFFF


def draw_pairs(data, count: int, *, history_pairs: int, seed: int) -> list[ChainPair]:
    """`count` pairs from the train rows of `data` (a path or `BenchData`): a pure function of the
    arguments, so a resumed run draws the same pairs in the same order."""
    bench = load_bench(data, strict=True) if isinstance(data, (str, Path)) else data
    source = ItemSource(bench, ItemSettings(history_pairs=history_pairs, targets=1, degenerate_rate=0.0, seed=seed))
    pairs = []
    for i in range(count):
        item = source.item(i)
        (win, lose), = item.pairs[:1]
        chosen, rejected = item.candidates[win], item.candidates[lose]
        flipped = random.Random(_seed(seed, "a/b", i)).random() < 0.5
        responses = (rejected.response, chosen.response) if flipped else (chosen.response, rejected.response)
        pairs.append(ChainPair(i, item.user_id, tuple(item.history), chosen.prompt, responses,
                               "B" if flipped else "A", flipped))
    return pairs


# --- reading a chain --------------------------------------------------------------------------------


def verdict(text: str, chosen: str) -> tuple[str, ParsedChain | ParseFailure]:
    """("right" | "tie" | "wrong" | "unparsed", the parse) of a chain about a pair whose chosen
    response is labelled `chosen`. Right means a strictly higher total for the chosen side."""
    parsed = parse_chain(text, labels=LABELS)
    if isinstance(parsed, ParseFailure):
        return "unparsed", parsed
    mine = parsed.scores[chosen].total
    theirs = parsed.scores["B" if chosen == "A" else "A"].total
    return ("right" if mine > theirs else "tie" if mine == theirs else "wrong"), parsed


def _num(x: float, digits: int) -> float | int:
    x = round(float(x), digits)
    return int(x) if x == int(x) else x


def canonical_chain(parsed: ParsedChain) -> str:
    """The chain as the parser read it, written back in the prompt's exact format: weights summing
    to 100, totals recomputed from the scores. Same content as the teacher's chain, clean syntax."""
    obj = {
        "preferences": parsed.preferences,
        "criteria": [{"name": c.name, "weight": _num(c.weight, 1)} for c in parsed.criteria],
        "scores": {label: {"per_criterion": {k: _num(v, 2) for k, v in s.per_criterion.items()},
                           "total": _num(s.total, 2)} for label, s in parsed.scores.items()},
    }
    return f"{prompts.OPEN}\n{json.dumps(obj, ensure_ascii=False)}\n{prompts.CLOSE}"


def raw_chain(text: str) -> str:
    """The teacher's own text, cut just after its closing marker."""
    end = text.find(prompts.CLOSE)
    return text if end < 0 else text[: end + len(prompts.CLOSE)]


# --- the teacher's outputs, kept as they come ---------------------------------------------------------


class TeacherLog:
    """OUT/teacher.jsonl: one line per (pair, backend call) with the texts sampled for it. Samples
    are indexed, so raising --samples asks only the new ones (sample k is drawn with seed + k)."""

    def __init__(self, path: Path):
        self.path = path
        self.samples: dict[str, dict[int, str]] = {}
        self.torn = 0
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    texts = self.samples.setdefault(rec["key"], {})
                    for k, text in enumerate(rec["texts"], start=int(rec["first"])):
                        texts.setdefault(k, text)
                except (ValueError, KeyError, TypeError):
                    self.torn += 1  # a line cut by a crash mid-write: those samples are asked again

    def have(self, key: str) -> list[str]:
        """The samples 0..m-1 stored for `key` (contiguous)."""
        texts = self.samples.get(key, {})
        out = []
        while len(out) in texts:
            out.append(texts[len(out)])
        return out

    def append(self, records: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if f.tell() > 0 and self.torn:  # never glue a new line onto a torn one
                f.write("\n")
                self.torn = 0
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                texts = self.samples.setdefault(rec["key"], {})
                for k, text in enumerate(rec["texts"], start=rec["first"]):
                    texts.setdefault(k, text)
            f.flush()
            os.fsync(f.fileno())


def backend_config(config_source):
    """The `backend` section of a pgenrm config (path, dict, or None for the embedded base),
    validated; raises ConfigError (a ValueError) naming the bad key."""
    from pgenrm_plugins.config import load_config

    return load_config(str(config_source) if isinstance(config_source, Path) else
                       (config_source if config_source is not None else DEFAULT_TEACHER)).backend


def teacher_backend(config_source):
    """(open backend, its description) from a pgenrm config (path, dict, or None: the embedded base)."""
    backend = backend_config(config_source)
    return backend.build("backend"), backend.model_dump(mode="json")


# --- shared training pieces ---------------------------------------------------------------------------


def _threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def _lora_config(model, rank: int, layers: int):
    from peft import LoraConfig

    n = model.config.num_hidden_layers
    top = min(layers, n)
    return LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS, layers_to_transform=list(range(n - top, n)))


def _load_base(base_dir: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    from pgenrm_plugins.backends.transformers_backend import attention_options

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **attention_options())
    return model, tokenizer


def _checkpoints(out: Path, fresh: bool) -> tuple[Path, str | None]:
    checkpoints = out / "checkpoints"
    if fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    return checkpoints, latest_checkpoint(checkpoints)


def _step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


@dataclass
class _Run:
    """What a training call did: trained on from a checkpoint, or found it already finished."""

    global_step: int
    log_history: list[dict]
    seconds: float
    done: int  # steps trained in this call
    train_loss: float | None

    @property
    def losses(self) -> list[float]:
        return [h["loss"] for h in self.log_history if "loss" in h]

    @property
    def seconds_per_step(self) -> float | None:
        return round(self.seconds / self.done, 2) if self.done > 0 else None


def _finished(resume: str | None, steps: int, out: Path) -> _Run | None:
    """A checkpoint already at `steps`: its adapter becomes the judge's, and nothing is trained.
    (transformers' Trainer would train one more step when resumed at max_steps.)"""
    if not resume or _step_of(resume) < steps:
        return None
    state = json.loads((Path(resume) / "trainer_state.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy2(Path(resume) / name, out / name)
    return _Run(int(state["global_step"]), state.get("log_history", []), 0.0, 0, None)


def _train(trainer, resume: str | None, out: Path) -> _Run:
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    trainer.model.save_pretrained(str(out))  # the adapter only: adapter_config.json + adapter_model.safetensors
    return _Run(trainer.state.global_step, list(trainer.state.log_history), seconds,
                trainer.state.global_step - _step_of(resume), getattr(result, "training_loss", None))


def _command(command: Sequence[str] | None, stage: str) -> str:
    return " ".join(shlex.quote(a) for a in (command or ["pgenrm", "train", stage, "..."]))


def _say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


# --- PSI ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PSISettings:
    pairs: int = 32  # (history view, A/B pair) prompts the teacher is asked about
    samples: int = 8  # chains sampled per pair
    teacher_max_new_tokens: int = 384
    teacher_temperature: float = 0.9
    teacher_batch: int = 4  # pairs per backend call (each call is appended to teacher.jsonl)
    chain_text: str = "parsed"  # parsed: the kept chain as the parser read it | raw: the teacher's text
    steps: int = 60
    grad_accum: int = 4
    learning_rate: float = 2e-4
    lora_rank: int = 16
    lora_layers: int = 12
    history_pairs: int = 3
    max_chars: int = 600
    save_steps: int = 10
    seed: int = 0
    threads: int | None = None


def ask_teacher(pairs: list[ChainPair], log: TeacherLog, teacher, teacher_id: dict, s: PSISettings,
                progress: bool = True) -> dict[str, Any]:
    """Ask the teacher for every sample of every pair that the log does not hold yet."""
    from pgenrm_plugins.backends.base import GenerationRequest

    todo = []
    for pair in pairs:
        key, request_seed = teacher_key(pair, teacher_id, s)
        have = len(log.have(key))
        if have < s.samples:
            todo.append((pair, key, request_seed, have))
    asked = sampled = 0
    started = time.perf_counter()
    for start in range(0, len(todo), s.teacher_batch):
        chunk = todo[start:start + s.teacher_batch]
        requests = [GenerationRequest(pair.messages(s.max_chars), n=s.samples - have,
                                      max_new_tokens=s.teacher_max_new_tokens,
                                      temperature=s.teacher_temperature, seed=request_seed + have,
                                      stop=(prompts.CLOSE,), prefill=prompts.CHAIN_PREFILL)
                    for pair, _, request_seed, have in chunk]
        outputs = teacher.generate(requests)
        log.append([{"key": key, "pair": pair.index, "user_id": pair.user_id, "chosen": pair.chosen,
                     "flipped": pair.flipped, "first": have, "texts": [g.text for g in gens],
                     "tokens": [g.tokens for g in gens]}
                    for (pair, key, _, have), gens in zip(chunk, outputs)])
        asked += len(chunk)
        sampled += sum(len(g) for g in outputs)
        _say(progress, f"teacher: {start + len(chunk)}/{len(todo)} pairs asked "
                       f"({time.perf_counter() - started:.0f} s)")
    return {"pairs_asked_this_run": asked, "chains_sampled_this_run": sampled,
            "teacher_seconds_this_run": round(time.perf_counter() - started, 1)}


def teacher_key(pair: ChainPair, teacher_id: dict, s: PSISettings) -> tuple[str, int]:
    """(log key, request seed) of a pair: everything the teacher's samples depend on but their count."""
    request_seed = _seed(s.seed, "teacher", pair.index)
    blob = json.dumps([pair.messages(s.max_chars), prompts.CHAIN_PREFILL, s.teacher_max_new_tokens,
                       s.teacher_temperature, request_seed, teacher_id], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20], request_seed


def kept_chains(pairs: list[ChainPair], log: TeacherLog, teacher_id: dict, s: PSISettings):
    """(SFT examples, tally) from the first `samples` stored chains of every pair."""
    examples, tally = [], Counter()
    failures: Counter = Counter()
    for pair in pairs:
        key, _ = teacher_key(pair, teacher_id, s)
        texts = log.have(key)[: s.samples]
        tally["pairs_with_chains"] += bool(texts)
        kept_here = 0
        for text in texts:
            tally["chains_sampled"] += 1
            outcome, parsed = verdict(text, pair.chosen)
            tally[outcome] += 1
            if outcome == "unparsed":
                failures[parsed.kind] += 1
                continue
            tally["parsed"] += 1
            if parsed.repairs:
                tally["parsed_with_repairs"] += 1
            if outcome == "right":
                kept_here += 1
                chain = canonical_chain(parsed) if s.chain_text == "parsed" else raw_chain(text)
                examples.append({"prompt": pair.messages(s.max_chars),
                                 "completion": [{"role": "assistant", "content": chain}]})
        tally["pairs_with_a_kept_chain"] += kept_here > 0
    return examples, tally, failures


def train_psi(
    data: str | Path,
    out: str | Path,
    *,
    base: str = "embedded",
    teacher_config: str | Path | dict | None = None,
    teacher=None,
    pairs: int = 32,
    samples: int = 8,
    teacher_max_new_tokens: int = 384,
    teacher_temperature: float = 0.9,
    teacher_batch: int = 4,
    chain_text: str = "parsed",
    steps: int = 60,
    grad_accum: int = 4,
    learning_rate: float = 2e-4,
    lora_rank: int = 16,
    lora_layers: int = 12,
    history_pairs: int = 3,
    max_chars: int = 600,
    save_steps: int = 10,
    seed: int = 0,
    threads: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """PSI: teacher chains kept when right, then SFT (TRL SFTTrainer + LoRA); returns the manifest.

    `teacher_config`: a pgenrm config (file or dict) whose `backend` is the teacher; default the
    untrained embedded base through the transformers backend. `teacher`: an open backend to use
    instead (with `teacher_config` too, that config names it in the log, so a rerun that loads
    the config itself finds its outputs). Raises ValueError when no chain was
    kept: there is nothing honest to fine-tune on."""
    if chain_text not in ("parsed", "raw"):
        raise ValueError(f"chain_text {chain_text!r}: expected 'parsed' or 'raw'")
    out = Path(out)
    s = PSISettings(pairs=pairs, samples=samples, teacher_max_new_tokens=teacher_max_new_tokens,
                    teacher_temperature=teacher_temperature, teacher_batch=teacher_batch, chain_text=chain_text,
                    steps=steps, grad_accum=grad_accum, learning_rate=learning_rate, lora_rank=lora_rank,
                    lora_layers=lora_layers, history_pairs=history_pairs, max_chars=max_chars, save_steps=save_steps,
                    seed=seed, threads=threads)
    _threads(threads)
    drawn = draw_pairs(data, pairs, history_pairs=history_pairs, seed=seed)
    # Never deleted, not even by `fresh`: each output is keyed by everything it depends on.
    log = TeacherLog(out / TEACHER_LOG)
    own_teacher = teacher is None
    if own_teacher or teacher_config is not None:  # a bad config fails here, before any work
        teacher_id = backend_config(teacher_config).model_dump(mode="json")
    else:
        teacher_id = {"name": getattr(teacher, "name", type(teacher).__name__),
                      "model": getattr(teacher, "model_name", None)}
    missing = [p for p in drawn if len(log.have(teacher_key(p, teacher_id, s)[0])) < samples]
    asked = {"pairs_asked_this_run": 0, "chains_sampled_this_run": 0, "teacher_seconds_this_run": 0.0}
    if missing:
        if own_teacher:
            _say(progress, "loading the teacher...")
            teacher, _ = teacher_backend(teacher_config)
        try:
            asked = ask_teacher(missing, log, teacher, teacher_id, s, progress=progress)
        finally:
            if own_teacher:
                teacher.close()
    examples, tally, failures = kept_chains(drawn, log, teacher_id, s)
    sampled, parsed, kept = tally["chains_sampled"], tally["parsed"], tally["right"]
    teacher_metrics = {
        "pairs_asked": tally["pairs_with_chains"], **asked, "chains_sampled": sampled, "parsed": parsed,
        "parsed_with_repairs": tally["parsed_with_repairs"], "kept": kept, "ties": tally["tie"],
        "wrong": tally["wrong"], "parse_failures": dict(failures),
        "parse_rate": round(parsed / sampled, 4) if sampled else None,
        "keep_rate": round(kept / sampled, 4) if sampled else None,
        "pairs_with_a_kept_chain": tally["pairs_with_a_kept_chain"],
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "teacher_summary.json").write_text(json.dumps(teacher_metrics, indent=1), encoding="utf-8")
    _say(progress, f"teacher: {parsed}/{sampled} chains parsed, {kept} kept (right), {tally['tie']} ties, "
                   f"{tally['wrong']} wrong")
    if not examples:
        raise ValueError(
            f"PSI kept no chain: the teacher ({json.dumps(teacher_id, sort_keys=True)}) was asked about "
            f"{tally['pairs_with_chains']} pairs and wrote {sampled} chains, of which {parsed} parsed "
            f"and {kept} gave the response the user chose the strictly higher total ({tally['tie']} ties, "
            f"{tally['wrong']} wrong). There is nothing honest to fine-tune on. Use a stronger teacher "
            "(--teacher-config FILE naming e.g. an OpenAI-compatible server with a larger model), or ask for more: "
            "--samples, --pairs, --teacher-max-new-tokens (chains cut off before their closing brace do not parse). "
            f"The teacher's outputs are kept in {log.path}; a rerun asks only for what is missing.")
    return _fit_psi(examples, out, s, base, data, teacher_id, teacher_metrics, progress, command, fresh)


def _fit_psi(examples, out: Path, s: PSISettings, base: str, data, teacher_id, teacher_metrics, progress, command,
             fresh):
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    checkpoints, resume = _checkpoints(out, fresh)
    run = _finished(resume, s.steps, out)
    if run is None:
        model, tokenizer = _load_base(base_model_dir(base))
        args = SFTConfig(
            output_dir=str(checkpoints), max_steps=s.steps, per_device_train_batch_size=1,
            gradient_accumulation_steps=s.grad_accum, learning_rate=s.learning_rate, lr_scheduler_type="cosine",
            warmup_steps=max(1, s.steps // 20), weight_decay=0.0, logging_steps=1, save_steps=s.save_steps,
            save_total_limit=2, use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, report_to=[],
            seed=s.seed, data_seed=s.seed, max_length=None, dataloader_num_workers=0, disable_tqdm=not progress,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer, peft_config=_lora_config(model, s.lora_rank, s.lora_layers))
        run = _train(trainer, resume, out)
        del trainer, model
    losses = run.losses
    manifest = {
        "format": FORMAT,
        "stage": "psi",
        "base": base,
        "criteria": "generated",
        "reader": "parse",
        "objective": "SFT (TRL SFTTrainer, completion-only loss) on full evaluation chains written by a teacher for "
                     "(history view, A/B pair), kept when they parse and give the chosen response the strictly "
                     f"higher total; chain text: {s.chain_text}",
        "teacher": teacher_id,
        "data": str(data),
        "data_hash": file_hash(data),
        "seed": s.seed,
        "settings": asdict(s),
        "scoring": _scoring(s.history_pairs, s.max_chars, s.teacher_max_new_tokens),
        "command": _command(command, "psi"),
        "metrics": {
            **teacher_metrics,
            "examples": len(examples),
            "steps": run.global_step,
            "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "train_loss": run.train_loss,
            "train_seconds_this_run": round(run.seconds, 1),
            "seconds_per_step": run.seconds_per_step,
            "peak_rss_mib": round(peak_rss_mib(), 1),
        },
    }
    write_manifest(out, manifest)
    return manifest


def _scoring(history_pairs: int, max_chars: int, max_new_tokens: int) -> dict[str, Any]:
    # What the judge was trained to read and write; `with_judge_defaults` fills these in where a
    # config leaves them unset.
    return {"reward": {"criteria": "generated", "max_history": history_pairs, "max_chars": max_chars},
            "sampling": {"max_new_tokens": max(8, max_new_tokens)}}


# --- CRE ------------------------------------------------------------------------------------------------

PROCESS_SYSTEM = (
    "You check the work of a personalized reward model. Given one user's past choices and what the "
    "model concluded about that user, you judge whether the conclusions follow from the choices."
)
PROCESS_QUESTION = (
    "Do these preferences and criteria follow from the user's past choices above, and cover what those "
    "choices show the user cares about? Answer with one digit from 1 (not at all) to 9 (fully)."
)


def process_question(history: Sequence[HistoryItem], parsed: ParsedChain, *, max_items: int,
                     max_chars: int) -> list[dict]:
    """The conversation the process judge answers with one digit about one chain."""
    said = {"preferences": parsed.preferences,
            "criteria": [{"name": c.name, "weight": _num(c.weight, 1)} for c in parsed.criteria]}
    user = (f"## The user's past choices\n{prompts.history_block(history, None, max_items, max_chars)}\n\n"
            f"## What the reward model concluded about this user\n{json.dumps(said, ensure_ascii=False)}\n\n"
            f"{PROCESS_QUESTION}")
    return [{"role": "system", "content": PROCESS_SYSTEM}, {"role": "user", "content": user}]


class ProcessJudge:
    """The process reward: a judge backend's 1-9 rating of a chain's preferences and criteria, read
    as the expected digit where the backend gives probabilities, else as the first digit it writes;
    mapped to [0, 1]. A chain that does not parse has nothing to rate: 0."""

    def __init__(self, backend, *, max_items: int, max_chars: int):
        self.backend, self.max_items, self.max_chars = backend, max_items, max_chars

    def __call__(self, histories: Sequence[Sequence[HistoryItem]], chains: Sequence[ParsedChain | None]) -> list[float]:
        from pgenrm_plugins.backends.base import GenerationRequest

        rows = [i for i, c in enumerate(chains) if c is not None]
        values = [0.0] * len(chains)
        if not rows:
            return values
        conversations = [process_question(histories[i], chains[i], max_items=self.max_items, max_chars=self.max_chars)
                         for i in rows]
        try:
            probs = self.backend.next_token_probs(conversations, prompts.DIGITS)
            digits = [(sum(int(d) * q for d, q in p.items()) / sum(p.values())) if sum(p.values()) > 0 else None
                      for p in probs]
        except NotImplementedError:
            gens = self.backend.generate([GenerationRequest(c, n=1, max_new_tokens=4, temperature=0.0, seed=0)
                                          for c in conversations])
            digits = [float(m.group()) if (m := re.search(r"[1-9]", g[0].text)) else None for g in gens]
        for i, d in zip(rows, digits):
            values[i] = min(1.0, max(0.0, (d - 1.0) / 8.0)) if d is not None and math.isfinite(d) else 0.0
        return values


def _completion_text(completion) -> str:
    if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def chain_rewards(*, prefill: bool, process: ProcessJudge | None = None, max_history: int = 3,
                  tally: Counter | None = None) -> list[Callable]:
    """TRL reward functions (plain callables taking **kwargs): outcome, format[, process]. Every
    completion is read as `CHAIN_PREFILL + completion` when the prompts end with the prefill."""
    tally = tally if tally is not None else Counter()
    lead = prompts.CHAIN_PREFILL if prefill else ""

    def _read(completions, chosen_label):
        return [verdict(lead + _completion_text(c), label) for c, label in zip(completions, chosen_label)]

    def outcome(prompts=None, completions=None, chosen_label=None, **kwargs) -> list[float]:
        seen = _read(completions, chosen_label)
        tally.update(v for v, _ in seen)
        tally["completions"] += len(seen)
        return [1.0 if v == "right" else 0.0 for v, _ in seen]

    def format(prompts=None, completions=None, chosen_label=None, **kwargs) -> list[float]:  # noqa: A001
        return [0.0 if v == "unparsed" else 1.0 for v, _ in _read(completions, chosen_label)]

    funcs: list[Callable] = [outcome, format]
    if process is not None:
        def process_reward(prompts=None, completions=None, chosen_label=None, history=None, **kwargs) -> list[float]:
            seen = _read(completions, chosen_label)
            histories = [[HistoryItem.model_validate(h) for h in json.loads(hs)] for hs in history]
            return process(histories, [None if isinstance(p, ParseFailure) else p for _, p in seen])

        process_reward.__name__ = "process"
        funcs.append(process_reward)
    return funcs


@dataclass(frozen=True)
class CRESettings:
    pairs: int = 64  # distinct (history view, A/B pair) prompts in the dataset
    steps: int = 50
    num_generations: int = 4  # completions per prompt (the GRPO group)
    prompts_per_step: int = 1
    max_completion_length: int = 384
    temperature: float = 0.9
    learning_rate: float = 5e-5
    kl_beta: float = 0.0  # GRPO's KL coefficient (0: no reference model)
    alpha: float = 0.5  # process reward weight (only with a process judge)
    beta: float = 1.0  # outcome reward weight
    format_weight: float = 0.25
    prefill: bool = True
    lora_rank: int = 16
    lora_layers: int = 12
    history_pairs: int = 3
    max_chars: int = 600
    save_steps: int = 10
    seed: int = 0
    threads: int | None = None


def cre_dataset(pairs: list[ChainPair], tokenizer, s: CRESettings):
    from datasets import Dataset

    rows = []
    for pair in pairs:
        messages = pair.messages(s.max_chars)
        prompt: Any = messages
        if s.prefill:  # the judge's reply starts with the prefill at scoring time: so does the policy's
            prompt = (tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                      + prompts.CHAIN_PREFILL)
        rows.append({"prompt": prompt, "chosen_label": pair.chosen, "user_id": pair.user_id, "pair": pair.index,
                     "history": json.dumps([h.model_dump(mode="json") for h in pair.history])})
    return Dataset.from_list(rows)


def train_cre(
    data: str | Path,
    out: str | Path,
    *,
    base: str = "embedded",
    init: str | Path | None = None,
    process_config: str | Path | dict | None = None,
    process_backend=None,
    pairs: int = 64,
    steps: int = 50,
    num_generations: int = 4,
    prompts_per_step: int = 1,
    max_completion_length: int = 384,
    temperature: float = 0.9,
    learning_rate: float = 5e-5,
    kl_beta: float = 0.0,
    alpha: float = 0.5,
    beta: float = 1.0,
    format_weight: float = 0.25,
    prefill: bool = True,
    lora_rank: int = 16,
    lora_layers: int = 12,
    history_pairs: int = 3,
    max_chars: int = 600,
    save_steps: int = 10,
    seed: int = 0,
    threads: int | None = None,
    fresh: bool = False,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """CRE: GRPO (TRL GRPOTrainer + LoRA) on full chains; returns the manifest.

    Reward = beta * outcome + format_weight * format [+ alpha * process], by GRPOConfig.reward_weights.
    `init`: a judge folder (e.g. from `train_psi`) whose adapter CRE continues; its base is used.
    `process_config`: a pgenrm config whose backend is the process judge (or `process_backend`, an
    open one); without either there is no process reward, and the manifest says so."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    if num_generations < 2:
        raise ValueError("num_generations must be at least 2: GRPO's advantage compares completions of one prompt")
    out = Path(out)
    s = CRESettings(pairs=pairs, steps=steps, num_generations=num_generations, prompts_per_step=prompts_per_step,
                    max_completion_length=max_completion_length, temperature=temperature, learning_rate=learning_rate,
                    kl_beta=kl_beta, alpha=alpha, beta=beta, format_weight=format_weight, prefill=prefill,
                    lora_rank=lora_rank, lora_layers=lora_layers, history_pairs=history_pairs, max_chars=max_chars,
                    save_steps=save_steps, seed=seed, threads=threads)
    _threads(threads)
    init_manifest = None
    if init is not None:
        init = Path(init)
        if not is_adapter(init):
            raise FileNotFoundError(f"--init {init}: not a judge folder (no adapter_config.json); give a folder "
                                    "written by `pgenrm train psi` or `pgenrm train cre`")
        init_manifest = read_manifest(init) or JudgeManifest()
        base = init_manifest.base or base
    drawn = draw_pairs(data, pairs, history_pairs=history_pairs, seed=seed)
    checkpoints, resume = _checkpoints(out, fresh)

    process_id: Any = None
    if process_backend is not None:
        process_id = {"name": getattr(process_backend, "name", type(process_backend).__name__),
                      "model": getattr(process_backend, "model_name", None)}
    elif process_config is not None:
        process_id = backend_config(process_config).model_dump(mode="json")  # a bad config fails here, early
    uses_process = process_id is not None

    tally: Counter = Counter()
    run = _finished(resume, steps, out)
    if run is None:
        own_process = process_backend is None and process_config is not None
        if own_process:
            _say(progress, "loading the process judge...")
            process_backend, _ = teacher_backend(process_config)
        process = ProcessJudge(process_backend, max_items=history_pairs, max_chars=max_chars) if uses_process else None
        model, tokenizer = _load_base(base_model_dir(base))
        peft_config = None
        if init is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(init), is_trainable=True)
        else:
            peft_config = _lora_config(model, lora_rank, lora_layers)
        funcs = chain_rewards(prefill=prefill, process=process, max_history=history_pairs, tally=tally)
        weights = [beta, format_weight] + ([alpha] if process is not None else [])
        args = GRPOConfig(
            output_dir=str(checkpoints), max_steps=steps,
            per_device_train_batch_size=num_generations * prompts_per_step,
            gradient_accumulation_steps=1, num_generations=num_generations, max_completion_length=max_completion_length,
            temperature=temperature, learning_rate=learning_rate, beta=kl_beta, reward_weights=weights,
            lr_scheduler_type="constant", logging_steps=1, save_steps=save_steps, save_total_limit=2,
            use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, report_to=[], seed=seed, data_seed=seed,
            dataloader_num_workers=0, disable_tqdm=not progress, log_completions=False,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=funcs, args=args,
                              train_dataset=cre_dataset(drawn, tokenizer, s), processing_class=tokenizer,
                              peft_config=peft_config)
        try:
            run = _train(trainer, resume, out)
        finally:
            if own_process:
                process_backend.close()
        del trainer, model
    logged = [h for h in run.log_history if "rewards/outcome/mean" in h]

    def _mean_of(key):
        values = [h[key] for h in logged if key in h and h[key] is not None and math.isfinite(h[key])]
        return round(sum(values) / len(values), 4) if values else None

    completions = tally["completions"]
    manifest = {
        "format": FORMAT,
        "stage": "cre",
        "base": base,
        "init": {"judge": str(init), "stage": init_manifest.stage, "data_hash": init_manifest.data_hash}
                if init is not None else None,
        "criteria": "generated",
        "reader": "parse",
        "objective": ("GRPO (TRL GRPOTrainer) on full evaluation chains for (history view, A/B pair): reward = "
                      f"{beta} * outcome (chosen side strictly higher total) + {format_weight} * format (chain parses)"
                      + (f" + {alpha} * process (a judge's 1-9 rating of preferences and criteria)" if uses_process
                         else "; no process reward (no --process-config)")),
        "process_reward": {"judge": process_id, "weight": alpha} if uses_process else None,
        "data": str(data),
        "data_hash": file_hash(data),
        "seed": seed,
        "settings": asdict(s),
        "scoring": _scoring(history_pairs, max_chars, max_completion_length),
        "command": _command(command, "cre"),
        "metrics": {
            "steps": run.global_step,
            "completions_this_run": completions,
            "parsed_this_run": completions - tally["unparsed"],
            "right_this_run": tally["right"],
            "ties_this_run": tally["tie"],
            "format_rate_this_run": round((completions - tally["unparsed"]) / completions, 4) if completions else None,
            "outcome_rate_this_run": round(tally["right"] / completions, 4) if completions else None,
            "reward_mean": _mean_of("reward"),
            "outcome_mean": _mean_of("rewards/outcome/mean"),
            "format_mean": _mean_of("rewards/format/mean"),
            "process_mean": _mean_of("rewards/process/mean") if uses_process else None,
            "final_loss": run.losses[-1] if run.losses else None,
            "train_loss": run.train_loss,
            "train_seconds_this_run": round(run.seconds, 1),
            "seconds_per_step": run.seconds_per_step,
            "peak_rss_mib": round(peak_rss_mib(), 1),
        },
    }
    write_manifest(out, manifest)
    return manifest


__all__ = [
    "FORMAT", "DEFAULT_TEACHER", "ChainPair", "draw_pairs", "verdict", "canonical_chain", "raw_chain", "TeacherLog",
    "PSISettings", "CRESettings", "train_psi", "train_cre", "chain_rewards", "ProcessJudge", "process_question",
]
