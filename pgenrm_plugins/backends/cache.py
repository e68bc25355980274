"""A judge-output cache around any backend, in SQLite: benchmark runs resume and grow cheaply.

Every sampled chain is stored under the exact request that produced it plus its index k, and
every probability read under its exact conversation and candidates; the key also holds the
backend's identity (its config section), so another model never reads this model's outputs.

Why a rerun with larger N reuses the chains of a smaller run: the transformers backend samples
chain k of a request with seed `seed + k` (one generator per row, see `SeededSampler`), so chain
k of an Ind-8 request *is* chain k of the Ind-4 request with the same seed. When chains 0..m-1 are
cached, only chains m..N-1 are asked for, as a request with seed `seed + m` and n = N - m. For a
backend that does not seed chains that way (`seed_offsets=False`), the whole request is asked for
again and only its missing chains are kept (what a fresh run would have drawn, at full cost).

Results are committed after every backend call, so an interrupted run loses at most the call
in flight. The real backend is built on the first miss only: a fully cached rerun never loads
the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any, Callable, Sequence

from pgenrm_plugins.backends.base import Backend, BackendStats, Conversation, Generation, GenerationRequest

# Backends known to sample chain k of a request with seed `seed + k`.
SEED_OFFSET_BACKENDS = frozenset({"transformers"})


def _key(payload: dict[str, Any]) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class CachingBackend:
    """A `Backend` that answers from the cache and asks `factory()`'s backend only for what is missing.

    `identity`: what makes two backends give the same outputs (e.g. the config's backend section).
    `stats`: calls and tokens of the real backend only, plus hits/misses in `stats.extra`."""

    def __init__(self, path: str | Path, identity: dict[str, Any], factory: Callable[[], Backend],
                 seed_offsets: bool = False, close_inner: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.identity = identity
        self.factory = factory
        self.seed_offsets = seed_offsets
        self.close_inner = close_inner  # False when the caller lent a backend it keeps using
        self.inner: Backend | None = None
        self.name = f"cached:{identity.get('name', 'backend')}"
        self.stats = BackendStats(extra={"chain_hits": 0, "chain_misses": 0, "prob_hits": 0, "prob_misses": 0})
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS outputs "
                        "(key TEXT PRIMARY KEY, kind TEXT NOT NULL, value TEXT NOT NULL)")
        self.db.commit()

    # -- plumbing -----------------------------------------------------------------------------
    def _backend(self) -> Backend:
        if self.inner is None:
            self.inner = self.factory()
        return self.inner

    def _lookup(self, keys: Sequence[str]) -> dict[str, Any]:
        found: dict[str, Any] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite's bound-parameter limit
            chunk = unique[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for key, value in self.db.execute(f"SELECT key, value FROM outputs WHERE key IN ({marks})", chunk):
                found[key] = json.loads(value)
        return found

    def _store(self, kind: str, items: dict[str, Any]) -> None:
        with self.db:  # one transaction: all of a call's outputs, or none
            self.db.executemany("INSERT OR REPLACE INTO outputs (key, kind, value) VALUES (?, ?, ?)",
                                [(k, kind, json.dumps(v)) for k, v in items.items()])

    def _chain_key(self, r: GenerationRequest, k: int) -> str:
        return _key({"kind": "chain", "backend": self.identity, "messages": r.messages,
                     "max_new_tokens": r.max_new_tokens,
                     "temperature": r.temperature, "top_p": r.top_p, "seed": r.seed, "stop": list(r.stop),
                     "prefill": r.prefill, "k": k})

    def _account(self, inner: Backend, before: BackendStats) -> None:
        after = inner.stats
        self.stats.generated_tokens += after.generated_tokens - before.generated_tokens
        self.stats.prompt_tokens += after.prompt_tokens - before.prompt_tokens
        self.stats.generate_calls += after.generate_calls - before.generate_calls
        self.stats.prob_calls += after.prob_calls - before.prob_calls

    # -- the backend contract -----------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        keys = [[self._chain_key(r, k) for k in range(r.n)] for r in requests]
        found = self._lookup([k for ks in keys for k in ks])
        self.stats.extra["chain_hits"] += sum(k in found for ks in keys for k in ks)
        # What to ask for: per request, each run of consecutive missing chains [a, b) becomes one
        # request (seed + a, n = b - a); identical keys across requests are asked for once.
        asked: list[GenerationRequest] = []
        owners: list[list[str]] = []
        pending: set[str] = set()
        for r, ks in zip(requests, keys):
            missing = [k for k, key in enumerate(ks) if key not in found and key not in pending]
            pending.update(ks[k] for k in missing)
            if not missing:
                continue
            if self.seed_offsets:
                for run in _runs(missing):
                    seed = None if r.seed is None and run[0] == 0 else (r.seed or 0) + run[0]
                    asked.append(dataclasses.replace(r, seed=seed, n=len(run)))
                    owners.append([ks[k] for k in run])
            else:  # the whole request again; keep only the chains that were missing
                asked.append(r)
                owners.append([key if k in missing else None for k, key in enumerate(ks)])
        if asked:
            inner = self._backend()
            before = dataclasses.replace(inner.stats)
            outputs = inner.generate(asked)
            self._account(inner, before)
            new = {key: {"text": g.text, "tokens": g.tokens}
                   for own, gens in zip(owners, outputs) for key, g in zip(own, gens) if key is not None}
            self._store("chain", new)
            found.update(new)
            self.stats.extra["chain_misses"] += len(new)
        return [[Generation(found[k]["text"], found[k]["tokens"]) for k in ks] for ks in keys]

    def next_token_probs(self, conversations: Sequence[Conversation],
                         candidates: Sequence[str]) -> list[dict[str, float]]:
        keys = [_key({"kind": "probs", "backend": self.identity, "conversation": c, "candidates": list(candidates)})
                for c in conversations]
        found = self._lookup(keys)
        self.stats.extra["prob_hits"] += sum(k in found for k in keys)
        todo = list(dict.fromkeys(k for k in keys if k not in found))
        if todo:
            first = {k: i for i, k in reversed(list(enumerate(keys)))}
            inner = self._backend()
            before = dataclasses.replace(inner.stats)
            # NotImplementedError passes through: the scorer then falls back to parsing.
            probs = inner.next_token_probs([conversations[first[k]] for k in todo], candidates)
            self._account(inner, before)
            new = dict(zip(todo, probs))
            self._store("probs", new)
            found.update(new)
            self.stats.extra["prob_misses"] += len(new)
        return [dict(found[k]) for k in keys]

    def close(self) -> None:
        if self.inner is not None and self.close_inner:
            self.inner.close()
        self.db.close()


def _runs(ks: list[int]) -> list[list[int]]:
    """[0, 1, 2, 5, 6] -> [[0, 1, 2], [5, 6]]"""
    runs: list[list[int]] = []
    for k in ks:
        if runs and runs[-1][-1] == k - 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return runs
