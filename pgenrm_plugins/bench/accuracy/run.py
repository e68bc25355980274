"""The benchmark run: load the rows and the truth, pick the settings, then for each setting build
the two requests of every test row (chosen shown first, then second), score them through the
shared judge cache, collect one record per judgement and summarize; finally compare every setting
with no-history and write the report.

Each scored batch of rows is appended to REPORT/progress.jsonl as it is done (its records and
counts), with REPORT/progress.jsonl.run.json saying which data and settings they belong to. A rerun
into the same folder reads them back and judges only the batches that are missing, per setting;
the summaries are computed from the same batches either way, so the report is the same.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pgenrm_plugins.backends.cache import SEED_OFFSET_BACKENDS, CachingBackend
from pgenrm_plugins.bench.accuracy.predictors import contrast_overlap, reference_predictors
from pgenrm_plugins.bench.accuracy.report import METHOD_NOTE, print_summary, write_report
from pgenrm_plugins.bench.accuracy.settings import (
    DEFAULT_PROTOTYPE_SETTINGS,
    DEFAULT_SETTINGS,
    AccuracyError,
    Setting,
    parse_setting,
    parse_settings,
    store_config,
)
from pgenrm_plugins.bench.accuracy.stats import _groups, _user_counts, bootstrap_ci, summarize
from pgenrm_plugins.config import load_config
from pgenrm_plugins.datasets.bench import BenchData, BenchRow, load_bench
from pgenrm_plugins.frameworks.logs import sample_logs
from pgenrm_plugins.requests_io import (
    complete_lines,
    differences,
    file_sha256,
    iter_jsonl,
    read_run_record,
    run_record_path,
    write_run_record,
)
from pgenrm_plugins.types import HistoryItem, ScoreRequest

if TYPE_CHECKING:
    from pgenrm_plugins.backends.base import Backend


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


def _requests(setting: Setting, row: BenchRow, history: list[HistoryItem], mode: str,
              persona: str | None = None) -> list[ScoreRequest]:
    """Two requests per row: chosen shown first, then second."""
    # A non-personalized judgement must not depend on who asks: no user id (it seeds the chains).
    user_id = row.user_id if setting.history == "user" else None
    out = []
    for first, second in ((row.chosen.content, row.rejected.content), (row.rejected.content, row.chosen.content)):
        shown = ({"completions": [first], "reference": second} if mode == "pairwise"
                 else {"completions": [first, second]})
        out.append(ScoreRequest(user_id=user_id, history=history, persona=persona, prompt=list(row.context), **shown))
    return out


def judgement(result, mode: str, chosen_first: bool) -> str:
    """'correct', 'wrong', 'tie' or 'failed' for one scored order."""
    c = result.components
    if c.failed_completions:
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


def _per_user(records: Sequence[dict], truth: dict | None, warm_users: set[str]) -> dict[str, Any]:
    out = {}
    for user, (correct, n) in sorted(_user_counts(records).items()):
        entry = {"accuracy": round(correct / n, 4), "judgements": n, "cold_start": user not in warm_users}
        if truth and user in truth.get("users", {}):
            entry["type"] = truth["users"][user]["type"]
        out[user] = entry
    return out


@dataclass
class _Run:
    """What every setting of one run shares: the rows, the truth, the histories, the base config, the cache."""
    data: BenchData
    test_rows: list[tuple[int, BenchRow]]
    truth: dict | None
    histories: dict[str, list[HistoryItem]]
    personas: dict[str, str]  # user_id -> stated preferences, shown by `:persona` settings
    shared_history: list[HistoryItem]
    warm_users: set[str]
    base: Any  # the loaded config, judge defaults applied
    store_section: dict | None
    cache: CachingBackend
    batch_rows: int
    seed: int
    progress: "_Progress"


@dataclass
class _Progress:
    """REPORT/progress.jsonl: one line per judged batch of rows, appended as it is done, and its record."""
    path: Path
    record: dict  # the data's hash, the seed, and each setting's scoring identity
    done: dict[str, dict[tuple[int, int], dict]]  # setting -> (first row, end) of a batch -> that batch's part
    out: IO[str]
    reused: dict[str, int]  # setting -> rows read back in this run


@dataclass
class _Tally:
    """One setting's judgements, added batch by batch (scored now or read back: the same sums)."""
    records: list[dict]
    components: defaultdict
    placements: Counter
    readers: Counter  # what read the scores, as each result reports it

    def add(self, part: dict) -> None:
        self.records += part["records"]
        for key, value in part["components"].items():
            self.components[key] += value
        self.placements.update(part["placements"])
        self.readers.update(part["readers"])


def _load_rows(data_path, truth_path, max_test_rows: int | None, console: Console):
    """The rows (bad ones reported and listed), the test rows to judge, and the truth if there is one."""
    from pgenrm_plugins.datasets.synthetic import truth_path_for

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
    return data, bad_rows, test_rows, truth_file, truth


def _choose_settings(settings: Sequence[str] | None, store_section: dict | None) -> list[Setting]:
    """The asked settings, or the default grid (with the prototype settings when there is a store)."""
    chosen = parse_settings(settings) if settings else [parse_setting(s) for s in DEFAULT_SETTINGS]
    if not settings and store_section:
        chosen += [parse_setting(s) for s in DEFAULT_PROTOTYPE_SETTINGS]
    pro = [s.name for s in chosen if s.top_k]
    if pro and not store_section:
        raise AccuracyError(f"settings {', '.join(pro)} use prototypes: "
                            "pass --store (a prototype store built from the train split)")
    return chosen


def _setting_config(run: _Run, setting: Setting) -> dict:
    """The base config with the setting's chains, mode, reader and prototype scaling."""
    cfg = run.base.model_dump(mode="json")
    cfg["sampling"]["chains"] = setting.chains
    if setting.mode:
        cfg["reward"]["mode"] = setting.mode
    if setting.reader:
        cfg["reward"]["reader"] = setting.reader
    if setting.top_k:
        cfg["prototypes"].update(enabled=True, top_k=setting.top_k)
        cfg["store"] = run.store_section
    else:
        cfg["prototypes"]["enabled"] = False
    return cfg


def _chunk_requests(run: _Run, setting: Setting, chunk, mode: str) -> list[ScoreRequest]:
    reqs = []
    for _, row in chunk:
        history = {"none": [], "global": run.shared_history,
                   "user": run.histories.get(row.user_id, [])}[setting.history]
        reqs += _requests(setting, row, history, mode, run.personas.get(row.user_id) if setting.persona else None)
    return reqs


def _collect(run: _Run, chunk, scored, mode: str) -> dict:
    """A batch's part: one record per scored order, and the chain counts the judge reported."""
    records: list[dict] = []
    components: defaultdict = defaultdict(float)
    placements: Counter = Counter()
    readers: Counter = Counter()
    for j, (index, row) in enumerate(chunk):
        for chosen_first, result in zip((True, False), scored[2 * j:2 * j + 2]):
            c = result.components
            records.append({
                "row": index, "user_id": row.user_id, "chosen_first": chosen_first,
                "outcome": judgement(result, mode, chosen_first),
                "rewards": [round(x, 5) for x in result.rewards],
                "cold_start": row.user_id not in run.warm_users,
                "neighbours": c.neighbours is not None,
            })
            readers[c.reader] += 1
            for key, value in sample_logs(result, prefix="").items():  # the numbers every adapter logs
                components[key] += value
            if c.placement:  # prototype settings: how the user was placed
                placements[c.placement] += 1
                components["neighbours_used"] += len(c.neighbours_used)
    return {"records": records, "components": dict(components), "placements": dict(placements),
            "readers": dict(readers)}


def _setting_summary(run: _Run, setting: Setting, tally: _Tally, mode: str, before, t0: float) -> dict:
    records, components, cache = tally.records, tally.components, run.cache
    n = len(records)
    summary = summarize(records, run.seed)
    summary.update({
        "setting": asdict(setting),
        "description": setting.describe(),
        "mode": mode,
        "reader": tally.readers.most_common(1)[0][0],
        "chains_per_judgement": round(components["chains_sampled"] / n, 3),
        "parse_failures_per_judgement": round(components["parse_failures"] / n, 3),
        "criteria_fallbacks_per_judgement": round(components["criteria_fallbacks"] / n, 3),
        "generated_tokens_per_judgement": round(components["generated_tokens"] / n, 1),
        "with_neighbours": sum(r["neighbours"] for r in records),
        "placements": dict(tally.placements),
        "neighbours_per_judgement": round(components["neighbours_used"] / n, 3),
        "by_group": _groups(records, run.truth, run.data, run.seed),
        "per_user": _per_user(records, run.truth, run.warm_users),
        "seconds": round(time.perf_counter() - t0, 1),
        "new_chains": cache.stats.extra["chain_misses"] - before[0]["chain_misses"],
        "new_probability_reads": cache.stats.extra["prob_misses"] - before[0]["prob_misses"],
        "new_generated_tokens": cache.stats.generated_tokens - before[1],
    })
    return summary


def _run_setting(run: _Run, setting: Setting, progress: Progress) -> tuple[dict, list[dict]]:
    """Judge every test row in both orders under one setting; its summary and its records."""
    from pgenrm_plugins.scoring import Scorer

    scorer = Scorer(_setting_config(run, setting), backend=run.cache)
    mode = scorer.config.reward.mode
    done = _check_setting(run.progress, setting.name, scorer.identity())
    task = progress.add_task(f"{setting.name:<16}", total=len(run.test_rows))
    before = dict(run.cache.stats.extra), run.cache.stats.generated_tokens
    t0 = time.perf_counter()
    tally = _Tally([], defaultdict(float), Counter(), Counter())
    reused = 0
    for start in range(0, len(run.test_rows), run.batch_rows):
        chunk = run.test_rows[start:start + run.batch_rows]
        end = start + len(chunk)
        part = done.get((start, end))  # the same rows (the data's hash is checked), judged before
        if part is None:
            part = _collect(run, chunk, scorer.score(_chunk_requests(run, setting, chunk, mode)), mode)
            run.progress.out.write(json.dumps({"setting": setting.name, "start": start, "end": end, **part}) + "\n")
            run.progress.out.flush()
        else:
            reused += len(chunk)
        tally.add(part)
        progress.advance(task, len(chunk))
    run.progress.reused[setting.name] = reused
    summary = _setting_summary(run, setting, tally, mode, before, t0)
    if getattr(scorer, "store", None) is not None:
        scorer.store.close()  # not scorer.close(): that would close the shared judge
    progress.update(task, description=f"{setting.name:<16} {summary['accuracy']:.3f}"
                    + (f" ({reused} rows read back from {run.progress.path.name})" if reused else ""))
    return summary, tally.records


def _open_progress(report_dir: Path, run_record: dict, restart: bool) -> _Progress:
    """REPORT/progress.jsonl, read back when it belongs to the same data and seed (else an error that
    names what differs), started afresh with `restart`; open for appending. More test rows or other
    batch sizes are fine: a batch is read back only where the same rows are judged again."""
    path = report_dir / "progress.jsonl"
    if restart:
        path.unlink(missing_ok=True)
        run_record_path(path).unlink(missing_ok=True)
    record = read_run_record(path) if path.is_file() else None
    done: dict[str, dict[tuple[int, int], dict]] = defaultdict(dict)
    if record is None:  # lines that no record vouches for are not read back
        path.unlink(missing_ok=True)
        record = {**run_record, "settings": {}}
    else:
        changed = differences({k: record.get(k) for k in run_record}, run_record)
        if changed:
            raise AccuracyError(f"{path} holds judgements of another run: {'; '.join(changed)}. "
                                f"{_AGAIN} (or rerun as it was)")
        try:
            complete_lines(path)  # a batch cut off by a kill is judged again
        except ValueError as exc:
            raise AccuracyError(f"{exc}; or pass --restart") from None
        for _, line in iter_jsonl(path):
            done[line["setting"]][line["start"], line["end"]] = line
    report_dir.mkdir(parents=True, exist_ok=True)
    write_run_record(path, record)
    return _Progress(path, record, done, open(path, "a", encoding="utf-8"), {})


_AGAIN = ("Pass --restart to judge every row again (the judge cache still answers what it holds), "
          "or choose another --report")


def _check_setting(progress: _Progress, name: str, identity: str) -> dict[tuple[int, int], dict]:
    """The batches of `name` already judged with this scoring identity; a changed config, judge or
    prototype store is an error naming each difference."""
    settings, store_version = json.loads(identity)
    current = {"settings": settings, "store_version": store_version}
    recorded = progress.record["settings"].get(name)
    if recorded is None:
        progress.record["settings"][name] = current
        write_run_record(progress.path, progress.record)
        return {}
    changed = differences(recorded, current)
    if changed:
        raise AccuracyError(f"{progress.path}: setting {name} was judged with other settings: "
                            f"{'; '.join(changed)}. {_AGAIN}")
    return progress.done.get(name, {})


def _compare_to_no_history(results: dict[str, Any], all_records: dict[str, list[dict]], seed: int) -> None:
    """Each setting's accuracy minus no-history's, with a paired bootstrap interval over users."""
    if "no-history" in all_records:
        base_counts = _user_counts(all_records["no-history"])
        for name, records in all_records.items():
            counts = _user_counts(records)
            delta = results[name]["accuracy"] - results["no-history"]["accuracy"]
            results[name]["vs_no_history"] = {"delta": round(delta, 4),
                                              "ci95": bootstrap_ci(counts, seed, other=base_counts)}


def _report(run: _Run, data_path, bad_rows: list[dict], truth_file: Path, results: dict[str, Any],
            started: float) -> dict[str, Any]:
    """report.json's content: the data, the config, every setting's summary, the references, the cache."""
    data, test_rows, truth, cache = run.data, run.test_rows, run.truth, run.cache
    view = run.base.reward.max_history  # the pairs one judge view shows
    return {
        "data": str(data_path),
        "truth": str(truth_file) if truth else None,
        "rows": len(data.rows),
        "bad_rows": bad_rows,
        "test_rows": len(test_rows),
        "users": {"total": len(data.users()), "with_test_rows": len({r.user_id for _, r in test_rows}),
                  "cold_start_with_test_rows": len({r.user_id for _, r in test_rows} - run.warm_users)},
        "global_history_size": len(run.shared_history),
        "config": run.base.model_dump(mode="json"),
        "store": run.store_section,
        "settings": results,
        "references": {**(reference_predictors(test_rows, data, truth, run.seed, view_pairs=view) if truth else {}),
                       "contrast-overlap": contrast_overlap(test_rows, data, truth, run.seed, view_pairs=view)},
        "cache": {"path": str(cache.path), **cache.stats.extra, "generated_tokens": cache.stats.generated_tokens,
                  "generate_calls": cache.stats.generate_calls, "prob_calls": cache.stats.prob_calls},
        "resumed_rows": dict(run.progress.reused),  # per setting: rows an earlier, interrupted run judged
        "method": METHOD_NOTE,
        "seconds": round(time.perf_counter() - started, 1),
    }


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
    backend: Backend | None = None,
    console: Console | None = None,
    restart: bool = False,
) -> dict[str, Any]:
    """Run the grid, write report.json, report.md and the plots into `report_dir`, return the report.

    `backend`: an already built backend to wrap (tests pass the session's judge); by default the
    config's backend is built on the first cache miss. An interrupted run into the same
    `report_dir` resumes from its progress.jsonl; `restart` judges every row again."""
    console = console or Console(stderr=True, width=max(Console(stderr=True).width, 120))
    started = time.perf_counter()
    report_dir = Path(report_dir)
    data, bad_rows, test_rows, truth_file, truth = _load_rows(data_path, truth_path, max_test_rows, console)

    from pgenrm_plugins.backends.judge_folder import with_judge_defaults

    base = with_judge_defaults(load_config(config))  # a trained judge's own settings, before the grid copies them
    store_section = store_config(store)
    chosen = _choose_settings(settings, store_section)
    progress_log = _open_progress(report_dir, {"data_sha256": file_sha256(data_path), "seed": seed}, restart)
    cache = CachingBackend(
        Path(cache_path) if cache_path else report_dir / "judge-cache.sqlite",
        identity=base.backend.model_dump(mode="json"),
        factory=(lambda: backend) if backend is not None else (lambda: base.backend.build("backend")),
        seed_offsets=base.backend.name in SEED_OFFSET_BACKENDS,
        close_inner=backend is None,
    )
    histories = data.histories("train")
    warm = {u for u, g in data.groups().items() if g == "warm"}
    run = _Run(data, test_rows, truth, histories, data.personas(), global_history(data, base.reward.max_history, seed),
               warm, base, store_section, cache, batch_rows, seed, progress_log)
    results: dict[str, Any] = {}
    all_records: dict[str, list[dict]] = {}
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=False) as progress:
            for setting in chosen:
                results[setting.name], all_records[setting.name] = _run_setting(run, setting, progress)
    finally:
        cache.close()
        progress_log.out.close()
    _compare_to_no_history(results, all_records, seed)

    report = _report(run, data_path, bad_rows, truth_file, results, started)
    write_report(report, report_dir)
    print_summary(report, console)
    return report
