"""Speed of one GRPO-shaped batch: the paper's way against group mode, same judge, same run
(`pgenrm bench speed`), a pairwise-only judge's rewards against group mode (`pgenrm bench pairs`),
judges against each other over several GRPO steps of the same users (`pgenrm bench judges`), and
self alone against prototype scaling over such steps (`pgenrm bench prototypes`).

The paper's way is a full evaluation chain per (completion, reference) pair: `pairwise` mode with
parsed scores. Group mode writes persona and criteria once per (user, prompt) and scores every
completion against them; with the `logprob` reader each criterion's score is one forward pass over
the shared prefix, with the `parse` reader a short JSON reply. Every setup scores the same
requests with the same backend instance, one after the other, and the ratios are printed.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pgenrm_plugins.config import config_dict
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


def grpo_batch(prompts: int = 8, completions: int = 8, step: int = 0) -> list[ScoreRequest]:
    """`prompts` users, one prompt each, `completions` completions per prompt, brief and detailed,
    and a reference; half the users prefer brief answers, half detailed ones. A later `step` asks
    the same users (same histories) other prompts, as the next GRPO step does."""
    requests = []
    for u in range(prompts):
        prompt, brief, detailed = _TOPICS[(u + (step + 3 if step else 0)) % len(_TOPICS)]
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
    "paper (pairwise chains)": {"reward": {"mode": "pairwise", "reader": "parse", "criteria": "generated"}},
    "group + parse": {"reward": {"mode": "group", "reader": "parse", "criteria": "generated"}},
    "group + logprob": {"reward": {"mode": "group", "reader": "logprob", "criteria": "generated"}},
    # Judge J's format (direct-v1): no chain, one digit per completion per history view.
    "group, no chain (criteria: none)": {"reward": {"mode": "group", "reader": "logprob", "criteria": "none"}},
    # The embedded default's format: one synthesis per user, then one digit per (completion, criterion).
    "group, synthesis (criteria: synthesis)": {"reward": {"mode": "group", "reader": "logprob",
                                                          "criteria": "synthesis"}},
}
# `pgenrm bench pairs`: a pairwise-only judge's two rewards against group mode (docs/p-genrm-8b.md)
PAIR_SETUPS = {
    "group (pgenrm format)": {"reward": {"mode": "group", "reader": "logprob"}},
    "pairwise vs reference (p-genrm-8b)": {"chain": {"format": "p-genrm-8b"}, "reward": {"mode": "pairwise"}},
    "tournament, both orders (p-genrm-8b)": {"chain": {"format": "p-genrm-8b"}, "reward": {"mode": "tournament"}},
}


class _CountingBackend:
    """The judge, counting its calls: each sequence generated and each digit read is one."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def generate(self, requests):
        self.calls += sum(r.n for r in requests)
        return self.inner.generate(requests)

    def next_token_probs(self, conversations, candidates):
        self.calls += len(conversations)
        return self.inner.next_token_probs(conversations, candidates)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def run_speed(config_path, prompts: int, completions: int, chains: int, max_new_tokens: int,
              output: Path | None, console: Console, setups: dict | None = None, baseline: str | None = None) -> dict:
    """Every setup on the same batch with the same judge instance, one after the other; ratios
    against `baseline` (default: the first setup)."""
    from pgenrm_plugins.scoring import Scorer

    setups = setups or SETUPS
    base = config_dict(str(config_path) if config_path else None)
    base.setdefault("sampling", {}).update(chains=chains, max_new_tokens=max_new_tokens)
    batch = grpo_batch(prompts, completions)
    n_rewards = prompts * completions
    backend = None
    rows = {}
    for name, sections in setups.items():
        cfg = {**base, **{key: {**base.get(key, {}), **section} for key, section in sections.items()}}
        if backend is None:
            backend = _CountingBackend(Scorer(cfg).backend)  # one judge for every setup, counted
        scorer = Scorer(cfg, backend=backend)
        backend.stats.__init__()
        backend.calls = 0
        with console.status(f"scoring {n_rewards} rewards: {name}..."):
            start = time.perf_counter()
            results = scorer.score(batch)
            seconds = time.perf_counter() - start
        st = backend.stats
        rows[name] = {
            "seconds": seconds,
            "rewards_per_s": n_rewards / seconds,
            "judge_calls_per_reward": backend.calls / n_rewards,
            "generated_tokens_per_reward": st.generated_tokens / n_rewards,
            "prompt_tokens_per_reward": st.prompt_tokens / n_rewards,
            "parse_failures": sum(r.components.parse_failures for r in results),
            "neutral_rewards": sum(len(r.components.failed_completions) for r in results),
        }
    first = rows[baseline or next(iter(setups))]
    table = Table(title=f"{prompts} prompts x {completions} completions = {n_rewards} rewards, "
                        f"Ind-{chains}, chains up to {max_new_tokens} tokens, judge: {backend.name}",
                  title_justify="left")
    for col in ("setup", "seconds", "rewards/s", "calls/reward", "gen tok/reward", "prompt tok/reward",
                "parse fails", "neutral", "speed-up"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    for name, r in rows.items():
        r["speedup_vs_first"] = r["rewards_per_s"] / first["rewards_per_s"]
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['rewards_per_s']:.2f}", f"{r['judge_calls_per_reward']:.2f}",
                      f"{r['generated_tokens_per_reward']:.1f}", f"{r['prompt_tokens_per_reward']:.0f}",
                      str(r["parse_failures"]), str(r["neutral_rewards"]),
                      f"{r['speedup_vs_first']:.1f}x")
    console.print(table)
    report = {"prompts": prompts, "completions": completions, "chains": chains, "max_new_tokens": max_new_tokens,
              "backend": backend.name, "setups": rows}
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report


def run_judges(judges: list[str], prompts: int, completions: int, steps: int, output: Path | None,
               console: Console) -> dict:
    """Each judge (a `backend.options.model`: `embedded:NAME` or a folder; its manifest sets the
    rest) scores the same `steps` GRPO batches of the same users, one judge after the other. Step 1
    reads each history for the first time; later steps ask other prompts of the same users, where a
    judge that writes one synthesis per user reuses it."""
    from pgenrm_plugins.scoring import Scorer

    rows = {}
    for judge in judges:
        scorer = Scorer({"backend": {"name": "transformers", "options": {"model": judge}}})
        _warm_up(scorer)
        rows[judge] = _time_steps(scorer, prompts, completions, steps, console, judge)
    report = {"prompts": prompts, "completions": completions, "steps": steps, "judges": rows}
    return _steps_report(report, rows, "judge", f"{steps} GRPO steps of {prompts} users x {completions} completions, "
                         "each judge at its manifest's settings", output, console)


def run_prototype_cost(config: dict, store: Path, top_k: list[int], prompts: int, completions: int, steps: int,
                       output: Path | None, console: Console, keep_cache: bool = False) -> dict:
    """Self alone against self + Pro-k, same judge instance, same GRPO steps of the same users: each
    user is placed among the members of `store` (a SQLite file) and scored with its k nearest too.
    Every setup runs on its own copy of the store with the synthesis cache emptied, so step 1 pays
    for writing each neighbour's synthesis once, as a fresh store does; later steps reuse them.
    `keep_cache`: the copies keep the store's cache (a store warmed by `pgenrm prototypes warm`)."""
    from pgenrm_plugins.scoring import Scorer

    if not store.is_file():
        raise FileNotFoundError(f"--store {store}: no such SQLite file; build one with `pgenrm prototypes build`")
    rows: dict = {}
    backend = None
    with tempfile.TemporaryDirectory() as tmp:
        for k in (0, *top_k):
            cfg = {**config, "prototypes": {**config.get("prototypes", {}), "enabled": bool(k)}}
            if k:
                cfg["prototypes"]["top_k"] = k
                copy = _copy(store, Path(tmp) / f"{k}.sqlite", empty_cache=not keep_cache)
                cfg["store"] = {"name": "sqlite", "options": {"path": str(copy)}}
            scorer = Scorer(cfg, backend=backend)
            if backend is None:
                backend = scorer.backend
                _warm_up(scorer)
            name = f"self + Pro-{k}" if k else "self alone"
            try:
                rows[name] = _time_steps(scorer, prompts, completions, steps, console, name)
            finally:
                if scorer.store is not None:
                    scorer.store.close()
    report = {"prompts": prompts, "completions": completions, "steps": steps, "store": str(store),
              "kept_cache": keep_cache, "setups": rows}
    return _steps_report(report, rows, "setup", f"{steps} GRPO steps of {prompts} users x {completions} completions, "
                         f"placed among the members of {store.name}, judge: {backend.name}", output, console)


def _copy(store: Path, to: Path, empty_cache: bool) -> Path:
    """A copy of a SQLite store, its synthesis cache emptied or kept (the sqlite3 backup API:
    consistent even while another process writes the store)."""
    import sqlite3

    src, dst = sqlite3.connect(store), sqlite3.connect(to)
    try:
        src.backup(dst)
        if empty_cache:
            with dst:
                dst.execute("DELETE FROM syntheses")
    finally:
        src.close()
        dst.close()
    return to


def _warm_up(scorer) -> None:
    scorer.score([ScoreRequest(user_id="warm-up", prompt="Hi.", completions=["Hello!", "Hi there."])])


def _time_steps(scorer, prompts: int, completions: int, steps: int, console: Console, name: str) -> dict:
    """`steps` GRPO batches of the same users timed one by one. `agrees`: requests whose completions
    in the user's preferred style (brief or detailed) get the higher mean reward; `neighbours`:
    prototype neighbours that scored each request, on average."""
    n_rewards = prompts * completions
    seconds, agrees, neighbours = [], 0, 0
    for step in range(steps):
        batch = grpo_batch(prompts, completions, step)
        with console.status(f"{name}: step {step + 1} of {steps}, {n_rewards} rewards..."):
            start = time.perf_counter()
            results = scorer.score(batch)
            seconds.append(time.perf_counter() - start)
        for request, result in zip(batch, results):
            liked = 0 if request.user_id.endswith("brief") else 1  # brief answers at even positions
            mine = [r for k, r in enumerate(result.rewards) if k % 2 == liked]
            other = [r for k, r in enumerate(result.rewards) if k % 2 != liked]
            agrees += sum(mine) / len(mine) > sum(other) / len(other)
            neighbours += len(result.components.neighbours_used)
    return {"seconds": seconds, "first_step_rewards_per_s": n_rewards / seconds[0],
            "later_rewards_per_s": n_rewards * (steps - 1) / sum(seconds[1:]) if steps > 1 else None,
            "rewards_per_s": n_rewards * steps / sum(seconds), "agrees": agrees, "requests": prompts * steps,
            "neighbours_per_request": neighbours / (prompts * steps)}


def _steps_report(report: dict, rows: dict, what: str, title: str, output: Path | None, console: Console) -> dict:
    """Print `rows` of `_time_steps` side by side, ratios against the first; write the JSON."""
    first = next(iter(rows.values()))
    table = Table(title=title, title_justify="left")
    for col in (what, "step 1 rewards/s", "later steps rewards/s", "all rewards/s", "speed-up", "cost vs first",
                "agrees", "neighbours"):
        table.add_column(col, justify="left" if col == what else "right")
    for name, r in rows.items():
        r["speedup_vs_first"] = r["rewards_per_s"] / first["rewards_per_s"]
        r["cost_vs_first"] = sum(r["seconds"]) / sum(first["seconds"])
        later = r["later_rewards_per_s"]
        table.add_row(name, f"{r['first_step_rewards_per_s']:.2f}", "-" if later is None else f"{later:.2f}",
                      f"{r['rewards_per_s']:.2f}", f"{r['speedup_vs_first']:.2f}x", f"{r['cost_vs_first']:.2f}x",
                      f"{r['agrees']}/{r['requests']}", f"{r['neighbours_per_request']:.1f}")
    console.print(table)
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report
