"""Speed of one GRPO-shaped batch: the paper's way against group mode, same judge, same run.

The paper's way is a full evaluation chain per (completion, reference) pair: `pairwise` mode with
parsed scores. Group mode writes persona and criteria once per (user, prompt) and scores every
completion against them; with the `logprob` reader each criterion's score is one forward pass over
the shared prefix, with the `parse` reader a short JSON reply. Every setup scores the same
requests with the same backend instance, one after the other, and the ratios are printed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pgenrm_plugins.config import load_config
from pgenrm_plugins.types import ScoreRequest

# (prompt, a brief answer, a detailed answer)
_TOPICS = [
    ("How can I fall asleep faster?", "Keep a fixed bedtime and stop screens an hour before bed.",
     "1. Go to bed at the same time every night.\n2. Stop screens an hour before.\n3. Keep the room cool and dark.\n"
     "4. If awake after 20 minutes, get up and read."),
    ("How do I keep basil alive indoors?", "Give it a sunny window and water when the soil feels dry.",
     "Basil wants 6 hours of sun, so use a south-facing window. Water when the top centimetre is dry, "
     "never leave it standing in water, and pinch off flower buds so it keeps growing leaves."),
    ("What should I pack for a weekend hike?", "Water, snacks, a rain jacket, a map and a charged phone.",
     "Pack the ten essentials: navigation (map and compass), a headlamp, sun protection, first aid, a knife, "
     "fire starter, an emergency shelter, extra food, extra water and extra clothes. "
     "Check the forecast the night before."),
    ("How do I start running?", "Run-walk three times a week: one minute running, two walking, for 20 minutes.",
     "Begin with a run-walk plan. Week 1: alternate 1 minute of running with 2 of walking for 20 minutes, "
     "three times a week. Add a minute of running each week, buy shoes fitted at a running store, "
     "and rest when something hurts."),
    ("How can I save money on groceries?", "Plan meals for the week and shop with a list.",
     "Plan a week of meals around what is on sale, write a list and stick to it, "
     "buy staples like rice and beans in bulk, cook double portions to freeze, "
     "and compare the unit price on the shelf label rather than the package price."),
    ("How do I learn to cook rice?", "One cup of rice, one and a half cups of water, simmer covered 15 minutes.",
     "Rinse one cup of rice until the water runs clear. Add 1.5 cups of water and a pinch of salt, "
     "bring to a boil, cover, and simmer on low for 15 minutes. Let it rest covered for 10 minutes, "
     "then fluff with a fork."),
    ("What is a good first programming language?", "Python: readable and useful everywhere.",
     "Python is a strong first choice: its syntax reads almost like English, it has a huge community, "
     "and it is used for web apps, data analysis and automation. "
     "JavaScript is a good alternative if you want to build websites."),
    ("How do I prepare for a job interview?", "Research the company and practise answers out loud.",
     "Research the company's products and recent news, reread the job description and match each requirement "
     "to an example from your experience, practise answers out loud with the STAR method, "
     "and prepare two questions to ask at the end."),
]
_OPENERS = ["", "Good question! ", "", "Sure. "]
_CLOSERS = ["", " Hope this helps!", " Results vary from person to person.", ""]


def grpo_batch(prompts: int = 8, completions: int = 8) -> list[ScoreRequest]:
    """`prompts` users, one prompt each, `completions` completions per prompt, brief and detailed,
    and a reference; half the users prefer brief answers, half detailed ones."""
    requests = []
    for u in range(prompts):
        prompt, brief, detailed = _TOPICS[u % len(_TOPICS)]
        likes_brief = u % 2 == 0
        history = []
        for p, b, d in (_TOPICS[(u + 1) % len(_TOPICS)], _TOPICS[(u + 2) % len(_TOPICS)]):
            chosen, rejected = (b, d) if likes_brief else (d, b)
            history.append({"prompt": p, "chosen": chosen, "rejected": rejected})
        comps = []
        for k in range(completions):
            body = brief if k % 2 == 0 else detailed
            comps.append(_OPENERS[(k // 2) % 4] + body + _CLOSERS[(k // 2 + u) % 4])
        requests.append(ScoreRequest(user_id=f"user-{u}-{'brief' if likes_brief else 'detailed'}", history=history,
                                     prompt=prompt, completions=comps, reference=brief if u % 3 else detailed))
    return requests


SETUPS = {
    "paper (pairwise chains)": {"mode": "pairwise", "reader": "parse"},
    "group + parse": {"mode": "group", "reader": "parse"},
    "group + logprob": {"mode": "group", "reader": "logprob"},
}


def run_speed(config_path, prompts: int, completions: int, chains: int, max_new_tokens: int,
              output: Path | None, console: Console) -> dict:
    from pgenrm_plugins.scoring import Scorer

    base = load_config(str(config_path) if config_path else None).model_dump()
    base["sampling"].update(chains=chains, max_new_tokens=max_new_tokens)
    batch = grpo_batch(prompts, completions)
    n_rewards = prompts * completions
    backend = None
    rows = {}
    for name, reward in SETUPS.items():
        cfg = {**base, "reward": {**base["reward"], **reward}}
        scorer = Scorer(cfg, backend=backend)
        backend = scorer.backend  # one judge for every setup
        backend.stats.__init__()
        with console.status(f"scoring {n_rewards} rewards: {name}..."):
            start = time.perf_counter()
            results = scorer.score(batch)
            seconds = time.perf_counter() - start
        st = backend.stats
        failures = sum(r.components.parse_failures for r in results)
        neutral = sum(len(r.components.failed_completions) for r in results)
        rows[name] = {
            "seconds": seconds,
            "rewards_per_s": n_rewards / seconds,
            "generated_tokens_per_reward": st.generated_tokens / n_rewards,
            "prompt_tokens_per_reward": st.prompt_tokens / n_rewards,
            "parse_failures": failures,
            "neutral_rewards": neutral,
        }
    paper = rows[next(iter(SETUPS))]
    table = Table(title=f"{prompts} prompts x {completions} completions = {n_rewards} rewards, "
                        f"Ind-{chains}, chains up to {max_new_tokens} tokens, judge: {backend.name}",
                  title_justify="left")
    for col in ("setup", "seconds", "rewards/s", "gen tok/reward", "prompt tok/reward",
                "parse fails", "neutral", "speed-up"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    for name, r in rows.items():
        r["speedup_vs_paper"] = r["rewards_per_s"] / paper["rewards_per_s"]
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['rewards_per_s']:.2f}",
                      f"{r['generated_tokens_per_reward']:.1f}", f"{r['prompt_tokens_per_reward']:.0f}",
                      str(r["parse_failures"]), str(r["neutral_rewards"]),
                      f"{r['speedup_vs_paper']:.1f}x")
    console.print(table)
    report = {"prompts": prompts, "completions": completions, "chains": chains, "max_new_tokens": max_new_tokens,
              "backend": backend.name, "setups": rows}
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report
