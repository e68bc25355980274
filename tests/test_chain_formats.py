"""Chain formats as plugins: the released P-GenRM-8B layout (`chain.format: p-genrm-8b`), its parser
on outputs written from the released structure, fuzzed; today's `pgenrm` format through the same
interface; and both in real runs on the embedded judge behind a real llama.cpp server."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from conftest import Recording, make_config
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_server import llama_server  # noqa: F401  (module fixture: a real llama.cpp server)

from pgenrm_plugins import plugins
from pgenrm_plugins.chain.formats import chain_format
from pgenrm_plugins.chain.parser import PairVerdict, ParseFailure
from pgenrm_plugins.chain.pgenrm_8b import JSON_END, JSON_START, pair_messages, parse_verdict
from pgenrm_plugins.types import HistoryItem

PART_1 = """**PART 1: Chain-of-Thought Analysis**

1. **User Preference Synthesis**
- *Style*: plain and direct; the user rejects cheerful padding.
- *Content & Structure*: short answers that lead with the action.
- *Core Values*: accuracy over reassurance.

2. **Personalised Scoring Model**
A. Directness (50%): the user picks the answer that says what to do first.
B. Brevity (30%): long answers were rejected every time.
C. Accuracy (20%): a wrong fact would lose this user's trust.

**PART 2: Final Scoring and JSON Output**
"""
RATIONALE = ("A. Directness 50%, B. Brevity 30%, C. Accuracy 20%. Response 1: A 8, B 9, C 7 -> "
             "8*0.5 + 9*0.3 + 7*0.2 = 8.1. Response 2: A 4, B 3, C 7 -> 4*0.5 + 3*0.3 + 7*0.2 = 4.3")


def chain(scores: dict, key: str = "better_response", markers: bool = True) -> str:
    body = json.dumps({"rationale": RATIONALE, key: scores})
    return PART_1 + (f"{JSON_START}\n{body}\n{JSON_END}" if markers else body)


def test_a_clean_output_is_read_to_its_scores():
    v = parse_verdict(chain({"response_1": 8.1, "response_2": 4.3}))
    assert isinstance(v, PairVerdict) and (v.first, v.second) == (8.1, 4.3) and v.repairs == ()
    assert v.rationale == RATIONALE
    assert v.analysis.startswith("**PART 1") and "Personalised Scoring Model" in v.analysis
    assert "PART 2" not in v.analysis and JSON_START not in v.analysis  # what prototype builds embed


def test_string_values_and_the_scores_variant():
    v = parse_verdict(chain({"response_1": "8.1", "response_2": "4.3/10"}))
    assert (v.first, v.second) == (8.1, 4.3)
    v = parse_verdict(chain({"response_1": 6, "response_2": "7"}, key="scores"))
    assert (v.first, v.second) == (6.0, 7.0) and "'scores' read as 'better_response'" in v.repairs
    v = parse_verdict(chain({"Response 1": 6, "response2": 5}))
    assert (v.first, v.second) == (6.0, 5.0) and len(v.repairs) == 2


def test_missing_markers_and_truncated_outputs():
    v = parse_verdict(chain({"response_1": 7, "response_2": 5}, markers=False))
    assert (v.first, v.second) == (7.0, 5.0) and "markers missing" in v.repairs
    cut_after_scores = chain({"response_1": 7, "response_2": 5})[: -len(JSON_END) - 1]
    v = parse_verdict(cut_after_scores)
    assert (v.first, v.second) == (7.0, 5.0) and "closing marker missing" in v.repairs
    whole = chain({"response_1": 7, "response_2": 5})
    truncated = whole[: whole.index('"response_2"') + 5]
    failure = parse_verdict(truncated)
    assert isinstance(failure, ParseFailure) and failure.kind == "missing_field" and "response_2" in failure.detail
    failure = parse_verdict(PART_1)  # cut before PART 2's JSON
    assert isinstance(failure, ParseFailure) and failure.kind == "no_json"


def test_typed_failures_for_bad_values():
    for scores, kind in (({"response_1": "great", "response_2": 5}, "bad_value"),
                         ({"response_1": 7}, "missing_field"),
                         ({"response_1": 0, "response_2": 0}, "bad_value"),
                         ("response_1", "bad_value")):
        failure = parse_verdict(chain(scores))
        assert isinstance(failure, ParseFailure) and failure.kind == kind, (scores, failure)
    failure = parse_verdict(chain({"response_1": 7, "response_2": 5}, key="verdict"))
    assert isinstance(failure, ParseFailure) and failure.kind == "missing_field"


def test_the_pgenrm_format_reads_todays_chains_through_the_same_interface():
    fmt = chain_format("pgenrm")
    text = ('<evaluation>\n{"preferences": {"style": "short"}, "criteria": [{"name": "Brevity", "weight": 100}], '
            '"scores": {"A": {"per_criterion": {"Brevity": 8}, "total": 8}, '
            '"B": {"per_criterion": {"Brevity": 2}, "total": 2}}}\n</evaluation>')
    v = fmt.parse_pair(text)
    assert (v.first, v.second) == (8.0, 2.0) and [c.name for c in v.criteria] == ["Brevity"]
    assert isinstance(fmt.parse_pair("no chain at all"), ParseFailure)
    assert not fmt.pairwise_only and chain_format("p-genrm-8b").pairwise_only
    # pgenrm has every mode; a format without the logprob question is read by parsing
    assert all(not fmt.missing(mode, criteria, reader) for mode in ("pairwise", "tournament", "pointwise", "group")
               for criteria in ("generated", "none", "synthesis") for reader in ("auto", "logprob", "parse"))
    parsing = dataclasses.replace(fmt, name="parsing", criterion_question=None)
    assert not parsing.missing("group", "generated", "auto") and not parsing.missing("group", "generated", "parse")
    with pytest.raises(ValueError, match="leaves criterion_question unset\\): set reward.reader: parse; or "):
        parsing.require("group", "generated", "logprob")


def test_the_released_layout_history_in_the_system_turn_two_responses_in_the_user_turn():
    history = [HistoryItem(prompt="Name a cat", chosen="Miso.", rejected="Names are personal!")] * 8
    system, user = pair_messages(history, "Likes short answers.", "How do I sleep?", "Fixed bedtime.", "It depends.")
    assert system["role"] == "system" and user["role"] == "user"
    assert system["content"].count("User: Name a cat\nChosen: Miso.\nRejected: Names are personal!\n") == 6
    assert "Likes short answers." in system["content"] and "better_response" in system["content"]
    assert "[The Start of Response 1]\nFixed bedtime.\n[The End of Response 1]" in user["content"]
    assert "[The Start of Response 2]\nIt depends.\n" in user["content"] and "How do I sleep?" in user["content"]


def test_plugins_lists_the_formats():
    formats = plugins.registry("chain_format")
    assert {"pgenrm", "p-genrm-8b"} <= set(formats)
    assert all(entry.description for entry in formats.values())


MARKUP = st.sampled_from([JSON_START, JSON_END, "{", "}", '"', ":", ",", "better_response", "scores", "response_1",
                          "response_2", "7.5", '"8"', "PART 2", "rationale"])


def check(result):
    assert isinstance(result, (PairVerdict, ParseFailure))
    if isinstance(result, PairVerdict):
        assert math.isfinite(result.first) and math.isfinite(result.second)
        assert result.first >= 0 and result.second >= 0 and result.first + result.second > 0


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20), MARKUP), max_size=40).map("".join))
def test_arbitrary_text_never_raises(text):
    check(parse_verdict(text))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_outputs_never_raise(data):
    text = chain({"response_1": 8.1, "response_2": 4.3})
    for _ in range(data.draw(st.integers(1, 8))):
        at = data.draw(st.integers(0, len(text)))
        if data.draw(st.booleans()):
            text = text[:at] + data.draw(st.one_of(st.text(max_size=3), MARKUP)) + text[at:]
        else:
            text = text[:at] + text[at + data.draw(st.integers(1, 5)):]
    check(parse_verdict(text))


# -- real runs: the embedded judge behind a real llama.cpp server -------------------------------------

HISTORY = [{"prompt": "What is a good name for a cat?", "chosen": "Miso.",
            "rejected": "Choosing a name is personal! Many people pick names from food or books."}]


def served(server, mode: str, **reward) -> dict:
    return make_config(backend={"name": "openai", "options": {"base_urls": [server.base_url], "model": "judge"}},
                       chain={"format": "p-genrm-8b"}, sampling={"chains": 1, "max_new_tokens": 48},
                       reward={"mode": mode, "max_history": 2, "max_chars": 200, **reward})


def test_a_real_pairwise_run_in_the_released_format(llama_server):  # noqa: F811
    from pgenrm_plugins.scoring import Scorer

    scorer = Scorer(served(llama_server, "pairwise"))
    [result] = scorer.score([{"user_id": "bea", "history": HISTORY, "prompt": "How can I fall asleep faster?",
                              "completions": ["Keep a fixed bedtime.", "Sleep is complicated."],
                              "reference": "Stop screens an hour before bed."}])
    c = result.components
    assert len(result.rewards) == 2 and all(math.isfinite(r) and 0 <= r <= 1 for r in result.rewards)
    assert c.mode == "pairwise" and c.comparisons == 2 and c.chains_sampled == 2
    assert c.position_swaps in (0, 1, 2)  # the official order: shuffled per call, recorded
    assert c.parse_failures + sum(c.chains_scored) == 2  # every chain read or counted as failed


def test_a_real_group_run_in_trls_call_shape(llama_server):  # noqa: F811
    """GRPO's shape: 3 completions of one prompt, each against the others in both orders."""
    from pgenrm_trl import SyncPGenRMReward

    reward = SyncPGenRMReward(served(llama_server, "tournament"))
    prompts = ["How can I fall asleep faster?"] * 3
    completions = ["Keep a fixed bedtime.", "Sleep is complicated.", "Stop screens an hour before bed."]
    report = reward.score_batch(prompts, completions, user_id=["bea"] * 3, history=[json.dumps(HISTORY)] * 3)
    assert len(report.rewards) == 3 and all(math.isfinite(r) and 0 <= r <= 1 for r in report.rewards)
    [c] = report.components
    assert c.mode == "tournament" and c.comparisons == 6 and c.position_swaps == 3  # 3 pairs, both orders
    assert c.parse_failures + sum(c.chains_scored) // 2 == 6  # each read chain scores both its sides
    assert report.metrics["pgenrm/chains_sampled"] == 6.0


# -- the tournament's arithmetic ------------------------------------------------------------------
# The embedded 135M judge cannot write the released structure (its chains above are parse failures),
# so these tests put a scripted judge in its place: it answers every comparison in the released
# format, giving each response a score of its length in words. That is a fake, and it stands only
# for what no judge here can do; the prompts it receives and the arithmetic are the real ones.

class ScriptedJudge:
    name = "scripted"

    def __init__(self):
        from pgenrm_plugins.backends.base import BackendStats

        self.stats, self.requests = BackendStats(), []

    def generate(self, requests):
        from pgenrm_plugins.backends.base import Generation

        out = []
        for r in requests:
            self.requests.append(r)
            user = r.messages[-1]["content"]
            first = user.split("[The Start of Response 1]\n")[1].split("\n[The End of Response 1]")[0]
            second = user.split("[The Start of Response 2]\n")[1].split("\n[The End of Response 2]")[0]
            scores = {"response_1": len(first.split()), "response_2": str(len(second.split()))}
            # PART 1 names what the user chose last, so each user's analysis is their own
            text = chain(scores).replace("plain and direct", f"like '{first[:40]}'")
            out.append([Generation(text, 10)] * r.n)
        return out

    def next_token_probs(self, conversations, candidates):
        raise NotImplementedError

    def close(self):
        pass


def tournament(judge, completions, **reward):
    from pgenrm_plugins.scoring import Scorer

    scorer = Scorer(make_config(chain={"format": "p-genrm-8b"}, reward={"mode": "tournament", **reward},
                                sampling={"chains": 2}), backend=judge)
    return scorer.score_one({"user_id": "u", "prompt": "Say something.", "completions": completions})


def test_every_pair_in_both_orders_and_the_shares_add_up():
    judge = ScriptedJudge()
    words = ["one", "one two", "one two three", "one two three four"]
    result = tournament(judge, words)
    c = result.components
    assert c.comparisons == 12 and c.position_swaps == 6 and c.chains_sampled == 24  # 6 pairs x 2 orders x N=2
    assert c.chains_scored == [12, 12, 12, 12] and c.parse_failures == 0
    assert sum(result.rewards) == pytest.approx(2.0)  # each comparison hands out 1 in total: n/2 on average
    assert result.rewards == sorted(result.rewards)  # longer wins under this judge
    # the share of "one" (1 word) against "one two" (2 words) is 1/3 in both orders
    assert result.rewards[0] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)
    assert len(judge.requests) == 12 and all(r.n == 2 for r in judge.requests)  # one request per shown pair


def test_win_rate_and_a_bounded_number_of_opponents():
    words = ["a", "a b", "a b c", "a b c d", "a b c d e", "a b c d e f"]
    result = tournament(ScriptedJudge(), words, pair_score="win", opponents=2)
    c = result.components
    all_pairs = 6 * 5 // 2
    assert c.comparisons < 2 * all_pairs and c.comparisons % 2 == 0  # a sample of pairs, both orders each
    assert all(n >= 2 * 2 * 2 for n in c.chains_scored)  # every completion met >= 2 opponents (x 2 orders x N=2)
    # win rate: wins / opponents met (this judge never ties, and both orders agree)
    for reward, scored in zip(result.rewards, c.chains_scored):
        met = scored // 4  # 2 orders x N=2 per opponent
        assert reward * met == pytest.approx(round(reward * met))
    assert result.rewards[-1] == 1.0 and result.rewards[0] == 0.0
    again = tournament(ScriptedJudge(), words, pair_score="win", opponents=2)
    assert again.rewards == result.rewards  # the sample is seeded by the content


def test_a_lone_completion_meets_the_reference_or_nothing():
    from pgenrm_plugins.scoring import Scorer

    scorer = Scorer(make_config(chain={"format": "p-genrm-8b"}, reward={"mode": "tournament"}), backend=ScriptedJudge())
    alone = scorer.score_one({"prompt": "Hi", "completions": ["a b c"], "reference": "a"})
    assert alone.rewards == [pytest.approx(0.75)] and alone.components.comparisons == 2
    nothing = scorer.score_one({"prompt": "Hi", "completions": ["a b c"]})
    assert nothing.rewards == [0.5] and nothing.components.failure_kinds == {"nothing_to_compare": 1}


@pytest.mark.parametrize("reward", [{"mode": "group"}, {"mode": "pointwise"}, {"mode": "group", "criteria": "none"},
                                    {"mode": "group", "criteria": "synthesis"}])
def test_a_pairwise_only_format_refuses_the_other_modes(reward):
    from pgenrm_plugins.scoring import Scorer

    with pytest.raises(ValueError, match="chain.format p-genrm-8b only compares two responses: set reward.mode to "
                                         f"pairwise .* not {reward['mode']}; or set chain.format"):
        Scorer(make_config(chain={"format": "p-genrm-8b"}, reward=reward), backend=ScriptedJudge())


# -- a third party's format: the modes it has read every prompt and parser from it ----------------

MARKER = "[marked-format]"


def _marked(build):
    """`build`'s conversation with MARKER at the head of its first turn."""
    def messages(*args, **kwargs):
        first, *rest = build(*args, **kwargs)
        return [{**first, "content": f"{MARKER} {first['content']}"}, *rest]
    return messages


@pytest.fixture
def marked_format():
    """A plugin registering format `marked` through the hook: pgenrm's chains with a marker in
    every prompt, pointwise and synthesis only; its parsers record what they read."""
    import types

    from pgenrm_plugins.chain.formats import PGENRM, ChainFormat
    from pgenrm_plugins.chain.parser import Criterion
    from pgenrm_plugins.hookspecs import hookimpl

    read: list[str] = []

    def parse_point(text):
        read.append(text)
        return PGENRM.parse_point(text)

    def parse_synthesis(text):
        read.append(text)
        return PGENRM.parse_synthesis(text)

    fmt = ChainFormat("marked", _marked(PGENRM.pair_messages), PGENRM.parse_pair, PGENRM.analysis,
                      point_messages=_marked(PGENRM.point_messages), parse_point=parse_point,
                      synthesis_messages=_marked(PGENRM.synthesis_messages), parse_synthesis=parse_synthesis,
                      criterion_messages=_marked(PGENRM.criterion_messages),
                      sound_criterion=Criterion(f"{MARKER} a whole answer", 10.0))
    assert not fmt.pairwise_only and fmt.missing("group", "generated") == ("criteria_messages", "parse_criteria",
                                                                           "criterion_question")
    plugin = types.SimpleNamespace(register_chain_formats=hookimpl(
        lambda register: register("marked", lambda options: fmt, description="pgenrm's chains, marked")))
    pm = plugins.get_plugin_manager()
    pm.register(plugin, name="marked-format")
    yield fmt, read
    pm.unregister(name="marked-format")
    assert "marked" not in plugins.registry("chain_format")


def _first_turn(conversation):
    return conversation[0]["content"]


def test_a_registered_format_writes_and_reads_the_modes_it_has(judge, marked_format):
    from pgenrm_plugins.scoring import Scorer

    fmt, read = marked_format
    row = {"user_id": "u", "history": HISTORY, "prompt": "How can I fall asleep faster?",
           "completions": ["Keep a fixed bedtime."]}
    tiny = {"sampling": {"chains": 1, "max_new_tokens": 8}, "chain": {"format": "marked"}}

    backend = Recording(judge)
    result = Scorer(make_config(reward={"mode": "pointwise", "max_chars": 200}, **tiny), backend=backend).score_one(row)
    assert result.components.chain_format == "marked" and result.components.chains_sampled == 1
    assert len(backend.generated) == 1 and _first_turn(backend.generated[0]).startswith(MARKER)
    assert len(read) == 1  # the chain was read by the format's parser

    backend, read[:] = Recording(judge), []
    # no extra criteria (the shipped judge's are asked in the pgenrm format): every check is the format's
    result = Scorer(make_config(reward={"mode": "group", "criteria": "synthesis", "max_chars": 200,
                                        "extra_criteria": []}, **tiny), backend=backend).score_one(row)
    assert [_first_turn(m).startswith(MARKER) for m in backend.generated] == [True]  # the synthesis
    assert backend.asked and all(_first_turn(m).startswith(MARKER) for m in backend.asked)  # the checks
    assert len(read) == 1 and result.components.criteria_mode == "synthesis"
    if result.components.criteria_fallbacks:  # 8 tokens rarely make a synthesis: the format's own fallback
        assert [name for name, _ in result.components.criteria] == [fmt.sound_criterion.name]
        assert all(MARKER in m[-1]["content"] for m in backend.asked)

    with pytest.raises(ValueError, match="chain.format marked does not support reward.mode: group with "
                                         "reward.criteria: generated .* leaves criteria_messages, parse_criteria, "
                                         "criterion_question unset\\): set reward.mode: pairwise; .* or reward.mode: "
                                         "group with reward.criteria: synthesis; or set chain.format"):
        Scorer(make_config(reward={"mode": "group", "criteria": "generated"}, **tiny), backend=Recording(judge))


def test_prototype_builds_embed_part_1_of_each_members_chain(tmp_path):
    """The `analysis` source: each member's latest choice judged in the format, with the earlier
    ones as history; PART 1 of that chain is embedded (the real MiniLM embedder, real SQLite)."""
    from prototype_helpers import load_embedder, make_rows, write_jsonl

    from pgenrm_plugins.prototypes.builder import build_prototypes
    from pgenrm_plugins.prototypes.sources import SourceSettings
    from pgenrm_plugins.prototypes.sqlite_store import SQLiteStore

    rows = write_jsonl(tmp_path / "rows.jsonl", make_rows(2, 2))
    store = SQLiteStore(path=str(tmp_path / "protos.sqlite"))
    judge = ScriptedJudge()
    report = build_prototypes(rows, store, load_embedder(), backend=judge, source="analysis", k=2,
                              source_settings=SourceSettings(max_items=3, max_chars=200, chain_format="p-genrm-8b"))
    assert report.source == "analysis" and len(judge.requests) == 4  # one chain per member
    assert all(r.messages[0]["role"] == "system" and "Chosen:" in r.messages[0]["content"] for r in judge.requests)
    meta = store.prototypes().meta
    assert meta["source"] == "analysis" and meta["source_settings"]["chain_format"] == "p-genrm-8b"
    for user in store.users():
        latest = user.history[-1].chosen
        assert user.synthesis.startswith("**PART 1") and f"like '{latest[:40]}'" in user.synthesis
        assert "JSON_START" not in user.synthesis
    store.close()
