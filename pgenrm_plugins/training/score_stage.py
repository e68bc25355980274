"""The score stage: train the digit slot the logprob reader reads (`reward.criteria: none`).

Why this stage, and why its loss is our own:
- The reader turns the judge's next-token distribution over the digits 1-9 into a reward. Trained
  naively (a Bradley-Terry loss on the expected digit, one pair per step) the gradient vanishes:
  the digit softmax of the base model is saturated, and one 600-token history per pair makes each
  step cost seconds for one comparison.
- Here the loss is a cross-entropy over the nine digits (target 9 for the response the user
  chose, 1 for the one they rejected and for degenerate copies) plus a Bradley-Terry term on the
  log-odds log p(9) - log p(1) of each compared pair. Neither saturates: the cross-entropy's
  gradient is p - target, whatever the base model's confidence.
- One history view serves every candidate of an item: the prefix (system prompt and history) runs
  once with gradients and its keys and values are repeated for the candidates, which run only their
  own tails. No TRL trainer shares a prefix across examples (SFTTrainer packs or pads whole
  sequences), so this stage is a `transformers.Trainer` (resume, schedule, checkpoints, progress)
  with this loss in `compute_loss`; `pgenrm bench train` measures it against SFTTrainer's way.
- LoRA (peft) on the top layers only: the layers below run without building a graph, which cuts
  the backward pass, and the adapter is a few MB that ships in the repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from pgenrm_plugins.chain import prompts
from pgenrm_plugins.training.items import HIGH, Item, ItemSource, item_conversations
from pgenrm_plugins.training.settings import ScoreSettings
from pgenrm_plugins.training.stage import Checkpoints, command_text, lora_model

PROTOCOL = "direct-v1"


def encode(tokenizer, conversation: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return list(ids)


def common_prefix(rows: list[list[int]]) -> int:
    n = min(len(r) for r in rows) - 1  # every row keeps at least its last token
    for k in range(n):
        if any(r[k] != rows[0][k] for r in rows[1:]):
            return k
    return n


class ItemDataset:
    """`Trainer`-facing dataset: index -> tokenized item (a pure function of the index)."""

    def __init__(self, source: ItemSource, tokenizer, length: int, max_chars: int, render: str = "full"):
        self.source, self.tokenizer, self.length = source, tokenizer, length
        self.max_chars, self.render = max_chars, render
        self.digit_ids = digit_ids(tokenizer)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        return tokenize_item(self.source.item(index), self.tokenizer, self.max_chars, self.render)


def tokenize_item(item: Item, tokenizer, max_chars: int, render: str = "full") -> dict[str, Any]:
    rows = [encode(tokenizer, conv) for conv in item_conversations(item, max_chars, render)]
    return tokenize_rows(rows, [c.target for c in item.candidates], item.pairs)


def tokenize_rows(rows: list[list[int]], targets: list[str],
                  pairs: list[tuple[int, int]] | None = None) -> dict[str, Any]:
    """Token rows that `item_loss` reads: their common prefix once, each row's own tail, and each
    row's target digit (and the pairs compared, if any)."""
    root = common_prefix(rows)
    return {"prefix": rows[0][:root], "tails": [r[root:] for r in rows],
            "targets": [prompts.DIGITS.index(t) for t in targets], "pairs": pairs or []}


def collate(batch: list[dict[str, Any]]):
    """Items stay whole (each has its own prefix); the loss runs them one by one."""
    return {"items": batch}


def digit_ids(tokenizer) -> list[int]:
    """The token ids of the nine digits the logprob reader reads."""
    return [tokenizer.convert_tokens_to_ids(d) for d in prompts.DIGITS]


def item_loss(model, item: dict[str, Any], digit_ids, bt_weight: float, cache_arg: str):
    """Cross-entropy over the digits plus Bradley-Terry on compared pairs, for one item."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    prefix = torch.tensor([item["prefix"]], device=device)
    out = model(input_ids=prefix, use_cache=True)
    cache = getattr(out, cache_arg)
    tails = item["tails"]
    k = len(tails)
    cache.batch_repeat_interleave(k)
    width = max(len(t) for t in tails)
    ids = torch.zeros((k, width), dtype=torch.long, device=device)
    mask = torch.zeros((k, width), dtype=torch.long, device=device)
    for i, t in enumerate(tails):  # left padding: every row's last token sits at the end
        ids[i, width - len(t):] = torch.tensor(t, device=device)
        mask[i, width - len(t):] = 1
    root = prefix.shape[1]
    pads = width - mask.sum(dim=1, keepdim=True)
    positions = (root + torch.arange(width, device=device)[None, :] - pads).clamp(min=0)
    full_mask = torch.cat([torch.ones((k, root), dtype=torch.long, device=device), mask], dim=1)
    logits = model(input_ids=ids, attention_mask=full_mask, position_ids=positions, logits_to_keep=1,
                   **{cache_arg: cache}).logits[:, -1, :]
    logp = F.log_softmax(logits[:, digit_ids].float(), dim=-1)  # over the nine digits only
    targets = torch.tensor(item["targets"], device=device)
    loss = F.nll_loss(logp, targets)
    high, low = prompts.DIGITS.index(HIGH), 0
    if item["pairs"] and bt_weight > 0:
        odds = logp[:, high] - logp[:, low]
        a = torch.tensor([p[0] for p in item["pairs"]], device=device)
        b = torch.tensor([p[1] for p in item["pairs"]], device=device)
        loss = loss + bt_weight * F.softplus(-(odds[a] - odds[b])).mean()
    return loss


def build_trainer(source: ItemSource, settings: ScoreSettings, checkpoints: Path, base_dir: str,
                  progress: bool = True):
    """A `transformers.Trainer` over LoRA on the base judge, with the shared-prefix loss."""

    import torch
    from transformers import Trainer, TrainingArguments

    from pgenrm_plugins.backends.transformers_backend import cache_argument

    settings.apply_threads()
    model, tokenizer = lora_model(base_dir, settings)
    dataset = ItemDataset(source, tokenizer, settings.steps * settings.grad_accum, settings.max_chars,
                          settings.history_render)
    cache_arg = cache_argument(model.get_base_model().forward)

    class ScoreSlotTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            items = inputs["items"]
            loss = (sum(item_loss(model, it, dataset.digit_ids, settings.bt_weight, cache_arg) for it in items)
                    / len(items))
            return (loss, None) if return_outputs else loss

    args = TrainingArguments(
        output_dir=str(checkpoints), max_steps=settings.steps, per_device_train_batch_size=1,
        gradient_accumulation_steps=settings.grad_accum, learning_rate=settings.learning_rate,
        lr_scheduler_type="cosine", warmup_steps=max(1, settings.steps // 20), weight_decay=0.0,
        logging_steps=max(1, min(5, settings.steps // 10)), save_steps=min(settings.save_steps, settings.steps),
        save_total_limit=2, use_cpu=not torch.cuda.is_available(), report_to=[], seed=settings.seed,
        data_seed=settings.seed, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=not progress, bf16=False, fp16=False,
    )
    trainer = ScoreSlotTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    return trainer, model, tokenizer


def train_score(data: str | Path, out: str | Path, settings: ScoreSettings | None = None, *, base: str = "embedded",
                eval_data: str | Path | None = None, eval_rows: int = 64, fresh: bool = False, progress: bool = True,
                command: Sequence[str] | None = None) -> dict[str, Any]:
    """Train the score slot on the train rows of `data`; write the judge to `out`; return its manifest.
    Resumes from OUT/checkpoints; `eval_data`: held-out rows whose accuracy goes into the manifest."""
    from pgenrm_plugins.backends.judge_folder import base_model_dir, write_manifest
    from pgenrm_plugins.datasets.bench import load_bench

    settings = settings or ScoreSettings()
    checkpoints = Checkpoints(out, "score", settings, data, fresh=fresh)
    source = ItemSource(load_bench(data, strict=True), settings.items())
    run = checkpoints.finished(settings.steps)
    if run is None:
        trainer, _, _ = build_trainer(source, settings, checkpoints.dir, base_model_dir(base), progress=progress)
        run = checkpoints.train(trainer)
        del trainer
    manifest: dict[str, Any] = {
        "protocol": PROTOCOL,
        "criteria": "none",
        "reader": "logprob",
        "stage": "score",
        "base": base,
        "objective": "cross-entropy over the digits 1-9 (9 chosen, 1 rejected/degenerate) + Bradley-Terry on "
                     "log p(9) - log p(1) of compared pairs; shared history prefix per item",
        "data": str(data),
        "data_hash": checkpoints.data_hash,
        "train_users": len(source),
        "seed": settings.seed,
        "settings": settings.model_dump(),
        "scoring": {"reward": {"criteria": "none", "max_history": settings.history_pairs,
                               "max_chars": settings.max_chars, "history_render": settings.history_render,
                               "compare": settings.compare}},
        "command": command_text(command, "score"),
        "metrics": {
            **run.metrics(),
            "items_per_second": round(run.done * settings.grad_accum / run.seconds, 3) if run.seconds > 0 and run.done
            else None,
        },
    }
    write_manifest(out, manifest)
    if eval_data is not None:
        from pgenrm_plugins.training.evaluate import evaluate

        manifest["metrics"]["eval"] = evaluate(out, eval_data, max_rows=eval_rows, threads=settings.threads)
        write_manifest(out, manifest)
    return manifest


__all__ = ["PROTOCOL", "ScoreSettings", "build_trainer", "train_score", "item_loss", "tokenize_item"]
