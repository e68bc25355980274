"""The scorer: requests in, one reward per completion out, in [0, 1], with its components.

Three reward modes (see `RewardConfig`):

    pointwise  one full chain per completion                       -> weighted total
    pairwise   one full chain per (completion, reference) pair     -> completion's share of the totals
    group      one criteria chain per (user, prompt), then every   -> weighted total
               completion scored against those criteria

Individual-level scaling: every chain is sampled N times (`sampling.chains`); a completion's
reward is the mean over the chains that produced a score. Chains that fail to parse are counted,
never silently dropped; a completion left with no score gets the failure policy.

Prototype-level scaling (`prototypes.enabled`, with a store built by `pgenrm prototypes build`): the
user is placed among the stored users (a known `user_id`: its stored embedding, and its stored
history when the request brings none; an unknown user with history: embedded now, the way the build
embedded its members; a user with no history: by the persona, else the prompt), the nearest
prototype and its top-k most similar members are looked up, and the SAME completions are scored
with each neighbour's history, in the same backend calls as the user's own. The neighbours' mean
is combined with the self score, `c_self * self + c_neighbours * neighbours`, with the weights
renormalised over the sides that produced a score. A user with no history is scored by the
neighbours alone (cold start); when no neighbour can be scored, the self score stands alone.

In group mode the score of each criterion is either parsed from a short JSON reply or, with the
`logprob` reader, read as the expected value of the judge's next token over the digits 1-9. All
questions about one chain share its prefix, which the backend computes once. With
`reward.criteria: none` (the trained embedded judge) no chain is written: each completion gets one
digit right after the history and the conversation, and Ind-N reads N seeded views of the history
(view 0 the most recent pairs in order, the others a seeded sample of all pairs, shuffled), so a
larger N reads more of a long history and averages out the order the judge saw it in.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

from pgenrm_plugins.backends.base import Backend, GenerationRequest
from pgenrm_plugins.chain import prompts
from pgenrm_plugins.chain.parser import Criterion, ParseFailure, parse_chain, parse_criteria
from pgenrm_plugins.config import PGenRMConfig, load_config
from pgenrm_plugins.types import HistoryItem, ScoreRequest, ScoreResult

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

    def __init__(self, config: PGenRMConfig | dict | str | None = None, backend: Backend | None = None,
                 store=None, embedder=None):
        from pgenrm_plugins.judge import with_judge_defaults

        self.config = with_judge_defaults(load_config(config))
        self.backend = backend if backend is not None else self.config.backend.build("backend")
        self.reader = self.config.reward.reader
        self.criteria = resolve_criteria(self.config)
        if self.criteria == "none" and self.reader == "parse":
            raise ValueError("reward.criteria: none reads one digit's probabilities, so it needs reward.reader: logprob "
                             "or auto (or set reward.criteria: generated to parse generated scores)")
        # Prototype-level scaling: `store` and `embedder` may be handed in (already open, shared).
        self.store = self.embedder = None
        if self.config.prototypes.enabled:
            self.store = store if store is not None else self.config.store.build("store")
            self.embedder = embedder if embedder is not None else self.config.embedder.build("embedder")
        self._placed: OrderedDict[str, Any] = OrderedDict()  # embeddings of users placed at scoring time

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
        if self.store is None:
            tallies = self._run(reqs)
            results = [self._result(r, [t], [_mean(v) for v in t.per_completion]) for r, t in zip(reqs, tallies)]
        else:
            results = self._score_with_prototypes(reqs)
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
        if self.store is not None:
            self.store.close()

    def _run(self, reqs: list[ScoreRequest]) -> list[_Tally]:
        """Score every request in the configured mode, all in the same backend calls."""
        tallies = [_Tally(per_completion=[[] for _ in r.completions]) for r in reqs]
        if not reqs:
            return tallies
        if self.config.reward.mode == "group":
            self._score_groups(reqs, tallies)
        else:
            self._score_full_chains(reqs, tallies, pairwise=self.config.reward.mode == "pairwise")
        return tallies

    # -- prototype-level scaling ----------------------------------------------------------------
    def _score_with_prototypes(self, reqs: list[ScoreRequest]) -> list[ScoreResult]:
        pc = self.config.prototypes
        plans = self._plan(reqs)
        # one flat list: each request's own side (if any), then its neighbours' sides
        jobs: list[ScoreRequest] = []
        for plan in plans:
            if plan.self_request is not None:
                plan.self_job = len(jobs)
                jobs.append(plan.self_request)
            for _, nb_request in plan.neighbours:
                plan.neighbour_jobs.append(len(jobs))
                jobs.append(nb_request)
        tallies = self._run(jobs)
        results = []
        for r, plan in zip(reqs, plans):
            own = tallies[plan.self_job] if plan.self_job is not None else None
            theirs = [tallies[j] for j in plan.neighbour_jobs]
            self_values = [_mean(v) for v in own.per_completion] if own else None
            per_neighbour = [[_mean(v) for v in t.per_completion] for t in theirs]
            nb_values = [_mean([n[ci] for n in per_neighbour if n[ci] is not None]) for ci in range(len(r.completions))] if theirs else None
            # the self side's weight is c_self, or 1 when it only runs because no neighbour could
            w_self = pc.c_self if plan.self_weighted else 1.0
            values = []
            for ci in range(len(r.completions)):
                sides = [(w, v[ci]) for w, v in ((w_self, self_values), (pc.c_neighbours, nb_values))
                         if v is not None and v[ci] is not None and w > 0]
                weight = sum(w for w, _ in sides)
                values.append(sum(w * v for w, v in sides) / weight if weight > 0 else None)
            lookup = plan.lookup
            extra = {
                "self": self_values,
                "neighbours": nb_values,
                "prototype_id": lookup.prototype_id if lookup else None,
                "prototype_similarity": lookup.similarity if lookup else None,
                "neighbours_used": [
                    {"user_id": nb.user_id, "similarity": nb.similarity, "rewards": values_}
                    for (nb, _), values_ in zip(plan.neighbours, per_neighbour)
                ],
                "placement": plan.placement,
                "weights": {"self": pc.c_self, "neighbours": pc.c_neighbours},
            }
            results.append(self._result(r, ([own] if own else []) + theirs, values, extra))
        return results

    def _plan(self, reqs: list[ScoreRequest]) -> list["_Plan"]:
        """Where each request's user sits among the prototypes, and which requests score it."""
        from pgenrm_plugins.prototypes.base import StoreError
        from pgenrm_plugins.prototypes.sources import SourceSettings, check_embedder, embed_like_build, prompt_text

        pc = self.config.prototypes
        prototypes = self.store.prototypes()
        if prototypes is None:
            raise StoreError("prototypes.enabled, but the store has no published build: run `pgenrm prototypes build "
                             "--store ...` first, or set prototypes.enabled: false")
        check_embedder(prototypes, self.embedder)
        plans, to_place, to_embed = [], [], []
        for r in reqs:
            stored = self.store.get_user(r.user_id) if r.user_id else None
            history = list(r.history) or (list(stored.history) if stored else [])
            persona = r.persona or (stored.persona if stored else None)
            plan = _Plan(request=r, history=history, persona=persona)
            if stored is not None and stored.embedding is not None:
                plan.placement, plan.embedding = "stored", stored.embedding
            elif history:
                plan.placement = "placed"
                key = json.dumps([[h.model_dump(mode="json") for h in history], persona], sort_keys=True)
                if key in self._placed:
                    self._placed.move_to_end(key)
                    plan.embedding = self._placed[key]
                else:
                    to_place.append((plan, key))
            else:
                # Cold start: nothing of the user's own choices, so the prototype is chosen by what the
                # request does carry: the persona when given, else the conversation itself.
                plan.placement = "cold_start"
                to_embed.append((plan, persona or prompt_text(r.prompt, SourceSettings.from_meta(
                    (prototypes.meta or {}).get("source_settings")).max_chars)))
            plans.append(plan)
        if to_place:
            unique = list(dict.fromkeys(key for _, key in to_place))
            first = {key: plan for plan, key in reversed(to_place)}
            vectors, _ = embed_like_build(prototypes, self.embedder, [(first[k].history, first[k].persona) for k in unique],
                                          backend=self.backend)
            for key, vector in zip(unique, vectors):
                self._placed[key] = vector
                while len(self._placed) > PLACED_CACHE:
                    self._placed.popitem(last=False)
            for plan, key in to_place:
                plan.embedding = self._placed[key]
        if to_embed:
            for (plan, _), vector in zip(to_embed, self.embedder.embed([text for _, text in to_embed])):
                plan.embedding = vector
        records: dict[str, Any] = {}
        for plan in plans:
            r = plan.request
            if pc.c_neighbours > 0:
                plan.lookup = self.store.nearest(plan.embedding, pc.top_k, exclude=[r.user_id] if r.user_id else [])
            for nb in plan.lookup.neighbours if plan.lookup else []:
                if nb.user_id not in records:
                    records[nb.user_id] = self.store.get_user(nb.user_id)
                rec = records[nb.user_id]
                if rec is not None and rec.history:  # a member with no history has nothing to lend
                    plan.neighbours.append((nb, r.model_copy(update={
                        "user_id": nb.user_id, "history": list(rec.history), "persona": rec.persona})))
            if plan.history and pc.c_self > 0:
                plan.self_weighted = True
            elif not plan.neighbours:
                plan.self_weighted = False  # nobody else can score it: the user's own side stands alone
            else:
                continue  # no history (cold start) or c_self = 0: neighbours alone
            plan.self_request = r.model_copy(update={"history": plan.history, "persona": plan.persona})
        return plans

    # -- the paper's way: one full chain per completion (pointwise) or pair (pairwise) --------
    def _score_full_chains(self, reqs: list[ScoreRequest], tallies: list[_Tally], pairwise: bool) -> None:
        rc = self.config.reward
        jobs, gen_requests = [], []
        for ri, r in enumerate(reqs):
            for ci, completion in enumerate(r.completions):
                shown = [completion, r.reference] if pairwise else [completion]
                messages = prompts.full_chain(r.history, r.persona, r.prompt, shown, max_items=rc.max_history, max_chars=rc.max_chars,
                                                   render=rc.history_render)
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
        if self.criteria == "none":
            self._score_direct(reqs, tallies)
            return
        conversations = [
            prompts.criteria_chain(r.history, r.persona, r.prompt, max_items=rc.max_history, max_chars=rc.max_chars,
                                   render=rc.history_render)
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

    def _score_direct(self, reqs: list[ScoreRequest], tallies: list[_Tally]) -> None:
        """No chain: one digit per (completion, history view); one backend call per view, so the
        completions of a group share the history and the conversation. With `reward.compare`, one
        digit per ordered pair of completions instead: a completion's reward is its mean share of
        its comparisons (the digit read as "A over B" in [0, 1], the other side taking the rest)."""
        rc, s = self.config.reward, self.config.sampling
        for r, t in zip(reqs, tallies):
            seed = _seed(s.seed, r.user_id, r.persona, r.model_dump(mode="json", include={"history", "prompt"}))
            texts = [*r.completions, r.reference]
            order = self._comparisons(r) if rc.compare else [(ci, None) for ci in range(len(r.completions))]
            if not order:
                t.failures["nothing_to_compare"] += 1
                continue
            for k in range(s.chains):
                history = history_view(r.history, rc.max_history, seed, k)
                rows = [prompts.direct_question(history, r.persona, r.prompt, texts[a], max_items=rc.max_history,
                                                max_chars=rc.max_chars, render=rc.history_render,
                                                versus=None if b is None else texts[b]) for a, b in order]
                try:
                    probs = self.backend.next_token_probs(rows, prompts.DIGITS)
                except NotImplementedError:
                    raise ValueError(f"reward.criteria: none reads token probabilities, which backend {self.backend.name!r} "
                                     "does not give; use a backend with logprobs, or reward.criteria: generated") from None
                t.chains_sampled += 1
                values = [_expected_digit(p) for p in probs]
                t.failures["no_digit_probability"] += sum(v is None for v in values)
                if not rc.compare:
                    for ci, value in enumerate(values):
                        if value is not None:
                            t.per_completion[ci].append(_to_unit(value, 1, 9))
                    continue
                wins: list[list[float]] = [[] for _ in r.completions]
                for (a, b), value in zip(order, values):
                    if value is None:
                        continue
                    a_over_b = _to_unit(value, 1, 9)  # b's side of the comparison is the rest
                    for side, share in ((a, a_over_b), (b, 1.0 - a_over_b)):
                        if side < len(wins):  # index len(completions) is the reference: no reward of its own
                            wins[side].append(share)
                for ci, shares in enumerate(wins):
                    if shares:
                        t.per_completion[ci].append(sum(shares) / len(shares))
        self.reader = "logprob"

    @staticmethod
    def _comparisons(r: ScoreRequest) -> list[tuple[int, int]]:
        """Ordered pairs (A, B) of `reward.compare`: every completion against every other of its
        request, in both orders; a lone completion against the reference (index len(completions)),
        or against nothing when there is none (no rows: the failure policy decides, counted as
        `nothing_to_compare`)."""
        n = len(r.completions)
        if n == 1:
            return [] if r.reference is None else [(0, 1), (1, 0)]
        return [(a, b) for a in range(n) for b in range(n) if a != b]

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
                    value = _expected_digit(p)
                    if value is None:
                        break
                    total += c.weight * value
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

    def _result(self, request: ScoreRequest, tallies: list[_Tally], values: list[float | None],
                extra: dict[str, Any] | None = None) -> ScoreResult:
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
        components = {
            "mode": rc.mode,
            "reader": self.reader if rc.mode == "group" else "parse",
            "criteria_mode": self.criteria if rc.mode == "group" else "generated",
            "self": list(rewards),
            "neighbours": None,
            "prototype_id": None,
            "chains_sampled": chains_sampled,
            "chains_scored": [sum(len(t.per_completion[ci]) for t in tallies) for ci in range(len(values))],
            "parse_failures": sum(failures.values()),
            "failure_kinds": dict(failures),
            "criteria_fallbacks": sum(t.criteria_fallbacks for t in tallies),
            "failed_completions": failed,
            "ties": sum(t.ties for t in tallies),
            "generated_tokens": sum(t.generated_tokens for t in tallies),
            "criteria": next((t.criteria for t in tallies if t.criteria), None),
            "evaluation": next((t.evaluation for t in tallies if t.evaluation), None),
        }
        components.update(extra or {})
        return ScoreResult(rewards=rewards, components=components)


@dataclass
class _Plan:
    """One request under prototype scaling: its own side (maybe none) and its neighbours' sides."""

    request: ScoreRequest
    history: list[HistoryItem]
    persona: str | None
    placement: str = ""  # stored | placed | cold_start
    embedding: Any = None
    lookup: Any = None
    neighbours: list = field(default_factory=list)  # (Neighbour, the request scored with their history)
    self_request: ScoreRequest | None = None
    self_weighted: bool = True  # False: the self side runs only because no neighbour could
    self_job: int | None = None
    neighbour_jobs: list[int] = field(default_factory=list)


PLACED_CACHE = 4096  # users placed at scoring time, kept so a user's next request is not embedded again


def _expected_digit(probs: dict[str, float]) -> float | None:
    """E[digit] under the judge's next-token probabilities, renormalised over the digits."""
    mass = sum(probs.values())
    if not mass > 0 or not math.isfinite(mass):
        return None
    return sum(int(d) * q for d, q in probs.items()) / mass


def history_view(history: Sequence[HistoryItem], max_items: int, seed: int, k: int) -> list[HistoryItem]:
    """View k of a history, as shown to a judge that sees at most `max_items` pairs: view 0 is the
    most recent pairs in order (what a single reading shows); view k > 0 a seeded sample of all
    pairs in a seeded order, so N views read more of a long history and vary the order."""
    history = list(history)
    if k == 0 or not history:
        return history[-max_items:] if max_items else []
    rng = random.Random(seed * 1009 + k)
    return rng.sample(history, min(len(history), max_items))


def resolve_criteria(config: PGenRMConfig) -> str:
    """`reward.criteria`, with `auto` resolved by the judge's manifest (a trained judge says which
    format it was trained for); judges without one write criteria."""
    if config.reward.criteria != "auto":
        return config.reward.criteria
    from pgenrm_plugins.judge import manifest_for_backend

    manifest = manifest_for_backend(config.backend) or {}
    return manifest.get("scoring", {}).get("reward", {}).get("criteria") or manifest.get("criteria") or "generated"


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def load_scorer(config: PGenRMConfig | dict | str | None = None, backend: Backend | None = None,
                store=None, embedder=None) -> Scorer:
    """The public entry point: a scorer from a config file, dict, or nothing (the embedded default).
    `store`/`embedder`: an open prototype store and embedder to use instead of building the config's."""
    return Scorer(config, backend=backend, store=store, embedder=embedder)


class LazyScorer:
    """A scorer built on first use, for objects made long before they score (framework adapters):
    nothing heavy happens until `.scorer` is read, and concurrent first reads build it once.

    config: a PGenRMConfig, dict, YAML/TOML path, or None (then `$PGENRM_CONFIG`, else the embedded
    default); `validate_now` reads a given config at once, so a typo fails before training starts.
    `backend` or `scorer` reuse a judge already loaded.
    """

    def __init__(self, config=None, *, backend: Backend | None = None, scorer: Scorer | None = None,
                 validate_now: bool = False):
        self._config_source, self._backend, self._scorer = config, backend, scorer
        self._config = scorer.config if scorer is not None else None
        if self._config is None and validate_now and config is not None:
            self._config = load_config(config)
        self._lock = threading.Lock()

    @property
    def config(self) -> PGenRMConfig:
        if self._config is None:
            with self._lock:
                if self._config is None:
                    self._config = load_config(self._config_source)
        return self._config

    @property
    def scorer(self) -> Scorer:
        if self._scorer is None:
            config = self.config
            with self._lock:
                if self._scorer is None:
                    self._scorer = Scorer(config, backend=self._backend)
        return self._scorer

    @property
    def loaded(self) -> bool:
        return self._scorer is not None

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()
