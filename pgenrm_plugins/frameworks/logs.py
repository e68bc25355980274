"""A result's numbers for a framework's metric channel: one function, the same keys everywhere.

verl's `reward_extra_info` and OpenRLHF's `extra_logs` need the same numeric keys for every sample;
TRL's `log_metric` takes one number per name per batch. Each adapter calls `sample_logs` (one
sample, or one group's result) and, where the framework logs per batch, sums them with
`batch_logs`. A sample whose user fields could not be read has no result: it counts as neutral
and invalid.
"""

from __future__ import annotations

from collections.abc import Iterable

from pgenrm_plugins.types import ScoreResult

LOG_KEYS = (
    "chains_sampled",      # chains sampled for this sample's (merged) group
    "generated_tokens",    # tokens the judge generated for that group
    "parse_failures",      # chains or score replies of that group that could not be parsed
    "criteria_fallbacks",  # chains scored with the fallback criterion
    "ties",                # pairwise mode: chains that scored a completion equal to the reference
    "merged_completions",  # completions judged together with this one (group mode's economy)
    "neutral",             # completions that got reward.neutral_value (no score, or unreadable fields)
    "invalid",             # completions whose user fields could not be read
)


def sample_logs(result: ScoreResult | None, prefix: str = "pgenrm_") -> dict[str, float]:
    """`LOG_KEYS` of one result (None: an unreadable sample), each prefixed, every value a float."""
    if result is None:
        values = dict.fromkeys(LOG_KEYS, 0.0) | {"neutral": 1.0, "invalid": 1.0}
    else:
        c = result.components
        values = {
            "chains_sampled": c.chains_sampled,
            "generated_tokens": c.generated_tokens,
            "parse_failures": c.parse_failures,
            "criteria_fallbacks": c.criteria_fallbacks,
            "ties": c.ties,
            "merged_completions": c.merged_completions or len(result.rewards),
            "neutral": len(c.failed_completions),
            "invalid": 0,
        }
    return {prefix + key: float(values[key]) for key in LOG_KEYS}


def batch_logs(results: Iterable[ScoreResult | None], prefix: str = "pgenrm/") -> dict[str, float]:
    """`sample_logs` summed over a batch."""
    total = dict.fromkeys((prefix + key for key in LOG_KEYS), 0.0)
    for result in results:
        for key, value in sample_logs(result, prefix).items():
            total[key] += value
    return total
