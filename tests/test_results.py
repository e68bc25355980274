"""The typed result: cutting a merged request's result into each caller's part, and one group key."""

from pgenrm_plugins.frameworks.logs import LOG_KEYS, batch_logs, sample_logs
from pgenrm_plugins.types import Components, ScoreRequest, ScoreResult, group_key, merge_groups, split_result


def merged_result() -> ScoreResult:
    return ScoreResult(rewards=[0.1, 0.2, 0.3], components=Components(
        own=[0.1, 0.2, None], neighbours=[0.4, 0.5, 0.6], chains_scored=[1, 2, 0], failed_completions=[2],
        neighbours_used=[{"user_id": "n1", "similarity": 0.9, "rewards": [0.7, 0.8, 0.9]}],
        chains_sampled=4, parse_failures=1))


def test_every_per_completion_field_is_cut_nested_ones_too():
    part = split_result(merged_result(), 1, 3)
    c = part.components
    assert part.rewards == [0.2, 0.3]
    assert (c.own, c.neighbours, c.chains_scored) == ([0.2, None], [0.5, 0.6], [2, 0])
    assert c.failed_completions == [1]  # indices are shifted into the part
    assert c.neighbours_used[0].rewards == [0.8, 0.9] and c.neighbours_used[0].user_id == "n1"
    assert (c.chains_sampled, c.parse_failures, c.merged_completions) == (4, 1, 3)  # the group's counts stay whole
    assert merged_result().components.model_dump()["self"] == [0.1, 0.2, None]  # on the wire it is still "self"


def test_every_list_field_says_whether_it_holds_one_entry_per_completion():
    unmarked = {name for name, info in Components.model_fields.items()
                if "list" in str(info.annotation) and not (info.json_schema_extra or {}).get("per_completion")}
    assert unmarked == {"neighbours_used", "criteria"}  # cut inside each neighbour / one entry per criterion


def test_one_group_key_merges_what_differs_only_in_completions():
    a = ScoreRequest(user_id="u", prompt="p", completions=["x"])
    b = ScoreRequest(user_id="u", prompt="p", completions=["y", "z"])
    other = ScoreRequest(user_id="u", prompt="p", persona="Brief.", completions=["x"])
    assert group_key(a) == group_key(b) != group_key(other)
    merged, spans = merge_groups([a, other, b])
    assert [r.completions for r in merged] == [["x", "y", "z"], ["x"]]
    assert spans == [(0, 0, 1), (1, 0, 1), (0, 1, 3)]


def test_logs_have_the_same_keys_for_every_sample():
    part = split_result(merged_result(), 2, 3)
    logs = sample_logs(part)
    assert list(logs) == ["pgenrm_" + k for k in LOG_KEYS]
    assert logs["pgenrm_neutral"] == 1.0 and logs["pgenrm_merged_completions"] == 3.0
    assert sample_logs(None)["pgenrm_invalid"] == 1.0 and list(sample_logs(None)) == list(logs)
    total = batch_logs([part, None])
    assert total["pgenrm/neutral"] == 2.0 and total["pgenrm/invalid"] == 1.0 and total["pgenrm/chains_sampled"] == 4.0
