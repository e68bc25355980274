"""The CPU demo (`make demo`): personalized GRPO in TRL with the P-GenRM reward, end to end on a laptop.

    synthetic users (known latent preferences)  ->  prototype store (choice contrasts, MiniLM, k-means)
    ->  a few GRPO steps of SmolLM2-135M in TRL, rewarded by the embedded judge with prototype scaling
    ->  report: reward per step overall and per prototype, a plot, before/after answers for two users,
        and the judge's synthesis of those two users beside the one their true weights give

Everything runs on the embedded models (no downloads). The 135M judge and policy prove the
machinery, not the paper's accuracy: read the numbers as what they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from rich.console import Console
from rich.table import Table

console = Console()
# Past pairs sent with each request: as many as the shipped judge's verification reads
# (`reward.verify_history` in its manifest); the config decides how many each step uses.
HISTORY = 8


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="folder for data, store and report")
    p.add_argument("--users", type=int, default=12, help="synthetic users (a few are cold-start)")
    p.add_argument("--steps", type=int, default=4, help="GRPO steps")
    p.add_argument("--prompts-per-step", type=int, default=2)
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (GRPO group size)")
    p.add_argument("--max-completion", type=int, default=32, help="policy tokens per completion")
    p.add_argument("--learning-rate", type=float, default=2e-5)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


class RecordingReward:
    """Our reward as TRL sees it, noting (step, user, reward) for the per-prototype report."""

    def __init__(self, reward):
        self.reward = reward
        self.__name__ = reward.__name__
        self.records: list[tuple[int, str, float]] = []

    async def __call__(self, prompts, completions, **kwargs):
        rewards = await self.reward(prompts=prompts, completions=completions, **kwargs)
        step = kwargs["trainer_state"].global_step + 1
        self.records += [(step, u, float(r)) for u, r in zip(kwargs["user_id"], rewards)]
        return rewards


def pick_demo_users(truth, histories):
    """Two users with history from the two most different latent types (for the before/after)."""
    users = [u for u, t in truth["users"].items() if u in histories and not t["cold_start"]]
    best, pair = -1.0, (users[0], users[1])
    for i, a in enumerate(users):
        for b in users[i + 1:]:
            wa, wb = truth["users"][a]["weights"], truth["users"][b]["weights"]
            gap = sum(abs(wa[k] - wb[k]) for k in wa)
            if gap > best:
                best, pair = gap, (a, b)
    return pair


def main(argv=None):
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    from pgenrm_plugins.backends.transformers_backend import TransformersBackend
    from pgenrm_plugins.config import config_dict
    from pgenrm_plugins.scoring import Scorer

    console.rule("[bold]1/4 synthetic users")
    rows_path, bench, truth = make_users(args)
    console.rule("[bold]2/4 prototype store")
    config, store, trained = build_store(args, rows_path)
    user_prototype = {u.user_id: u.prototype_id for u in store.users()}
    console.rule("[bold]3/4 personalized GRPO (TRL, SmolLM2-135M policy)")
    judge = TransformersBackend()
    scorer = Scorer(config, backend=judge)
    run = train_policy(args, bench, user_prototype, scorer)
    console.rule("[bold]4/4 report")
    # The judging checks read the judge alone (the user's own history, one reading): what is checked
    # is whether it tells answers apart, and it keeps the demo's time down.
    alone = config_dict(config)  # what the config sets: the judge's manifest fills in the rest
    alone.update(prototypes={"enabled": False}, store=None)
    alone.setdefault("sampling", {})["chains"] = 1
    histories = bench.histories()
    users = pick_demo_users(truth, histories)
    checks = judging_checks(Scorer(alone, backend=judge), bench, truth, histories, users, args.seed)
    report = write_report(args, bench, truth, histories, user_prototype, scorer, run, users, checks, started)
    console.print(checks["table"])
    for user, (written, weighed, true) in checks["syntheses"].items():
        side = Table(f"{user}: the judge's synthesis", "the criteria that scored, weighed by the user's choices",
                     "from the user's true weights")
        side.add_row(written or "(none: this judge writes no synthesis)", weighed, true)
        console.print(side)
    store.close()
    if checks["violations"]:
        said = (f"a degenerate answer got a higher reward than the real one it replaced: "
                f"{'; '.join(checks['violations'])} (see {report})")
        if trained:  # the trained judge must tell broken from real; the untrained base is only reported
            console.print(f"[red]FAIL[/red]: {said}")
            return 1
        console.print(f"[yellow]untrained embedded judge[/yellow]: {said}")
    console.print(f"[green]done[/green] in {(time.perf_counter() - started) / 60:.1f} min: {report}, "
                  f"{args.out / 'rewards.png'}")
    return 0


def make_users(args):
    """(rows file, its rows, the latent truth) of the synthetic users."""
    from pgenrm_plugins.datasets.bench import load_bench
    from pgenrm_plugins.datasets.synthetic import generate, write_bench

    rows_path, _ = write_bench(args.out / "users.jsonl", generate(n_users=args.users, rows_per_user=6, seed=args.seed))
    bench = load_bench(rows_path, strict=True)
    truth = json.loads((args.out / "users.truth.json").read_text())
    console.print(f"{len(bench.users())} users, {len(bench.rows)} rows -> {rows_path}")
    return rows_path, bench, truth


def build_store(args, rows_path):
    """(scoring config, the prototype store built from the users, whether the judge is trained)."""
    from pgenrm_plugins.backends.judge_folder import shipped_judge
    from pgenrm_plugins.config import load_config
    from pgenrm_plugins.prototypes.builder import build_prototypes
    from pgenrm_plugins.prototypes.sources import SourceSettings

    store_path = args.out / "prototypes.sqlite"
    store_path.unlink(missing_ok=True)  # a fresh demo each time
    # A trained embedded judge brings its own reading (its manifest: a synthesis written once per
    # user, then one digit per criterion); the untrained base writes short criteria chains.
    trained = shipped_judge() is not None
    config = load_config({
        "sampling": {"seed": args.seed, **({} if trained else {"chains": 2, "max_new_tokens": 48})},
        "reward": {"mode": "group", **({} if trained else {"reader": "logprob", "max_history": 3, "max_chars": 400})},
        "prototypes": {"enabled": True, "top_k": 2},
        "store": {"name": "sqlite", "options": {"path": str(store_path)}},
    })
    store, embedder = config.store.build("store"), config.embedder.build("embedder")
    # Members are placed by their choices' contrast (what only the preferred reply says, minus what
    # only the rejected one says): quick, and no judge needed before the run.
    build_prototypes(rows_path, store, embedder, source="contrast", k=3, console=console,
                     source_settings=SourceSettings(max_items=4, max_chars=300, seed=args.seed))
    return config, store, trained


def train_policy(args, bench, user_prototype, scorer) -> dict:
    """A few GRPO steps of the embedded policy in TRL, rewarded by `scorer`: the rewards it saw,
    and its greedy answer to one probe prompt before and after."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from pgenrm_plugins.backends.embedded import embedded_model_dir
    from pgenrm_plugins.frameworks.prepare import training_prompts
    from pgenrm_trl import PGenRMReward
    from pgenrm_trl.personalize.probe import greedy_answer
    from pgenrm_trl.plugin import dataset_record as trl_record

    records = [trl_record(r) for r in training_prompts(bench, max_history=HISTORY)]
    # Alternate users across prototypes so every step mixes preferences.
    by_user = defaultdict(list)
    for r in records:
        by_user[r["user_id"]].append(r)
    order = sorted(by_user, key=lambda u: (user_prototype.get(u, -1), u))
    picked = []
    while len(picked) < args.steps * args.prompts_per_step and any(by_user.values()):
        for u in order:
            if by_user[u]:
                picked.append(by_user[u].pop(0))
    dataset = Dataset.from_list(picked[: args.steps * args.prompts_per_step])

    policy_dir = str(embedded_model_dir())
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    probe = bench.split("test")[0].context if bench.split("test") else bench.rows[0].context
    probe_prompt = [m.model_dump() for m in probe]
    policy = AutoModelForCausalLM.from_pretrained(policy_dir)
    before = greedy_answer(policy, tokenizer, probe_prompt, args.max_completion)

    reward = RecordingReward(PGenRMReward(scorer=scorer))
    grpo = GRPOConfig(
        output_dir=str(args.out / "grpo"), use_cpu=True, bf16=False, max_steps=args.steps,
        num_generations=args.generations, per_device_train_batch_size=args.prompts_per_step * args.generations,
        max_completion_length=args.max_completion, learning_rate=args.learning_rate, beta=0.0,
        report_to=[], logging_steps=1, seed=args.seed, save_strategy="no", disable_tqdm=False,
    )
    trainer = GRPOTrainer(model=policy, reward_funcs=[reward], args=grpo, train_dataset=dataset,
                          processing_class=tokenizer)
    trainer.train()
    # The trained policy's greedy answer with gradient checkpointing off and the KV cache on, as TRL
    # generates its completions (and in eval mode): the trainer leaves the model in train mode with
    # checkpointing on, and generating in that state gave `To------` from an untrained policy.
    after = greedy_answer(trainer.model, tokenizer, probe_prompt, args.max_completion)
    return {"records": reward.records, "probe_prompt": probe_prompt, "before": before, "after": after}


def write_report(args, bench, truth, histories, user_prototype, scorer, run, users, checks, started) -> Path:
    """report.md, rewards.png and rewards.json: the reward per step (overall and per prototype),
    the probe's answers before and after judged for two users, and the judging checks."""
    from pgenrm_plugins.types import ScoreRequest

    out, records, probe_prompt = args.out, run["records"], run["probe_prompt"]
    before, after = run["before"], run["after"]
    steps = sorted({s for s, _, _ in records})
    per_step = {s: [r for t, _, r in records if t == s] for s in steps}
    prototypes = sorted({p for p in user_prototype.values() if p is not None})
    per_proto = {p: {s: [r for t, u, r in records if t == s and user_prototype.get(u) == p] for s in steps}
                 for p in prototypes}
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731

    table = Table("step", "mean reward", *[f"prototype {p}" for p in prototypes], title="reward per step")
    for s in steps:
        cells = [f"{mean(per_proto[p][s]):.3f}" if per_proto[p][s] else "-" for p in prototypes]
        table.add_row(str(s), f"{mean(per_step[s]):.3f}", *cells)
    console.print(table)

    # Before/after: the same probe prompt, judged for two users of different latent types.
    judged = {user: scorer.score([ScoreRequest(user_id=user, history=histories[user][-HISTORY:], prompt=probe_prompt,
                                               completions=[before or "(empty)", after or "(empty)"])])[0].rewards
              for user in users}

    plot = out / "rewards.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [mean(per_step[s]) for s in steps], "k-o", label="all users", linewidth=2)
    for p in prototypes:
        xs = [s for s in steps if per_proto[p][s]]
        ax.plot(xs, [mean(per_proto[p][s]) for s in xs], "--o", label=f"prototype {p}", alpha=0.8)
    ax.set(xlabel="GRPO step", ylabel="P-GenRM reward (mean)", title="Personalized GRPO on CPU (SmolLM2-135M)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(plot, dpi=120)

    elapsed = time.perf_counter() - started
    lines = [
        "# P-GenRM CPU demo", "",
        f"{len(bench.users())} synthetic users, {len(prototypes)} prototypes, {len(steps)} GRPO steps of "
        f"{args.prompts_per_step} prompts x {args.generations} completions; {elapsed / 60:.1f} min in all.", "",
        "## Reward per step", "",
        "| step | mean | " + " | ".join(f"prototype {p}" for p in prototypes) + " |",
        "|---|---|" + "---|" * len(prototypes),
    ]
    for s in steps:
        cells = [f"{mean(per_proto[p][s]):.3f}" if per_proto[p][s] else "-" for p in prototypes]
        lines.append(f"| {s} | {mean(per_step[s]):.3f} | " + " | ".join(cells) + " |")
    lines += ["", f"![reward per step]({plot.name})", "", "## Before and after, judged for two users", "",
              f"Prompt: {probe_prompt[-1]['content']}", ""]
    for user in users:
        t = truth["users"][user]
        top = sorted(t["weights"], key=lambda k: -abs(t["weights"][k]))[:2]
        lines.append(f"- **{user}** (latent type `{t['type']}`, cares most about {', '.join(top)}; "
                     f"prototype {user_prototype.get(user)}): before {judged[user][0]:.3f}, "
                     f"after {judged[user][1]:.3f}")
    lines += ["", "**Before training:**", "", "> " + (before or "(empty)").replace("\n", "\n> "), "",
              "**After training:**", "", "> " + (after or "(empty)").replace("\n", "\n> "), "",
              f"Both are greedy answers of up to {args.max_completion} tokens, generated in eval mode with the "
              "KV cache and gradient checkpointing off, as TRL generates its completions. "
              f"{len(steps)} steps of {args.prompts_per_step * args.generations} completions change a policy little: "
              "a run that visibly personalizes, with two opposite users, held-out questions and intervals, is "
              "`pgenrm recipe run personalize-cpu` (recipes/personalize-cpu/README.md). "
              "The judge's side is checked below.", ""]
    lines += checks["markdown"]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "rewards.json").write_text(json.dumps({"records": records, "user_prototype": user_prototype}))
    return report


DEGENERATE = {
    "cut off": lambda text: text[: max(12, len(text) // 5)].rstrip(),
    "looping": lambda text: " ".join([" ".join(text.split()[:5])] * 6),
    "dashes": lambda text: text.split()[0] + "-" * 40,
    "empty": lambda text: "",
}


def judging_checks(scorer, bench, truth, histories, users, seed):
    """The reward judging, shown: one question's candidate answers (every combination of three
    attributes) ranked for two users of opposite types beside their true utility, and degenerate
    copies of each user's best answer against it."""
    import random

    from pgenrm_plugins.datasets.answer_bank import BANK
    from pgenrm_plugins.datasets.synthetic import ATTRIBUTES, render_answer, utility
    from pgenrm_plugins.training.synthesis_stage import teacher_synthesis
    from pgenrm_plugins.types import ScoreRequest

    seen = {r.context[-1].content for r in bench.rows}
    topic = next((t for t in BANK if t.question not in seen), BANK[0])
    rng = random.Random(seed)
    combos = [{"length": length, "structure": s, "tone": t, "examples": -1, "caveats": 1 if length > 0 else -1}
              for length in (1, -1) for s in (1, -1) for t in (1, -1)]
    answers = [render_answer(topic, attrs, rng) for attrs in combos]
    table = Table("answer", *[f"{u} reward" for u in users], *[f"{u} truth" for u in users],
                  title=f"the same answers judged for two users: {topic.question}")
    results, syntheses, degenerate_rows, violations = {}, {}, [], []
    for user in users:
        weights, history = truth["users"][user]["weights"], histories[user][-HISTORY:]
        request = ScoreRequest(user_id=user, history=history, prompt=topic.question, completions=answers)
        [result] = scorer.score([request])
        results[user] = (result.rewards, [utility(weights, c) for c in combos])
        # what the judge wrote of the user (a synthesis judge's persona and criteria), the criteria
        # that scored with the weights the user's choices gave them (signed: minus counts against a
        # reply that meets it), and the synthesis the teacher writes from the user's true weights
        weighed = "\n".join(f"{w:+6.1f}  {name.split(':')[0]}" for name, w in
                            sorted(result.components.criteria or [], key=lambda c: -abs(c[1])))
        syntheses[user] = (result.components.evaluation or "", weighed, teacher_synthesis(weights, set(weights)))
        best = max(range(len(answers)), key=lambda i: results[user][0][i])
        broken = [fn(answers[best]) for fn in DEGENERATE.values()]
        rewards = scorer.score([ScoreRequest(user_id=user, history=history, prompt=topic.question,
                                             completions=[answers[best], *broken])])[0].rewards
        for name, r in zip(DEGENERATE, rewards[1:]):
            degenerate_rows.append((user, name, rewards[0], r))
            if r > rewards[0]:
                violations.append(f"{user}: {name} {r:.3f} > real {rewards[0]:.3f}")

    def label(attrs):
        return ", ".join(f"{'+' if attrs[a] > 0 else '-'}{a}" for a in ATTRIBUTES if a not in ("examples",))

    md = ["## The reward judging", "", f"Question: {topic.question} (not in any user's rows). The same eight answers "
          "judged for two users of opposite latent types (the judge alone: the user's own history, one reading); "
          "*truth* is the user's latent utility (higher = preferred).", "",
          "| answer | " + " | ".join(f"{u} reward | {u} truth" for u in users) + " |",
          "|---|" + "---:|---:|" * len(users)]
    for i, attrs in enumerate(combos):
        cells = " | ".join(f"{results[u][0][i]:.3f} | {results[u][1][i]:+.2f}" for u in users)
        md.append(f"| {label(attrs)} | {cells} |")
        table.add_row(label(attrs), *[f"{results[u][0][i]:.3f}" for u in users],
                      *[f"{results[u][1][i]:+.2f}" for u in users])
    agreement = {}
    for u in users:
        rewards, utilities = results[u]
        pairs = [(i, j) for i in range(len(answers)) for j in range(i + 1, len(answers))
                 if utilities[i] != utilities[j]]
        agreement[u] = sum((rewards[i] - rewards[j]) * (utilities[i] - utilities[j]) > 0 for i, j in pairs) / len(pairs)
    md += ["", "What the judge wrote of each user, the criteria that scored with the weights the user's own "
           "choices gave them, and what the teacher writes from the user's true weights:", ""]
    for u in users:
        written, weighed, true = syntheses[u]
        md += [f"**{u}**", "", "| judge's synthesis | weighed by the user's choices | from the truth |",
               "|---|---|---|",
               f"| {'<br>'.join(written.splitlines()) or '(none: this judge writes no synthesis)'} "
               f"| {'<br>'.join(weighed.splitlines())} | {'<br>'.join(true.splitlines())} |", ""]
    md += ["", "Pairs of answers ordered as the user's truth orders them: "
           + ", ".join(f"{u} {agreement[u]:.0%}" for u in users) + " (50% = chance).", "",
           "Degenerate copies of the answer the judge ranked first, against it "
           "(a degenerate answer must score lower):", "",
           "| user | degenerate | real answer | degenerate answer | lower? |", "|---|---|---:|---:|---|"]
    md += [f"| {u} | {name} | {real:.3f} | {bad:.3f} | {'yes' if bad <= real else '**NO**'} |"
           for u, name, real, bad in degenerate_rows]
    return {"markdown": md, "table": table, "violations": violations, "agreement": agreement, "syntheses": syntheses}


if __name__ == "__main__":
    sys.exit(main())
