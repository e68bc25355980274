"""Prototype-level scaling: immutable plans -> jobs -> combined values.

With `prototypes.enabled` and a store built by `pgenrm prototypes build`, each request's user is
placed among the stored users:

    stored      a known `user_id`: its stored embedding (and its stored history when the request
                brings none)
    placed      an unknown user with history: embedded now, the way the build embedded its members
    cold_start  a user with no history: by the persona, else the prompt

The nearest prototype and its top-k most similar members are looked up, and the SAME completions
are scored with each neighbour's history, in the same backend calls as the user's own side. The
neighbours' mean is combined with the self score, `c_self * self + c_neighbours * neighbours`, the
weights renormalised over the sides that produced a score. A user with no history (or c_self = 0)
is scored by the neighbours alone; when no neighbour can be scored, the self side stands alone.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

from pgenrm_plugins.config import PrototypeConfig
from pgenrm_plugins.scoring.modes import Tally
from pgenrm_plugins.types import NeighbourUse, ScoreRequest

if TYPE_CHECKING:
    from pgenrm_plugins.backends.base import Backend
    from pgenrm_plugins.prototypes.base import Embedder, PrototypeStore

PLACED_CACHE = 4096  # users placed at scoring time, kept so a user's next request is not embedded again


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class Plan:
    """One request under prototype scaling: its own side (maybe none) and its neighbours' sides."""

    request: ScoreRequest
    placement: str  # stored | placed | cold_start
    lookup: Any  # the store's answer (prototype, similarity, neighbours), None when not looked up
    neighbours: tuple[tuple[Any, ScoreRequest], ...]  # (the store's Neighbour, the request with their history)
    own: ScoreRequest | None  # the request with the user's own history; None: neighbours alone
    own_weight: float  # c_self, or 1 when the own side runs only because no neighbour could

    def jobs(self) -> list[ScoreRequest]:
        """The requests that score this one, own side first."""
        return ([self.own] if self.own is not None else []) + [request for _, request in self.neighbours]

    def combine(self, tallies: Sequence[Tally], c_neighbours: float) -> tuple[list[float | None], dict[str, Any]]:
        """The values of this request's completions from the tallies of `jobs()`, and what the
        result's components say about them."""
        n = len(self.request.completions)
        own = tallies[0] if self.own is not None else None
        theirs = tallies[1:] if own is not None else tallies
        own_values = [mean(v) for v in own.per_completion] if own else None
        per_neighbour = [[mean(v) for v in t.per_completion] for t in theirs]
        nb_values = [mean([p[ci] for p in per_neighbour if p[ci] is not None]) for ci in range(n)] if theirs else None
        values = []
        for ci in range(n):
            sides = [(w, v[ci]) for w, v in ((self.own_weight, own_values), (c_neighbours, nb_values))
                     if v is not None and v[ci] is not None and w > 0]
            weight = sum(w for w, _ in sides)
            values.append(sum(w * v for w, v in sides) / weight if weight > 0 else None)
        lookup = self.lookup
        extra = {
            "own": own_values,
            "neighbours": nb_values,
            "prototype_id": int(lookup.prototype_id) if lookup else None,
            "prototype_similarity": float(lookup.similarity) if lookup else None,
            "neighbours_used": [NeighbourUse(user_id=nb.user_id, similarity=float(nb.similarity), rewards=rewards)
                                for (nb, _), rewards in zip(self.neighbours, per_neighbour)],
            "placement": self.placement,
        }
        return values, extra


class PrototypeScaling:
    """Plans requests against a prototype store: where each user sits, which requests score it."""

    def __init__(self, config: PrototypeConfig, store: PrototypeStore, embedder: Embedder, backend: Backend):
        self.config, self.store, self.embedder, self.backend = config, store, embedder, backend
        self._placed: OrderedDict[str, Any] = OrderedDict()  # a cache of embeddings, not state that decides

    def plan(self, reqs: Sequence[ScoreRequest]) -> list[Plan]:
        from pgenrm_plugins.prototypes.base import StoreError
        from pgenrm_plugins.prototypes.sources import check_embedder

        prototypes = self.store.prototypes()
        if prototypes is None:
            raise StoreError("prototypes.enabled, but the store has no published build: run `pgenrm prototypes build "
                             "--store ...` first, or set prototypes.enabled: false")
        check_embedder(prototypes, self.embedder)
        users = []
        for r in reqs:
            stored = self.store.get_user(r.user_id) if r.user_id else None
            history = list(r.history) or (list(stored.history) if stored else [])
            persona = r.persona or (stored.persona if stored else None)
            users.append((r, stored, history, persona))
        placements, embeddings = self._place(users, prototypes)
        records: dict[str, Any] = {}
        return [self._plan_one(r, history, persona, placement, embedding, records)
                for (r, _, history, persona), placement, embedding in zip(users, placements, embeddings)]

    def _place(self, users, prototypes) -> tuple[list[str], list[Any]]:
        """How and where each user sits among the stored members."""
        from pgenrm_plugins.prototypes.sources import SourceSettings, embed_like_build, prompt_text

        placements, embeddings = [], [None] * len(users)
        to_place, to_embed = [], []  # (user index, cache key) / (user index, text)
        for i, (r, stored, history, persona) in enumerate(users):
            if stored is not None and stored.embedding is not None:
                placements.append("stored")
                embeddings[i] = stored.embedding
            elif history:
                placements.append("placed")
                key = json.dumps([[h.model_dump(mode="json") for h in history], persona], sort_keys=True)
                if key in self._placed:
                    self._placed.move_to_end(key)
                    embeddings[i] = self._placed[key]
                else:
                    to_place.append((i, key))
            else:
                # Cold start: nothing of the user's own choices, so the prototype is chosen by what the
                # request does carry: the persona when given, else the conversation itself.
                placements.append("cold_start")
                max_chars = SourceSettings.from_meta((prototypes.meta or {}).get("source_settings")).max_chars
                to_embed.append((i, persona or prompt_text(r.prompt, max_chars)))
        if to_place:
            first = {key: i for i, key in reversed(to_place)}  # each key's first user
            unique = list(dict.fromkeys(key for _, key in to_place))
            vectors, _ = embed_like_build(prototypes, self.embedder, [users[first[k]][2:] for k in unique],
                                          backend=self.backend)
            for key, vector in zip(unique, vectors):
                self._placed[key] = vector
                while len(self._placed) > PLACED_CACHE:
                    self._placed.popitem(last=False)
            for i, key in to_place:
                embeddings[i] = self._placed[key]
        if to_embed:
            for (i, _), vector in zip(to_embed, self.embedder.embed([text for _, text in to_embed])):
                embeddings[i] = vector
        return placements, embeddings

    def _plan_one(self, r: ScoreRequest, history, persona, placement: str, embedding, records: dict) -> Plan:
        pc = self.config
        recent = (lambda items: list(items)[-pc.max_history:]) if pc.max_history else list
        lookup = None
        if pc.c_neighbours > 0:
            lookup = self.store.nearest(embedding, pc.top_k, exclude=[r.user_id] if r.user_id else [])
        neighbours = []
        for nb in lookup.neighbours if lookup else []:
            if nb.user_id not in records:
                records[nb.user_id] = self.store.get_user(nb.user_id)
            rec = records[nb.user_id]
            if rec is not None and rec.history:  # a member with no history has nothing to lend
                neighbours.append((nb, r.model_copy(update={
                    "user_id": nb.user_id, "history": recent(rec.history), "persona": rec.persona})))
        own = r.model_copy(update={"history": recent(history), "persona": persona})
        if history and pc.c_self > 0:
            own_weight = pc.c_self
        elif not neighbours:
            own_weight = 1.0  # nobody else can score it: the user's own side stands alone
        else:
            own, own_weight = None, 0.0  # no history (cold start) or c_self = 0: neighbours alone
        return Plan(r, placement, lookup, tuple(neighbours), own, own_weight)
