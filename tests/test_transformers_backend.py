"""The embedded transformers backend: shared-prefix probability reads equal running each row on
its own, and seeded batched sampling does not depend on batch-mates."""

import pytest

from pgenrm_plugins.backends.base import GenerationRequest
from pgenrm_plugins.backends.transformers_backend import MIN_SHARED_PREFIX, _batches, prefix_tree
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


def test_questions_about_a_generated_chain_start_from_its_kept_keys_and_values(judge):
    conv = prompts.criteria_chain([], None, "How can I sleep better?")
    [chains] = judge.generate([GenerationRequest(conv, n=2, max_new_tokens=24, seed=3, prefill=prompts.CHAIN_PREFILL)])
    assert len(judge._kept.rows) == 2 and judge._kept.tokens <= judge.options.kept_tokens
    rows = [prompts.criterion_question(conv, g.text, c, "Brevity") for g in chains for c in ("Sleep at ten.", "No.")]
    before = judge.stats.extra["prefix_tokens_reused"]
    kept = judge.next_token_probs(rows, prompts.DIGITS)
    # Every row reused at least the whole prompt: the prompt was not computed again, not even once
    # (sharing within the call alone would reuse it 3 times, for rows 2-4).
    assert judge.stats.extra["prefix_tokens_reused"] - before >= 4 * len(judge._encode(conv))
    judge._kept.clear()
    for row, probs in zip(rows, kept):
        [alone] = judge.next_token_probs([row], prompts.DIGITS)
        assert all(probs[d] == pytest.approx(alone[d], abs=1e-5) for d in prompts.DIGITS)


def test_batches_are_cut_before_padding_dominates():
    assert _batches([10, 40, 10, 41, 10], 16) == [[0, 2, 4], [1, 3]]
    assert _batches([5] * 5, 2) == [[0, 1], [2, 3], [4]]
    assert _batches([], 4) == []


def test_candidates_must_be_single_tokens(judge):
    with pytest.raises(ValueError, match="candidate '10' is 2 tokens"):
        judge.next_token_probs([[{"role": "user", "content": "Score?"}]], ["1", "10"])
    assert judge.next_token_probs([], prompts.DIGITS) == []


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


def _shape(nodes):
    return [(len(n.tokens), n.rows, _shape(n.children)) for n in nodes]


def test_prefix_tree_shares_each_piece_once_and_folds_short_ones():
    stem, chain = list(range(100, 140)), list(range(200, 230))
    rows = [stem + chain + [1] * 20 + [2], stem + chain + [1] * 20 + [3],  # one completion, two criteria
            stem + chain + [4] * 20 + [2],  # another completion under the same chain
            stem + [5] * 8 + [6],  # a short branch: its 8 tokens are not a node of their own
            stem + [5] * 8 + [7],
            stem + chain + [1] * 20 + [2]]  # a duplicate row reads the same node
    assert _shape(prefix_tree(rows)) == [(40, [], [
        (30, [], [(20, [], [(1, [0, 5], []), (1, [1], [])]), (21, [2], [])]),
        (9, [3], []), (9, [4], []),
    ])]
    assert _shape(prefix_tree([[9] * 5 + [1], [9] * 5 + [2]])) == [(6, [0], []), (6, [1], [])]
    assert MIN_SHARED_PREFIX > 5
