"""CRE (method item 6), on TRL: GRPOTrainer on the (history view, A/B pair) prompts of
`chain_pairs`, reward = beta * outcome (the chosen side gets the strictly higher total) + format (the
chain parses) [+ alpha * process: a judge backend rates whether the chain's preferences and criteria
follow from the history]. The paper's code never released it; this is our reading of the paper.
Resumes from `OUT/checkpoints` like every stage.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

from pgenrm_plugins.backends.judge_folder import (
    JudgeManifest,
    base_model_dir,
    is_adapter,
    read_manifest,
    write_manifest,
)
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import ParsedChain, ParseFailure
from pgenrm_plugins.scoring.modes import expected_digit
from pgenrm_plugins.training.chain_pairs import (
    PROTOCOL,
    ChainPair,
    backend_config,
    chain_scoring,
    draw_pairs,
    rounded,
    teacher_backend,
    verdict,
)
from pgenrm_plugins.training.settings import CRESettings
from pgenrm_plugins.training.stage import (
    Checkpoints,
    command_text,
    load_base,
    lora_config,
    say,
)
from pgenrm_plugins.types import HistoryItem

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
            "criteria": [{"name": c.name, "weight": rounded(c.weight, 1)} for c in parsed.criteria]}
    user = (f"## The user's past choices\n{prompts.history_block(history, None, max_items, max_chars)}\n\n"
            f"## What the reward model concluded about this user\n{json.dumps(said, ensure_ascii=False)}\n\n"
            f"{PROCESS_QUESTION}")
    return [{"role": "system", "content": PROCESS_SYSTEM}, {"role": "user", "content": user}]


class ProcessReward:
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
            digits = [expected_digit(p) for p in self.backend.next_token_probs(conversations, prompts.DIGITS)]
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


def chain_rewards(*, prefill: bool, process: ProcessReward | None = None, max_history: int = 3,
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


def train_cre(data: str | Path, out: str | Path, settings: CRESettings | None = None, *, base: str = "embedded",
              init: str | Path | None = None, process_config: str | Path | dict | None = None, process_backend=None,
              fresh: bool = False, progress: bool = True, command: Sequence[str] | None = None) -> dict[str, Any]:
    """CRE: GRPO (TRL GRPOTrainer + LoRA) on full chains; returns the manifest.

    Reward = beta * outcome + format_weight * format [+ alpha * process], by GRPOConfig.reward_weights.
    `init`: a judge folder (e.g. from `train_psi`) whose adapter CRE continues; its base is used.
    `process_config`: a pgenrm config whose backend is the process judge (or `process_backend`, an
    open one); without either there is no process reward, and the manifest says so."""
    s = settings or CRESettings()
    out = Path(out)
    s.apply_threads()
    init_manifest = None
    if init is not None:
        init = Path(init)
        if not is_adapter(init):
            raise FileNotFoundError(f"--init {init}: not a judge folder (no adapter_config.json); give a folder "
                                    "written by `pgenrm train psi` or `pgenrm train cre`")
        init_manifest = read_manifest(init) or JudgeManifest()
        base = init_manifest.base or base
    drawn = draw_pairs(data, s.pairs, history_pairs=s.history_pairs, seed=s.seed)
    checkpoints = Checkpoints(out, "cre", s, data, fresh=fresh, init=init)

    process_id: Any = None
    if process_backend is not None:
        process_id = {"name": getattr(process_backend, "name", type(process_backend).__name__),
                      "model": getattr(process_backend, "model_name", None)}
    elif process_config is not None:
        process_id = backend_config(process_config).model_dump(mode="json")  # a bad config fails here, early
    uses_process = process_id is not None

    tally: Counter = Counter()
    run = checkpoints.finished(s.steps)
    if run is None:
        own_process = process_backend is None and process_config is not None
        if own_process:
            say(progress, "loading the process judge...")
            process_backend, _ = teacher_backend(process_config)
        process = ProcessReward(process_backend, max_items=s.history_pairs, max_chars=s.max_chars) if uses_process \
            else None
        try:
            run = checkpoints.train(_grpo_trainer(drawn, checkpoints.dir, s, base, init, process, tally, progress))
        finally:
            if own_process:
                process_backend.close()
    logged = [h for h in run.log_history if "rewards/outcome/mean" in h]

    def _mean_of(key):
        values = [h[key] for h in logged if key in h and h[key] is not None and math.isfinite(h[key])]
        return round(sum(values) / len(values), 4) if values else None

    completions = tally["completions"]
    manifest = {
        "protocol": PROTOCOL,
        "stage": "cre",
        "base": base,
        "init": {"judge": str(init), "stage": init_manifest.stage, "data_hash": init_manifest.data_hash}
                if init is not None else None,
        "criteria": "generated",
        "reader": "parse",
        "objective": ("GRPO (TRL GRPOTrainer) on full evaluation chains for (history view, A/B pair): reward = "
                      f"{s.beta} * outcome (chosen side strictly higher total) + {s.format_weight} * format (chain "
                      "parses)" + (f" + {s.alpha} * process (a judge's 1-9 rating of preferences and criteria)"
                                   if uses_process else "; no process reward (no --process-config)")),
        "process_reward": {"judge": process_id, "weight": s.alpha} if uses_process else None,
        "data": str(data),
        "data_hash": checkpoints.data_hash,
        "seed": s.seed,
        "settings": s.model_dump(),
        "scoring": chain_scoring(s.history_pairs, s.max_chars, s.max_completion_length),
        "command": command_text(command, "cre"),
        "metrics": {
            **run.metrics(),
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
        },
    }
    write_manifest(out, manifest)
    return manifest


def _grpo_trainer(drawn: list[ChainPair], checkpoints: Path, s: CRESettings, base: str, init: Path | None,
                  process: ProcessReward | None, tally: Counter, progress: bool):
    import torch
    from trl import GRPOConfig, GRPOTrainer

    model, tokenizer = load_base(base_model_dir(base))
    peft_config = None
    if init is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(init), is_trainable=True)
    else:
        peft_config = lora_config(model.config.num_hidden_layers, s.lora_rank, s.lora_layers)
    funcs = chain_rewards(prefill=s.prefill, process=process, max_history=s.history_pairs, tally=tally)
    weights = [s.beta, s.format_weight] + ([s.alpha] if process is not None else [])
    args = GRPOConfig(
        output_dir=str(checkpoints), max_steps=s.steps,
        per_device_train_batch_size=s.num_generations * s.prompts_per_step, gradient_accumulation_steps=1,
        num_generations=s.num_generations, max_completion_length=s.max_completion_length,
        temperature=s.temperature, learning_rate=s.learning_rate, beta=s.kl_beta, reward_weights=weights,
        lr_scheduler_type="constant", logging_steps=1, save_steps=s.save_steps, save_total_limit=2,
        use_cpu=not torch.cuda.is_available(), bf16=False, fp16=False, report_to=[], seed=s.seed, data_seed=s.seed,
        dataloader_num_workers=0, disable_tqdm=not progress, log_completions=False,
    )
    return GRPOTrainer(model=model, reward_funcs=funcs, args=args, train_dataset=cre_dataset(drawn, tokenizer, s),
                       processing_class=tokenizer, peft_config=peft_config)


__all__ = ["CRESettings", "train_cre", "chain_rewards", "ProcessReward", "process_question", "cre_dataset"]
