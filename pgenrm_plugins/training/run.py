"""`pgenrm train`: the Python API behind the command. Each stage writes a judge folder (a LoRA
adapter + `pgenrm_judge.json`) that the transformers backend loads by path.

    train_score(data, out)      the score slot of `reward.criteria: none` (judge J's stage)
    train_synthesis(data, out)  the synthesis judge (`reward.criteria: synthesis`, the embedded
                                default): persona and weighted criteria from the history, then
                                one digit per (reply, criterion); teacher `stated`

Runs are resumable: checkpoints go to `OUT/checkpoints` every `save_steps`; running the same
command again continues from the newest one (same items, same schedule, same seed).
"""

from __future__ import annotations

import hashlib
import resource
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from pgenrm_plugins.backends.judge_folder import base_model_dir, is_adapter, read_manifest, write_manifest
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.training.items import ItemSettings, ItemSource

FORMAT = "direct-v1"


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_metrics(trainer, result, seconds: float) -> dict[str, Any]:
    """What every stage's manifest records of its run: steps, losses, time, memory."""
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": trainer.state.global_step, "first_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None, "train_seconds_this_run": round(seconds, 1),
            "peak_rss_mib": round(peak_rss_mib(), 1), "train_loss": getattr(result, "training_loss", None)}


def train_score(
    data: str | Path,
    out: str | Path,
    *,
    base: str = "embedded",
    steps: int = 600,
    grad_accum: int = 4,
    learning_rate: float = 3e-4,
    lora_rank: int = 16,
    lora_layers: int = 12,
    history_pairs: int = 3,
    targets: int = 2,
    max_chars: int = 600,
    history_render: str = "full",
    compare: bool = False,
    seed: int = 0,
    threads: int | None = None,
    eval_data: str | Path | None = None,
    eval_rows: int = 64,
    fresh: bool = False,
    progress: bool = True,
    command: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train the score slot on the train rows of `data`; write the judge to `out`; return its manifest."""
    import shutil

    from pgenrm_plugins.training.score_stage import ScoreStageSettings, build_trainer, latest_checkpoint

    out = Path(out)
    checkpoints = out / "checkpoints"
    if fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    bench = load_bench(data, strict=True)
    item_settings = ItemSettings(history_pairs=history_pairs, targets=targets, compare=compare, seed=seed)
    source = ItemSource(bench, item_settings)
    settings = ScoreStageSettings(steps=steps, grad_accum=grad_accum, learning_rate=learning_rate, lora_rank=lora_rank,
                                  lora_alpha=2 * lora_rank, lora_layers=lora_layers, max_chars=max_chars,
                                  history_render=history_render, seed=seed,
                                  threads=threads)
    base_dir = base_model_dir(base)
    trainer, model, tokenizer = build_trainer(source, settings, checkpoints, base_dir, progress=progress)
    resume = latest_checkpoint(checkpoints)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    done_steps = trainer.state.global_step - (int(Path(resume).name.split("-")[-1]) if resume else 0)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))  # the adapter only: adapter_config.json + adapter_model.safetensors
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "criteria": "none",
        "reader": "logprob",
        "stage": "score",
        "base": base,
        "objective": "cross-entropy over the digits 1-9 (9 chosen, 1 rejected/degenerate) + Bradley-Terry on "
                     "log p(9) - log p(1) of compared pairs; shared history prefix per item",
        "data": str(data),
        "data_hash": file_hash(data),
        "train_users": len(source),
        "seed": seed,
        "settings": {**asdict(settings), **{f"items_{k}": v for k, v in asdict(item_settings).items()}},
        "scoring": {"reward": {"criteria": "none", "max_history": history_pairs, "max_chars": max_chars,
                               "history_render": history_render, "compare": compare}},
        "command": " ".join(shlex.quote(a) for a in (command or ["pgenrm", "train", "score", "..."])),
        "metrics": {
            **run_metrics(trainer, result, seconds),
            "items_per_second": round(done_steps * grad_accum / seconds, 3) if seconds > 0 and done_steps > 0 else None,
        },
    }
    write_manifest(out, manifest)
    del trainer, model
    if eval_data is not None:
        manifest["metrics"]["eval"] = evaluate(out, eval_data, max_rows=eval_rows, threads=threads)
        write_manifest(out, manifest)
    return manifest


def train_synthesis(data: str | Path, out: str | Path, settings=None, *, base: str = "embedded",
                    init: str | Path | None = None, fresh: bool = False, progress: bool = True,
                    command: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the synthesis judge on the train rows of `data` (teacher `stated`: the truth file beside
    synthetic rows); write it to `out`; return its manifest. Resumes from OUT/checkpoints. `init`: a
    synthesis judge folder to continue (e.g. the checks alone first, `check_share=1`, then both)."""
    import shutil

    from pgenrm_plugins.datasets.synthetic import load_truth
    from pgenrm_plugins.training.score_stage import latest_checkpoint
    from pgenrm_plugins.training.synthesis_stage import FORMAT as SYNTHESIS_FORMAT
    from pgenrm_plugins.training.synthesis_stage import (
        StatedTeacher,
        SynthesisExamples,
        SynthesisSettings,
        build_trainer,
    )

    settings = settings or SynthesisSettings()
    init_manifest = None
    if init is not None:
        init = Path(init)
        init_manifest = read_manifest(init) if is_adapter(init) else None
        if init_manifest is None or init_manifest.criteria != "synthesis":
            raise ValueError(f"--init {init}: not a synthesis judge folder (adapter_config.json and a manifest "
                             "with criteria 'synthesis'); give a folder `pgenrm train synthesis` wrote")
        base = init_manifest.base or base
    out = Path(out)
    checkpoints = out / "checkpoints"
    if fresh and checkpoints.exists():
        shutil.rmtree(checkpoints)
    bench = load_bench(data, strict=True)
    teacher = StatedTeacher(bench, load_truth(data))
    trainer, model, _ = build_trainer(SynthesisExamples(teacher, settings), settings, checkpoints,
                                      base_model_dir(base), progress=progress, init=None if init is None else str(init))
    resume = latest_checkpoint(checkpoints)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    last = {k: v for h in trainer.state.log_history for k, v in h.items() if k.endswith("_loss") and k != "train_loss"}
    manifest: dict[str, Any] = {
        "format": SYNTHESIS_FORMAT,
        "criteria": "synthesis",
        "reader": "logprob",
        "stage": "synthesis",
        "base": base,
        "teacher": "stated",
        "objective": "per-example mean token cross-entropy: history view -> the teacher's synthesis, and "
                     "(conversation, reply, criterion) -> 9 met / 1 not met",
        "data": str(data),
        "data_hash": file_hash(data),
        "train_users": len(teacher.user_ids),
        "seed": settings.seed,
        "settings": asdict(settings),
        "init": {"judge": str(init), "data_hash": init_manifest.data_hash,
                 "check_share": (init_manifest.settings or {}).get("check_share")} if init_manifest else None,
        "scoring": {"reward": {"criteria": "synthesis", "max_history": settings.max_history,
                               "max_chars": settings.max_chars, "history_render": "contrast",
                               "criterion_first": settings.criterion_first},
                    "sampling": {"chains": 1}},
        "command": " ".join(shlex.quote(a) for a in (command or ["pgenrm", "train", "synthesis", "..."])),
        "metrics": {
            **run_metrics(trainer, result, seconds),
            "device": "cuda" if trainer.args.device.type == "cuda" else "cpu",
            **{f"final_{k}": v for k, v in last.items()},  # each step's own loss at the last log
        },
    }
    write_manifest(out, manifest)
    return manifest


def evaluate(judge: str | Path, data: str | Path, *, max_rows: int = 64, threads: int | None = None,
             chains: int = 1) -> dict[str, Any]:
    """Pairwise accuracy of a judge folder on the test rows of `data` (each user's train rows are the
    history): chosen must get the higher reward; a tie counts as wrong. The judge is read as its
    manifest says it was trained (history pairs, clipping, rendering)."""
    from pgenrm_plugins.scoring import Scorer

    bench = load_bench(data, strict=True)
    histories = bench.histories("train")
    rows = [r for r in bench.split("test") if r.user_id in histories][:max_rows]
    if not rows:
        raise ValueError(f"{data}: no test row of a user with train rows")
    options: dict[str, Any] = {"model": str(judge)}
    if threads:
        options["threads"] = threads
    scorer = Scorer({"backend": {"name": "transformers", "options": options},
                     "sampling": {"chains": chains},
                     "reward": {"mode": "group"}})  # the rest as the judge's manifest says
    try:
        results = scorer.score([{"user_id": r.user_id, "history": [h.model_dump() for h in histories[r.user_id]],
                                 "prompt": [m.model_dump() for m in r.context],
                                 "completions": [r.chosen.content, r.rejected.content]} for r in rows])
    finally:
        scorer.close()
    correct = sum(res.rewards[0] > res.rewards[1] for res in results)
    return {"data": str(data), "pairs": len(rows), "accuracy": round(correct / len(rows), 4),
            "mean_margin": round(sum(res.rewards[0] - res.rewards[1] for res in results) / len(rows), 4)}


def command_line() -> list[str]:
    return ["pgenrm", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("pgenrm") else list(sys.argv)


__all__ = ["train_score", "train_synthesis", "evaluate", "FORMAT"]
