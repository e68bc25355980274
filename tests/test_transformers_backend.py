"""The embedded transformers backend: shared-prefix probability reads equal running each row on
its own, and seeded batched sampling does not depend on batch-mates."""

import pytest

from pgenrm_plugins.backends.base import GenerationRequest
from pgenrm_plugins.backends.transformers_backend import shared_prefix_len
from pgenrm_plugins.chain import prompts

CHAIN = ('<evaluation>{"preferences": {"style": "brief"}, "criteria": [{"name": "Brevity", "weight": 60}, '
         '{"name": "Warmth", "weight": 40}]}</evaluation>')


def test_probabilities_with_shared_prefixes_equal_row_by_row(judge):
    conv = prompts.criteria_chain([], None, "How can I sleep better?")
    completions = ["Go to bed at the same time every night and avoid screens late.", "Sleep is complicated.", "No."]
    rows = [prompts.criterion_question(conv, CHAIN, c, k) for c in completions for k in ("Brevity", "Warmth")]
    rows.append(prompts.criterion_question(prompts.criteria_chain([], None, "Hi"), CHAIN, "Hello", "Brevity"))
    before = judge.stats.extra.get("prefix_tokens_reused", 0)
    together = judge.next_token_probs(rows, prompts.DIGITS)
    assert judge.stats.extra["prefix_tokens_reused"] > before
    for row, probs in zip(rows, together):
        [alone] = judge.next_token_probs([row], prompts.DIGITS)
        assert set(probs) == set(prompts.DIGITS)
        assert all(probs[d] == pytest.approx(alone[d], abs=1e-5) for d in prompts.DIGITS)
        assert 0.0 < sum(probs.values()) <= 1.0 + 1e-6


def test_candidates_must_be_single_tokens(judge):
    with pytest.raises(ValueError, match="candidate '10' is 2 tokens"):
        judge.next_token_probs([[{"role": "user", "content": "Score?"}]], ["1", "10"])


def test_seeded_samples_do_not_depend_on_batch_mates(judge):
    ask = lambda q, **kw: GenerationRequest([{"role": "user", "content": q}], max_new_tokens=12, **kw)  # noqa: E731
    a = ask("Tell me about cats.", n=2, seed=5)
    b = ask("Name a fruit.", n=1, seed=9)
    greedy = ask("Say hi.", temperature=0.0)
    together = judge.generate([a, b, greedy])
    assert together == [judge.generate([a])[0], judge.generate([b])[0], judge.generate([greedy])[0]]
    assert together[0][0].text != together[0][1].text  # sample k of a request uses seed + k
    assert judge.generate([ask("Tell me about cats.", n=1, seed=6)])[0][0] == together[0][1]
    assert all(0 < g.tokens <= 12 for gens in together for g in gens)


def test_prefill_starts_the_reply(judge):
    [[g]] = judge.generate([GenerationRequest([{"role": "user", "content": "Give JSON."}], max_new_tokens=8,
                                              temperature=0.0, prefill='{"answer": "')])
    assert g.text.startswith('{"answer": "') and g.tokens <= 8


def test_shared_prefix_len_keeps_a_token_per_row():
    long = list(range(40))
    assert shared_prefix_len([long, long]) == 39
    assert shared_prefix_len([long, long[:20] + [99]]) == 20
    assert shared_prefix_len([long, [7] + long]) == 0
    assert shared_prefix_len([long]) == 0
