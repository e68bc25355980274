"""A scorer built on first use, for objects made long before they score (framework adapters)."""

from __future__ import annotations

import threading

from pgenrm_plugins.backends.base import Backend
from pgenrm_plugins.config import PGenRMConfig, load_config
from pgenrm_plugins.scoring.scorer import Scorer, load_scorer


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
                    self._scorer = load_scorer(config, backend=self._backend)
        return self._scorer

    @property
    def loaded(self) -> bool:
        return self._scorer is not None

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()


class WithLazyScorer:
    """`config`, `scorer` and `loaded` of an object that keeps its judge in `self._judge`, a
    `LazyScorer` (the adapters' reward objects: nothing loads before the first reward call)."""

    _judge: LazyScorer

    @property
    def config(self) -> PGenRMConfig:
        return self._judge.config  # None given -> $PGENRM_CONFIG or defaults

    @property
    def scorer(self) -> Scorer:
        """The core `Scorer`, built (and the judge loaded) on first use."""
        return self._judge.scorer

    @property
    def loaded(self) -> bool:
        return self._judge.loaded
