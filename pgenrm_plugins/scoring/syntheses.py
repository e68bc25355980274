"""Where a judge's syntheses (`reward.criteria: synthesis`) are kept between requests: in the
scorer's memory, and in the prototype store when one is open, so that every reward worker on that
store, every later run and every prototype neighbour reuses a synthesis written once.

A key is a hash of what makes the text and its verified weights what they are: the judge (its
backend section, the adapter's bytes when a judge folder is named, the chain format, how checks are
asked) and what it read (the history view, the persona, the sampling). It never holds the user id:
a changed history is a new key, and two users with the same view share one entry. Entries are
content-addressed, so they never go stale and need no build: a store with no build yet caches too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, Generic, Iterable, Protocol, TypeVar

from pgenrm_plugins.prototypes.base import CachedSynthesis

if TYPE_CHECKING:
    from pgenrm_plugins.prototypes.base import PrototypeStore

log = logging.getLogger(__name__)


class Synthesized(Protocol):
    text: str
    weights: list[float] | None


S = TypeVar("S", bound=Synthesized)


def judge_identity(config) -> str:
    """What makes one scorer's syntheses and verified weights those of another: the backend section,
    the judge folder's adapter bytes (a retrained judge at the same path is another judge), the chain
    format, how a check is asked, the rule that weighs the criteria and the criteria added to every
    synthesis (the cached weights are theirs too)."""
    from pgenrm_plugins.backends.judge_folder import judge_fingerprint
    from pgenrm_plugins.scoring.weighing import RULE

    rc = config.reward
    return json.dumps({"backend": config.backend.model_dump(mode="json"), "judge": judge_fingerprint(config.backend),
                       "format": config.chain.format, "check": [rc.max_chars, rc.criterion_first],
                       "weighing": RULE, "extra_criteria": rc.extra_criteria}, sort_keys=True)


class SynthesisCache(Generic[S]):
    """Syntheses by key: an LRU of `size` entries in memory, backed by `store` (any
    `PrototypeStore`) when given. `make(text)` turns a stored text back into the scorer's object."""

    def __init__(self, identity: str, make: Callable[[str], S], store: PrototypeStore | None = None, size: int = 4096):
        self.identity, self.make, self.store, self.size = identity, make, store, size
        self.memory: OrderedDict[str, S] = OrderedDict()

    def _stored_key(self, key: str) -> str:
        return hashlib.sha256(json.dumps([self.identity, key]).encode()).hexdigest()

    def lookup(self, keys: Iterable[str]) -> dict[str, S]:
        """The cached entries among `keys`: from memory, else from the store (then kept in memory)."""
        keys = list(dict.fromkeys(keys))
        found = {k: self.memory[k] for k in keys if k in self.memory}
        wanted = {self._stored_key(k): k for k in keys if k not in found}
        if wanted and self.store is not None:
            for stored_key, entry in self.store.get_syntheses(list(wanted)).items():
                synthesis = self.make(entry.text)
                synthesis.weights = entry.weights
                self.add(wanted[stored_key], synthesis)
                found[wanted[stored_key]] = synthesis
        for k in found:
            self.memory.move_to_end(k)
        return found

    def add(self, key: str, synthesis: S) -> None:
        self.memory[key] = synthesis
        while len(self.memory) > self.size:
            self.memory.popitem(last=False)

    def save(self, entries: dict[str, S]) -> None:
        """Write new or newly verified entries to the store, in one transaction. A store that fails
        (locked, unreachable) costs a warning, never the reward: the synthesis is in memory."""
        if self.store is None or not entries:
            return
        try:
            self.store.put_syntheses({self._stored_key(k): CachedSynthesis(s.text, s.weights)
                                      for k, s in entries.items()})
        except Exception as exc:  # a cache write; the rewards stand without it
            log.warning("could not cache %d syntheses in the prototype store: %s", len(entries), exc)


__all__ = ["SynthesisCache", "judge_identity"]
