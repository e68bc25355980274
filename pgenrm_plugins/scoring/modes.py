"""The reward modes: requests in, one `Tally` per request out (per-completion values, counts).

    pointwise  one full chain per completion                       -> weighted total
    pairwise   one chain per (completion, reference) pair          -> completion's share of the totals
    tournament one chain per pair of completions of a request      -> mean share (or win rate)
    group      one criteria chain per (user, prompt), then every   -> weighted total
               completion scored against those criteria
    group, `reward.criteria: none`: no chain; one digit per completion right after the history
               and the conversation (or, with `reward.compare`, per ordered pair of completions)
    group, `reward.criteria: synthesis`: persona and weighted criteria written once per user and
               history version (cached), then one digit per (completion, criterion) in a short
               context with no history in it (chain/synthesis.py)

Every chain is sampled N times (`sampling.chains`, Ind-N); a completion's value is the mean over the
chains that scored it. Chains that fail to parse are counted, never silently dropped. In group mode
a criterion's score is parsed from a short JSON reply or, with the `logprob` reader, read as the
expected value of the judge's next token over the digits 1-9; all questions about one chain share
its prefix, which the backend computes once. Every conversation of every mode is written, and every
reply read, by the configured chain format (`chain.format`, chain/formats.py); a format without a
mode's chains is refused when the scorer is built. Seeds come from the content judged, so a value
never depends on its batch-mates.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from pgenrm_plugins.backends.base import Backend, Generation, GenerationRequest
from pgenrm_plugins.chain.formats import PGENRM, ChainFormat
from pgenrm_plugins.chain.parser import Criterion, ParseFailure
from pgenrm_plugins.chain.prompts import DIGITS
from pgenrm_plugins.config import PGenRMConfig
from pgenrm_plugins.scoring.syntheses import SynthesisCache, judge_identity
from pgenrm_plugins.scoring.weighing import verify_criteria
from pgenrm_plugins.types import HistoryItem, ScoreRequest

if TYPE_CHECKING:
    from pgenrm_plugins.prototypes.base import PrototypeStore

log = logging.getLogger(__name__)

SYNTHESIS_CACHE = 4096  # syntheses kept per scorer: one per (history version, view), any user
SYNTHESIS_TOKENS = 160  # a synthesis is a persona line and a few criteria lines


@dataclass
class Tally:
    """What happened while scoring one request; becomes its result's components."""

    per_completion: list[list[float]]  # reward-space values, one per chain that scored the completion
    reader: str | None = None  # what read the scores: logprob or parse (None: nothing was read)
    chains_sampled: int = 0
    generated_tokens: int = 0
    failures: Counter = field(default_factory=Counter)
    criteria_fallbacks: int = 0
    ties: int = 0
    comparisons: int = 0
    position_swaps: int = 0
    evaluation: str | None = None
    criteria: list | None = None
    syntheses_reused: int = 0

    def add_chain(self, generation) -> None:
        self.chains_sampled += 1
        self.generated_tokens += generation.tokens
        self.evaluation = self.evaluation or generation.text

    def add_criteria(self, criteria) -> None:
        self.criteria = self.criteria or [(c.name, c.weight) for c in criteria]


def content_seed(base: int, *parts: Any) -> int:
    """A seed from the content being judged, so a reward never depends on its batch-mates."""
    blob = json.dumps([base, *parts], sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.blake2b(blob, digest_size=4).digest(), "big") & 0x7FFFFFFF


def _to_unit(total: float, low: float, high: float) -> float:
    return min(1.0, max(0.0, (total - low) / (high - low)))


def expected_digit(probs: dict[str, float]) -> float | None:
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


def pairs(r: ScoreRequest) -> list[tuple[int, int]]:
    """The unordered pairs (a, b), a < b, that compare a request's completions with each other; a
    lone completion is paired with the reference (index len(completions)), or with nothing when
    there is none (no pairs: the failure policy decides, counted as `nothing_to_compare`)."""
    n = len(r.completions)
    if n == 1:
        return [] if r.reference is None else [(0, 1)]
    return [(a, b) for a in range(n) for b in range(a + 1, n)]


def comparisons(r: ScoreRequest) -> list[tuple[int, int]]:
    """Ordered pairs (A, B) of `reward.compare`: every pair, in both orders, A-major."""
    return sorted([*pairs(r), *((b, a) for a, b in pairs(r))])


class RewardModes:
    """Runs the configured mode over a list of requests, all in the same backend calls."""

    def __init__(self, config: PGenRMConfig, backend: Backend, criteria_mode: str, chain_format: ChainFormat,
                 store: PrototypeStore | None = None):
        self.config, self.backend, self.criteria_mode, self.format = config, backend, criteria_mode, chain_format
        # Learned once and never unlearned: a backend that gave no token probabilities will not
        # start to (asking again would cost an OpenAI-compatible server a request per call).
        self._no_probabilities = False
        # Syntheses by what they were written from (history view, persona, sampling): a user's
        # next request, a GRPO step's other prompts and prototype neighbours reuse them; with a
        # prototype store (`store`), so do other workers and later runs.
        identity = judge_identity(config) if criteria_mode == "synthesis" else ""
        self._syntheses: SynthesisCache[_Synthesis] = SynthesisCache(
            identity, lambda text: _Synthesis(text, self.format, config.reward.extra_criteria), store, SYNTHESIS_CACHE)

    def run(self, reqs: list[ScoreRequest]) -> list[Tally]:
        tallies = [Tally(per_completion=[[] for _ in r.completions]) for r in reqs]
        if not reqs:
            return tallies
        mode = self.config.reward.mode
        if mode == "pointwise":
            self._full_chains(reqs, tallies)
        elif mode in ("pairwise", "tournament"):
            self._comparisons(reqs, tallies)
        elif self.criteria_mode == "none":
            self._direct(reqs, tallies)
        elif self.criteria_mode == "synthesis":
            self._synthesized(reqs, tallies)
        else:
            self._groups(reqs, tallies)
        return tallies

    # -- one full chain per completion --------------------------------------------------------
    def _full_chains(self, reqs: list[ScoreRequest], tallies: list[Tally]) -> None:
        rc, fmt = self.config.reward, self.format
        jobs, gen_requests = [], []
        for ri, r in enumerate(reqs):
            for ci, completion in enumerate(r.completions):
                messages = fmt.point_messages(r.history, r.persona, r.prompt, completion, max_items=rc.max_history,
                                              max_chars=rc.max_chars, render=rc.history_render)
                jobs.append((ri, ci))
                gen_requests.append(self._chain_request(messages, r, [completion]))
        for (ri, ci), gens in zip(jobs, self.backend.generate(gen_requests)):
            t = tallies[ri]
            t.reader = "parse"
            for g in gens:
                t.add_chain(g)
                verdict = fmt.parse_point(g.text)
                if isinstance(verdict, ParseFailure):
                    t.failures[verdict.kind] += 1
                    continue
                t.add_criteria(verdict.criteria)
                t.per_completion[ci].append(_to_unit(verdict.score, 1, 10))

    # -- comparisons: against the reference (the paper's way) or each other (tournament) ------
    def _comparisons(self, reqs: list[ScoreRequest], tallies: list[Tally]) -> None:
        """One chain (times N) per shown pair, in the chain format; each side of a verdict gets its
        share of the two scores (or a win / loss / half for a tie)."""
        rc, fmt = self.config.reward, self.format
        jobs, gen_requests = [], []
        for ri, r in enumerate(reqs):
            texts = [*r.completions, r.reference]
            pairs = self._pairs(r)
            if not pairs:
                tallies[ri].failures["nothing_to_compare"] += 1
                continue
            for a, b in pairs:
                for swapped in self._orders(r, texts[a], texts[b]):
                    first, second = (b, a) if swapped else (a, b)
                    shown = [texts[first], texts[second]]
                    messages = fmt.pair_messages(r.history, r.persona, r.prompt, *shown, max_items=rc.max_history,
                                                 max_chars=rc.max_chars, render=rc.history_render)
                    gen_requests.append(self._chain_request(messages, r, shown))
                    jobs.append((ri, first, second, swapped))
        outputs = self.backend.generate(gen_requests) if gen_requests else []
        for (ri, first, second, swapped), gens in zip(jobs, outputs):
            t, n = tallies[ri], len(reqs[ri].completions)
            t.reader = "parse"
            t.comparisons += 1
            t.position_swaps += swapped
            for g in gens:
                t.add_chain(g)
                verdict = fmt.parse_pair(g.text)
                if isinstance(verdict, ParseFailure):
                    t.failures[verdict.kind] += 1
                    continue
                if verdict.criteria:
                    t.add_criteria(verdict.criteria)
                t.ties += verdict.first == verdict.second
                if rc.pair_score == "win":
                    share = 1.0 if verdict.first > verdict.second else 0.0 if verdict.first < verdict.second else 0.5
                else:
                    share = verdict.first / (verdict.first + verdict.second)
                for side, value in ((first, share), (second, 1.0 - share)):
                    if side < n:  # index n is the reference: no reward of its own
                        t.per_completion[side].append(value)

    def _pairs(self, r: ScoreRequest) -> list[tuple[int, int]]:
        """(completion, opponent) pairs; opponent index len(completions) is the reference."""
        n = len(r.completions)
        if self.config.reward.mode == "pairwise":
            return [(ci, n) for ci in range(n)]
        everyone = pairs(r)
        k = self.config.reward.opponents
        if not k or k >= n - 1:
            return everyone
        # A seeded sample: take pairs in a random order while either side still needs opponents.
        rng = random.Random(content_seed(self.config.sampling.seed, "opponents", r.completions))
        rng.shuffle(everyone)
        met = [0] * n
        chosen = []
        for a, b in everyone:
            if met[a] < k or met[b] < k:
                chosen.append((a, b))
                met[a] += 1
                met[b] += 1
        return sorted(chosen)

    def _orders(self, r: ScoreRequest, a: str, b: str) -> list[bool]:
        """Whether each comparison of texts a and b shows b first (a "position swap")."""
        rc = self.config.reward
        order = rc.pair_order
        if order == "auto":
            order = "both" if rc.mode == "tournament" else "shuffled" if self.format.pairwise_only else "fixed"
        if order == "fixed":
            return [False]
        if order == "both":
            return [False, True]
        return [random.Random(content_seed(self.config.sampling.seed, "order", r.user_id, a, b)).random() < 0.5]

    # -- group mode: criteria once per (user, prompt), every completion against them ----------
    def _groups(self, reqs: list[ScoreRequest], tallies: list[Tally]) -> None:
        rc, fmt = self.config.reward, self.format
        conversations = [
            fmt.criteria_messages(r.history, r.persona, r.prompt, max_items=rc.max_history, max_chars=rc.max_chars,
                                  render=rc.history_render)
            for r in reqs
        ]
        chains = self.backend.generate([self._chain_request(m, r) for m, r in zip(conversations, reqs)])
        # `auto` reads probabilities when the backend gives them and the format asks such questions
        use_probabilities = rc.reader != "parse" and not (
            rc.reader == "auto" and (self._no_probabilities or fmt.criterion_question is None))
        # (request, conversation, chain text, criteria) for every chain that can be scored against
        usable = []
        for ri, (conv, gens) in enumerate(zip(conversations, chains)):
            t = tallies[ri]
            for g in gens:
                t.add_chain(g)
                parsed = fmt.parse_criteria(g.text)
                if isinstance(parsed, ParseFailure):
                    t.failures[parsed.kind] += 1
                    if not use_probabilities:
                        continue
                    t.criteria_fallbacks += 1
                    criteria = (fmt.criteria_fallback,)
                else:
                    criteria = parsed.criteria
                    t.add_criteria(criteria)
                usable.append((ri, conv, g.text, criteria))
        if use_probabilities:
            try:
                self._read_probabilities(reqs, tallies, usable)
                return
            except NotImplementedError:
                if rc.reader == "logprob":
                    raise
                if fmt.score_followup is None or fmt.parse_scores is None:
                    raise ValueError(f"backend {self.backend.name!r} gives no token probabilities, and chain.format "
                                     f"{fmt.name} has no score_followup to parse scores from: use a backend with "
                                     "logprobs, or set chain.format to a format with both readers") from None
                log.info("backend %s gives no token probabilities: parsing scores instead", self.backend.name)
                self._no_probabilities = True
        self._parse_scores(reqs, tallies, usable)

    def _read_probabilities(self, reqs, tallies, usable) -> None:
        """Each criterion's score = expected digit under the judge's next-token distribution.
        Every question of the batch goes in one backend call, so the backend can share what they
        share (a request's history and prompt across its chains, a chain across completions).
        Raises NotImplementedError (before touching any tally) if the backend has no probabilities."""
        rows = [
            self.format.criterion_question(conv, text, completion, c.name, max_chars=self.config.reward.max_chars)
            for ri, conv, text, criteria in usable
            for completion in reqs[ri].completions
            for c in criteria
        ]
        probs = iter(self.backend.next_token_probs(rows, DIGITS) if rows else [])
        for ri, _conv, _text, criteria in usable:
            t = tallies[ri]
            t.reader = "logprob"
            for ci in range(len(reqs[ri].completions)):
                values = [expected_digit(next(probs)) for _ in criteria]
                if any(v is None for v in values):
                    t.failures["no_digit_probability"] += 1
                    continue
                total = sum(c.weight * v for c, v in zip(criteria, values))
                t.per_completion[ci].append(_to_unit(total / 100.0, 1, 9))

    def _parse_scores(self, reqs, tallies, usable) -> None:
        s, rc, fmt = self.config.sampling, self.config.reward, self.format
        jobs, gen_requests = [], []
        for ri, conv, text, criteria in usable:
            for ci, completion in enumerate(reqs[ri].completions):
                messages = fmt.score_followup(conv, text, completion, max_chars=rc.max_chars)
                # Greedy: the sampling that scales at test time is in the chains, not here.
                budget = 24 + 16 * len(criteria)
                gen_requests.append(GenerationRequest(
                    messages, n=1, max_new_tokens=budget, temperature=0.0, seed=s.seed, stop=fmt.stop,
                    prefill=fmt.scores_prefill,
                ))
                jobs.append((ri, ci, criteria))
        outputs = self.backend.generate(gen_requests) if gen_requests else []
        for (ri, ci, criteria), (g,) in zip(jobs, outputs):
            t = tallies[ri]
            t.reader = "parse"
            t.generated_tokens += g.tokens
            verdict = fmt.parse_scores(g.text, criteria)
            if isinstance(verdict, ParseFailure):
                t.failures[verdict.kind] += 1
                continue
            t.per_completion[ci].append(_to_unit(verdict.score, 1, 10))

    # -- no chain: one digit per completion, read from the judge's probabilities --------------
    def _direct(self, reqs: list[ScoreRequest], tallies: list[Tally]) -> None:
        """One digit per (completion, history view); one backend call per view, so the completions
        of a group share the history and the conversation. With `reward.compare`, one digit per
        ordered pair of completions instead: a completion's reward is its mean share of its
        comparisons (the digit read as "A over B" in [0, 1], the other side taking the rest)."""
        rc, s, fmt = self.config.reward, self.config.sampling, self.format
        for r, t in zip(reqs, tallies):
            seed = content_seed(s.seed, r.user_id, r.persona, r.model_dump(mode="json", include={"history", "prompt"}))
            texts = [*r.completions, r.reference]
            order = comparisons(r) if rc.compare else [(ci, None) for ci in range(len(r.completions))]
            t.reader = "logprob"
            if not order:
                t.failures["nothing_to_compare"] += 1
                continue
            for k in range(s.chains):
                history = history_view(r.history, rc.max_history, seed, k)
                rows = [fmt.direct_question(history, r.persona, r.prompt, texts[a], max_items=rc.max_history,
                                            max_chars=rc.max_chars, render=rc.history_render,
                                            versus=None if b is None else texts[b]) for a, b in order]
                try:
                    probs = self.backend.next_token_probs(rows, DIGITS)
                except NotImplementedError:
                    raise ValueError(f"reward.criteria: none reads token probabilities, which backend "
                                     f"{self.backend.name!r} does not give; use a backend with logprobs, or "
                                     "reward.criteria: generated") from None
                t.chains_sampled += 1
                values = [expected_digit(p) for p in probs]
                t.failures["no_digit_probability"] += sum(v is None for v in values)
                if rc.compare:
                    scored = [sum(w) / len(w) if w else None for w in _shares(order, values, len(r.completions))]
                else:
                    scored = [None if v is None else _to_unit(v, 1, 9) for v in values]
                for ci, value in enumerate(scored):
                    if value is not None:
                        t.per_completion[ci].append(value)

    # -- synthesis: persona and criteria once per user and history version ------------------
    def _synthesized(self, reqs: list[ScoreRequest], tallies: list[Tally]) -> None:
        """Ind-N = N syntheses per request (view 0 greedy from the most recent pairs, view k > 0
        sampled from a seeded view), each from the cache when the same history view was read
        before. With `reward.verify`, each synthesis's criteria are checked against the pairs of
        the view it was written from (`verify_criteria`), once, cached with it. Then every
        (completion, criterion) is asked once, whatever user holds the criterion, in the same
        backend call as the verification."""
        rc, s = self.config.reward, self.config.sampling
        views = [[self._synthesis_request(r, k) for k in range(s.chains)] for r in reqs]
        found = self._syntheses.lookup(key for per in views for key, _, _ in per)
        missing = {key: req for per in views for key, req, _ in per if key not in found}
        fresh: dict[str, Generation] = {}  # written in this call, counted at its first use
        if missing:
            for (key, _), (g,) in zip(missing.items(), self.backend.generate(list(missing.values()))):
                found[key], fresh[key] = self._syntheses.make(g.text), g
                self._syntheses.add(key, found[key])
        to_save = {key: found[key] for key in fresh}
        scored = []  # (request index, synthesis)
        to_verify: dict[str, tuple[_Synthesis, list[HistoryItem]]] = {}
        for ri, per in enumerate(views):
            t = tallies[ri]
            t.reader = "logprob"
            for key, _, history in per:
                synthesis = found[key]
                if key in fresh:
                    t.add_chain(fresh.pop(key))
                else:
                    t.syntheses_reused += 1
                    t.evaluation = t.evaluation or synthesis.text
                if isinstance(synthesis.parsed, ParseFailure):
                    t.failures[synthesis.parsed.kind] += 1
                    t.criteria_fallbacks += 1
                if rc.verify and synthesis.weights is None:
                    to_save[key] = synthesis
                    if history:
                        to_verify[key] = (synthesis, history)
                    else:  # nothing to check: the written weights, none for the extra criteria
                        synthesis.weights = verify_criteria(synthesis.criteria, [], self.format.sound_criterion,
                                                            synthesis.written)
                scored.append((ri, synthesis))
        # one backend call: the verification checks, then every completion's checks
        verification = [(h.prompt, side, c.name) for syn, history in to_verify.values() for h in history
                        for c in syn.criteria for side in (h.chosen, h.rejected)]
        in_force = [syn.in_force(rc.verify) for _, syn in scored]  # the indices of the criteria asked
        asked = [(reqs[ri].prompt, completion, syn.criteria[i].name) for (ri, syn), used in zip(scored, in_force)
                 for completion in reqs[ri].completions for i in used]
        digits = iter(criterion_digits(self.backend, verification + asked, rc.max_chars, rc.criterion_first,
                                       self.format))
        for syn, history in to_verify.values():
            separations = [[(next(digits), next(digits)) for _ in syn.criteria] for _ in history]
            syn.weights = verify_criteria(syn.criteria, separations, self.format.sound_criterion, syn.written)
        self._syntheses.save(to_save)
        for (ri, syn), used in zip(scored, in_force):
            t = tallies[ri]
            weights = [syn.weights[i] if rc.verify else syn.criteria[i].weight for i in used]
            t.criteria = t.criteria or [(syn.criteria[i].name, round(w, 3)) for i, w in zip(used, weights)]
            for ci in range(len(reqs[ri].completions)):
                value = combine(weights, [next(digits) for _ in used])
                if value is None:
                    t.failures["no_digit_probability"] += 1
                else:
                    t.per_completion[ci].append(value)

    def _synthesis_request(self, r: ScoreRequest, k: int) -> tuple[str, GenerationRequest, list[HistoryItem]]:
        """(cache key, generation request, the pairs that verify it) of view k of the request's
        history: the view itself, or the `reward.verify_history` most recent pairs. The key holds what
        the synthesis and its weights come from, never the user id: a changed history is a new key."""
        rc, s = self.config.reward, self.config.sampling
        seed = content_seed(s.seed, r.persona, r.model_dump(mode="json", include={"history"}))
        history = history_view(r.history, rc.max_history, seed, k)
        temperature = 0.0 if k == 0 else s.temperature
        messages = self.format.synthesis_messages(history, r.persona, max_items=rc.max_history,
                                                  max_chars=rc.max_chars, render=rc.history_render)
        request = GenerationRequest(messages, n=1, max_new_tokens=min(s.max_new_tokens, SYNTHESIS_TOKENS),
                                    temperature=temperature, top_p=s.top_p, seed=content_seed(seed, k))
        # the seed holds the whole history, so any change to it (a pair verified on included) is a new key
        key = json.dumps([messages, request.max_new_tokens, temperature, s.top_p, request.seed], sort_keys=True)
        return key, request, list(r.history[-rc.verify_history:]) if rc.verify_history else history

    # -- shared pieces ------------------------------------------------------------------------
    def _chain_request(self, messages, request: ScoreRequest, shown: Sequence[str] = ()) -> GenerationRequest:
        """A chain (pair, point or criteria) sampled N times, started and stopped the format's way."""
        s, fmt = self.config.sampling, self.format
        seed = content_seed(s.seed, request.user_id, request.persona,
                            request.model_dump(mode="json", include={"history", "prompt"}), list(shown))
        return GenerationRequest(
            messages, n=s.chains, max_new_tokens=s.max_new_tokens, temperature=s.temperature,
            top_p=s.top_p, seed=seed, stop=fmt.stop, prefill=fmt.prefill,
        )


class _Synthesis:
    """A written synthesis read by the chain format: its criteria (the format's `sound_criterion`
    alone when it cannot be read), then each of `extra` it did not write (`reward.extra_criteria`, at
    Sound's weight until the user's choices weigh it), and the weights its verification against the
    history it was written from gave them all (None: not verified yet)."""

    def __init__(self, text: str, fmt: ChainFormat, extra: Sequence[str] = ()):
        self.text = text
        self.parsed = fmt.parse_synthesis(text)
        written = (fmt.sound_criterion,) if isinstance(self.parsed, ParseFailure) else self.parsed.criteria
        names = {c.name.casefold() for c in written}
        self.written = len(written)
        self.criteria = (*written, *(Criterion(name, fmt.sound_criterion.weight) for name in extra
                                     if name.casefold() not in names))
        self.weights: list[float] | None = None

    def in_force(self, verified: bool) -> list[int]:
        """The indices of the criteria a completion is checked on: unverified, the written ones;
        verified, those that carry weight (one with none cannot move a reward), every one while its
        weights are computed in the same call."""
        if not verified:
            return list(range(self.written))
        if self.weights is None:
            return list(range(len(self.criteria)))
        return [i for i, w in enumerate(self.weights) if w]


def criterion_digits(backend: Backend, checks: Sequence[tuple[Any, str, str]], max_chars: int,
                     criterion_first: bool = False, fmt: ChainFormat = PGENRM) -> list[float | None]:
    """E[digit] of each (prompt, reply, criterion) check, asked in `fmt`'s `criterion_messages`
    (None where the backend gave no digit probability). Each distinct check is asked once, all in
    one backend call: users who share a criterion share its row, and the backend shares a reply's
    prefix across its criteria."""
    rows: dict[tuple[str, str, str], int] = {}
    conversations = []
    index = []
    for prompt, reply, criterion in checks:
        key = (json.dumps(prompt if isinstance(prompt, str) else [dict(m) for m in prompt], default=str), reply,
               criterion)
        if key not in rows:
            rows[key] = len(conversations)
            conversations.append(fmt.criterion_messages(prompt, reply, criterion, max_chars=max_chars,
                                                        criterion_first=criterion_first))
        index.append(rows[key])
    try:
        probs = backend.next_token_probs(conversations, DIGITS) if conversations else []
    except NotImplementedError:
        raise ValueError(f"reward.criteria: synthesis reads token probabilities, which backend {backend.name!r} "
                         "does not give; use a backend with logprobs") from None
    digits = [expected_digit(p) for p in probs]
    return [digits[i] for i in index]


def combine(weights: Sequence[float], digits: Sequence[float | None]) -> float | None:
    """A reply's value in [0, 1] from its criteria's digits and (signed) weights: 0 when it fails
    every criterion it should meet and meets every one it should not, 1 the other way round."""
    if any(d is None for d in digits):
        return None
    met = [_to_unit(d, 1, 9) for d in digits]
    positive = sum(w for w in weights if w > 0)
    negative = -sum(w for w in weights if w < 0)
    if positive + negative <= 1e-9:
        return 0.5
    return min(1.0, max(0.0, (sum(w * m for w, m in zip(weights, met)) + negative) / (positive + negative)))


def check_criteria(backend: Backend, jobs: Sequence[tuple[ScoreRequest, Sequence[Criterion]]],
                   max_chars: int, criterion_first: bool = False, fmt: ChainFormat = PGENRM
                   ) -> list[list[float | None]]:
    """For each (request, criteria): each completion's value under the criteria's own weights."""
    digits = iter(criterion_digits(backend, [(r.prompt, completion, c.name) for r, criteria in jobs
                                             for completion in r.completions for c in criteria], max_chars,
                                   criterion_first, fmt))
    return [[combine([c.weight for c in criteria], [next(digits) for _ in criteria]) for _ in r.completions]
            for r, criteria in jobs]


def _shares(order: list[tuple[int, int]], values: list[float | None], n: int) -> list[list[float]]:
    """Each completion's shares of its comparisons: the digit read as "A over B" in [0, 1], B's side
    taking the rest; index n (the reference) has no reward of its own."""
    wins: list[list[float]] = [[] for _ in range(n)]
    for (a, b), value in zip(order, values):
        if value is None:
            continue
        a_over_b = _to_unit(value, 1, 9)
        for side, share in ((a, a_over_b), (b, 1.0 - a_over_b)):
            if side < n:
                wins[side].append(share)
    return wins
