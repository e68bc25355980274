"""What OpenRLHF's `reward_func(queries, prompts, labels)` does (the file `reward_func.py` imports it).

OpenRLHF 0.11.2 (`openrlhf/utils/agent.py`, `SingleTurnAgentExecutor`) calls it once per sample,
in a thread, with lists of length 1: `queries` = prompt + response decoded with special tokens,
`prompts` = the chat-templated prompt, `labels` = the dataset column named by `--data.label_key`.
It must return `{"rewards": tensor, "scores": tensor, "extra_logs": {name: tensor}}`; `extra_logs`
must hold numbers under the same keys for every sample (logged as `train/<key>`).

The user comes from the label, a JSON string `{"user_id", "history", "persona", "reference",
"prompt"}` (all but user_id optional; `prompt` replaces the chat-templated one). Concurrent calls
are coalesced (`pgenrm_plugins.frameworks.coalescing`), so the samples of one (user, prompt) share one
persona-and-criteria chain, as in group mode.

OpenRLHF turns an exception raised here into reward None (logged at info level), which then fails
the training step; so under `failure_policy: raise` the reason is logged at ERROR level first.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pgenrm_plugins.frameworks.coalescing import SampleCoalescer, SampleReward
from pgenrm_plugins.frameworks.openrlhf import completion_of, prompt_of
from pgenrm_plugins.frameworks.user_fields import FieldSource, UserFieldError, read_container, read_user_fields

log = logging.getLogger(__name__)

LABEL_SOURCE = FieldSource(
    framework="OpenRLHF", container="label", strict=True,
    fix="--data.label_key names the dataset column passed as the label; each row's label must be a JSON string "
        '{"user_id": ..., "history": [{"prompt", "chosen", "rejected"}], "persona": optional}',
)

_lock = threading.Lock()
_coalescer: SampleCoalescer | None = None


def configure(config=None, *, backend=None, scorer=None, max_wait_ms: float | None = None) -> SampleCoalescer:
    """Set the judge `reward_func` uses in this process (default: `$PGENRM_CONFIG`, else the
    embedded judge, built on the first call). Returns it."""
    global _coalescer
    with _lock:
        old, _coalescer = _coalescer, SampleCoalescer(config, backend=backend, scorer=scorer, max_wait_ms=max_wait_ms)
    if old is not None:
        old.close()
    return _coalescer


def coalescer() -> SampleCoalescer:
    global _coalescer
    with _lock:
        if _coalescer is None:
            _coalescer = SampleCoalescer()
        return _coalescer


def score_sample(query: str, prompt: str, label: Any, scorer: SampleCoalescer | None = None) -> SampleReward:
    """One OpenRLHF sample's reward: read the label, cut the response out of the query, score
    (coalesced with concurrent calls), apply the failure policy to unreadable samples."""
    scorer = scorer or coalescer()
    try:
        try:
            fields = read_user_fields(read_container(label, LABEL_SOURCE), LABEL_SOURCE)
            try:
                completion = completion_of(query, prompt)
            except ValueError as exc:
                raise UserFieldError(f"OpenRLHF: {exc}", "query") from None
            return scorer.score(fields, prompt_of(prompt), completion)
        except UserFieldError as exc:
            return scorer.on_invalid(exc)  # raises under failure_policy: raise
    except Exception as exc:
        log.error("P-GenRM reward failed (OpenRLHF will see reward None and fail the step): %s", exc)
        raise


def reward_func(queries: list[str], prompts: list[str], labels: list[Any]) -> dict:
    """OpenRLHF's reward function: one reward in [0, 1] per sample, with numeric extra_logs."""
    import torch

    if not (len(queries) == len(prompts) == len(labels)):
        raise ValueError(f"queries, prompts, labels differ in length: {len(queries)}, {len(prompts)}, {len(labels)}")
    results = [score_sample(q, p, lab) for q, p, lab in zip(queries, prompts, labels)]
    rewards = torch.tensor([r.reward for r in results], dtype=torch.float32)
    return {
        "rewards": rewards,
        "scores": rewards.clone(),
        "extra_logs": {k: torch.tensor([r.components[k] for r in results], dtype=torch.float32)
                       for k in results[0].components},
    }
