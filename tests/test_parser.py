"""The chain parser: exact parses, every repair path, every failure kind, and fuzzing that it
never raises and never returns an out-of-range value."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgenrm_plugins.chain.parser import (
    Criterion,
    ParsedChain,
    ParseFailure,
    ResponseScores,
    parse_chain,
    parse_criteria,
)

FAST = settings(max_examples=200, deadline=None)

PREFS = {"style": "short", "content": "lists", "values": "honesty"}
CRITERIA = [{"name": "Brevity", "weight": 60}, {"name": "Warmth", "weight": 40}]


def chain(obj: dict) -> str:
    return f"Some reasoning first.\n<evaluation>\n{json.dumps(obj)}\n</evaluation>\n"


def full(scores: dict, criteria=CRITERIA, preferences=PREFS) -> dict:
    return {"preferences": preferences, "criteria": criteria, "scores": scores}


SCORES_A = {"A": {"per_criterion": {"Brevity": 8, "Warmth": 5}, "total": 6.8}}
SCORES_AB = {
    **SCORES_A,
    "B": {"per_criterion": {"Brevity": 3, "Warmth": 9}, "total": 5.4},
}
VALID_AB = chain(full(SCORES_AB))


def ok(result) -> ParsedChain:
    assert isinstance(result, ParsedChain), result
    return result


def fail(result) -> ParseFailure:
    assert isinstance(result, ParseFailure), result
    return result


def has_repair(parsed: ParsedChain, fragment: str) -> bool:
    return any(fragment in note for note in parsed.repairs)


# --- well-formed chains -------------------------------------------------------------------------


def test_one_label_parses_exactly():
    text = chain(full(SCORES_A))
    parsed = ok(parse_chain(text, labels=("A",)))
    assert parsed.preferences == PREFS
    assert parsed.criteria == (Criterion("Brevity", 60.0), Criterion("Warmth", 40.0))
    assert parsed.scores["A"] == ResponseScores({"Brevity": 8.0, "Warmth": 5.0}, pytest.approx(6.8))
    assert parsed.repairs == ()
    assert parsed.text == text


def test_two_labels_parse_exactly():
    parsed = ok(parse_chain(VALID_AB, labels=("A", "B")))
    assert set(parsed.scores) == {"A", "B"}
    assert parsed.scores["B"].per_criterion == {"Brevity": 3.0, "Warmth": 9.0}
    assert parsed.scores["B"].total == pytest.approx(5.4)
    assert parsed.repairs == ()


def test_criteria_only_chain():
    text = chain({"preferences": PREFS, "criteria": CRITERIA})
    parsed = ok(parse_criteria(text))
    assert [c.name for c in parsed.criteria] == ["Brevity", "Warmth"]
    assert parsed.scores == {} and parsed.repairs == ()


def test_scores_in_text_are_ignored_without_labels():
    parsed = ok(parse_chain(VALID_AB))
    assert parsed.scores == {}


def test_last_complete_block_wins():
    echo = chain(full({"A": {"per_criterion": {"Brevity": 1, "Warmth": 1}, "total": 1}}))
    parsed = ok(parse_chain(echo + VALID_AB, labels=("A",)))
    assert parsed.scores["A"].per_criterion["Brevity"] == 8.0


def test_preferences_optional_and_coerced_to_text():
    parsed = ok(parse_chain(chain({"criteria": CRITERIA})))
    assert parsed.preferences == {}
    parsed = ok(parse_chain(chain({"preferences": {"style": ["a", 1], "n": 3}, "criteria": CRITERIA})))
    assert parsed.preferences == {"style": '["a", 1]', "n": "3"}


# --- repairs ------------------------------------------------------------------------------------


def test_missing_close_marker_truncated_output():
    text = "<evaluation>\n" + json.dumps(full(SCORES_A))
    parsed = ok(parse_chain(text, labels=("A",)))
    assert has_repair(parsed, "closing marker missing")
    assert parsed.scores["A"].total == pytest.approx(6.8)


def test_truncated_mid_json_is_repaired_as_far_as_it_goes():
    text = "<evaluation>" + json.dumps({"preferences": PREFS, "criteria": CRITERIA})[:-1]
    parsed = ok(parse_criteria(text))
    assert has_repair(parsed, "json repaired")
    assert len(parsed.criteria) == 2


def test_no_markers():
    text = "Here you go: " + json.dumps(full(SCORES_A)) + " Hope this helps {not json}"
    parsed = ok(parse_chain(text, labels=("A",)))
    assert has_repair(parsed, "markers missing")
    assert not has_repair(parsed, "json repaired")


def test_code_fences():
    text = "<evaluation>\n```json\n" + json.dumps(full(SCORES_A)) + "\n```\n</evaluation>"
    parsed = ok(parse_chain(text, labels=("A",)))
    assert has_repair(parsed, "code fences stripped")
    assert parsed.scores["A"].total == pytest.approx(6.8)


def test_trailing_commas_and_single_quotes():
    text = (
        "<evaluation>{'preferences': {'style': 'short',}, "
        "'criteria': [{'name': 'Brevity', 'weight': 60,}, {'name': 'Warmth', 'weight': 40},], "
        "'scores': {'A': {'per_criterion': {'Brevity': 8, 'Warmth': 5}, 'total': 6.8},},}</evaluation>"
    )
    parsed = ok(parse_chain(text, labels=("A",)))
    assert has_repair(parsed, "json repaired")
    assert parsed.preferences == {"style": "short"}
    assert parsed.scores["A"].total == pytest.approx(6.8)


def test_weights_summing_to_90_are_renormalised():
    criteria = [{"name": "Brevity", "weight": 60}, {"name": "Warmth", "weight": 30}]
    parsed = ok(parse_criteria(chain({"criteria": criteria})))
    assert [c.weight for c in parsed.criteria] == pytest.approx([200 / 3, 100 / 3])
    assert "weights renormalised from 90 to 100" in parsed.repairs


def test_weights_as_strings_and_percentages():
    criteria = [{"name": "Brevity", "weight": "60%"}, {"name": "Warmth", "weight": " 40 "}]
    parsed = ok(parse_criteria(chain({"criteria": criteria})))
    assert [c.weight for c in parsed.criteria] == [60.0, 40.0]


def test_duplicate_criteria_are_merged():
    criteria = [{"name": "Brevity", "weight": 30}, {"name": "Warmth", "weight": 40},
                {"name": " brevity ", "weight": 30}]
    parsed = ok(parse_criteria(chain({"criteria": criteria})))
    assert parsed.criteria == (Criterion("Brevity", 60.0), Criterion("Warmth", 40.0))
    assert has_repair(parsed, "duplicate criterion")


def test_criteria_as_name_weight_object():
    parsed = ok(parse_criteria(chain({"criteria": {"Brevity": 60, "Warmth": 40}})))
    assert parsed.criteria == (Criterion("Brevity", 60.0), Criterion("Warmth", 40.0))
    assert has_repair(parsed, "criteria given as an object")


def test_wrong_stated_total_is_recomputed():
    scores = {"A": {"per_criterion": {"Brevity": 8, "Warmth": 5}, "total": 9}}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.scores["A"].total == pytest.approx(6.8)
    assert "total of A recomputed (model said 9, criteria give 6.8)" in parsed.repairs


def test_total_within_tolerance_is_not_noted():
    scores = {"A": {"per_criterion": {"Brevity": 8, "Warmth": 5}, "total": "6.84"}}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.repairs == ()


def test_missing_total_is_computed():
    scores = {"A": {"per_criterion": {"Brevity": 8, "Warmth": 5}}}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.scores["A"].total == pytest.approx(6.8)
    assert has_repair(parsed, "total of A computed")


def test_score_out_of_range_is_clamped():
    scores = {"A": {"per_criterion": {"Brevity": 12, "Warmth": 0}, "total": 7}}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.scores["A"].per_criterion == {"Brevity": 10.0, "Warmth": 1.0}
    assert "score of A/Brevity clamped from 12 to 10" in parsed.repairs
    assert "score of A/Warmth clamped from 0 to 1" in parsed.repairs
    assert parsed.scores["A"].total == pytest.approx(6.4)


def test_scores_as_numeric_strings():
    scores = {"A": {"per_criterion": {"Brevity": "8/10", "Warmth": "5.5"}, "total": "7"}}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.scores["A"].per_criterion == {"Brevity": 8.0, "Warmth": 5.5}


@pytest.mark.parametrize("key", ["Response A", "a", "[A]", " response a "])
def test_label_variants_are_normalised(key):
    scores = {key: SCORES_A["A"]}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.scores["A"].total == pytest.approx(6.8)
    assert f"label {key!r} read as 'A'" in parsed.repairs


@pytest.mark.parametrize("alternative", ["criteria_scores", "scores"])
def test_alternative_per_criterion_key(alternative):
    scores = {"A": {alternative: {"Brevity": 8, "Warmth": 5}, "total": 6.8}}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.scores["A"].per_criterion == {"Brevity": 8.0, "Warmth": 5.0}
    assert f"scores.A: key {alternative!r} read as 'per_criterion'" in parsed.repairs


def test_criterion_names_match_loosely_and_extras_are_ignored():
    scores = {"A": {"per_criterion": {" brevity": 8, "WARMTH ": 5, "Humour": 2}, "total": 6.8}}
    parsed = ok(parse_chain(chain(full(scores)), labels=("A",)))
    assert parsed.scores["A"].per_criterion == {"Brevity": 8.0, "Warmth": 5.0}
    assert has_repair(parsed, "A/Humour ignored")


def test_differently_cased_keys_are_read():
    obj = {"Preferences": PREFS, "CRITERIA": CRITERIA, "Scores": SCORES_A}
    parsed = ok(parse_chain(chain(obj), labels=("A",)))
    assert parsed.preferences == PREFS and len(parsed.criteria) == 2
    assert has_repair(parsed, "read as 'criteria'")


def test_criteria_given_from_outside():
    given = (Criterion("Brevity", 60.0), Criterion("Warmth", 40.0))
    text = chain({"scores": SCORES_A})
    parsed = ok(parse_chain(text, labels=("A",), criteria=given))
    assert parsed.criteria == given
    assert parsed.scores["A"].total == pytest.approx(6.8)
    # The text's own criteria are ignored when criteria are given.
    parsed = ok(parse_chain(chain(full(SCORES_A, criteria=[{"name": "X", "weight": 100}])), labels=("A",),
                            criteria=given))
    assert parsed.criteria == given


def test_criteria_given_but_score_missing():
    given = (Criterion("Brevity", 50.0), Criterion("Tone", 50.0))
    result = fail(parse_chain(chain({"scores": SCORES_A}), labels=("A",), criteria=given))
    assert (result.kind, result.detail) == ("missing_field", "scores.A.per_criterion.Tone: missing")


# --- failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "detail"),
    [
        ("", "no_json", "no JSON object found"),
        ("I cannot answer that.", "no_json", "no JSON object found"),
        ("<evaluation>nothing here</evaluation>", "no_json", "no JSON object found"),
        ("[[1, 2], [3]]", "no_json", "no JSON object found"),
        ("<evaluation>{}</evaluation>", "invalid_json", "top level: empty object"),
        ("<evaluation>{" + "[" * 100 + "</evaluation>", "invalid_json", "JSON nested deeper than 64 levels"),
        (chain({"preferences": PREFS}), "missing_field", "criteria: missing"),
        (chain({"criteria": []}), "bad_value", "criteria: empty"),
        (chain({"criteria": "Brevity"}), "bad_value", "criteria: expected a list, got str"),
        (chain({"criteria": ["Brevity"]}), "bad_value", "criteria[0]: expected an object, got str"),
        (chain({"criteria": [{"weight": 100}]}), "missing_field", "criteria[0].name: missing"),
        (chain({"criteria": [{"name": " ", "weight": 100}]}), "bad_value",
         "criteria[0].name: expected a non-empty string, got ' '"),
        (chain({"criteria": [{"name": "Brevity"}]}), "missing_field", "criteria[0].weight: missing"),
        (chain({"criteria": [CRITERIA[0], {"name": "W", "weight": 0}]}), "bad_value",
         "criteria[1].weight: expected a positive number, got 0"),
        (chain({"criteria": [{"name": "W", "weight": -5}]}), "bad_value",
         "criteria[0].weight: expected a positive number, got -5"),
        (chain({"criteria": [{"name": "W", "weight": "lots"}]}), "bad_value",
         "criteria[0].weight: expected a positive number, got 'lots'"),
        (chain({"criteria": [{"name": "W", "weight": True}]}), "bad_value",
         "criteria[0].weight: expected a positive number, got True"),
        ('<evaluation>{"criteria": [{"name": "W", "weight": NaN}]}</evaluation>', "bad_value",
         "criteria[0].weight: expected a positive number, got nan"),
        ('<evaluation>{"criteria": [{"name": "W", "weight": Infinity}]}</evaluation>', "bad_value",
         "criteria[0].weight: expected a positive number, got inf"),
        ('<evaluation>{"criteria": [{"name": "W", "weight": 1e999}]}</evaluation>', "bad_value",
         "criteria[0].weight: expected a positive number, got inf"),
    ],
)
def test_criteria_failures(text, kind, detail):
    result = fail(parse_criteria(text))
    assert (result.kind, result.detail) == (kind, detail)
    assert result.text == text


def test_top_level_not_an_object():
    # json_repair turns unrepairable text into a string, never an object.
    result = fail(parse_criteria("<evaluation>{'" + "</evaluation>"))
    assert result.kind == "invalid_json"


@pytest.mark.parametrize(
    ("scores", "kind", "detail"),
    [
        (None, "missing_field", "scores: missing"),
        ([1, 2], "bad_value", "scores: expected an object, got list"),
        (SCORES_A, "missing_field", "scores.B: missing"),
        ({**SCORES_A, "B": 7}, "missing_field", "scores.B.per_criterion: missing (only a total was given)"),
        ({**SCORES_A, "B": "good"}, "bad_value", "scores.B: expected an object, got str"),
        ({**SCORES_A, "B": {"total": 7}}, "missing_field", "scores.B.per_criterion: missing"),
        ({**SCORES_A, "B": {"per_criterion": [8, 5]}}, "bad_value",
         "scores.B.per_criterion: expected an object, got list"),
        ({**SCORES_A, "B": {"per_criterion": {"Brevity": 8}}}, "missing_field",
         "scores.B.per_criterion.Warmth: missing"),
        ({**SCORES_A, "B": {"per_criterion": {"Brevity": 8, "Warmth": True}}}, "bad_value",
         "scores.B.per_criterion.Warmth: expected a number from 1 to 10, got True"),
        ({**SCORES_A, "B": {"per_criterion": {"Brevity": 8, "Warmth": "high"}}}, "bad_value",
         "scores.B.per_criterion.Warmth: expected a number from 1 to 10, got 'high'"),
        ({**SCORES_A, "B": {"per_criterion": {"Brevity": 8, "Warmth": "7/5"}}}, "bad_value",
         "scores.B.per_criterion.Warmth: expected a number from 1 to 10, got '7/5'"),
        ({**SCORES_A, "B": {"per_criterion": {"Brevity": 8, "Warmth": None}}}, "bad_value",
         "scores.B.per_criterion.Warmth: expected a number from 1 to 10, got None"),
    ],
)
def test_score_failures(scores, kind, detail):
    obj = full(scores) if scores is not None else {"preferences": PREFS, "criteria": CRITERIA}
    result = fail(parse_chain(chain(obj), labels=("A", "B")))
    assert (result.kind, result.detail) == (kind, detail)


def test_nan_score_is_bad_value():
    text = ('<evaluation>{"criteria": [{"name": "W", "weight": 100}], '
            '"scores": {"A": {"per_criterion": {"W": NaN}}}}</evaluation>')
    result = fail(parse_chain(text, labels=("A",)))
    assert (result.kind, result.detail) == ("bad_value",
                                            "scores.A.per_criterion.W: expected a number from 1 to 10, got nan")


def test_huge_numbers_never_raise():
    big = "9" * 5000  # beyond both float range and Python's int-to-str digit limit
    text = f'<evaluation>{{"criteria": [{{"name": "W", "weight": {big}}}]}}</evaluation>'
    assert isinstance(parse_criteria(text), ParseFailure)
    text = (f'<evaluation>{{"criteria": [{{"name": "W", "weight": 1}}], '
            f'"scores": {{"A": {{"per_criterion": {{"W": {big}}}}}}}}}</evaluation>')
    assert isinstance(parse_chain(text, labels=("A",)), ParseFailure)
    huge_weights = [{"name": "A", "weight": 1e308}, {"name": "B", "weight": 1e308}]
    parsed = ok(parse_criteria(chain({"criteria": huge_weights})))
    assert [c.weight for c in parsed.criteria] == [50.0, 50.0]


def test_very_long_text_is_capped():
    text = chain({"preferences": {"style": "x" * 300_000}, "criteria": CRITERIA})
    result = parse_criteria(text)
    # Cut inside the long string: the criteria after it are lost, and the failure says so.
    assert (result.kind, result.detail) == ("missing_field", "criteria: missing")


def test_non_string_input_does_not_raise():
    assert isinstance(parse_chain(None), ParseFailure)  # type: ignore[arg-type]


# --- fuzzing ------------------------------------------------------------------------------------


def check_invariants(result) -> None:
    assert isinstance(result, (ParsedChain, ParseFailure))
    if isinstance(result, ParseFailure):
        assert result.kind in ("no_json", "invalid_json", "missing_field", "bad_value")
        assert isinstance(result.detail, str) and result.detail
        return
    assert result.criteria
    assert math.isclose(sum(c.weight for c in result.criteria), 100.0, abs_tol=1e-6)
    assert all(math.isfinite(c.weight) and c.weight >= 0 for c in result.criteria)
    for scores in result.scores.values():
        assert 1.0 <= scores.total <= 10.0
        assert all(1.0 <= s <= 10.0 for s in scores.per_criterion.values())


MARKUP = st.sampled_from(["<evaluation>", "</evaluation>", "{", "}", "[", "]", '"', ":", ",", "```", "criteria",
                          "scores", "A"])


@FAST
@given(st.lists(st.one_of(st.text(max_size=20), MARKUP), max_size=30).map("".join),
       st.sampled_from([(), ("A",), ("A", "B")]))
def test_arbitrary_text_never_raises(text, labels):
    check_invariants(parse_chain(text, labels=labels))


@FAST
@given(st.integers(min_value=0, max_value=len(VALID_AB)))
def test_truncated_chain_never_raises(cut):
    check_invariants(parse_chain(VALID_AB[:cut], labels=("A", "B")))


@FAST
@given(st.data())
def test_mutated_chain_never_raises(data):
    text = VALID_AB
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:at] + data.draw(st.one_of(st.text(max_size=3), MARKUP)) + text[at:]
        else:
            text = text[:at] + text[at + data.draw(st.integers(1, 5)) :]
    check_invariants(parse_chain(text, labels=("A", "B")))


@pytest.mark.parametrize(
    "text",
    [
        "[[[[...]]]]" * 10000,
        '{"a":' * 5000,
        "{" * 10000,
        '{"a": "' + "[" * 10000,
        "<evaluation>" + '{"a":[' * 5000 + "</evaluation>",
        "<evaluation>{'a': '" + "{" * 10000,
    ],
)
def test_deep_nesting_never_raises(text):
    check_invariants(parse_chain(text, labels=("A",)))


@st.composite
def chains(draw):
    """Structurally valid chains with arbitrary (often out-of-range) numbers, as JSON text."""
    numbers = st.one_of(st.integers(-1000, 1000), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6))
    names = draw(st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4))
    criteria = [{"name": n, "weight": draw(st.one_of(st.integers(1, 500), st.floats(0.001, 1e300), numbers))}
                for n in names]
    scores = {
        label: {"per_criterion": {n: draw(st.one_of(st.integers(-20, 20), numbers)) for n in names},
                "total": draw(numbers)}
        for label in "AB"
    }
    return json.dumps({"criteria": criteria, "scores": scores})


@FAST
@given(chains())
def test_parsed_values_are_always_in_range(text):
    result = parse_chain(f"<evaluation>{text}</evaluation>", labels=("A", "B"))
    check_invariants(result)
    if isinstance(result, ParsedChain):
        for scores in result.scores.values():
            assert not math.isnan(scores.total)
