"""What a training stage costs on this machine (`pgenrm bench train`): wall time, compared pairs
per second, peak memory; the score stage's shared-prefix trainer against TRL's SFTTrainer fed the
same candidates as ordinary prompt-completion examples (prompt = the scorer's conversation,
completion = the target digit), same LoRA, same base, same run.

SFTTrainer has no notion of a prefix shared across examples, so it runs the history once per
candidate; the shared-prefix trainer runs it once per item. The ratio is the reason the score stage
has its own `compute_loss`.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def run_train_cost(data: str | Path, steps: int = 4, items_per_step: int = 2, history_pairs: int = 3, targets: int = 2,
                   max_chars: int = 450, lora_layers: int = 10, output: str | Path | None = None,
                   console: Console | None = None) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from pgenrm_plugins.backends.judge_folder import base_model_dir
    from pgenrm_plugins.datasets.bench import load_bench
    from pgenrm_plugins.training.items import ItemSettings, ItemSource, item_conversations
    from pgenrm_plugins.training.score_stage import build_trainer
    from pgenrm_plugins.training.settings import ScoreSettings
    from pgenrm_plugins.training.stage import peak_rss_mib

    console = console or Console()
    source = ItemSource(load_bench(data, strict=True),
                        ItemSettings(history_pairs=history_pairs, targets=targets, seed=0))
    base = base_model_dir("embedded")
    n_items = steps * items_per_step
    pairs = sum(len(source.item(i).pairs) for i in range(n_items))
    rows: dict[str, dict[str, Any]] = {}

    with tempfile.TemporaryDirectory() as tmp:
        settings = ScoreSettings(steps=steps, grad_accum=items_per_step, lora_layers=lora_layers, max_chars=max_chars)
        trainer, _, tokenizer = build_trainer(source, settings, Path(tmp) / "shared", base, progress=False)
        trainer.args.save_strategy = "no"
        t0 = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - t0
        tokens = sum(len(it["prefix"]) + sum(len(t) for t in it["tails"])
                     for it in (trainer.train_dataset[i] for i in range(n_items)))
        rows["score stage (shared prefix)"] = {"seconds": seconds, "tokens": tokens, "peak_rss_mib": peak_rss_mib()}
        del trainer

        examples = []
        for i in range(n_items):
            item = source.item(i)
            for conv, cand in zip(item_conversations(item, max_chars), item.candidates):
                examples.append({"prompt": conv, "completion": [{"role": "assistant", "content": cand.target}]})
        per_step = len(examples) // steps
        layers = 30
        lora = LoraConfig(r=settings.lora_rank, lora_alpha=2 * settings.lora_rank, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                          layers_to_transform=list(range(layers - lora_layers, layers)))
        args = SFTConfig(output_dir=str(Path(tmp) / "sft"), max_steps=steps, per_device_train_batch_size=per_step,
                         learning_rate=settings.learning_rate, use_cpu=not torch.cuda.is_available(), bf16=False,
                         report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, max_length=4096)
        sft = SFTTrainer(model=base, args=args, train_dataset=Dataset.from_list(examples), peft_config=lora,
                         processing_class=tokenizer)
        t0 = time.perf_counter()
        sft.train()
        seconds = time.perf_counter() - t0
        sft_tokens = sum(len(x["input_ids"]) for x in sft.train_dataset)
        rows["TRL SFTTrainer (whole sequences)"] = {"seconds": seconds, "tokens": sft_tokens,
                                                    "peak_rss_mib": peak_rss_mib()}

    table = Table("trainer", "seconds", "compared pairs/s", "tokens run", "peak RSS MiB", "speed-up",
                  title=f"score stage: {n_items} items, {pairs} compared pairs, {steps} optimizer steps, "
                        f"LoRA top {lora_layers} layers")
    slow = rows["TRL SFTTrainer (whole sequences)"]["seconds"]
    for name, r in rows.items():
        r["pairs_per_second"] = pairs / r["seconds"]
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['pairs_per_second']:.3f}", str(r["tokens"]),
                      f"{r['peak_rss_mib']:.0f}", f"{slow / r['seconds']:.1f}x")
    console.print(table)
    console.print("peak RSS is the process's high-water mark so far (the second row includes the first).")
    report = {"data": str(data), "items": n_items, "pairs": pairs, "steps": steps, "rows": rows}
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        Path(output).write_text(json.dumps(report, indent=1))
    return report
