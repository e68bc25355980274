"""PSI (method item 6), on TRL: a teacher writes evaluation chains for (history view, A/B pair); the
chains that parse AND give the response the user chose the strictly higher total are kept; TRL's
SFTTrainer fine-tunes a LoRA on them. The paper's code never released it; this is our reading.

Every teacher output is kept in `OUT/teacher.jsonl` (appended and flushed after each backend call),
so a rerun (or a rerun with more --samples) asks only what is missing; `--fresh` never deletes it.
The fine-tuning resumes from `OUT/checkpoints` like every stage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from pgenrm_plugins.backends.judge_folder import base_model_dir, write_manifest
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.scoring.modes import content_seed
from pgenrm_plugins.training.chain_pairs import (
    PROTOCOL,
    ChainPair,
    backend_config,
    canonical_chain,
    chain_scoring,
    draw_pairs,
    raw_chain,
    teacher_backend,
    verdict,
)
from pgenrm_plugins.training.settings import PSISettings
from pgenrm_plugins.training.stage import (
    Checkpoints,
    command_text,
    load_base,
    lora_config,
    say,
)

TEACHER_LOG = "teacher.jsonl"


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
        say(progress, f"teacher: {start + len(chunk)}/{len(todo)} pairs asked "
                       f"({time.perf_counter() - started:.0f} s)")
    return {"pairs_asked_this_run": asked, "chains_sampled_this_run": sampled,
            "teacher_seconds_this_run": round(time.perf_counter() - started, 1)}


def teacher_key(pair: ChainPair, teacher_id: dict, s: PSISettings) -> tuple[str, int]:
    """(log key, request seed) of a pair: everything the teacher's samples depend on but their count."""
    request_seed = content_seed(s.seed, "teacher", pair.index)
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


def train_psi(data: str | Path, out: str | Path, settings: PSISettings | None = None, *, base: str = "embedded",
              teacher_config: str | Path | dict | None = None, teacher=None, fresh: bool = False,
              progress: bool = True, command: Sequence[str] | None = None) -> dict[str, Any]:
    """PSI: teacher chains kept when right, then SFT (TRL SFTTrainer + LoRA); returns the manifest.

    `teacher_config`: a pgenrm config (file or dict) whose `backend` is the teacher; default the
    untrained embedded base through the transformers backend. `teacher`: an open backend to use
    instead (with `teacher_config` too, that config names it in the log, so a rerun that loads
    the config itself finds its outputs). Raises ValueError when no chain was
    kept: there is nothing honest to fine-tune on."""
    s = settings or PSISettings()
    out = Path(out)
    s.apply_threads()
    drawn = draw_pairs(data, s.pairs, history_pairs=s.history_pairs, seed=s.seed)
    # Never deleted, not even by `fresh`: each output is keyed by everything it depends on.
    log = TeacherLog(out / TEACHER_LOG)
    own_teacher = teacher is None
    if own_teacher or teacher_config is not None:  # a bad config fails here, before any work
        teacher_id = backend_config(teacher_config).model_dump(mode="json")
    else:
        teacher_id = {"name": getattr(teacher, "name", type(teacher).__name__),
                      "model": getattr(teacher, "model_name", None)}
    missing = [p for p in drawn if len(log.have(teacher_key(p, teacher_id, s)[0])) < s.samples]
    asked = {"pairs_asked_this_run": 0, "chains_sampled_this_run": 0, "teacher_seconds_this_run": 0.0}
    if missing:
        if own_teacher:
            say(progress, "loading the teacher...")
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
    say(progress, f"teacher: {parsed}/{sampled} chains parsed, {kept} kept (right), {tally['tie']} ties, "
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

    checkpoints = Checkpoints(out, "psi", s, data, fresh=fresh)
    run = checkpoints.finished(s.steps)
    if run is None:
        run = checkpoints.train(_sft_trainer(examples, checkpoints.dir, s, base, progress))
    manifest = {
        "protocol": PROTOCOL,
        "stage": "psi",
        "base": base,
        "criteria": "generated",
        "reader": "parse",
        "objective": "SFT (TRL SFTTrainer, completion-only loss) on full evaluation chains written by a teacher for "
                     "(history view, A/B pair), kept when they parse and give the chosen response the strictly "
                     f"higher total; chain text: {s.chain_text}",
        "teacher": teacher_id,
        "data": str(data),
        "data_hash": checkpoints.data_hash,
        "seed": s.seed,
        "settings": s.model_dump(),
        "scoring": chain_scoring(s.history_pairs, s.max_chars, s.teacher_max_new_tokens),
        "command": command_text(command, "psi"),
        "metrics": {**teacher_metrics, "examples": len(examples), **run.metrics()},
    }
    write_manifest(out, manifest)
    return manifest


def _sft_trainer(examples: list[dict], checkpoints: Path, s: PSISettings, base: str, progress: bool):
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_base(base_model_dir(base))
    args = SFTConfig(
        output_dir=str(checkpoints), max_steps=s.steps, per_device_train_batch_size=1,
        gradient_accumulation_steps=s.grad_accum, learning_rate=s.learning_rate, lr_scheduler_type="cosine",
        warmup_steps=max(1, s.steps // 20), weight_decay=0.0, logging_steps=1, save_steps=s.save_steps,
        save_total_limit=2, use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, report_to=[],
        seed=s.seed, data_seed=s.seed, max_length=None, dataloader_num_workers=0, disable_tqdm=not progress,
    )
    return SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
                      peft_config=lora_config(model.config.num_hidden_layers, s.lora_rank, s.lora_layers))


__all__ = ["PSISettings", "TeacherLog", "TEACHER_LOG", "train_psi", "ask_teacher", "kept_chains", "teacher_key"]
