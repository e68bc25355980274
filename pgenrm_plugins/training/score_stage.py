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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgenrm_plugins.chain import prompts
from pgenrm_plugins.training.items import HIGH, Item, ItemSource, item_conversations


@dataclass(frozen=True)
class ScoreStageSettings:
    steps: int = 600
    grad_accum: int = 4  # items per optimizer step
    learning_rate: float = 3e-4
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_layers: int = 12  # LoRA on the top N decoder layers
    max_chars: int = 600  # each text cut to this (keeping start and end), as reward.max_chars
    history_render: str = "full"  # as reward.history_render
    bt_weight: float = 1.0
    seed: int = 0
    threads: int | None = None


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


def lora_model(base_dir: str, rank: int, alpha: int, layers: int):
    """The base causal LM with a LoRA adapter (peft) on every projection of its top `layers` layers."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from pgenrm_plugins.backends.transformers_backend import attention_options

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, **attention_options())
    total = model.config.num_hidden_layers
    top = min(layers, total)
    lora = LoraConfig(
        r=rank, lora_alpha=alpha, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        layers_to_transform=list(range(total - top, total)),
    )
    return get_peft_model(model, lora)


def build_trainer(source: ItemSource, settings: ScoreStageSettings, checkpoints: Path, base_dir: str,
                  progress: bool = True):
    """A `transformers.Trainer` over LoRA on the base judge, with the shared-prefix loss."""

    import torch
    from transformers import AutoTokenizer, Trainer, TrainingArguments

    from pgenrm_plugins.backends.transformers_backend import cache_argument

    if settings.threads:
        torch.set_num_threads(settings.threads)
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = lora_model(base_dir, settings.lora_rank, settings.lora_alpha, settings.lora_layers)
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
        logging_steps=max(1, min(5, settings.steps // 10)), save_steps=max(1, min(10, settings.steps)),
        save_total_limit=2, use_cpu=not torch.cuda.is_available(), report_to=[], seed=settings.seed,
        data_seed=settings.seed, dataloader_num_workers=0, remove_unused_columns=False,
        disable_tqdm=not progress, bf16=False, fp16=False,
    )
    trainer = ScoreSlotTrainer(model=model, args=args, train_dataset=dataset, data_collator=collate)
    return trainer, model, tokenizer


def latest_checkpoint(checkpoints: Path) -> str | None:
    found = sorted(checkpoints.glob("checkpoint-*"),
                   key=lambda p: int(p.name.split("-")[-1]) if p.name.split("-")[-1].isdigit() else -1)
    return str(found[-1]) if found else None


__all__ = ["ScoreStageSettings", "build_trainer", "latest_checkpoint", "item_loss", "tokenize_item"]
