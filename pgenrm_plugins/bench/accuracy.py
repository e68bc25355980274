"""Personalized pairwise accuracy on PersonalRewardBench rows (`pgenrm bench accuracy`).

For every test row (user, context, chosen, rejected) the judge scores both responses, twice: with
the chosen response shown first and shown second. A judgement is *correct* when the chosen
response gets the higher reward; a tie or a failure (no chain produced a score) is a judgement
that is not correct, and stays in the denominator. Accuracy = correct / all judgements.

How the two responses are compared depends on the reward mode (default: the config's):
- `group` (the project's default reward): one criteria chain per (user, prompt), each response
  scored against those criteria, rewards compared. The responses never share a chain, so the order
  cannot matter by construction; both orders are still run (the second is a cache hit) so the
  position-bias column is measured, not assumed.
- `pairwise` (the paper's form): one chain shows both responses (A, B); chosen wins when its share
  of the two totals is above one half. Here order can matter, and the bias column shows how much.
- `pointwise`: one chain per response, totals compared.

Settings (`--settings`, comma separated), in the paper's terms:
    no-history        the judge sees no history (non-personalized)
    global-history    every user gets the same history: pairs pooled across users (one global preference)
    ind-N             the user's own history, N sampled chains (ind-1 = history only)
    ind-N+pro-K       and prototype-level scaling with the top-K neighbours (needs --store)
A suffix picks the mode or reader for one setting: `ind-4:parse`, `ind-1:pairwise`.

With the synthetic users' truth file next to the data, three reference predictors that read the
latent attributes instead of the text are reported too: `oracle` (each user's true weights: the
ceiling, below 100% because users choose with noise), `attr-user` (a logistic regression on the
user's own train pairs: what the history can teach at most with this little of it) and
`attr-global` (one logistic regression on everyone's train pairs: the best single global taste).

The confidence intervals are 95% percentile bootstraps that resample *users* (a user's rows share
one history and are not independent), 2000 resamples, seeded.
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from pgenrm_plugins.bench.cache import SEED_OFFSET_BACKENDS, CachingBackend
from pgenrm_plugins.config import load_config
from pgenrm_plugins.data import BenchData, BenchRow, load_bench
from pgenrm_plugins.types import HistoryItem, ScoreRequest

DEFAULT_SETTINGS = ("no-history", "global-history", "ind-1", "ind-2", "ind-4", "ind-8")
DEFAULT_PROTOTYPE_SETTINGS = ("ind-2+pro-2", "ind-2+pro-4")
MODES = ("group", "pairwise", "pointwise")
READERS = ("logprob", "parse", "auto")
BOOTSTRAP = 2000


class AccuracyError(ValueError):
    """The benchmark cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class Setting:
    name: str
    history: str  # "none" | "global" | "user"
    chains: int
    top_k: int = 0  # prototype neighbours; 0 = no prototype scaling
    mode: str | None = None  # None = the config's
    reader: str | None = None

    def describe(self) -> str:
        what = {"none": "no history", "global": "one global history", "user": "the user's history"}[self.history]
        text = f"{what}, {self.chains} chain{'s' if self.chains > 1 else ''}"
        if self.top_k:
            text += f", + top-{self.top_k} prototype neighbours"
        if self.history == "user" and self.chains == 1 and not self.top_k:
            text = "history only: " + text
        return text


_SETTING = re.compile(r"^(?:(?P<none>no-history)|(?P<global>global-history)|ind-(?P<n>\d+)(?:\+pro-(?P<k>\d+))?)"
                      r"(?P<opts>(?::[a-z]+)*)$")


def parse_setting(spec: str) -> Setting:
    """'no-history', 'global-history', 'ind-4', 'ind-4+pro-8', each optionally ':MODE' / ':READER'."""
    spec = spec.strip()
    m = _SETTING.match(spec)
    if not m:
        raise AccuracyError(f"setting {spec!r}: expected no-history, global-history, ind-N or ind-N+pro-K, "
                            f"optionally followed by :MODE ({', '.join(MODES)}) or :READER ({', '.join(READERS)})")
    mode = reader = None
    for opt in filter(None, m["opts"].split(":")):
        if opt in MODES:
            mode = opt
        elif opt in READERS:
            reader = opt
        else:
            raise AccuracyError(f"setting {spec!r}: unknown option {opt!r}; modes: {', '.join(MODES)}; readers: {', '.join(READERS)}")
    if m["none"]:
        history, chains, k = "none", 1, 0
    elif m["global"]:
        history, chains, k = "global", 1, 0
    else:
        history, chains, k = "user", int(m["n"]), int(m["k"] or 0)
        if not 1 <= chains <= 64:
            raise AccuracyError(f"setting {spec!r}: N must be between 1 and 64")
        if m["k"] is not None and not 1 <= k <= 64:
            raise AccuracyError(f"setting {spec!r}: K must be between 1 and 64")
    return Setting(spec, history, chains, k, mode, reader)


def parse_settings(specs: Iterable[str]) -> list[Setting]:
    out = [parse_setting(s) for spec in specs for s in spec.split(",") if s.strip()]
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise AccuracyError(f"settings repeat a name: {', '.join(names)}")
    return out


# -- the judge side ------------------------------------------------------------------------------

def store_config(store: str | None) -> dict | None:
    """`--store`, as `pgenrm prototypes build` takes it: a SQLite file, a postgresql:// URL, or a
    YAML/JSON file holding a `store:` section."""
    if not store:
        return None
    if store.startswith(("postgresql://", "postgres://")):
        return {"name": "postgres", "options": {"dsn": store}}
    path = Path(store)
    if path.suffix in (".yaml", ".yml", ".json"):
        import yaml

        if not path.is_file():
            raise AccuracyError(f"--store {store}: file not found")
        section = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return section.get("store", section)
    if not path.is_file():
        raise AccuracyError(f"--store {store}: no such store file; build one from the train split first: "
                            f"pgenrm prototypes build --data ROWS --store {store}")
    return {"name": "sqlite", "options": {"path": str(path)}}


def global_history(data: BenchData, size: int, seed: int = 0) -> list[HistoryItem]:
    """`size` train pairs pooled across users, round-robin over users so no one user dominates."""
    by_user = data.histories("train")
    rng = random.Random(seed)
    queues = {u: rng.sample(items, len(items)) for u, items in sorted(by_user.items())}
    out: list[HistoryItem] = []
    while len(out) < size and any(queues.values()):
        for u in sorted(queues):
            if queues[u] and len(out) < size:
                out.append(queues[u].pop())
    return out


def _requests(setting: Setting, row: BenchRow, history: list[HistoryItem], mode: str) -> list[ScoreRequest]:
    """Two requests per row: chosen shown first, then second."""
    # A non-personalized judgement must not depend on who asks: no user id (it seeds the chains).
    user_id = row.user_id if setting.history == "user" else None
    out = []
    for first, second in ((row.chosen.content, row.rejected.content), (row.rejected.content, row.chosen.content)):
        if mode == "pairwise":
            out.append(ScoreRequest(user_id=user_id, history=history, prompt=list(row.context), completions=[first], reference=second))
        else:
            out.append(ScoreRequest(user_id=user_id, history=history, prompt=list(row.context), completions=[first, second]))
    return out


def judgement(result, mode: str, chosen_first: bool) -> str:
    """'correct', 'wrong', 'tie' or 'failed' for one scored order."""
    c = result.components
    if c["failed_completions"]:
        return "failed"
    if mode == "pairwise":
        share = result.rewards[0]  # the first-shown response's share of the two totals
        if share == 0.5:
            return "tie"
        return "correct" if (share > 0.5) == chosen_first else "wrong"
    a, b = result.rewards
    if a == b:
        return "tie"
    return "correct" if (a > b) == chosen_first else "wrong"


# -- statistics ------------------------------------------------------------------------------------

def _user_counts(records: Sequence[dict]) -> dict[str, list[int]]:
    """user -> [correct, judgements]"""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in records:
        out[r["user_id"]][0] += r["outcome"] == "correct"
        out[r["user_id"]][1] += 1
    return dict(out)


def bootstrap_ci(counts: dict[str, list[int]], seed: int = 0, other: dict[str, list[int]] | None = None) -> list[float] | None:
    """95% percentile interval of accuracy (or of accuracy minus `other`'s, paired), resampling users."""
    users = sorted(counts)
    if not users:
        return None
    c = np.array([counts[u] for u in users], dtype=float)
    o = np.array([other.get(u, [0, 0]) for u in users], dtype=float) if other is not None else None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(users), size=(BOOTSTRAP, len(users)))
    stats = c[idx, 0].sum(1) / np.maximum(c[idx, 1].sum(1), 1)
    if o is not None:
        stats = stats - o[idx, 0].sum(1) / np.maximum(o[idx, 1].sum(1), 1)
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def summarize(records: Sequence[dict], seed: int = 0) -> dict[str, Any]:
    n = len(records)
    if not n:
        return {"judgements": 0, "accuracy": None, "ci95": None}
    outcomes = {k: sum(r["outcome"] == k for r in records) for k in ("correct", "wrong", "tie", "failed")}
    first = [r for r in records if r["chosen_first"]]
    second = [r for r in records if not r["chosen_first"]]
    acc = lambda rs: round(sum(r["outcome"] == "correct" for r in rs) / len(rs), 4) if rs else None  # noqa: E731
    # Rows whose two orders got the same verdict (both correct or both not).
    by_row: dict[int, list[bool]] = defaultdict(list)
    for r in records:
        by_row[r["row"]].append(r["outcome"] == "correct")
    consistent = [len(set(v)) == 1 for v in by_row.values() if len(v) == 2]
    return {
        "judgements": n,
        "rows": len(by_row),
        "users": len({r["user_id"] for r in records}),
        "accuracy": round(outcomes["correct"] / n, 4),
        "ci95": bootstrap_ci(_user_counts(records), seed),
        **outcomes,
        "accuracy_chosen_first": acc(first),
        "accuracy_chosen_second": acc(second),
        "position_bias": round(acc(first) - acc(second), 4) if first and second else None,
        "order_consistency": round(sum(consistent) / len(consistent), 4) if consistent else None,
    }


# -- reference predictors from the latent truth (synthetic data only) -----------------------------

def _attr_vector(attrs: dict[str, int], names: Sequence[str]) -> np.ndarray:
    return np.array([attrs[a] for a in names], dtype=float)


def reference_predictors(test_rows: Sequence[tuple[int, BenchRow]], data: BenchData, truth: dict, seed: int = 0) -> dict[str, Any]:
    """Accuracy of predictors that see the latent attributes instead of the text (see module doc).
    Rows the truth does not know (edited files) are skipped and counted."""
    from sklearn.linear_model import LogisticRegression

    from pgenrm_plugins.bench.synthetic import row_key

    names = truth["attributes"]
    by_key = {t["key"]: t for t in truth["rows"]}

    def key_of(row: BenchRow) -> str:
        return row_key(row.model_dump(mode="json"))

    def diffs(rows: Iterable[BenchRow]):
        out = []
        for row in rows:
            t = by_key.get(key_of(row))
            if t:
                out.append(_attr_vector(t["chosen"], names) - _attr_vector(t["rejected"], names))
        return out

    def fit(ds):
        if not ds:
            return None
        x = np.vstack([np.array(ds), -np.array(ds)])  # mirrored: both classes, no intercept
        y = np.array([1] * len(ds) + [0] * len(ds))
        return LogisticRegression(fit_intercept=False, C=1.0).fit(x, y).coef_[0]

    train = data.split("train")
    w_global = fit(diffs(train))
    w_user = {u: fit(diffs([r for r in train if r.user_id == u])) for u in {r.user_id for r in train}}
    predictors = {
        "oracle": lambda u: np.array([truth["users"][u]["weights"][a] for a in names]) if u in truth["users"] else None,
        "attr-user": lambda u: w_user.get(u) if w_user.get(u) is not None else w_global,
        "attr-global": lambda u: w_global,
    }
    descriptions = {
        "oracle": "each user's true latent weights (the ceiling: users choose with noise)",
        "attr-user": "logistic regression on the user's own train pairs' attributes (cold start: attr-global)",
        "attr-global": "one logistic regression on all users' train pairs' attributes (one global preference)",
    }
    out: dict[str, Any] = {}
    for name, weights_of in predictors.items():
        records, unknown = [], 0
        for index, row in test_rows:
            t = by_key.get(key_of(row))
            w = weights_of(row.user_id) if t else None
            if t is None or w is None:
                unknown += t is None
                continue
            d = float(w @ (_attr_vector(t["chosen"], names) - _attr_vector(t["rejected"], names)))
            outcome = "tie" if d == 0 else ("correct" if d > 0 else "wrong")
            for chosen_first in (True, False):  # no position: both orders alike
                records.append({"row": index, "user_id": row.user_id, "chosen_first": chosen_first, "outcome": outcome})
        out[name] = {"description": descriptions[name], **summarize(records, seed), "rows_unknown_to_truth": unknown,
                     "by_group": _groups(records, truth, data, seed)}
    return out


def _groups(records: Sequence[dict], truth: dict | None, data: BenchData, seed: int) -> dict[str, Any]:
    """Accuracy of warm vs cold-start users, and per latent type when the truth is known."""
    warm_users = set(data.histories("train"))
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        groups["cold_start" if r["user_id"] not in warm_users else "warm"].append(r)
        if truth and r["user_id"] in truth.get("users", {}):
            groups["type:" + truth["users"][r["user_id"]]["type"]].append(r)
    return {g: {k: v for k, v in summarize(rs, seed).items() if k in ("accuracy", "ci95", "judgements", "users")}
            for g, rs in sorted(groups.items())}


# -- the run ----------------------------------------------------------------------------------------

def run_accuracy(
    data_path: str | Path,
    report_dir: str | Path,
    config: str | Path | dict | None = None,
    store: str | None = None,
    settings: Sequence[str] | None = None,
    truth_path: str | Path | None = None,
    cache_path: str | Path | None = None,
    batch_rows: int = 8,
    max_test_rows: int | None = None,
    seed: int = 0,
    backend=None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Run the grid, write report.json, report.md and the plots into `report_dir`, return the report.

    `backend`: an already built backend to wrap (tests pass the session's judge); by default the
    config's backend is built on the first cache miss."""
    from pgenrm_plugins.bench.synthetic import truth_path_for
    from pgenrm_plugins.scoring import Scorer

    console = console or Console(stderr=True, width=max(Console(stderr=True).width, 120))
    started = time.perf_counter()
    report_dir = Path(report_dir)
    data = load_bench(data_path)
    bad_rows = [{"line": e.line, "error": e.message} for e in data.errors]
    for e in data.errors:
        console.print(f"[yellow]skipped[/yellow] {data_path}: {e}", highlight=False, soft_wrap=True)
    test_rows = list(enumerate(data.split("test")))
    if max_test_rows is not None:
        test_rows = test_rows[:max_test_rows]
    if not test_rows:
        raise AccuracyError(f"{data_path}: no usable test rows (split 'test'); {len(bad_rows)} bad row(s)")
    truth_file = Path(truth_path) if truth_path else truth_path_for(data_path)
    truth = json.loads(truth_file.read_text(encoding="utf-8")) if truth_file.is_file() else None
    if truth_path and truth is None:
        raise AccuracyError(f"--truth {truth_path}: file not found")

    from pgenrm_plugins.judge import with_judge_defaults

    base = with_judge_defaults(load_config(config))  # a trained judge's own settings, before the grid copies them
    store_section = store_config(store)
    chosen = parse_settings(settings) if settings else [parse_setting(s) for s in DEFAULT_SETTINGS]
    if not settings and store_section:
        chosen += [parse_setting(s) for s in DEFAULT_PROTOTYPE_SETTINGS]
    pro = [s.name for s in chosen if s.top_k]
    if pro and not store_section:
        raise AccuracyError(f"settings {', '.join(pro)} use prototypes: pass --store (a prototype store built from the train split)")

    identity = base.backend.model_dump(mode="json")
    cache = CachingBackend(
        Path(cache_path) if cache_path else report_dir / "judge-cache.sqlite",
        identity=identity,
        factory=(lambda: backend) if backend is not None else (lambda: base.backend.build("backend")),
        seed_offsets=base.backend.name in SEED_OFFSET_BACKENDS,
        close_inner=backend is None,
    )
    histories = data.histories("train")
    shared_history = global_history(data, base.reward.max_history, seed)
    warm_users = set(histories)
    results: dict[str, Any] = {}
    all_records: dict[str, list[dict]] = {}
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            for setting in chosen:
                cfg = base.model_dump(mode="json")
                cfg["sampling"]["chains"] = setting.chains
                if setting.mode:
                    cfg["reward"]["mode"] = setting.mode
                if setting.reader:
                    cfg["reward"]["reader"] = setting.reader
                if setting.top_k:
                    cfg["prototypes"].update(enabled=True, top_k=setting.top_k)
                    cfg["store"] = store_section
                else:
                    cfg["prototypes"]["enabled"] = False
                scorer = Scorer(cfg, backend=cache)
                mode = scorer.config.reward.mode
                task = progress.add_task(f"{setting.name:<16}", total=len(test_rows))
                before = dict(cache.stats.extra), cache.stats.generated_tokens
                t0 = time.perf_counter()
                records: list[dict] = []
                components = defaultdict(float)
                placements: Counter = Counter()
                for start in range(0, len(test_rows), batch_rows):
                    chunk = test_rows[start:start + batch_rows]
                    reqs = []
                    for _, row in chunk:
                        history = {"none": [], "global": shared_history, "user": histories.get(row.user_id, [])}[setting.history]
                        reqs += _requests(setting, row, history, mode)
                    scored = scorer.score(reqs)
                    for j, (index, row) in enumerate(chunk):
                        for chosen_first, result in zip((True, False), scored[2 * j:2 * j + 2]):
                            c = result.components
                            records.append({
                                "row": index, "user_id": row.user_id, "chosen_first": chosen_first,
                                "outcome": judgement(result, mode, chosen_first),
                                "rewards": [round(x, 5) for x in result.rewards],
                                "cold_start": row.user_id not in warm_users,
                                "neighbours": c.get("neighbours") is not None,
                            })
                            components["chains_sampled"] += c["chains_sampled"]
                            components["parse_failures"] += c["parse_failures"]
                            components["criteria_fallbacks"] += c["criteria_fallbacks"]
                            components["generated_tokens"] += c["generated_tokens"]
                            if c.get("placement"):  # prototype settings: how the user was placed
                                placements[c["placement"]] += 1
                                components["neighbours_used"] += len(c.get("neighbours_used") or [])
                    progress.advance(task, len(chunk))
                n = len(records)
                summary = summarize(records, seed)
                summary.update({
                    "setting": asdict(setting),
                    "description": setting.describe(),
                    "mode": mode,
                    "reader": scorer.reader if mode == "group" else "parse",
                    "chains_per_judgement": round(components["chains_sampled"] / n, 3),
                    "parse_failures_per_judgement": round(components["parse_failures"] / n, 3),
                    "criteria_fallbacks_per_judgement": round(components["criteria_fallbacks"] / n, 3),
                    "generated_tokens_per_judgement": round(components["generated_tokens"] / n, 1),
                    "with_neighbours": sum(r["neighbours"] for r in records),
                    "placements": dict(placements),
                    "neighbours_per_judgement": round(components["neighbours_used"] / n, 3),
                    "by_group": _groups(records, truth, data, seed),
                    "per_user": _per_user(records, truth, warm_users),
                    "seconds": round(time.perf_counter() - t0, 1),
                    "new_chains": cache.stats.extra["chain_misses"] - before[0]["chain_misses"],
                    "new_probability_reads": cache.stats.extra["prob_misses"] - before[0]["prob_misses"],
                    "new_generated_tokens": cache.stats.generated_tokens - before[1],
                })
                if getattr(scorer, "store", None) is not None:
                    scorer.store.close()  # not scorer.close(): that would close the shared judge
                results[setting.name] = summary
                all_records[setting.name] = records
                progress.update(task, description=f"{setting.name:<16} {summary['accuracy']:.3f}")
    finally:
        cache.close()

    if "no-history" in all_records:
        base_counts = _user_counts(all_records["no-history"])
        for name, records in all_records.items():
            counts = _user_counts(records)
            delta = results[name]["accuracy"] - results["no-history"]["accuracy"]
            results[name]["vs_no_history"] = {"delta": round(delta, 4), "ci95": bootstrap_ci(counts, seed, other=base_counts)}

    report = {
        "data": str(data_path),
        "truth": str(truth_file) if truth else None,
        "rows": len(data.rows),
        "bad_rows": bad_rows,
        "test_rows": len(test_rows),
        "users": {"total": len(data.users()), "with_test_rows": len({r.user_id for _, r in test_rows}),
                  "cold_start_with_test_rows": len({r.user_id for _, r in test_rows} - warm_users)},
        "global_history_size": len(shared_history),
        "config": base.model_dump(mode="json"),
        "store": store_section,
        "settings": results,
        "references": reference_predictors(test_rows, data, truth, seed) if truth else {},
        "cache": {"path": str(cache.path), **cache.stats.extra, "generated_tokens": cache.stats.generated_tokens,
                  "generate_calls": cache.stats.generate_calls, "prob_calls": cache.stats.prob_calls},
        "method": METHOD_NOTE,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_report(report, report_dir)
    print_summary(report, console)
    return report


def _per_user(records: Sequence[dict], truth: dict | None, warm_users: set[str]) -> dict[str, Any]:
    out = {}
    for user, (correct, n) in sorted(_user_counts(records).items()):
        entry = {"accuracy": round(correct / n, 4), "judgements": n, "cold_start": user not in warm_users}
        if truth and user in truth.get("users", {}):
            entry["type"] = truth["users"][user]["type"]
        out[user] = entry
    return out


METHOD_NOTE = (
    "Each test row is judged twice, chosen response shown first and second. A judgement is correct when the "
    "chosen response gets the higher reward; ties and failures (no chain gave a score) stay in the denominator. "
    "Intervals: 95% bootstrap over users. In group mode the two responses never share a chain, so position "
    "cannot matter (the second order is a cache hit); pairwise mode shows both responses in one chain."
)


# -- writing ----------------------------------------------------------------------------------------

def _fmt_acc(entry: dict) -> str:
    if entry.get("accuracy") is None:
        return "-"
    ci = entry.get("ci95")
    return f"{entry['accuracy']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{entry['accuracy']:.3f}"


def markdown(report: dict) -> str:
    lines = [
        "# Personalized pairwise accuracy", "",
        f"Data: `{report['data']}`: {report['test_rows']} test rows of {report['users']['with_test_rows']} users "
        f"({report['users']['cold_start_with_test_rows']} cold-start), {len(report['bad_rows'])} bad row(s). "
        f"Judge: `{report['config']['backend']['name']}` {json.dumps(report['config']['backend']['options'])}, "
        f"chains up to {report['config']['sampling']['max_new_tokens']} tokens at temperature "
        f"{report['config']['sampling']['temperature']}, history up to {report['config']['reward']['max_history']} pairs.", "",
        report["method"], "",
        "| setting | what the judge sees | mode / reader | accuracy [95% CI] | vs no-history [95% CI] | chosen 1st / 2nd | ties | failed | criteria fallbacks / judgement | gen. tokens / judgement | judgements |",
        "|---|---|---|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["settings"].items():
        vs = s.get("vs_no_history")
        vs_text = f"{vs['delta']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}]" if vs and vs.get("ci95") and name != "no-history" else "-"
        lines.append(
            f"| `{name}` | {s['description']} | {s['mode']} / {s['reader']} | {_fmt_acc(s)} | {vs_text} | "
            f"{s['accuracy_chosen_first']:.3f} / {s['accuracy_chosen_second']:.3f} | {s['tie']} | {s['failed']} | "
            f"{s['criteria_fallbacks_per_judgement']:.2f} | {s['generated_tokens_per_judgement']:.0f} | {s['judgements']} |")
    if report["references"]:
        lines += ["", "Reference predictors that read the latent attributes (synthetic truth), not the text:", "",
                  "| predictor | what it knows | accuracy [95% CI] |", "|---|---|---|"]
        for name, r in report["references"].items():
            lines.append(f"| `{name}` | {r['description']} | {_fmt_acc(r)} |")
    groups = sorted({g for s in [*report["settings"].values(), *report["references"].values()] for g in s.get("by_group", {})})
    if groups:
        lines += ["", "By group (warm users have train rows; cold-start users have none):", "",
                  "| setting | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for name, s in [*report["settings"].items(), *report["references"].items()]:
            cells = [_fmt_acc(s["by_group"][g]) + f" (n={s['by_group'][g]['judgements']})" if g in s["by_group"] else "-" for g in groups]
            lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    if report["bad_rows"]:
        lines += ["", "Rows not used (unknown structure), by line:", ""]
        lines += [f"- line {b['line']}: {b['error']}" for b in report["bad_rows"][:50]]
        if len(report["bad_rows"]) > 50:
            lines.append(f"- ... and {len(report['bad_rows']) - 50} more (all in report.json)")
    c = report["cache"]
    lines += ["", f"Judge cache `{c['path']}`: chains {c['chain_hits']} hit / {c['chain_misses']} new, probability reads "
              f"{c['prob_hits']} hit / {c['prob_misses']} new; {c['generated_tokens']} tokens generated in this run; "
              f"{report['seconds']} s.", ""]
    return "\n".join(lines)


def plot(report: dict, report_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    settings = report["settings"]
    ind = sorted(((s["setting"]["chains"], name, s) for name, s in settings.items()
                  if s["setting"]["history"] == "user" and not s["setting"]["top_k"] and not s["setting"]["mode"]
                  and not s["setting"]["reader"]), key=lambda t: t[0])
    lines = [(name, s) for name, s in settings.items() if s["setting"]["history"] != "user"]
    lines += [(name, r) for name, r in report["references"].items()]

    def err(s):
        lo, hi = s["ci95"] or (s["accuracy"], s["accuracy"])
        return [[s["accuracy"] - lo], [hi - s["accuracy"]]]

    def baselines(ax):
        colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
        for i, (name, s) in enumerate(lines):
            colour = colours[(i + 1) % len(colours)]
            ax.axhline(s["accuracy"], ls="--", lw=1, color=colour, label=f"{name} {s['accuracy']:.3f}")
            if s.get("ci95"):
                ax.axhspan(*s["ci95"], color=colour, alpha=0.08)
        ax.axhline(0.5, ls=":", color="grey", lw=1, label="chance")
        ax.set_ylim(0, 1)
        ax.set_ylabel("pairwise accuracy (95% CI)")
        ax.legend(fontsize=7, loc="lower right")

    if ind:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        xs = [n for n, _, _ in ind]
        ax.errorbar(xs, [s["accuracy"] for _, _, s in ind], yerr=np.hstack([err(s) for _, _, s in ind]),
                    marker="o", capsize=4, label="Ind-N (user's history)")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("N, sampled evaluation chains")
        ax.set_title("Individual-level scaling")
        baselines(ax)
        fig.tight_layout()
        fig.savefig(report_dir / "accuracy_vs_n.png", dpi=120)
        plt.close(fig)
        written.append("accuracy_vs_n.png")
    pro = [(name, s) for name, s in settings.items() if s["setting"]["top_k"]]
    if pro:
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        for n in sorted({s["setting"]["chains"] for _, s in pro}):
            pts = [(0, s) for _, _, s in ind if s["setting"]["chains"] == n]
            pts += sorted(((s["setting"]["top_k"], s) for _, s in pro if s["setting"]["chains"] == n), key=lambda t: t[0])
            ax.errorbar([k for k, _ in pts], [s["accuracy"] for _, s in pts], yerr=np.hstack([err(s) for _, s in pts]),
                        marker="o", capsize=4, label=f"Ind-{n} + Pro-k")
        ax.set_xticks(sorted({0, *(s["setting"]["top_k"] for _, s in pro)}))
        ax.set_xlabel("k, prototype neighbours (0 = none)")
        ax.set_title("Prototype-level scaling")
        baselines(ax)
        fig.tight_layout()
        fig.savefig(report_dir / "accuracy_vs_k.png", dpi=120)
        plt.close(fig)
        written.append("accuracy_vs_k.png")
    return written


def write_report(report: dict, report_dir: Path) -> None:
    """report.json, report.md and the plots; each file written whole (temporary file, then rename)."""
    import os

    report_dir.mkdir(parents=True, exist_ok=True)
    report["plots"] = plot(report, report_dir)
    for name, text in (("report.json", json.dumps(report, indent=1)), ("report.md", markdown(report))):
        tmp = report_dir / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, report_dir / name)


def print_summary(report: dict, console: Console) -> None:
    table = Table(title=f"pairwise accuracy, {report['test_rows']} test rows x 2 orders", title_justify="left")
    for col in ("setting", "accuracy [95% CI]", "vs no-history", "1st / 2nd", "ties", "failed", "new chains"):
        table.add_column(col, justify="left" if col == "setting" else "right")
    for name, s in report["settings"].items():
        vs = s.get("vs_no_history")
        table.add_row(name, _fmt_acc(s), f"{vs['delta']:+.3f}" if vs and name != "no-history" else "-",
                      f"{s['accuracy_chosen_first']:.3f} / {s['accuracy_chosen_second']:.3f}", str(s["tie"]),
                      str(s["failed"]), str(s["new_chains"]))
    for name, r in report["references"].items():
        table.add_row(f"[dim]{name} (truth)[/dim]", _fmt_acc(r), "-", "-", str(r["tie"]), "-", "-")
    console.print(table)
    if report["bad_rows"]:
        console.print(f"[yellow]{len(report['bad_rows'])} row(s) of {report['data']} could not be read; "
                      "listed by line in report.json and report.md[/yellow]", highlight=False, soft_wrap=True)
