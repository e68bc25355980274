"""`pgenrm bench accuracy` on the real embedded judge: a tiny grid (3 users, one of them cold-start,
short chains), report files, the judge cache (a rerun generates nothing; a larger N reuses the
chains of a smaller one), ties and failures in the denominator, bad rows reported by line."""

import dataclasses
import json
import shutil

import pytest
from conftest import Recording, make_config
from typer.testing import CliRunner

from pgenrm_plugins.backends.base import GenerationRequest
from pgenrm_plugins.backends.cache import CachingBackend
from pgenrm_plugins.bench.accuracy import AccuracyError, judgement, parse_setting, run_accuracy, summarize
from pgenrm_plugins.datasets.synthetic import generate, write_bench
from pgenrm_plugins.types import ScoreResult

# Short everything: two history pairs, texts clipped, 24-token chains.
TINY = make_config(sampling={"chains": 1, "max_new_tokens": 24}, reward={"max_history": 2, "max_chars": 240})


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """The test machine's 2 cores are shared by several jobs: with 2 torch threads, OpenMP spins
    against the other processes and this module ran 10x slower than with one (measured: 61 s of
    CPU against 6 s for the same judgement). The setting is restored for the next module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    bench = generate(n_users=3, rows_per_user=4, seed=5, test_per_user=1, cold_start_fraction=0.34)
    rows_path, _ = write_bench(folder / "rows.jsonl", bench)
    return rows_path


@pytest.fixture(scope="module")
def first_run(rows, judge, tmp_path_factory):
    report_dir = tmp_path_factory.mktemp("report")
    before = dataclasses.replace(judge.stats)
    report = run_accuracy(rows, report_dir, config=TINY, settings=["no-history", "ind-1", "ind-1:parse"], backend=judge)
    return report_dir, report, judge.stats.generated_tokens - before.generated_tokens


def test_report_files_and_numbers(first_run):
    report_dir, report, generated = first_run
    assert generated > 0
    on_disk = json.loads((report_dir / "report.json").read_text())
    assert on_disk["settings"].keys() == {"no-history", "ind-1", "ind-1:parse"}
    assert (report_dir / "accuracy_vs_n.png").stat().st_size > 1000
    md = (report_dir / "report.md").read_text()
    assert "| `ind-1` |" in md and "cold_start" in md
    assert report["test_rows"] == 3 and report["users"]["cold_start_with_test_rows"] == 1
    for name, s in report["settings"].items():
        assert s["judgements"] == 6  # 3 rows x both orders
        assert s["correct"] + s["wrong"] + s["tie"] + s["failed"] == 6
        assert s["accuracy"] == round(s["correct"] / 6, 4)
        lo, hi = s["ci95"]
        assert 0.0 <= lo <= s["accuracy"] <= hi <= 1.0
        assert set(s["per_user"]) == {"u000", "u001", "u002"}
        assert {"cold_start", "warm"} <= set(s["by_group"])
    ind = report["settings"]["ind-1"]
    assert ind["mode"] == "group" and ind["reader"] == "logprob" and ind["failed"] == 0
    # group mode: the responses never share a chain, so the order cannot change a verdict
    assert ind["order_consistency"] == 1.0 and ind["position_bias"] == 0.0
    # the truth sidecar gives the reference predictors
    assert report["references"]["oracle"]["judgements"] == 6


def test_ties_and_failures_stay_in_the_denominator(first_run):
    _, report, _ = first_run
    # 24 tokens cannot finish the criteria JSON: with the parse reader every chain fails
    parsed = report["settings"]["ind-1:parse"]
    assert parsed["failed"] > 0 and parsed["parse_failures_per_judgement"] > 0
    assert parsed["accuracy"] == round(parsed["correct"] / parsed["judgements"], 4)
    # and the same outcome logic on hand-made results
    ok = ScoreResult(rewards=[0.7, 0.4], components={"failed_completions": []})
    tie = ScoreResult(rewards=[0.5, 0.5], components={"failed_completions": []})
    failed = ScoreResult(rewards=[0.5, 0.9], components={"failed_completions": [0]})
    assert judgement(ok, "group", chosen_first=True) == "correct"
    assert judgement(ok, "group", chosen_first=False) == "wrong"
    assert judgement(tie, "group", True) == "tie" and judgement(failed, "group", True) == "failed"
    assert judgement(ScoreResult(rewards=[0.5], components={"failed_completions": []}), "pairwise", True) == "tie"
    records = [{"row": i // 2, "user_id": "u", "chosen_first": i % 2 == 0, "outcome": o}
               for i, o in enumerate(["correct", "tie", "failed", "correct"])]
    s = summarize(records)
    assert s["accuracy"] == 0.5 and s["tie"] == 1 and s["failed"] == 1 and s["judgements"] == 4


def test_rerun_is_served_from_the_cache(rows, judge, first_run):
    report_dir, report, _ = first_run
    before = dataclasses.replace(judge.stats)
    again = run_accuracy(rows, report_dir, config=TINY, settings=["no-history", "ind-1", "ind-1:parse"], backend=judge)
    assert judge.stats.generated_tokens == before.generated_tokens
    assert judge.stats.generate_calls == before.generate_calls and judge.stats.prob_calls == before.prob_calls
    assert again["cache"]["chain_misses"] == 0 and again["cache"]["prob_misses"] == 0
    for name in report["settings"]:
        assert again["settings"][name]["accuracy"] == report["settings"][name]["accuracy"]


def test_cli_reports_bad_rows_by_line_and_never_loads_the_model(rows, first_run, tmp_path):
    report_dir, report, _ = first_run
    data = tmp_path / "rows.jsonl"
    shutil.copy(rows, data)
    shutil.copy(rows.with_name("rows.truth.json"), tmp_path / "rows.truth.json")
    n = len(data.read_text().splitlines())
    with open(data, "a") as f:
        f.write(json.dumps({"user_id": "u9", "split": "test", "context": "not a list", "chosen": "a",
                            "rejected": "b"}) + "\n")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))

    from pgenrm_plugins.cli import app

    result = CliRunner().invoke(app, ["bench", "accuracy", "--data", str(data), "--report", str(tmp_path / "rep"),
                                      "--config", str(config), "--settings", "no-history,ind-1",
                                      "--cache", str(report_dir / "judge-cache.sqlite")])
    assert result.exit_code == 0, result.output
    assert f"line {n + 1}" in result.output and "context" in result.output
    out = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert out["bad_rows"][0]["line"] == n + 1 and "context" in out["bad_rows"][0]["error"]
    assert f"line {n + 1}" in (tmp_path / "rep" / "report.md").read_text()
    assert out["cache"]["chain_misses"] == 0 and out["cache"]["generate_calls"] == 0  # all cached: no model
    assert out["settings"]["ind-1"]["accuracy"] == report["settings"]["ind-1"]["accuracy"]


def test_a_larger_n_reuses_the_chains_of_a_smaller_one(judge, tmp_path):
    """Chain k is sampled with seed + k, so asking the cache for N=2 after N=1 generates chain 1 only,
    and the pair is exactly what one N=2 request gives."""
    req = GenerationRequest([{"role": "user", "content": "Name a fruit."}], n=1, max_new_tokens=8, temperature=0.9,
                            seed=41)
    cache = CachingBackend(tmp_path / "c.sqlite", {"name": "transformers"}, factory=lambda: judge, seed_offsets=True,
                           close_inner=False)
    [one] = cache.generate([req])
    [two] = cache.generate([dataclasses.replace(req, n=2)])
    assert cache.stats.extra["chain_misses"] == 2 and cache.stats.extra["chain_hits"] == 1
    direct = judge.generate([dataclasses.replace(req, n=2)])[0]
    assert [g.text for g in two] == [g.text for g in direct] and two[0] == one[0]
    cache.close()


def test_settings_are_parsed_or_refused():
    s = parse_setting("ind-4+pro-8:pairwise")
    assert (s.history, s.chains, s.top_k, s.mode, s.reader) == ("user", 4, 8, "pairwise", None)
    assert parse_setting("global-history:parse").reader == "parse"
    assert parse_setting("ind-1+pro-4:persona").persona and not parse_setting("ind-1").persona
    for bad in ("ind-0", "ind-four", "ind-2:fast", "no-history+pro-2", "no-history:persona"):
        with pytest.raises(AccuracyError):
            parse_setting(bad)


def test_persona_settings_show_the_judge_each_users_stated_preferences(rows, judge, tmp_path):
    """`:persona` hands the judge what a user stated (the users file next to the rows), as a request
    carrying a persona does."""
    from pgenrm_plugins.datasets.bench import load_bench

    stated = load_bench(rows).personas()
    assert stated, "the fixture's users file states something"
    recording = Recording(judge)
    run_accuracy(rows, tmp_path, config=TINY, settings=["ind-1:persona"], backend=recording)
    seen = [json.dumps(messages) for messages in recording.generated]
    for text in stated.values():
        assert any(json.dumps(text)[1:-1] in messages for messages in seen)


def test_prototype_settings_need_a_store(rows, tmp_path):
    with pytest.raises(AccuracyError, match="--store"):
        run_accuracy(rows, tmp_path, config=TINY, settings=["ind-1+pro-2"])


def test_prototype_settings_score_with_neighbours(rows, judge, first_run, tmp_path):
    """Ind-1 + Pro-2 on a real SQLite store built from the train split (history embeddings, real
    MiniLM): warm users get their neighbours' scores mixed in, the cold-start user is scored by
    neighbours alone. The self side comes from the first run's cache."""
    from prototype_helpers import load_embedder

    from pgenrm_plugins.config import StoreConfig
    from pgenrm_plugins.datasets.bench import load_bench
    from pgenrm_plugins.prototypes.builder import build_prototypes

    report_dir, report, _ = first_run
    store_path = tmp_path / "protos.sqlite"
    store = StoreConfig(name="sqlite", options={"path": str(store_path)}).build("store")
    build_prototypes(rows, store, load_embedder(), k=1, skip_judge=True)
    stated = load_bench(rows).personas()
    assert stated and all(store.get_user(u).persona == text for u, text in stated.items())  # lent with the member
    store.close()
    out = run_accuracy(rows, tmp_path / "rep", config=TINY, store=str(store_path), settings=["ind-1", "ind-1+pro-2"],
                       cache_path=report_dir / "judge-cache.sqlite", backend=judge)
    pro = out["settings"]["ind-1+pro-2"]
    assert out["settings"]["ind-1"]["new_chains"] == 0  # the self side was cached
    assert pro["judgements"] == 6 and pro["with_neighbours"] == 6 and pro["new_chains"] > 0
    assert pro["placements"] == {"stored": 6}  # the cold-start user has one pair: a member of the store too
    assert pro["correct"] + pro["wrong"] + pro["tie"] + pro["failed"] == 6 and pro["failed"] == 0
    assert (tmp_path / "rep" / "accuracy_vs_k.png").is_file()


def test_types_view_reads_a_type_from_the_pairs_a_view_shows(tmp_path):
    """The `types-view` yardstick: a posterior over the generator's latent types from the pairs one
    judge view shows. Many pairs of one type give that type's weights; none give the types' mean,
    which is what a cold-start user gets, and a view of 0 pairs reads nobody's history."""
    import numpy as np

    from pgenrm_plugins.bench.accuracy.predictors import _type_posterior_weights, reference_predictors
    from pgenrm_plugins.datasets.synthetic import ATTRIBUTES, TYPES

    bench = generate(n_users=40, rows_per_user=10, seed=3)
    truth, names = bench.truth, list(ATTRIBUTES)
    types = np.array([[TYPES[t]["weights"][a] for a in names] for t in TYPES])
    skimmer = types[list(TYPES).index("skimmer")]
    # a skimmer's choices: the shorter, listed, plainer answer of every pair
    diffs = [np.array(d, dtype=float) for d in ([-2, 0, 0, 0, 0], [0, 2, 0, 0, 0], [0, 0, 0, -2, -2])] * 3
    assert np.allclose(_type_posterior_weights(truth, diffs, names), skimmer, atol=0.05)
    assert np.allclose(_type_posterior_weights(truth, [], names), types.mean(axis=0))

    from pgenrm_plugins.datasets.bench import load_bench

    data = load_bench(write_bench(tmp_path / "rows.jsonl", bench)[0])
    test = [(i, r) for i, r in enumerate(data.rows) if r.split == "test"]
    four = reference_predictors(test, data, truth, view_pairs=4)["types-view"]
    none = reference_predictors(test, data, truth, view_pairs=0)["types-view"]
    assert "last 4 train pairs" in four["description"]
    assert four["judgements"] == none["judgements"] == 2 * len(test)
    assert four["accuracy"] > none["accuracy"]  # reading four pairs beats reading none


def test_prototype_reference_pulls_a_users_fit_toward_the_members_their_choices_fit(tmp_path):
    """`attr-user+pro-K`: a user's own fit pulled toward the fits of the K members under which the
    user's own choices are likeliest. A one-pair user who chose the shorter answer is pulled toward
    the members who choose short answers, and so gains weights on attributes their pair never showed."""
    import numpy as np

    from pgenrm_plugins.bench.accuracy.predictors import _with_neighbours, reference_predictors
    from pgenrm_plugins.datasets.bench import load_bench
    from pgenrm_plugins.scoring.weighing import fit_choices

    brief_lists = [np.array([-1.0, 1, 0, 0, 0]), np.array([-1.0, 0, 0, 0, 0]), np.array([0.0, 1, 0, 0, 0])]
    thorough_prose = [-d for d in brief_lists]
    diffs_of = {"a": brief_lists, "b": brief_lists, "c": thorough_prose, "d": thorough_prose,
                "new": [np.array([-1.0, 0, 0, 0, 0])]}
    fits = {u: fit_choices(np.array(ds)) for u, ds in diffs_of.items()}
    assert fits["new"][1] == 0  # their one pair says nothing of lists
    pulled = _with_neighbours(fits, diffs_of, k=2)
    assert pulled["new"][1] > 0 and pulled["new"][0] < fits["new"][0]  # like a and b: lists, and shorter

    bench = generate(n_users=30, rows_per_user=8, seed=5)
    data = load_bench(write_bench(tmp_path / "rows.jsonl", bench)[0])
    test = [(i, r) for i, r in enumerate(data.rows) if r.split == "test"]
    refs = reference_predictors(test, data, bench.truth, neighbours=4)
    assert refs["attr-user+pro-4"]["judgements"] == refs["attr-user"]["judgements"] == 2 * len(test)
    assert "4 users" in refs["attr-user+pro-4"]["description"]


def test_contrast_overlap_reads_the_view_s_contrast_lines(tmp_path):
    """The `contrast-overlap` yardstick reads text, not truth: a reply that has what the user's
    chosen answers had (and their rejected ones lacked) wins; with no history every pair ties."""
    from pgenrm_plugins.bench.accuracy.predictors import contrast_overlap
    from pgenrm_plugins.datasets.bench import load_bench

    def row(user, split, question, chosen, rejected):
        return {"user_id": user, "split": split, "context": [{"role": "user", "content": question}],
                "chosen": {"role": "assistant", "content": chosen},
                "rejected": {"role": "assistant", "content": rejected}}

    base = "Save a part of each pay cheque, keep costs low and hold a broad mix of funds for years."
    example = " For example, a fund tracking a global index spreads the risk."
    rows = [row("likes-examples", "train", "How do I invest?", base + example, base),
            row("likes-examples", "train", "How do I save?", base + " For example, ten percent a month.", base),
            row("likes-examples", "test", "How do I budget?", base + " For example, a weekly envelope.", base),
            row("new-user", "test", "How do I budget?", base + " For example, a weekly envelope.", base)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_bench(path)
    test = [(i, r) for i, r in enumerate(data.rows) if r.split == "test"]
    result = contrast_overlap(test, data, view_pairs=4)
    assert result["reads"] == "text" and result["judgements"] == 4
    # two pairs make a cold-start user; their choices showed examples winning
    assert result["by_group"]["cold_start"]["accuracy"] == 1.0
    assert result["tie"] == 2 and result["by_group"]["no_history"]["judgements"] == 2  # nothing to read
    assert contrast_overlap(test, data, view_pairs=0)["tie"] == 4
