"""What every training stage shares: its checkpoints (and the resume check), its LoRA and its run
record. Each stage's settings are declared in `settings.py`."""

from __future__ import annotations

import hashlib
import json
import resource
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from pgenrm_plugins.training.settings import StageSettings

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


# --- checkpoints -------------------------------------------------------------------------------------


def latest_checkpoint(checkpoints: Path) -> str | None:
    found = sorted(checkpoints.glob("checkpoint-*"),
                   key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return str(found[-1]) if found else None


def step_of(checkpoint: str | None) -> int:
    return int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0


@dataclass
class Run:
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

    def metrics(self) -> dict[str, Any]:
        """What every stage's manifest records of its run: steps, losses, time, memory."""
        losses = self.losses
        return {"steps": self.global_step, "first_loss": losses[0] if losses else None,
                "final_loss": losses[-1] if losses else None, "train_loss": self.train_loss,
                "train_seconds_this_run": round(self.seconds, 1), "seconds_per_step": self.seconds_per_step,
                "peak_rss_mib": round(peak_rss_mib(), 1)}


class Checkpoints:
    """OUT/checkpoints of one stage: where a run resumes from, and what it started with.

    `fresh` deletes them first. Resuming with settings or data other than the recorded ones raises
    ValueError naming each difference (`StageSettings.RUN_ONLY` fields may change: more --steps
    trains on)."""

    def __init__(self, out: str | Path, stage: str, settings: StageSettings, data: str | Path, *,
                 fresh: bool = False, init: Any = None):
        self.out = Path(out)
        self.dir = self.out / "checkpoints"
        if fresh and self.dir.exists():
            shutil.rmtree(self.dir)
        self.resume = latest_checkpoint(self.dir)
        self.data_hash = file_hash(data)  # the manifest records it too
        record = {"stage": stage, "data_hash": self.data_hash, "init": None if init is None else str(init),
                  "settings": settings.model_dump(mode="json", exclude=set(settings.RUN_ONLY))}
        path = self.dir / "settings.json"
        if self.resume and path.is_file():
            self._check(json.loads(path.read_text(encoding="utf-8")), record)
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")  # never a half-written record
        tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
        tmp.replace(path)

    def _check(self, saved: dict[str, Any], now: dict[str, Any]) -> None:
        differ = [f"--{k.replace('_', '-')} {saved['settings'].get(k)!r} (now {v!r})"
                  for k, v in now["settings"].items() if saved["settings"].get(k, v) != v]
        differ += [f"{k} {saved.get(k)!r} (now {now[k]!r})" for k in ("stage", "data_hash", "init")
                   if saved.get(k) != now[k]]
        if differ:
            raise ValueError(f"{self.dir} holds a run started with other settings: {'; '.join(differ)}. Run the "
                             "same command as before to resume it, or add --fresh to start over.")

    def finished(self, steps: int) -> Run | None:
        """A checkpoint already at `steps`: its adapter becomes the judge's, and nothing is trained.
        (transformers' Trainer would train one more step when resumed at max_steps.)"""
        if not self.resume or step_of(self.resume) < steps:
            return None
        state = json.loads((Path(self.resume) / "trainer_state.json").read_text(encoding="utf-8"))
        self.out.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copy2(Path(self.resume) / name, self.out / name)
        return Run(int(state["global_step"]), state.get("log_history", []), 0.0, 0, None)

    def train(self, trainer) -> Run:
        """Train from the newest checkpoint (if any), then save the adapter alone to OUT."""
        started = time.perf_counter()
        result = trainer.train(resume_from_checkpoint=self.resume)
        seconds = time.perf_counter() - started
        self.out.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(str(self.out))  # adapter_config.json + adapter_model.safetensors
        return Run(trainer.state.global_step, list(trainer.state.log_history), seconds,
                   trainer.state.global_step - step_of(self.resume), getattr(result, "training_loss", None))


# --- the model ------------------------------------------------------------------------------------------


def lora_config(num_layers: int, rank: int, layers: int, alpha: int | None = None):
    """LoRA (peft) on every projection of the top `layers` decoder layers: the layers below run
    without building a graph, and the adapter is a few MB."""
    from peft import LoraConfig

    top = min(layers, num_layers)
    return LoraConfig(r=rank, lora_alpha=alpha or 2 * rank, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=LORA_TARGETS, layers_to_transform=list(range(num_layers - top, num_layers)))


def load_base(base_dir: str):
    """(float32 causal LM, tokenizer with a pad token) of a base folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pgenrm_plugins.backends.transformers_backend import attention_options

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **attention_options())
    return model, tokenizer


def lora_model(base_dir: str, settings: StageSettings, init: str | Path | None = None):
    """(base with a trainable LoRA, tokenizer): a new adapter, or the one of judge folder `init`."""
    from peft import PeftModel, get_peft_model

    model, tokenizer = load_base(base_dir)
    if init is not None:
        return PeftModel.from_pretrained(model, str(init), is_trainable=True), tokenizer
    config = lora_config(model.config.num_hidden_layers, settings.lora_rank, settings.lora_layers)
    return get_peft_model(model, config), tokenizer


# --- the run record -------------------------------------------------------------------------------------


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def command_text(command: Sequence[str] | None, stage: str) -> str:
    return " ".join(shlex.quote(a) for a in (command or ["pgenrm", "train", stage, "..."]))


def command_line() -> list[str]:
    return ["pgenrm", *sys.argv[1:]] if sys.argv and sys.argv[0].endswith("pgenrm") else list(sys.argv)


def say(progress: bool, message: str) -> None:
    if progress:
        print(message, file=sys.stderr, flush=True)


__all__ = ["Checkpoints", "Run", "latest_checkpoint", "lora_config", "load_base", "lora_model",
           "file_hash", "peak_rss_mib", "command_text", "command_line", "say"]
