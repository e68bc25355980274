"""`pgenrm recipe run personalize-cpu`: the same policy, trained for two opposite users, moves toward each.

    two synthetic users of opposite latent types (known weights)
    ->  SmolLM2-135M + LoRA, GRPO in TRL, once per user, rewarded by `truth` | `judge` | `judge-no-history`
    ->  greedy answers to held-out questions, before and after, under BOTH users' true weights
    ->  report.md (utilities with bootstrap intervals, the crossover, degenerate fraction per step),
        utilities.png, results.json, answers.jsonl

The crossover (difference of differences) on each held-out prompt p, U_x the latent utility for user x:

    [dU_A(pi_A) - dU_B(pi_A)] + [dU_B(pi_B) - dU_A(pi_B)],   dU = after - before

Above 0: each user's policy moved toward its own user more than toward the other one.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path
from typing import Any

from pgenrm_trl.personalize.rewards import REWARDS

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pgenrm_trl.personalize", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("out/personalize"), help="folder for the report and plot")
    p.add_argument("--reward", choices=REWARDS, default="truth",
                   help="truth: the user's latent utility; judge: the shipped judge with the user's history; "
                        "judge-no-history: the same judge with an empty history (the non-personal control)")
    p.add_argument("--steps", type=int, default=14, help="GRPO steps per user (at most: see --max-kl)")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (GRPO group size)")
    p.add_argument("--max-completion", type=int, default=128, help="policy tokens per completion")
    p.add_argument("--learning-rate", type=float, default=2e-3)
    p.add_argument("--beta", type=float, default=0.05, help="KL to the base policy (GRPOConfig.beta)")
    p.add_argument("--max-kl", type=float, default=0.3,
                   help="early stop: end a user's run after a step whose KL to the base policy exceeds this "
                        "(0: never); past it the 135M policy drifts off topic and loops")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--heldout", type=int, default=12, help="held-out questions (never trained on)")
    p.add_argument("--eval-every", type=int, default=0,
                   help="also score greedy held-out answers every N steps (0: before and after only)")
    p.add_argument("--users", type=int, default=10, help="synthetic users to draw the opposite pair from")
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "0") or 0),
                   help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


# -- users and prompts ---------------------------------------------------------------------------
def opposite_users(truth: dict[str, Any]) -> tuple[str, str]:
    """The two warm users of different types whose weights are furthest apart (L1)."""
    users = {u: t for u, t in truth["users"].items() if not t["cold_start"]}
    pairs = [(a, b) for a in users for b in users if a < b and users[a]["type"] != users[b]["type"]]
    if not pairs:
        raise ValueError("need two warm users of different latent types: raise --users")

    def gap(pair):
        wa, wb = users[pair[0]]["weights"], users[pair[1]]["weights"]
        return sum(abs(wa[k] - wb[k]) for k in wa)

    return max(pairs, key=gap)


def split_questions(n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """The answer bank's questions, shuffled once: `n_heldout` held out, the rest to train on."""
    from pgenrm_plugins.datasets.answer_bank import BANK

    questions = [t.question for t in BANK]
    random.Random(seed).shuffle(questions)
    if not 1 <= n_heldout < len(questions):
        raise ValueError(f"--heldout must be between 1 and {len(questions) - 1}")
    return questions[n_heldout:], questions[:n_heldout]


def user_history(rows: list[dict[str, Any]], user: str) -> list[dict[str, str]]:
    return [{"prompt": r["context"][-1]["content"], "chosen": r["chosen"]["content"],
             "rejected": r["rejected"]["content"]} for r in rows if r["user_id"] == user and r["split"] == "train"]


def training_rows(questions: list[str], user: str, history: list[dict[str, str]] | None) -> list[dict[str, Any]]:
    """TRL rows: the question as a chat prompt, the user's id and history (JSON; `[]` without history)."""
    return [{"prompt": [{"role": "user", "content": q}], "user_id": user, "history": json.dumps(history or [])}
            for q in questions]


# -- statistics -----------------------------------------------------------------------------------
def summarize(utilities: dict[str, dict[str, list[float]]], a: str, b: str, n: int, seed: int) -> dict[str, Any]:
    """utilities[policy][user] = per-prompt latent utility, policy in base / a / b. Means with intervals."""
    from pgenrm_trl.personalize.truth import bootstrap_mean

    def ci(values):
        mean, lo, hi = bootstrap_mean(values, n=n, seed=seed)
        return {"mean": mean, "lo": lo, "hi": hi}

    base = utilities["base"]
    out: dict[str, Any] = {"before": {u: ci(base[u]) for u in (a, b)}, "policies": {}}
    own_minus_other = {}
    for policy, own, other in ((a, a, b), (b, b, a)):
        after = utilities[policy]
        delta = {u: [x - y for x, y in zip(after[u], base[u])] for u in (a, b)}
        own_minus_other[policy] = [x - y for x, y in zip(delta[own], delta[other])]
        out["policies"][policy] = {
            "after": {u: ci(after[u]) for u in (a, b)},
            "delta": {u: ci(delta[u]) for u in (a, b)},
            "own_minus_other": ci(own_minus_other[policy]),
        }
    out["crossover"] = ci([x + y for x, y in zip(own_minus_other[a], own_minus_other[b])])
    return out


def degenerate_by_step(rows: list[dict[str, Any]]) -> dict[int, float]:
    steps = sorted({r["step"] for r in rows})
    return {s: sum(r["degenerate"] is not None for r in rows if r["step"] == s)
            / max(1, sum(1 for r in rows if r["step"] == s)) for s in steps}


def mean_by_step(rows: list[dict[str, Any]], key: str) -> dict[int, float]:
    steps = sorted({r["step"] for r in rows})
    return {s: sum(r[key] for r in rows if r["step"] == s) / max(1, sum(1 for r in rows if r["step"] == s))
            for s in steps}


# -- the run --------------------------------------------------------------------------------------
def train_for_user(user, weights_by_user, args, tokenizer, policy_dir, rows, heldout_prompts, scale, stop_ids,
                   judge_backend, console) -> dict[str, Any]:
    """One GRPO run (LoRA) for `user`; greedy held-out answers after it (and every --eval-every steps)."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from pgenrm_trl.personalize.probe import greedy_answers
    from pgenrm_trl.personalize.rewards import StepRecorder, TruthReward, judge_reward

    if args.reward == "truth":
        inner = TruthReward(weights_by_user[user], scale, stop_ids)
    else:
        inner = judge_reward(max_chars=6 * args.max_completion, backend=judge_backend, name=args.reward)
    recorder = StepRecorder(inner, weights_by_user, scale, stop_ids)
    checkpoints: dict[int, list] = {}

    stopped: dict[str, Any] = {}

    class HeldOutProbe(TrainerCallback):
        def on_step_end(self, _args, state, control, model=None, **kwargs):
            if args.eval_every and state.global_step % args.eval_every == 0 and state.global_step < args.steps:
                checkpoints[state.global_step] = greedy_answers(model, tokenizer, heldout_prompts, args.max_completion)

    class KLStop(TrainerCallback):
        def on_log(self, _args, state, control, logs=None, **kwargs):
            kl = (logs or {}).get("kl")
            if args.max_kl and kl is not None and kl > args.max_kl and not stopped:
                stopped.update(step=state.global_step, kl=float(kl))
                control.should_training_stop = True

    config = GRPOConfig(
        output_dir=str(args.out / f"grpo-{user}"), use_cpu=True, bf16=False, max_steps=args.steps,
        num_generations=args.generations, per_device_train_batch_size=args.prompts_per_step * args.generations,
        max_completion_length=args.max_completion, learning_rate=args.learning_rate, lr_scheduler_type="constant",
        beta=args.beta, gradient_checkpointing=False, report_to=[], logging_steps=1, seed=args.seed, save_strategy="no",
        disable_tqdm=True,
    )
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(policy_dir), reward_funcs=[recorder], args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer, peft_config=lora,
                          callbacks=[HeldOutProbe(), KLStop()])
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    after = greedy_answers(trainer.model, tokenizer, heldout_prompts, args.max_completion)
    steps = trainer.state.global_step
    checkpoints[steps] = after
    why = f" (stopped: KL {stopped['kl']:.2f} > {args.max_kl} at step {stopped['step']})" if stopped else ""
    console.print(f"{user}: {steps} steps in {seconds / 60:.1f} min{why}")
    return {"rows": recorder.rows, "after": after, "checkpoints": checkpoints, "seconds": seconds,
            "steps_run": steps, "stopped": stopped,
            "log": [e for e in trainer.state.log_history if "loss" in e or "reward" in e]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from rich.console import Console
    from transformers import AutoTokenizer

    from pgenrm_plugins.backends.embedded import embedded_model_dir
    from pgenrm_plugins.datasets.synthetic import generate
    from pgenrm_trl.personalize.probe import greedy_answers
    from pgenrm_trl.personalize.truth import LengthScale, latent_utility

    console = Console()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)

    bench = generate(n_users=args.users, rows_per_user=8, seed=args.seed, cold_start_fraction=0.0)
    a, b = opposite_users(bench.truth)
    weights = {u: bench.truth["users"][u]["weights"] for u in (a, b)}
    types = {u: bench.truth["users"][u]["type"] for u in (a, b)}
    train_questions, heldout = split_questions(args.heldout, args.seed)
    heldout_prompts = [[{"role": "user", "content": q}] for q in heldout]
    console.print(f"users {a} ({types[a]}) and {b} ({types[b]}); reward {args.reward}; "
                  f"{len(train_questions)} training and {len(heldout)} held-out questions")

    policy_dir = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    stop_ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None}
    scale = LengthScale.for_budget(args.max_completion)

    from transformers import AutoModelForCausalLM

    base_answers = greedy_answers(AutoModelForCausalLM.from_pretrained(policy_dir), tokenizer, heldout_prompts,
                                  args.max_completion)
    judge_backend = None
    if args.reward != "truth":
        from pgenrm_plugins.backends.transformers_backend import TransformersBackend

        judge_backend = TransformersBackend()  # one judge for both runs

    runs = {}
    for user in (a, b):
        history = user_history(bench.rows, user) if args.reward == "judge" else []
        rows = training_rows(train_questions, user, history)
        runs[user] = train_for_user(user, weights, args, tokenizer, policy_dir, rows, heldout_prompts, scale,
                                    stop_ids, judge_backend, console)

    def utilities(answers):
        return {u: [latent_utility(weights[u], x.text, scale, x.finished) for x in answers] for u in (a, b)}

    table = {"base": utilities(base_answers), a: utilities(runs[a]["after"]), b: utilities(runs[b]["after"])}
    stats = summarize(table, a, b, args.bootstrap, args.seed)
    elapsed = time.perf_counter() - started
    results = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "users": {u: {"type": types[u], "weights": weights[u]} for u in (a, b)},
        "heldout": heldout, "length_scale": vars(scale), "stats": stats, "minutes": elapsed / 60,
        "runs": {u: {"steps": runs[u]["steps_run"], "stopped": runs[u]["stopped"] or None,
                     "minutes": runs[u]["seconds"] / 60} for u in (a, b)},
        "greedy_degenerate": {
            "base": degenerate_fraction(base_answers),
            **{u: degenerate_fraction(runs[u]["after"]) for u in (a, b)},
        },
        "checkpoints": {u: {step: {"degenerate": degenerate_fraction(ans),
                                   **{f"utility/{v}": sum(vals) / len(vals) for v, vals in utilities(ans).items()}}
                            for step, ans in sorted(runs[u]["checkpoints"].items())} for u in (a, b)},
        "steps": {u: {"degenerate": degenerate_by_step(runs[u]["rows"]),
                      "reward": mean_by_step(runs[u]["rows"], "reward"),
                      **{f"utility/{v}": mean_by_step(runs[u]["rows"], f"utility/{v}") for v in (a, b)}}
                  for u in (a, b)},
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    with open(args.out / "answers.jsonl", "w", encoding="utf-8") as f:
        for i, q in enumerate(heldout):
            f.write(json.dumps({"question": q, "base": base_answers[i].text, a: runs[a]["after"][i].text,
                                b: runs[b]["after"][i].text}, ensure_ascii=False) + "\n")
    plot(results, a, b, args.out / "utilities.png")
    report = write_report(results, a, b, base_answers, runs, heldout, args)
    crossover = stats["crossover"]
    verdict = "above 0" if crossover["lo"] > 0 else "not above 0"
    console.print(f"crossover {crossover['mean']:+.3f} [{crossover['lo']:+.3f}, {crossover['hi']:+.3f}] "
                  f"({verdict}); {elapsed / 60:.1f} min -> {report}")
    return 0


def degenerate_fraction(answers) -> float:
    return sum(x.degenerate is not None for x in answers) / max(1, len(answers))


def plot(results: dict[str, Any], a: str, b: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    colors = {a: "tab:blue", b: "tab:red"}
    for policy in (a, b):
        steps = results["steps"][policy]
        for user, style in ((policy, "-"), (b if policy == a else a, "--")):
            series = steps[f"utility/{user}"]
            left.plot(list(series), list(series.values()), style, color=colors[policy], alpha=0.8,
                      label=f"policy for {policy}: utility for {user}")
        points = results["checkpoints"][policy]
        for user, marker in ((policy, "o"), (b if policy == a else a, "x")):
            left.plot([0, *points], [results["stats"]["before"][user]["mean"],
                                     *[p[f"utility/{user}"] for p in points.values()]],
                      marker, color=colors[policy], markersize=7)
        right.plot(list(steps["degenerate"]), list(steps["degenerate"].values()), "-o", color=colors[policy],
                   label=f"policy for {policy}")
    left.set(xlabel="GRPO step", ylabel="latent utility (0-1)",
             title="sampled completions (lines), greedy held-out (o own user, x other)")
    left.legend(fontsize=7)
    right.set(xlabel="GRPO step", ylabel="fraction", ylim=(-0.02, 1.02),
              title="degenerate completions (cut off, looping, empty)")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(results, a, b, base_answers, runs, heldout, args) -> Path:
    stats = results["stats"]

    def fmt(c):
        return f"{c['mean']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}]"

    def sfmt(c):
        return f"{c['mean']:+.3f} [{c['lo']:+.3f}, {c['hi']:+.3f}]"

    users = results["users"]
    crossover = stats["crossover"]
    lines = [
        f"# Personalized GRPO for two opposite users ({args.reward} reward)", "",
        f"Users **{a}** (`{users[a]['type']}`) and **{b}** (`{users[b]['type']}`); the same SmolLM2-135M policy with "
        f"LoRA (r={args.lora_r}) trained once per user: up to {args.steps} GRPO steps of {args.prompts_per_step} "
        f"prompts x {args.generations} completions, up to {args.max_completion} tokens, learning rate "
        f"{args.learning_rate}, KL beta {args.beta}, early stop past KL {args.max_kl}. {len(heldout)} held-out "
        f"questions, greedy answers, latent utility on [0, 1] (95% bootstrap intervals over questions). "
        f"{results['minutes']:.1f} min in all.", "",
        *[f"- policy for {u}: {r['steps']} steps, {r['minutes']:.1f} min"
          + (f", stopped early (KL {r['stopped']['kl']:.2f} at step {r['stopped']['step']})" if r["stopped"] else "")
          for u, r in results["runs"].items()], "",
        "| policy | utility for " + a + " | utility for " + b + " | degenerate |", "|---|---:|---:|---:|",
        f"| base (before) | {fmt(stats['before'][a])} | {fmt(stats['before'][b])} | "
        f"{results['greedy_degenerate']['base']:.0%} |",
    ]
    for p in (a, b):
        after = stats["policies"][p]["after"]
        lines.append(f"| trained for {p} | {fmt(after[a])} | {fmt(after[b])} | {results['greedy_degenerate'][p]:.0%} |")
    lines += ["", "| policy | change for " + a + " | change for " + b + " | own minus other |", "|---|---:|---:|---:|"]
    for p in (a, b):
        s = stats["policies"][p]
        lines.append(f"| trained for {p} | {sfmt(s['delta'][a])} | {sfmt(s['delta'][b])} | "
                     f"{sfmt(s['own_minus_other'])} |")
    lines += ["", f"**Crossover** (difference of differences): {sfmt(crossover)}: "
              + ("each policy moved toward its own user more than toward the other (interval above 0)."
                 if crossover["lo"] > 0 else "the interval is not above 0: no crossover shown."), "",
              "![utilities per step](utilities.png)", "",
              "The utility reads style only (length, list or prose, register, an example, a caveat lead), not "
              "whether the answer is on topic: read the answers below, and keep the KL small.", "",
              "## Per step (sampled completions)", "",
              "| step | " + " | ".join(f"{p}: reward | {p}: utility {a} | {p}: utility {b} | {p}: degenerate"
                                      for p in (a, b)) + " |",
              "|---|" + "---:|" * 8]
    steps = results["steps"]
    for s in sorted(set(steps[a]["reward"]) | set(steps[b]["reward"])):
        cells = []
        for p in (a, b):
            t = steps[p]
            cells += [f"{t['reward'].get(s, float('nan')):.3f}", f"{t[f'utility/{a}'].get(s, float('nan')):.3f}",
                      f"{t[f'utility/{b}'].get(s, float('nan')):.3f}", f"{t['degenerate'].get(s, float('nan')):.0%}"]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    lines += ["", "## One held-out question", "", f"Question: {heldout[0]}", ""]
    for label, text in (("base", base_answers[0].text), (f"trained for {a}", runs[a]["after"][0].text),
                        (f"trained for {b}", runs[b]["after"][0].text)):
        lines += [f"**{label}:**", "", "> " + (text or "(empty)").replace("\n", "\n> "), ""]
    path = args.out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
