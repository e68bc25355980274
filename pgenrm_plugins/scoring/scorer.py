"""The scorer: requests in, one reward per completion out, in [0, 1], with its components.

`Scorer` wires the parts together: the reward mode (`modes.RewardModes`), prototype-level scaling
when enabled (`scaling.PrototypeScaling`), and the failure policy for a completion nothing scored.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from pgenrm_plugins.backends.base import Backend
from pgenrm_plugins.chain.formats import chain_format
from pgenrm_plugins.config import PGenRMConfig, load_config
from pgenrm_plugins.scoring.contract import ScoringError, settings_identity
from pgenrm_plugins.scoring.modes import RewardModes, Tally
from pgenrm_plugins.scoring.scaling import PrototypeScaling, mean
from pgenrm_plugins.types import Components, ScoreRequest, ScoreResult

if TYPE_CHECKING:
    from pgenrm_plugins.prototypes.base import Embedder, PrototypeStore

log = logging.getLogger(__name__)


def check_references(reqs: Sequence[ScoreRequest], mode: str) -> None:
    """Pairwise mode compares each completion with the request's `reference`: refuse requests
    without one, naming the request and the fix."""
    if mode != "pairwise":
        return
    for i, r in enumerate(reqs):
        if r.reference is None:
            raise ValueError(f"request {i}: field 'reference' is required in pairwise mode (the response each "
                             "completion is compared with); or set reward.mode to group or pointwise")


class Scorer:
    """Score `ScoreRequest`s with P-GenRM. Build with `load_scorer(config)`."""

    def __init__(self, config: PGenRMConfig | dict | str | None = None, backend: Backend | None = None,
                 store: PrototypeStore | None = None, embedder: Embedder | None = None):
        from pgenrm_plugins.backends.judge_folder import with_judge_defaults

        self.config = with_judge_defaults(load_config(config))
        self.backend = backend if backend is not None else self.config.backend.build("backend")
        self.criteria_mode = resolve_criteria(self.config)
        if self.criteria_mode in ("none", "synthesis") and self.config.reward.reader == "parse":
            raise ValueError(f"reward.criteria: {self.criteria_mode} reads digit probabilities, so it needs "
                             "reward.reader: logprob or auto (or set reward.criteria: generated to parse generated "
                             "scores)")
        self.format = chain_format(self.config.chain.format)
        # a format without the configured mode's chains is refused here, naming the keys to change
        self.format.require(self.config.reward.mode, self.criteria_mode, self.config.reward.reader)
        # Prototype-level scaling: `store` and `embedder` may be handed in (already open, shared).
        self.store = self.embedder = self.scaling = None
        if self.config.prototypes.enabled:
            self.store = store if store is not None else self.config.store.build("store")
            self.embedder = embedder if embedder is not None else self.config.embedder.build("embedder")
            self.scaling = PrototypeScaling(self.config.prototypes, self.store, self.embedder, self.backend)
        # the store also keeps the syntheses (`reward.criteria: synthesis`) every worker on it shares
        self.modes = RewardModes(self.config, self.backend, self.criteria_mode, self.format, store=self.store)

    def score(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        reqs = [r if isinstance(r, ScoreRequest) else ScoreRequest.model_validate(r) for r in requests]
        check_references(reqs, self.config.reward.mode)
        if self.scaling is None:
            results = [self._result(r, [t], [mean(v) for v in t.per_completion], {})
                       for r, t in zip(reqs, self.modes.run(reqs))]
        else:
            results = self._score_with_prototypes(reqs)
        neutral = sum(len(r.components.failed_completions) for r in results)
        if neutral:
            log.warning("%d of %d completions got no score from any chain: neutral reward %.2f (counted in "
                        "components.failed_completions)", neutral, sum(len(r.rewards) for r in results),
                        self.config.reward.neutral_value)
        return results

    def score_one(self, request: ScoreRequest | dict) -> ScoreResult:
        return self.score([request])[0]

    def identity(self) -> str:
        return settings_identity(self.config, self.store)

    def close(self) -> None:
        self.backend.close()
        if self.store is not None:
            self.store.close()

    def _score_with_prototypes(self, reqs: list[ScoreRequest]) -> list[ScoreResult]:
        pc = self.config.prototypes
        plans = self.scaling.plan(reqs)
        jobs = [plan.jobs() for plan in plans]
        tallies = iter(self.modes.run([job for js in jobs for job in js]))  # one flat run: shared backend calls
        results = []
        for r, plan, js in zip(reqs, plans, jobs):
            mine = [next(tallies) for _ in js]
            values, extra = plan.combine(mine, pc.c_neighbours)
            extra["weights"] = {"self": pc.c_self, "neighbours": pc.c_neighbours}
            results.append(self._result(r, mine, values, extra))
        return results

    def _result(self, request: ScoreRequest, tallies: list[Tally], values: list[float | None],
                extra: dict[str, Any]) -> ScoreResult:
        """Rewards from per-completion values (None: nothing scored it), with the tallies' counts."""
        rc = self.config.reward
        failures: Counter = sum((t.failures for t in tallies), Counter())
        chains_sampled = sum(t.chains_sampled for t in tallies)
        rewards, failed = [], []
        for ci, value in enumerate(values):
            if value is None or not math.isfinite(value):
                failed.append(ci)
                if rc.failure_policy == "raise":
                    raise ScoringError(
                        f"user {request.user_id!r}: completion {ci} got no score from {chains_sampled} chains "
                        f"(failures: {dict(failures) or 'none'}); set reward.failure_policy: neutral to "
                        "give such completions reward.neutral_value instead"
                    )
                value = rc.neutral_value
            rewards.append(float(value))
        group = rc.mode == "group"
        fields = dict(
            mode=rc.mode,
            # what read the scores in this call (`auto` resolved), else the configured reader
            reader=next((t.reader for t in tallies if t.reader), rc.reader) if group else "parse",
            chain_format=self.format.name,
            criteria_mode=self.criteria_mode if group else "generated",
            own=list(rewards),
            chains_sampled=chains_sampled,
            chains_scored=[sum(len(t.per_completion[ci]) for t in tallies) for ci in range(len(values))],
            parse_failures=sum(failures.values()),
            failure_kinds=dict(failures),
            criteria_fallbacks=sum(t.criteria_fallbacks for t in tallies),
            failed_completions=failed,
            ties=sum(t.ties for t in tallies),
            comparisons=sum(t.comparisons for t in tallies),
            position_swaps=sum(t.position_swaps for t in tallies),
            generated_tokens=sum(t.generated_tokens for t in tallies),
            syntheses_reused=sum(t.syntheses_reused for t in tallies),
            criteria=next((t.criteria for t in tallies if t.criteria), None),
            evaluation=next((t.evaluation for t in tallies if t.evaluation), None),
        )
        return ScoreResult(rewards=rewards, components=Components(**{**fields, **extra}))


def resolve_criteria(config: PGenRMConfig) -> str:
    """`reward.criteria`, with `auto` resolved by the judge's manifest (a trained judge says which
    format it was trained for); judges without one write criteria."""
    if config.reward.criteria != "auto":
        return config.reward.criteria
    from pgenrm_plugins.backends.judge_folder import manifest_for_backend

    manifest = manifest_for_backend(config.backend)
    if manifest is None:
        return "generated"
    return manifest.scoring.reward.get("criteria") or manifest.criteria or "generated"


def load_scorer(config: PGenRMConfig | dict | str | None = None, backend: Backend | None = None,
                store: PrototypeStore | None = None, embedder: Embedder | None = None, local: bool = False):
    """The public entry point: a scorer from a config file, dict, or nothing (the embedded default).
    `store`/`embedder`: an open prototype store and embedder to use instead of building the config's.
    With a `scorer:` section (and no backend given) it is a `RemoteScorer` of that service, unless
    `local` (what the service itself builds)."""
    config = load_config(config)
    if config.scorer is not None and backend is None and not local:
        from pgenrm_plugins.scoring.remote import RemoteScorer

        return RemoteScorer(config)
    return Scorer(config, backend=backend, store=store, embedder=embedder)
