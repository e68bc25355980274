"""The scorer: requests in, one reward per completion out, in [0, 1], with its components.

Three reward modes (see `RewardConfig`):

    pointwise  one full chain per completion                       -> weighted total
    pairwise   one full chain per (completion, reference) pair     -> completion's share of the totals
    group      one criteria chain per (user, prompt), then every   -> weighted total
               completion scored against those criteria

Individual-level scaling: every chain is sampled N times (`sampling.chains`); a completion's
reward is the mean over the chains that produced a score. Chains that fail to parse are counted,
never silently dropped; a completion left with no score gets the failure policy.

In group mode the score of each criterion is either parsed from a short JSON reply or, with the
`logprob` reader, read as the expected value of the judge's next token over the digits 1-9. All
questions about one chain share its prefix, which the backend computes once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

from pgenrm_plugins.backends.base import Backend, GenerationRequest
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import Criterion, ParseFailure, parse_chain, parse_criteria
from pgenrm_plugins.config import PGenRMConfig, load_config
from pgenrm_plugins.types import ScoreRequest, ScoreResult

log = logging.getLogger(__name__)

# Used by the logprob reader when a chain's criteria cannot be parsed: the chain text still sits
# in the judge's context, so its persona keeps steering the score.
FALLBACK_CRITERION = Criterion("fit to this user's preferences", 100.0)
SCORE_STOP = (prompts.CLOSE,)


class ScoringError(RuntimeError):
    """Raised under `failure_policy: raise` when a completion could not be scored."""


@dataclass
class _Tally:
    """What happened while scoring one request; becomes its `components`."""

    chains_sampled: int = 0
    generated_tokens: int = 0
    failures: Counter = field(default_factory=Counter)
    criteria_fallbacks: int = 0
    ties: int = 0
    evaluation: str | None = None
    criteria: list | None = None
    per_completion: list[list[float]] = field(default_factory=list)  # reward-space values per chain

    def add_chain(self, generation) -> None:
        self.chains_sampled += 1
        self.generated_tokens += generation.tokens
        self.evaluation = self.evaluation or generation.text

    def add_criteria(self, criteria) -> None:
        self.criteria = self.criteria or [[c.name, c.weight] for c in criteria]


def _seed(base: int, *parts: Any) -> int:
    """A seed from the content being judged, so a reward never depends on its batch-mates."""
    blob = json.dumps([base, *parts], sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=4).digest(), "big") & 0x7FFFFFFF


def _to_unit(total: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (total - low) / (high - low)))


class Scorer:
    """Score `ScoreRequest`s with P-GenRM. Build with `load_scorer(config)`."""

    def __init__(self, config: PGenRMConfig | dict | str | None = None, backend: Backend | None = None):
        self.config = load_config(config)
        self.backend = backend if backend is not None else self.config.backend.build("backend")
        self.reader = self.config.reward.reader

    # -- public ------------------------------------------------------------------------------
    def score(self, requests: Sequence[ScoreRequest | dict]) -> list[ScoreResult]:
        reqs = [r if isinstance(r, ScoreRequest) else ScoreRequest.model_validate(r) for r in requests]
        mode = self.config.reward.mode
        if mode == "pairwise":
            for i, r in enumerate(reqs):
                if r.reference is None:
                    raise ValueError(
                        f"request {i}: field 'reference' is required in pairwise mode (the response "
                        "each completion is compared with); or set reward.mode to group or pointwise"
                    )
        tallies = [_Tally(per_completion=[[] for _ in r.completions]) for r in reqs]
        if mode == "group":
            self._score_groups(reqs, tallies)
        else:
            self._score_full_chains(reqs, tallies, pairwise=mode == "pairwise")
        results = [self._result(r, t) for r, t in zip(reqs, tallies)]
        neutral = sum(len(r.components["failed_completions"]) for r in results)
        if neutral:
            log.warning("%d of %d completions got no score from any chain: neutral reward %.2f (counted in "
                        "components.failed_completions)", neutral, sum(len(r.rewards) for r in results),
                        self.config.reward.neutral_value)
        return results

    def score_one(self, request: ScoreRequest | dict) -> ScoreResult:
        return self.score([request])[0]

    def close(self) -> None:
        self.backend.close()

    # -- the paper's way: one full chain per completion (pointwise) or pair (pairwise) --------
    def _score_full_chains(self, reqs: list[ScoreRequest], tallies: list[_Tally], pairwise: bool) -> None:
        rc = self.config.reward
        jobs, gen_requests = [], []
        for ri, r in enumerate(reqs):
            for ci, completion in enumerate(r.completions):
                shown = [completion, r.reference] if pairwise else [completion]
                messages = prompts.full_chain(r.history, r.persona, r.prompt, shown, max_items=rc.max_history, max_chars=rc.max_chars)
                jobs.append((ri, ci))
                gen_requests.append(self._chain_request(messages, r, shown))
        labels = ("A", "B") if pairwise else ("A",)
        for (ri, ci), gens in zip(jobs, self.backend.generate(gen_requests)):
            t = tallies[ri]
            for g in gens:
                t.add_chain(g)
                parsed = parse_chain(g.text, labels=labels)
                if isinstance(parsed, ParseFailure):
                    t.failures[parsed.kind] += 1
                    continue
                t.add_criteria(parsed.criteria)
                mine = parsed.scores["A"].total
                if pairwise:
                    theirs = parsed.scores["B"].total
                    t.ties += mine == theirs
                    t.per_completion[ci].append(mine / (mine + theirs))
                else:
                    t.per_completion[ci].append(_to_unit(mine, 1, 10))

    # -- group mode: criteria once per (user, prompt), every completion against them ----------
    def _score_groups(self, reqs: list[ScoreRequest], tallies: list[_Tally]) -> None:
        rc = self.config.reward
        conversations = [
            prompts.criteria_chain(r.history, r.persona, r.prompt, max_items=rc.max_history, max_chars=rc.max_chars)
            for r in reqs
        ]
        chains = self.backend.generate([self._chain_request(m, r) for m, r in zip(conversations, reqs)])
        # (request, conversation, chain text, criteria) for every chain that can be scored against
        usable = []
        for ri, (conv, gens) in enumerate(zip(conversations, chains)):
            t = tallies[ri]
            for g in gens:
                t.add_chain(g)
                parsed = parse_criteria(g.text)
                if isinstance(parsed, ParseFailure):
                    t.failures[parsed.kind] += 1
                    if self.reader == "parse":
                        continue
                    t.criteria_fallbacks += 1
                    criteria = (FALLBACK_CRITERION,)
                else:
                    criteria = parsed.criteria
                    t.add_criteria(criteria)
                usable.append((ri, conv, g.text, criteria))
        if self.reader != "parse":
            try:
                self._read_probabilities(reqs, tallies, usable)
                self.reader = "logprob" if usable else self.reader  # `auto` resolved: report what ran
                return
            except NotImplementedError:
                if rc.reader == "logprob":
                    raise
                log.info("backend %s gives no token probabilities: parsing scores instead", self.backend.name)
                self.reader = "parse"
        self._parse_scores(reqs, tallies, usable)

    def _read_probabilities(self, reqs, tallies, usable) -> None:
        """Each criterion's score = expected digit under the judge's next-token distribution.
        Raises NotImplementedError (before touching any tally) if the backend has no probabilities."""
        for ri, conv, text, criteria in usable:
            r = reqs[ri]
            rows = [
                prompts.criterion_question(conv, text, completion, c.name, max_chars=self.config.reward.max_chars)
                for completion in r.completions
                for c in criteria
            ]
            probs = self.backend.next_token_probs(rows, prompts.DIGITS)
            k = len(criteria)
            for ci in range(len(r.completions)):
                total = 0.0
                for c, p in zip(criteria, probs[ci * k:(ci + 1) * k]):
                    mass = sum(p.values())
                    if not mass > 0:
                        break
                    total += c.weight * sum(int(d) * q for d, q in p.items()) / mass
                else:
                    tallies[ri].per_completion[ci].append(_to_unit(total / 100.0, 1, 9))
                    continue
                tallies[ri].failures["no_digit_probability"] += 1

    def _parse_scores(self, reqs, tallies, usable) -> None:
        s, rc = self.config.sampling, self.config.reward
        jobs, gen_requests = [], []
        for ri, conv, text, criteria in usable:
            for ci, completion in enumerate(reqs[ri].completions):
                messages = prompts.score_followup(conv, text, completion, max_chars=rc.max_chars)
                # Greedy: the sampling that scales at test time is in the chains, not here.
                budget = 24 + 16 * len(criteria)
                gen_requests.append(GenerationRequest(
                    messages, n=1, max_new_tokens=budget, temperature=0.0, seed=s.seed, stop=SCORE_STOP,
                    prefill=prompts.SCORES_PREFILL,
                ))
                jobs.append((ri, ci, criteria))
        outputs = self.backend.generate(gen_requests) if gen_requests else []
        for (ri, ci, criteria), (g,) in zip(jobs, outputs):
            t = tallies[ri]
            t.generated_tokens += g.tokens
            parsed = parse_chain(g.text, labels=("A",), criteria=criteria)
            if isinstance(parsed, ParseFailure):
                t.failures[parsed.kind] += 1
                continue
            t.per_completion[ci].append(_to_unit(parsed.scores["A"].total, 1, 10))

    # -- shared pieces ------------------------------------------------------------------------
    def _chain_request(self, messages, request: ScoreRequest, shown: Sequence[str] = ()) -> GenerationRequest:
        s = self.config.sampling
        seed = _seed(s.seed, request.user_id, request.persona, request.model_dump(mode="json", include={"history", "prompt"}), list(shown))
        return GenerationRequest(
            messages, n=s.chains, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
            top_p=s.top_p, seed=seed, stop=(prompts.CLOSE,), prefill=prompts.CHAIN_PREFILL,
        )

    def _result(self, request: ScoreRequest, t: _Tally) -> ScoreResult:
        rc = self.config.reward
        rewards, failed = [], []
        for ci, values in enumerate(t.per_completion):
            value = sum(values) / len(values) if values else math.nan
            if not math.isfinite(value):
                failed.append(ci)
                if rc.failure_policy == "raise":
                    raise ScoringError(
                        f"user {request.user_id!r}: completion {ci} got no score from {t.chains_sampled} chains "
                        f"(failures: {dict(t.failures) or 'none'}); set reward.failure_policy: neutral to "
                        "give such completions reward.neutral_value instead"
                    )
                value = rc.neutral_value
            rewards.append(float(value))
        components = {
            "mode": rc.mode,
            "reader": self.reader if rc.mode == "group" else "parse",
            "self": list(rewards),
            "neighbours": None,
            "prototype_id": None,
            "chains_sampled": t.chains_sampled,
            "chains_scored": [len(v) for v in t.per_completion],
            "parse_failures": sum(t.failures.values()),
            "failure_kinds": dict(t.failures),
            "criteria_fallbacks": t.criteria_fallbacks,
            "failed_completions": failed,
            "ties": t.ties,
            "generated_tokens": t.generated_tokens,
            "criteria": t.criteria,
            "evaluation": t.evaluation,
        }
        return ScoreResult(rewards=rewards, components=components)


def load_scorer(config: PGenRMConfig | dict | str | None = None, backend: Backend | None = None) -> Scorer:
    """The public entry point: a scorer from a config file, dict, or nothing (the embedded default)."""
    return Scorer(config, backend=backend)
