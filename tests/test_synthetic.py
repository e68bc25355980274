"""The synthetic-user generator: deterministic, loadable as PersonalRewardBench, real-looking text,
latent types that can be recovered from the rows alone, cold-start users."""

import json
import re
from collections import Counter, defaultdict

import numpy as np
import pytest
from typer.testing import CliRunner

from pgenrm_plugins.datasets.answer_bank import BANK
from pgenrm_plugins.datasets.bench import load_bench
from pgenrm_plugins.datasets.synthetic import (
    ATTRIBUTES,
    detect_attributes,
    generate,
    generate_rows,
    load_truth,
    row_key,
    truth_path_for,
    utility,
    write_bench,
)


def test_same_seed_same_rows_other_seed_other_rows():
    a = generate_rows(n_users=6, rows_per_user=6, seed=11)
    assert a == generate_rows(n_users=6, rows_per_user=6, seed=11)
    assert a != generate_rows(n_users=6, rows_per_user=6, seed=12)
    assert generate(6, 6, 11).truth == generate(6, 6, 11).truth


def test_rows_load_with_the_bench_loader_jsonl_and_parquet(tmp_path):
    bench = generate(n_users=8, rows_per_user=8, seed=1, val_per_user=1)
    for suffix in (".jsonl", ".parquet"):
        rows_path, truth_path = write_bench(tmp_path / f"rows{suffix}", bench)
        data = load_bench(rows_path, strict=True)
        assert not data.errors
        assert [r.model_dump(exclude_none=True) for r in data.rows] == bench.rows
        assert truth_path == truth_path_for(rows_path) and load_truth(rows_path) == bench.truth
    assert {r.split for r in data.rows} == {"train", "val", "test"}
    # every row's truth is found by its content
    keys = {t["key"] for t in bench.truth["rows"]}
    assert all(row_key(r) in keys for r in bench.rows)


def test_cold_start_users_have_test_rows_and_one_pair_or_none():
    bench = generate(n_users=10, rows_per_user=8, seed=2, cold_start_fraction=0.2)
    cold = {u for u, t in bench.truth["users"].items() if t["cold_start"]}
    assert len(cold) == 2
    splits = defaultdict(Counter)
    for r in bench.rows:
        splits[r["user_id"]][r["split"]] += 1
    for user, counts in splits.items():
        assert counts["test"] == 2
        assert counts["train"] == (1 if user in cold else 6)  # cold-start: `cold_start_pairs`, default 1
    assert set(splits) == set(bench.truth["users"])
    none = generate(n_users=10, rows_per_user=8, seed=2, cold_start_fraction=0.2, cold_start_pairs=0)
    trained = {r["user_id"] for r in none.rows if r["split"] == "train"}
    assert len(trained) == 8 and {r["user_id"] for r in none.rows} == set(none.truth["users"])  # test rows only


def test_every_type_has_members_and_users_scatter_around_their_type():
    truth = generate(n_users=20, rows_per_user=4, seed=3).truth
    by_type = Counter(u["type"] for u in truth["users"].values())
    assert set(by_type) == set(truth["types"]) and min(by_type.values()) == 4
    for u in truth["users"].values():
        w = np.array([u["weights"][a] for a in ATTRIBUTES])
        centre = np.array([truth["types"][u["type"]]["weights"][a] for a in ATTRIBUTES])
        assert 0 < np.abs(w - centre).max() < 1.5  # noisy, but near their type


def test_choices_follow_the_latent_weights():
    bench = generate(n_users=20, rows_per_user=20, seed=4, user_noise=0.2)
    agree = [utility(bench.truth["users"][t["user_id"]]["weights"], t["chosen"])
             > utility(bench.truth["users"][t["user_id"]]["weights"], t["rejected"]) for t in bench.truth["rows"]]
    assert 0.75 < np.mean(agree) < 0.99  # mostly the user's taste, with some noise


@pytest.mark.parametrize("rendering", ["default", "alt", "plain,lively"])
def test_texts_are_real_answers_whose_attributes_show_in_the_text(rendering):
    bench = generate(n_users=10, rows_per_user=10, seed=5, rendering=rendering)
    questions = {t.question for t in BANK}
    for row, t in zip(bench.rows, bench.truth["rows"]):
        assert row["context"][0]["content"] in questions
        for side in ("chosen", "rejected"):
            text = row[side]["content"]
            unmarked = re.sub(r"(?m)^(\d+[.)]|\([a-h]\)|[a-h]\.|[-*\u2022]) ", "", text)  # list marks off
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", unmarked) if s]
            assert len(sentences) >= 4
            assert all(s[0].isupper() or s[0].isdigit() for s in sentences)
            assert all(re.fullmatch(r"[\w'’,;:()%&@\-\s.!?/\"]+", s) for s in sentences), text
            assert "lorem" not in text.lower() and "Response A" not in text
            shown = detect_attributes(text)
            assert shown == {a: t[side][a] for a in shown}, (text, t[side])
        # two answers to one question: the detailed one is the longer when only length differs
        if t["chosen"]["length"] != t["rejected"]["length"] and all(
                t["chosen"][a] == t["rejected"][a] for a in ("examples", "caveats")):
            longer = "chosen" if len(row["chosen"]["content"]) > len(row["rejected"]["content"]) else "rejected"
            assert t[longer]["length"] == 1


def test_latent_types_are_recoverable_from_the_rows_alone():
    """Estimate each warm user's taste from their train rows' text alone, cluster: the clusters are the types."""
    from sklearn.cluster import KMeans
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import adjusted_rand_score

    bench = generate(n_users=25, rows_per_user=40, seed=6, cold_start_fraction=0.0, user_noise=0.2)
    data_by_user = defaultdict(list)
    for r in bench.rows:
        if r["split"] == "train":
            data_by_user[r["user_id"]].append(r)

    def features(chosen: str, rejected: str) -> np.ndarray:
        a, b = detect_attributes(chosen), detect_attributes(rejected)
        length = np.sign(len(chosen) - len(rejected))
        return np.array([length] + [a[k] - b[k] for k in ("structure", "tone", "examples", "caveats")], dtype=float)

    users = sorted(data_by_user)
    estimates = []
    for u in users:
        d = np.array([features(r["chosen"]["content"], r["rejected"]["content"]) for r in data_by_user[u]])
        model = LogisticRegression(fit_intercept=False).fit(np.vstack([d, -d]), [1] * len(d) + [0] * len(d))
        estimates.append(model.coef_[0] / np.linalg.norm(model.coef_[0]))
    labels = KMeans(n_clusters=len(bench.truth["types"]), n_init=10, random_state=0).fit_predict(np.array(estimates))
    true = [bench.truth["users"][u]["type"] for u in users]
    assert adjusted_rand_score(true, labels) > 0.6


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="rows_per_user"):
        generate(n_users=3, rows_per_user=2, test_per_user=2)
    with pytest.raises(ValueError, match="n_types"):
        generate(n_users=3, n_types=9)


def test_cli_writes_rows_and_truth(tmp_path):
    from pgenrm_plugins import plugins
    from pgenrm_plugins.cli import app

    plugins.register_commands(app)
    out = tmp_path / "sub" / "rows.jsonl"
    result = CliRunner().invoke(app, ["data", "synth", "--users", "5", "--out", str(out), "--seed", "9",
                                      "--rows-per-user", "6"])
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert [json.loads(line) for line in lines] == generate_rows(n_users=5, rows_per_user=6, seed=9)
    assert json.loads(truth_path_for(out).read_text())["params"]["seed"] == 9
    bad = CliRunner().invoke(app, ["data", "synth", "--users", "5", "--out", str(tmp_path / "rows.csv")])
    assert bad.exit_code == 2 and ".jsonl or .parquet" in bad.output


def test_vary_holds_attributes_fixed_and_alt_rendering_writes_them_differently():
    bench = generate(n_users=6, rows_per_user=6, seed=4, vary=("caveats",))
    for t in bench.truth["rows"]:  # the two answers differ in caveats and in nothing else
        assert [a for a in ATTRIBUTES if t["chosen"][a] != t["rejected"][a]] == ["caveats"]
    assert bench.truth["params"]["vary"] == ["caveats"]
    default = generate(n_users=6, rows_per_user=6, seed=4)
    assert default.rows == generate(n_users=6, rows_per_user=6, seed=4, vary=ATTRIBUTES).rows  # same draws as before
    alt = generate(n_users=6, rows_per_user=6, seed=4, rendering="alt")
    texts = [r[k]["content"] for r in alt.rows for k in ("chosen", "rejected")]
    assert not any("For example" in t or "One caveat: " in t or "Hope that helps!" in t for t in texts)
    assert any(line.startswith(("- ", "* ", "\u2022 ")) for t in texts for line in t.splitlines())
    # a mix draws each row's rendering (both answers alike) and says which in the truth
    mixed = generate(n_users=6, rows_per_user=6, seed=4, rendering="plain,lively")
    assert {t["rendering"] for t in mixed.truth["rows"]} == {"plain", "lively"}
    assert mixed.truth["params"]["rendering"] == "plain,lively" and "rendering" not in alt.truth["rows"][0]
    marks = {"plain": ("Good question.", "Here is what matters.", "The answer is straightforward.", "Yeah, easy one!",
                       "Ooh, fun!", "Alright, let's see."),
             "lively": ("Thank you for asking.", "Allow me to explain.", "Let me set this out clearly.",
                        "Yay, love this!", "Ha, great one!", "So, here's my take!")}
    for row, t in zip(mixed.rows, mixed.truth["rows"]):
        assert row["chosen"]["content"].startswith(marks[t["rendering"]])
        assert row["rejected"]["content"].startswith(marks[t["rendering"]])
    with pytest.raises(ValueError, match="vary: colour"):
        generate(n_users=3, rows_per_user=4, vary=("colour",))
    with pytest.raises(ValueError, match="rendering 'fancy'"):
        generate(n_users=3, rows_per_user=4, rendering="fancy")
    with pytest.raises(ValueError, match="rendering 'fancy'"):
        generate(n_users=3, rows_per_user=4, rendering="default,fancy")


def test_diffs_sets_how_many_attributes_a_choice_turns_on(tmp_path):
    from pgenrm_plugins import plugins
    from pgenrm_plugins.cli import app

    one = generate(n_users=6, rows_per_user=6, seed=4, diffs=(1,))
    assert {sum(t["chosen"][a] != t["rejected"][a] for a in ATTRIBUTES) for t in one.truth["rows"]} == {1}
    assert one.truth["params"]["diffs"] == [1]
    mixed = generate(n_users=20, rows_per_user=6, seed=4)  # the default draw: one to three, mostly two
    assert {sum(t["chosen"][a] != t["rejected"][a] for a in ATTRIBUTES) for t in mixed.truth["rows"]} == {1, 2, 3}
    with pytest.raises(ValueError, match="diffs"):
        generate(n_users=3, rows_per_user=4, diffs=(0,))
    plugins.register_commands(app)
    bad = CliRunner().invoke(app, ["data", "synth", "--users", "3", "--out", str(tmp_path / "r.jsonl"),
                                   "--diffs", "one"])
    assert bad.exit_code == 2 and "--diffs" in bad.output
