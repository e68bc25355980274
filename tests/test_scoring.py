"""The scorer on the real embedded judge (SmolLM2-135M-Instruct): reward modes, individual-level
scaling, failure policy, determinism and the group-mode prefix economy."""

import math

import pytest
from conftest import make_config

from pgenrm_plugins.scoring import Scorer, ScoringError


def check_rewards(result, n):
    assert len(result.rewards) == n
    assert all(isinstance(r, float) and math.isfinite(r) and 0.0 <= r <= 1.0 for r in result.rewards)


def test_group_mode_reads_scores_by_probability(judge, request_row):
    judge.stats.__init__()
    scorer = Scorer(make_config(reward={"mode": "group", "reader": "logprob"}), backend=judge)
    [result] = scorer.score([request_row])
    check_rewards(result, 3)
    c = result.components
    assert c.mode == "group" and c.reader == "logprob"
    assert c.chains_sampled == 2  # persona + criteria once per (user, prompt), N = 2
    assert c.chains_scored == [2, 2, 2]  # every completion scored under both chains
    assert c.own == result.rewards and c.prototype_id is None
    assert c.evaluation.startswith("<evaluation>")
    # one generate call for the whole group; the questions reuse the chain's prefix
    assert judge.stats.generate_calls == 1
    assert judge.stats.extra["prefix_tokens_reused"] > 0
    # the completions are told apart: a probability read is a smooth score
    assert len(set(result.rewards)) == 3


def test_group_mode_with_parsed_scores(judge, request_row):
    scorer = Scorer(make_config(reward={"mode": "group", "reader": "parse"}, sampling={"max_new_tokens": 96}),
                    backend=judge)
    [result] = scorer.score([request_row])
    check_rewards(result, 3)
    c = result.components
    assert c.reader == "parse" and c.chains_sampled == 2
    # Whatever the small judge wrote, every chain is accounted for. Of the 2 chains, k had readable
    # criteria; the other 2 - k count one failure each, and of the k * 3 score replies those not
    # scored count one each: parse_failures = (2 - k) + (3k - scored), so k is a whole number in 0..2.
    scored = sum(c.chains_scored)
    k, odd = divmod(c.parse_failures + scored - 2, 2)
    assert odd == 0 and 0 <= k <= 2 and scored <= 3 * k, (c.parse_failures, c.chains_scored)
    assert sum(c.failure_kinds.values()) == c.parse_failures
    assert all(n <= 2 for n in c.chains_scored)


@pytest.mark.parametrize("mode", ["pointwise", "pairwise"])
def test_full_chain_modes(judge, request_row, mode):
    scorer = Scorer(make_config(reward={"mode": mode}), backend=judge)
    [result] = scorer.score([request_row])
    check_rewards(result, 3)
    c = result.components
    assert c.mode == mode and c.reader == "parse"
    assert c.chains_sampled == 2 * 3  # N chains for every completion (or pair)
    for ci, scored in enumerate(c.chains_scored):
        assert (scored == 0) == (ci in c.failed_completions)


def test_pairwise_needs_a_reference(judge, request_row):
    del request_row["reference"]
    scorer = Scorer(make_config(reward={"mode": "pairwise"}), backend=judge)
    with pytest.raises(ValueError, match="'reference' is required in pairwise mode"):
        scorer.score([request_row])


def test_unparseable_chains_follow_the_failure_policy(judge, request_row):
    # 8 new tokens cannot hold a full chain: every chain fails to parse, for real.
    tiny = {"sampling": {"max_new_tokens": 8}, "reward": {"mode": "pointwise", "neutral_value": 0.25}}
    [result] = Scorer(make_config(**tiny), backend=judge).score([request_row])
    assert result.rewards == [0.25, 0.25, 0.25]
    assert result.components.failed_completions == [0, 1, 2]
    assert result.components.parse_failures == 6
    tiny["reward"]["failure_policy"] = "raise"
    with pytest.raises(ScoringError, match="completion 0 got no score from 6 chains"):
        Scorer(make_config(**tiny), backend=judge).score([request_row])


def test_reward_does_not_depend_on_batch_mates(judge, request_row):
    scorer = Scorer(make_config(), backend=judge)
    other = dict(request_row, user_id="someone-else", prompt="Name a good sci-fi book.", completions=["Dune."])
    alone = scorer.score([request_row])[0].rewards
    together = scorer.score([other, request_row])[1].rewards
    assert together == pytest.approx(alone, abs=1e-5)


def test_history_changes_the_reward(judge, request_row):
    scorer = Scorer(make_config(), backend=judge)
    with_history = scorer.score([request_row])[0].rewards
    without = scorer.score([dict(request_row, history=[])])[0].rewards
    assert with_history != pytest.approx(without, abs=1e-4)


def test_multi_turn_context_reaches_the_judge(judge, request_row):
    from pgenrm_plugins.chain import prompts

    turns = [{"role": "user", "content": "I sleep badly."}, {"role": "assistant", "content": "Since when?"},
             {"role": "user", "content": "A month. How can I fall asleep faster?"}]
    conv = prompts.criteria_chain([], None, [dict(t) for t in turns])
    assert "assistant: Since when?" in conv[1]["content"] and "user: A month." in conv[1]["content"]
    [result] = Scorer(make_config(), backend=judge).score([dict(request_row, prompt=turns)])
    check_rewards(result, 3)


def test_bad_request_names_the_field(judge):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="completions"):
        Scorer(make_config(), backend=judge).score([{"prompt": "hi", "completions": []}])


# -- judge J's format: no chain, one digit per completion (criteria: none) ------------------------
def test_direct_format_is_judge_js_and_shares_the_history_prefix(request_row):
    from pgenrm_plugins.backends.judge_folder import shipped_judge
    from pgenrm_plugins.backends.transformers_backend import TransformersBackend, TransformersOptions
    from pgenrm_plugins.config import load_config
    from pgenrm_plugins.scoring.scorer import resolve_criteria

    assert resolve_criteria(load_config({})) == ("synthesis" if shipped_judge() else "generated")  # the default
    j = {"name": "transformers", "options": {"model": "embedded:smollm2-135m-direct-v1"}}
    judge = TransformersBackend(TransformersOptions(model=j["options"]["model"]))
    assert Scorer({"backend": j}, backend=judge).criteria_mode == "none"  # `auto` reads J's manifest
    scorer = Scorer({"backend": j, "sampling": {"chains": 3}, "reward": {"criteria": "none"}}, backend=judge)
    [result] = scorer.score([request_row])
    check_rewards(result, 3)
    c = result.components
    assert c.criteria_mode == "none" and c.reader == "logprob"
    assert c.chains_sampled == 3 and c.chains_scored == [3, 3, 3] and c.generated_tokens == 0
    assert judge.stats.generate_calls == 0 and judge.stats.prob_calls == 3  # one call per history view
    assert judge.stats.extra["prefix_tokens_reused"] > 0
    # the same request alone or with batch-mates: the same rewards
    other = dict(request_row, user_id="someone-else", prompt="What is a good breakfast?")
    assert scorer.score([other, request_row])[1].rewards == result.rewards


def test_history_views():
    from pgenrm_plugins.scoring import history_view
    from pgenrm_plugins.types import HistoryItem

    history = [HistoryItem(prompt=f"q{i}", chosen=f"c{i}", rejected=f"r{i}") for i in range(7)]
    assert history_view(history, 3, seed=5, k=0) == history[-3:]  # view 0: the most recent, in order
    views = [history_view(history, 3, seed=5, k=k) for k in range(1, 6)]
    assert all(len(v) == 3 and len({h.prompt for h in v}) == 3 for v in views)
    assert len({tuple(h.prompt for h in v) for v in views}) > 1  # views differ...
    assert {h.prompt for v in views for h in v} - {h.prompt for h in history[-3:]}  # ...and read older pairs
    assert history_view(history, 3, seed=5, k=2) == views[1]  # seeded
    assert history_view([], 3, seed=5, k=1) == []


def test_direct_format_refuses_the_parse_reader(judge):
    with pytest.raises(ValueError, match="reward.criteria: none reads digit probabilities"):
        Scorer({"reward": {"criteria": "none", "reader": "parse"}}, backend=judge)


def test_compared_completions_split_each_comparison(judge, request_row):
    """reward.compare: every ordered pair of completions is one digit; each side takes its share,
    so with two completions the rewards sum to exactly 1, and order in the request does not matter."""
    cfg = {"sampling": {"chains": 2}, "reward": {"criteria": "none", "compare": True, "history_render": "contrast"}}
    scorer = Scorer(cfg, backend=judge)
    two = dict(request_row, completions=request_row["completions"][:2])
    judge.stats.__init__()
    [result] = scorer.score([two])
    check_rewards(result, 2)
    assert result.rewards[0] + result.rewards[1] == pytest.approx(1.0, abs=1e-9)
    assert judge.stats.prob_calls == 2 and result.components.chains_scored == [2, 2]
    [swapped] = scorer.score([dict(two, completions=two["completions"][::-1])])
    assert swapped.rewards == pytest.approx(result.rewards[::-1], abs=1e-4)
    [three] = scorer.score([request_row])
    check_rewards(three, 3)
    assert sum(three.rewards) == pytest.approx(1.5, abs=1e-9)  # each of the 3 comparisons hands out 1


def test_a_lone_compared_completion_is_compared_with_its_reference(judge, request_row):
    scorer = Scorer({"sampling": {"chains": 1}, "reward": {"criteria": "none", "compare": True}}, backend=judge)
    lone = dict(request_row, completions=request_row["completions"][:1])
    [result] = scorer.score([lone])
    check_rewards(result, 1)
    assert result.components.chains_scored == [1]
    # with nothing to compare it with, the failure policy decides, and says why
    [alone] = scorer.score([dict(lone, reference=None)])
    assert alone.rewards == [0.5] and alone.components.failure_kinds == {"nothing_to_compare": 1}
    strict = Scorer({"sampling": {"chains": 1},
                     "reward": {"criteria": "none", "compare": True, "failure_policy": "raise"}},
                    backend=judge)
    with pytest.raises(ScoringError, match="nothing_to_compare"):
        strict.score([dict(lone, reference=None)])
