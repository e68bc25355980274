"""The synthesis judge (`reward.criteria: synthesis`): its chain's parser, teacher `stated`, stated
preferences in the data, the synthesis cache, the verification of criteria against the user's own
choices, and a tiny real run of `pgenrm train synthesis` whose folder loads and scores. No accuracy
is asserted: a few steps teach nothing (docs/training.md measures the trained judges)."""

from __future__ import annotations

import json
import math
import random

import pytest

from pgenrm_plugins.chain import synthesis as chain
from pgenrm_plugins.chain.parser import Criterion, ParseFailure
from pgenrm_plugins.datasets.bench import load_bench, persona_text
from pgenrm_plugins.datasets.synthetic import ATTRIBUTES, criterion_name, generate, stated_preferences, write_bench
from pgenrm_plugins.scoring.modes import combine
from pgenrm_plugins.scoring.weighing import verify_criteria
from pgenrm_plugins.training.settings import SynthesisSettings
from pgenrm_plugins.training.synthesis_eval import claims
from pgenrm_plugins.training.synthesis_stage import Checks, StatedTeacher, SynthesisExamples, teacher_synthesis


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    path, _ = write_bench(tmp_path_factory.mktemp("synth") / "rows.jsonl",
                          generate(10, 6, seed=3, cold_start_fraction=0.3, cold_start_pairs=1))
    return path


def counting_checks(judge, call):
    """What `call()` returns, and how many check rows it asked the judge for."""
    asked, real = [], judge.next_token_probs
    judge.next_token_probs = lambda rows, candidates: asked.append(len(rows)) or real(rows, candidates)
    try:
        return call(), sum(asked)
    finally:
        del judge.next_token_probs


def test_parser_reads_criteria_and_refuses_a_synthesis_without_any():
    text = ("Persona: wants short answers.\nCriteria:\n- Brief: a short answer (60)\n- Brief: a short answer (10)\n"
            "some chatter\n- Example: includes a concrete example (30)\n- Sound: a complete answer (0)")
    parsed = chain.parse_synthesis(text)
    assert parsed.persona == "wants short answers."
    assert [(c.name, c.weight) for c in parsed.criteria] == [("Brief: a short answer", 60.0),
                                                             ("Example: includes a concrete example", 30.0)]
    assert chain.parse_synthesis(parsed.text()).criteria == parsed.criteria  # the format round-trips
    failure = chain.parse_synthesis("Persona: a mystery.\nCriteria:\nnothing here")
    assert isinstance(failure, ParseFailure) and failure.kind == "no_criteria"


def test_teacher_claims_only_what_the_view_shows_with_the_users_own_weights():
    weights = {"length": -1.0, "structure": 0.5, "tone": 0.1, "examples": -0.2, "caveats": 0.9}
    text = teacher_synthesis(weights, {"length", "caveats"})
    assert claims(text) == {"length": -1, "caveats": 1}  # brief (weight < 0), caveats (> 0), nothing else
    parsed = chain.parse_synthesis(text)
    assert sum(c.weight for c in parsed.criteria) == 100 and parsed.criteria[-1] == chain.SOUND
    assert parsed.criteria[0].name.startswith("Brief")  # the strongest weight first
    nothing = chain.parse_synthesis(teacher_synthesis(weights, set()))
    assert nothing.persona == chain.NOTHING_KNOWN and [c.name for c in nothing.criteria] == [chain.SOUND.name]


def test_synthesis_examples_are_a_function_of_the_index_and_claim_what_the_view_contrasts(rows):
    from pgenrm_plugins.datasets.synthetic import load_truth

    teacher = StatedTeacher(load_bench(rows), load_truth(rows))
    examples = SynthesisExamples(teacher, SynthesisSettings(check_share=0.0, persona_rate=0.0, empty_rate=0.0))
    assert examples.example(5) == examples.example(5)
    checks = [SynthesisExamples(teacher, SynthesisSettings(check_share=1.0, seed=1)).example(i) for i in range(20)]
    assert all(isinstance(c, Checks) and len(c.conversations) == len(c.targets) == 11 for c in checks)
    for c in checks:  # a sound reply meets exactly one side of each attribute; a broken one meets nothing
        sound = c.targets[-1] == "9"
        assert [c.targets[i] != c.targets[i + 1] for i in range(0, 10, 2)] == [sound] * 5
    assert {c.targets[-1] for c in checks} == {"1", "9"}
    for i in range(20):
        messages, target = examples.example(i)
        assert messages[-1]["content"].startswith("## The user's past choices\n[1] Prompt:")
        assert not isinstance(chain.parse_synthesis(target), ParseFailure)
        assert set(claims(target)) <= set(ATTRIBUTES)


def test_sound_checks_and_earlier_turns_widen_what_the_checks_see(rows):
    """`sound_share`: `Sound` alone, of a sentence or two (met), another question's answer or a broken
    copy (not met); `multi_turn_rate`: an earlier exchange before the question, in every kind of check."""
    from pgenrm_plugins.datasets.answer_bank import BANK
    from pgenrm_plugins.datasets.synthetic import load_truth

    teacher = StatedTeacher(load_bench(rows), load_truth(rows))
    settings = SynthesisSettings(check_share=1.0, sound_share=1.0, multi_turn_rate=1.0, seed=2)
    sound = [SynthesisExamples(teacher, settings).example(i) for i in range(40)]
    assert all(len(c.conversations) == 1 and c.conversations[0][-1]["content"].endswith(chain.SOUND.name)
               for c in sound)
    assert {c.targets[0] for c in sound} == {"1", "9"}
    cores = {t.core for t in BANK}
    for c in sound:
        text = c.conversations[0][-1]["content"]
        question = text.split("## The conversation\n")[1].split("\n\n## The reply")[0]
        assert question.startswith("user: ") and question.count("\nuser: ") == 1  # two user turns
        reply = text.split("## The reply\n")[1].split("\n\nDoes the reply")[0]
        by_question = {f"user: {t.question}": t for t in BANK}
        first, last = question.split("\n")[0], "user: " + question.rsplit("user: ", 1)[1]
        asked = by_question.get(last) or by_question[first]  # a question asked before it, or a clarifying turn
        if c.targets[0] == "9":  # met: a sentence or two of the asked question's own answer
            assert reply.startswith(asked.core)
        elif reply in cores:  # another question's answer
            assert reply != asked.core
    full = [SynthesisExamples(teacher, settings.model_copy(update={"sound_share": 0.0})).example(i) for i in range(5)]
    assert all(len(c.conversations) == 11 and "\nassistant: " in c.conversations[0][-1]["content"] for c in full)


def test_teacher_needs_the_truth_file(rows, tmp_path):
    with pytest.raises(ValueError, match="truth"):
        StatedTeacher(load_bench(rows), None)


def test_stated_preferences_are_partial_and_in_words():
    weights = {"length": -1.0, "structure": 0.8, "tone": -0.2, "examples": -0.5, "caveats": -0.8}
    said = [stated_preferences(weights, random.Random(i)) for i in range(50)]
    assert any(text is None for text, _ in said)  # some users say nothing
    assert all("tone" not in attrs for _, attrs in said)  # a weak preference goes unsaid
    assert len({text for text, _ in said if text}) > 5  # several phrasings and orders


def test_personas_from_a_users_file_and_from_prism_shaped_rows(rows, tmp_path):
    data = load_bench(rows)
    truth = json.loads(rows.with_name("rows.truth.json").read_text())
    stated = {u for u, info in truth["users"].items() if info["self_description"]}
    assert set(data.personas()) == stated  # the generator's users file, found next to the rows
    prism = tmp_path / "prism.jsonl"
    prism.write_text(json.dumps({
        "user_id": 7, "split": "train", "context": [{"role": "human", "content": "Hi"}],
        "chosen": {"role": "model", "content": "Hello."}, "rejected": {"role": "model", "content": "Go."},
        "self_description": "A nurse who reads on night shifts.", "system_string": "Be concise.",
        "stated_prefs": {"factuality": 90, "creativity": 20}, "choice_attributes": {"fluency": 80},
    }) + "\n")
    persona = load_bench(prism, strict=True).personas()["7"]
    assert persona == ("A nurse who reads on night shifts. Be concise. "
                       "Rates as important: factuality (90), creativity (20)")
    assert persona_text({}) is None


def test_cold_start_users_have_a_pair_or_two_and_groups_say_so(rows):
    data = load_bench(rows)
    truth = json.loads(rows.with_name("rows.truth.json").read_text())
    histories = data.histories("train")
    for user, info in truth["users"].items():
        assert len(histories.get(user, [])) == (1 if info["cold_start"] else 5)
        assert data.groups()[user] == ("cold_start" if info["cold_start"] else "warm")
    none = generate(5, 6, seed=1, cold_start_fraction=0.4, cold_start_pairs=0)
    assert sum(r["split"] == "train" for r in none.rows) == 3 * 5


def test_verification_signs_each_criterion_by_the_users_own_choices():
    brief, listed = Criterion("Brief: short", 50.0), Criterion("Listed: a list", 40.0)
    # two past pairs: the chosen reply met Brief (9 vs 1) and failed Listed (1 vs 9)
    found = [[(9.0, 1.0), (1.0, 9.0), (9.0, 9.0)], [(9.0, 1.0), (1.0, 9.0), (9.0, 9.0)]]
    weights = verify_criteria([brief, listed, chain.SOUND], found)
    # Listed now counts against a list; two pairs are some evidence, not certainty; Sound keeps its weight
    assert 0 < weights[0] < 50.0 and -40.0 < weights[1] < 0 and weights[2] == 10.0
    more = verify_criteria([brief, listed, chain.SOUND], found * 4)
    assert weights[0] < more[0] < 50.0 and -40.0 < more[1] < weights[1]  # more pairs, more support
    assert verify_criteria([brief], []) == [50.0]  # no history: the written weights
    assert verify_criteria([brief], [[(None, 3.0)]]) == [0.0]  # no digit: no evidence either way
    assert combine(weights, [9.0, 1.0, 9.0]) == 1.0 and combine(weights, [1.0, 9.0, 1.0]) == 0.0
    assert combine([50.0], [None]) is None and combine([0.0], [5.0]) == 0.5


def test_criteria_nobody_wrote_get_weight_only_from_the_users_choices():
    brief, listed = Criterion("Brief: short", 50.0), Criterion("Listed: a list", 10.0)
    found = [[(9.0, 1.0), (1.0, 9.0)], [(9.0, 1.0), (1.0, 9.0)]]  # chosen: brief, not a list
    written, extra = verify_criteria([brief, listed], found, written=1)
    assert 0 < written < 50.0 and -10.0 < extra < 0  # the choices weigh the extra one like a written one
    assert verify_criteria([brief, listed], [], written=1) == [50.0, 0.0]  # no history: no claim for it


def test_extra_criteria_are_checked_for_users_with_history_and_weighed_by_their_choices(judge, request_row):
    """`reward.extra_criteria`: checked besides what the synthesis writes (the untrained base writes
    nothing readable: `Sound` alone), weighed by the user's own pairs; not asked at all for a user
    with no history, whose choices cannot weigh them; part of the cache's judge identity."""
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.scoring.syntheses import judge_identity

    extra = ["Brief: a short answer with only the key points", "Listed: the points laid out as a list"]

    def scorer(extra_criteria):
        return Scorer({"backend": {"name": "transformers", "options": {"model": "embedded-base"}},
                       "sampling": {"chains": 1, "max_new_tokens": 24},
                       "reward": {"criteria": "synthesis", "max_chars": 300, "extra_criteria": extra_criteria}},
                      backend=judge)

    def checks_asked(s, r):
        return counting_checks(judge, lambda: s.score_one(r))

    with_extra, plain = scorer(extra), scorer([])
    result, rows = checks_asked(with_extra, request_row)
    weighed = dict(result.components.criteria)
    assert set(extra) <= set(weighed) and all(abs(weighed[name]) <= chain.SOUND.weight for name in extra)
    _, plain_rows = checks_asked(plain, request_row)
    replies = 2 * len(request_row["history"]) + len(request_row["completions"])
    assert rows - plain_rows == len(extra) * replies  # each extra criterion on both history replies and each completion
    newcomer = {**request_row, "user_id": "new", "history": []}
    assert checks_asked(with_extra, newcomer)[1] == checks_asked(plain, newcomer)[1]  # nothing to weigh them by
    assert judge_identity(with_extra.config) != judge_identity(plain.config)


def test_the_fit_takes_the_side_the_choices_take_and_keeps_the_prior_where_they_say_nothing():
    import numpy as np

    from pgenrm_plugins.scoring.weighing import fit_choices

    # the chosen reply always has attribute 0; attribute 1 never differs; attribute 2 once each way
    pairs = np.array([[1.0, 0.0, 1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 0.0]])
    w = fit_choices(pairs, prior=np.array([0.0, 0.7, 0.0]))
    assert w[0] > 0.5 and abs(w[1] - 0.7) < 1e-6 and abs(w[2]) < 1e-6
    assert np.array_equal(fit_choices(np.zeros((0, 3)), prior=np.array([1.0, 2.0, 3.0])), [1.0, 2.0, 3.0])


def test_syntheses_are_cached_per_history_version(judge, request_row):
    from pgenrm_plugins.scoring import Scorer

    # the untrained base writes no readable synthesis; the Sound fallback still scores, and the
    # cache's behaviour is the same for any judge
    scorer = Scorer({"backend": {"name": "transformers", "options": {"model": "embedded-base"}},
                     "sampling": {"chains": 2, "max_new_tokens": 24},
                     "reward": {"criteria": "synthesis", "max_chars": 300}}, backend=judge)
    first = scorer.score_one(request_row)
    assert first.components.chains_sampled == 2 and first.components.syntheses_reused == 0
    assert all(0.0 <= r <= 1.0 and math.isfinite(r) for r in first.rewards)
    again = scorer.score_one({**request_row, "prompt": "Another question?"})  # same user, same history
    assert again.components.chains_sampled == 0 and again.components.syntheses_reused == 2
    longer = {**request_row, "history": [*request_row["history"],
                                         {"prompt": "Tea or coffee?", "chosen": "Tea.", "rejected": "Coffee, as "
                                          "it keeps you awake and tastes of roasted beans."}]}
    changed = scorer.score_one(longer)  # a new history version: written again
    assert changed.components.chains_sampled == 2 and changed.components.syntheses_reused == 0
    assert scorer.score_one(request_row).components.syntheses_reused == 2  # the old version is still cached



def test_verify_history_checks_more_pairs_than_the_synthesis_read(judge, request_row):
    """`reward.verify_history`: the criteria are verified on the N most recent pairs while the
    synthesis reads `max_history`; a change to any pair is a new version."""
    from pgenrm_plugins.scoring import Scorer

    older = {"prompt": "Tea or coffee?", "chosen": "Tea.", "rejected": "Coffee, as it keeps you awake."}
    row = {**request_row, "history": [older, *request_row["history"]]}

    def scorer(verify_history):
        return Scorer({"backend": {"name": "transformers", "options": {"model": "embedded-base"}},
                       "sampling": {"chains": 1, "max_new_tokens": 24},
                       "reward": {"criteria": "synthesis", "max_chars": 300, "max_history": 1,
                                  "verify_history": verify_history}}, backend=judge)

    def checks_asked(s, r):
        return counting_checks(judge, lambda: s.score_one(r))

    edited = {**row, "history": [{**older, "chosen": "Green tea."}, *request_row["history"]]}
    per_criterion = []
    for verify_history, pairs in ((0, 1), (2, 2)):
        s = scorer(verify_history)
        _, asked = checks_asked(s, row)
        rows = 2 * pairs + len(row["completions"])  # both replies of each verified pair, then the completions
        assert asked % rows == 0
        per_criterion.append(asked // rows)
        again = s.score_one(edited)  # a pair the synthesis did not read has changed: a new version
        assert again.components.syntheses_reused == 0
    assert per_criterion[0] == per_criterion[1] >= 1  # the same synthesis, verified on one pair, then two


def test_workers_on_one_store_share_syntheses_and_their_verified_weights(judge, request_row, tmp_path):
    """Two reward workers (two scorers' modes, two connections) on one SQLite store: the second
    writes no synthesis and verifies nothing again, and scores exactly as the first did; a judge
    that reads checks differently (another max_chars) is another judge and shares nothing."""
    import sqlite3

    from pgenrm_plugins.prototypes.sqlite_store import SQLiteStore
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.scoring.modes import RewardModes
    from pgenrm_plugins.types import ScoreRequest

    def worker(store, max_chars=300):
        settings = Scorer({"backend": {"name": "transformers", "options": {"model": "embedded-base"}},
                           "sampling": {"chains": 2, "max_new_tokens": 24},
                           "reward": {"criteria": "synthesis", "max_chars": max_chars}}, backend=judge)
        return RewardModes(settings.config, judge, settings.criteria_mode, settings.format, store=store)

    def run(modes):
        return counting_checks(judge, lambda: modes.run(requests)[0])

    requests, path = [ScoreRequest.model_validate(request_row)], tmp_path / "shared.sqlite"
    with SQLiteStore(path=str(path)) as store:
        first, first_rows = run(worker(store))
    assert first.chains_sampled == 2 and first.syntheses_reused == 0
    weights = [w for (w,) in sqlite3.connect(path).execute("SELECT weights FROM syntheses")]
    assert len(weights) == 2 and all(json.loads(w) for w in weights)  # verified, and kept verified
    with SQLiteStore(path=str(path)) as store:
        second, second_rows = run(worker(store))
        other, _ = run(worker(store, max_chars=200))
    assert second.chains_sampled == 0 and second.syntheses_reused == 2
    # the same scores; the last digits move with what else shares the batch (the verification rows)
    assert [v for c in second.per_completion for v in c] == pytest.approx(
        [v for c in first.per_completion for v in c], abs=1e-4)
    # the history pair's two replies were checked once, by the first worker only
    assert first_rows - second_rows >= 2 and second_rows >= len(request_row["completions"])
    assert other.chains_sampled == 2 and other.syntheses_reused == 0

def test_tiny_synthesis_stage_trains_and_its_folder_scores(rows, tmp_path):
    from pgenrm_plugins.backends.judge_folder import read_manifest
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.training.synthesis_stage import train_synthesis

    out = tmp_path / "judge"
    settings = SynthesisSettings(steps=2, batch_size=2, lora_rank=2, lora_layers=2, max_history=2, max_chars=300,
                                 save_steps=1)
    manifest = train_synthesis(rows, out, settings, progress=False)
    assert manifest["metrics"]["steps"] == 2 and math.isfinite(manifest["metrics"]["final_loss"])
    assert read_manifest(out).criteria == "synthesis" and (out / "checkpoints" / "checkpoint-2").is_dir()
    scorer = Scorer({"backend": {"name": "transformers", "options": {"model": str(out)}},
                     "sampling": {"max_new_tokens": 24}})
    assert scorer.criteria_mode == "synthesis" and scorer.config.reward.max_history == 2  # from the manifest
    # every criterion its checks learnt is checked for users with history (reward.extra_criteria)
    assert scorer.config.reward.extra_criteria == [criterion_name(key) for key in SynthesisExamples.CRITERIA]
    [result] = scorer.score([{"user_id": "u", "history": [{"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go."}],
                              "prompt": "How do I boil an egg?", "completions": ["Boil it 9 minutes.", "Eggs."]}])
    assert len(result.rewards) == 2 and all(0.0 <= r <= 1.0 and math.isfinite(r) for r in result.rewards)
    assert result.components.criteria_mode == "synthesis" and result.components.chains_sampled == 1

    # `pgenrm train eval` measures each step of it alone (figures of an untrained judge: no accuracy asserted)
    from pgenrm_plugins.training.synthesis_eval import evaluate_synthesis

    figures = evaluate_synthesis(out, rows, max_rows=2, options={"threads": 2})
    assert figures["pairs"] == 2 and sum(g["pairs"] for g in figures["by_group"].values()) == 2
    assert figures["checks"]["asked"] == 2 * 2 * 10  # each test reply against the whole vocabulary
    assert all(0.0 <= figures[k] <= 1.0 for k in ("end_to_end", "ceiling", "vocabulary"))

    # a next stage continues that adapter (its rank 2, not the settings' 16): checks alone
    more = train_synthesis(rows, tmp_path / "stage2", SynthesisSettings(steps=1, batch_size=2, check_share=1.0,
                                                                        max_chars=300), init=out, progress=False)
    assert more["init"]["judge"] == str(out) and more["init"]["data_hash"] == manifest["data_hash"]
    assert json.loads((tmp_path / "stage2" / "adapter_config.json").read_text())["r"] == 2
    assert more["metrics"].get("final_check_loss") is not None and more["metrics"].get("final_synthesis_loss") is None
    with pytest.raises(ValueError, match="not a synthesis judge folder"):
        train_synthesis(rows, tmp_path / "x", settings, init=tmp_path, progress=False)


def test_a_check_names_its_criterion_last_or_first():
    last = chain.criterion_messages("How do I boil an egg?", "Boil it.", "Brief: short", max_chars=200)[-1]["content"]
    first = chain.criterion_messages("How do I boil an egg?", "Boil it.", "Brief: short", max_chars=200,
                                     criterion_first=True)[-1]["content"]
    assert last.endswith("Criterion: Brief: short")  # rows of one reply share everything before it
    assert first.index("Criterion: Brief: short") < first.index("Boil it.") and first.endswith(chain.CHECK_FIRST)
