"""P-GenRM as a TRL reward function (GRPOTrainer, RLOOTrainer).

TRL 1.16 calls every reward function by keyword, once per generation batch:

    reward(prompts=[...], completions=[...], completion_ids=[...],
           trainer_state=..., log_extra=..., log_metric=..., <every other dataset column>=[...])

with one entry per completion: a prompt with G generations appears G times, consecutively, and so
does each of its dataset columns (`user_id`, `history`, ...). This adapter groups that flat batch
back into (user, prompt) groups, scores all groups in ONE `Scorer.score` call (so group mode
derives the persona and criteria once per group and every completion of the group is judged
against the same criteria), and hands back one float per completion in TRL's order.

TRL's `AsyncGRPOTrainer` (experimental) calls it the same way, one group at a time, in a rollout
process it spawns: the reward pickles as its config and builds its judge there on the first call.

`PGenRMReward.__call__` is a coroutine: TRL sees it (`trl.trainer.utils.is_async_callable` checks
`__call__`) and runs it on its background event loop next to the other async reward functions,
while the judge itself runs in a worker thread (`asyncio.to_thread`) so it never blocks that loop.
`SyncPGenRMReward` is the same reward with a plain `__call__`, for callers that cannot await.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pgenrm_plugins.frameworks.logs import batch_logs
from pgenrm_plugins.frameworks.user_fields import (
    FieldSource,
    UserFieldError,
    completion_text,
    read_prompt,
    read_user_fields,
)
from pgenrm_plugins.scoring import LazyScorer, WithLazyScorer
from pgenrm_plugins.types import merge_groups

log = logging.getLogger(__name__)

# TRL's own keyword arguments; everything else in **kwargs is a dataset column.
TRL_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")
USER_COLUMN = "user_id"
OPTIONAL_COLUMNS = ("history", "persona", "reference")


class MissingColumnError(ValueError):
    """TRL did not pass a column the reward needs."""


class InvalidRowError(ValueError):
    """A dataset row whose user data cannot be read (raised under `failure_policy: raise`)."""


@dataclass
class BatchReport:
    """What one reward call did; `metrics` is what goes to TRL's `log_metric`."""

    rewards: list[float]
    metrics: dict[str, float]
    components: list[dict[str, Any]] = field(default_factory=list)  # one per (user, prompt) group
    invalid: dict[int, str] = field(default_factory=dict)  # row index -> why it got a neutral reward


# -- reading TRL's batch ------------------------------------------------------------------------
# The shapes a dataset may hold (strings, messages, content blocks, history as JSON or a dict of
# lists) are read by the core's framework-agnostic `user_fields`; here only TRL's layout is known.
TRL_SOURCE = FieldSource(
    framework="TRL", container=None,
    fix="correct that column of the training dataset (user_id: the user's id; history: a list of "
        "{prompt, chosen, rejected} or its JSON string; persona, reference: text)",
)


# -- the reward -----------------------------------------------------------------------------------
class PGenRMReward(WithLazyScorer):
    """P-GenRM reward for TRL: `GRPOTrainer(reward_funcs=[PGenRMReward(config)])`.

    config: a PGenRMConfig, a dict, a YAML/TOML path, or None (then `$PGENRM_CONFIG`, else the
    embedded default), read when the reward is first called. `backend` or `scorer` reuse a judge
    already loaded. Nothing heavy happens until the first call.

    A plain object, not an `nn.Module` (TRL would treat a module as a classifier). TRL logs its
    rewards as `rewards/<name>/mean|std`, name = `__name__` ("pgenrm" unless given).
    """

    __name__ = "pgenrm"

    def __init__(self, config=None, *, backend=None, scorer=None, name: str = "pgenrm"):
        self.__name__ = name
        self._lazy = LazyScorer(config, backend=backend, scorer=scorer, validate_now=True)
        self._score_lock = threading.Lock()

    # TRL's AsyncGRPOTrainer pickles its reward functions into a spawned rollout process: the name and
    # the judge's config travel, the judge and the lock are made again where the reward is first called.
    def __getstate__(self) -> dict:
        return {"name": self.__name__, "lazy": self._lazy}

    def __setstate__(self, state: dict) -> None:
        self.__name__ = state["name"]
        self._lazy = state["lazy"]
        self._score_lock = threading.Lock()

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded yet"
        return f"<{type(self).__name__} {self.__name__!r} ({state})>"

    def close(self) -> None:
        self._lazy.close()

    # -- TRL's entry point ------------------------------------------------------------------------
    async def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:
        log_metric = kwargs.get("log_metric")
        columns = {k: v for k, v in kwargs.items() if k not in TRL_KWARGS}
        report = await asyncio.to_thread(self.score_batch, prompts, completions, **columns)
        _log(log_metric, report.metrics)
        return report.rewards

    def score_batch(self, prompts: Sequence, completions: Sequence, **columns) -> BatchReport:
        """The synchronous core of the reward: TRL's flat batch in, a `BatchReport` out."""
        started = time.perf_counter()
        n = len(prompts)
        if len(completions) != n:
            raise ValueError(f"got {n} prompts but {len(completions)} completions; "
                             "TRL passes one prompt per completion")
        if USER_COLUMN not in columns:
            given = ", ".join(sorted(columns)) or "none"
            raise MissingColumnError(
                f"the P-GenRM reward needs a '{USER_COLUMN}' column, one user id per dataset row, and TRL "
                f"passed none (dataset columns it passed: {given}). Add a '{USER_COLUMN}' column to the "
                "training dataset (and optionally 'history': a list of {prompt, chosen, rejected}, or its "
                "JSON string), and keep remove_unused_columns=False in GRPOConfig/RLOOConfig (the default) "
                "so TRL hands dataset columns to reward functions."
            )
        for name in (USER_COLUMN, *OPTIONAL_COLUMNS):
            if name in columns and (columns[name] is None or len(columns[name]) != n):
                got = "None" if columns[name] is None else f"{len(columns[name])} values"
                raise ValueError(f"column '{name}': expected {n} values (one per completion), got {got}")

        config = self.config
        policy = config.reward.failure_policy
        neutral = config.reward.neutral_value

        # One request per readable row; rows of one (user, prompt) merge into one request.
        rows: list[int] = []
        single: list = []
        invalid: dict[int, str] = {}
        user_columns = [name for name in (USER_COLUMN, *OPTIONAL_COLUMNS) if name in columns]
        for i in range(n):
            try:
                fields = read_user_fields({name: columns[name][i] for name in user_columns}, TRL_SOURCE)
                prompt = _read_column("prompt", read_prompt, prompts[i])
                completion = _read_column("completion", completion_text, completions[i])
                single.append(fields.request([completion], prompt=prompt))
                rows.append(i)
            except UserFieldError as exc:
                invalid[i] = str(exc)
        requests, spans = merge_groups(single)

        if invalid and policy == "raise":
            i, why = next(iter(sorted(invalid.items())))
            raise InvalidRowError(
                f"{len(invalid)} of {n} completions have unreadable user data; first: completion {i} "
                f"(user_id {columns[USER_COLUMN][i]!r}): {why}. Fix the dataset, or set "
                "reward.failure_policy: neutral to give such rows reward.neutral_value (counted)"
            )
        if invalid:
            i, why = next(iter(sorted(invalid.items())))
            log.warning("P-GenRM: %d of %d completions have unreadable user data and get the neutral reward "
                        "%.2f (first: completion %d: %s)", len(invalid), n, neutral, i, why)

        results = self.score_requests(requests) if requests else []

        rewards: list[float] = [neutral] * n
        for i, (m, start, _) in zip(rows, spans):
            value = results[m].rewards[start]
            if math.isfinite(value):  # last guard: TRL never sees NaN from us
                rewards[i] = float(value)
            else:
                results[m].components.failed_completions.append(start)
        metrics = {"pgenrm/groups": float(len(requests)),
                   **batch_logs([*results, *(None for _ in invalid)]),
                   "pgenrm/seconds": time.perf_counter() - started}
        return BatchReport(rewards=rewards, metrics=metrics, components=[r.components for r in results],
                           invalid=invalid)

    def score_requests(self, requests):
        """All groups in one `Scorer.score` call; one call at a time per judge."""
        scorer = self.scorer
        with self._score_lock:
            return scorer.score(requests)


def _read_column(name: str, read, value):
    try:
        return read(value)
    except ValueError as exc:
        raise TRL_SOURCE.error(name, str(exc)) from None


def _log(log_metric, metrics: dict[str, float]) -> None:
    if log_metric is None:
        return
    for name, value in metrics.items():
        log_metric(name, float(value))


class SyncPGenRMReward(PGenRMReward):
    """The same reward with a synchronous `__call__` (for callers that do not await, e.g. TRL's
    experimental OnlineDPOTrainer, or plain scripts)."""

    def __call__(self, prompts, completions, completion_ids=None, **kwargs) -> list[float]:  # type: ignore[override]
        log_metric = kwargs.get("log_metric")
        columns = {k: v for k, v in kwargs.items() if k not in TRL_KWARGS}
        report = self.score_batch(prompts, completions, **columns)
        _log(log_metric, report.metrics)
        return report.rewards
