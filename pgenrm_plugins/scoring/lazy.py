"""A scorer built on first use, for objects made long before they score (framework adapters)."""

from __future__ import annotations

import os
import threading
import warnings

from pgenrm_plugins.backends.base import Backend
from pgenrm_plugins.config import PGenRMConfig, load_config
from pgenrm_plugins.scoring.scorer import Scorer, load_scorer


class LazyScorer:
    """A scorer built on first use, for objects made long before they score (framework adapters):
    nothing heavy happens until `.scorer` is read, and concurrent first reads build it once.

    config: a PGenRMConfig, dict, YAML/TOML path, or None (then `$PGENRM_CONFIG`, else the embedded
    default); `validate_now` reads a given config at once, so a typo fails before training starts.
    `backend` or `scorer` reuse a judge already loaded.

    It pickles as its config alone (TRL's AsyncGRPOTrainer hands its reward functions to a spawned
    process): the scorer and the lock are made again in the process that first uses them. One built
    with `backend` or `scorer` holds a judge loaded here and refuses to pickle.
    """

    def __init__(self, config=None, *, backend: Backend | None = None, scorer: Scorer | None = None,
                 validate_now: bool = False):
        self._config_source, self._backend, self._scorer = config, backend, scorer
        self._config = scorer.config if scorer is not None else None
        if self._config is None and validate_now and config is not None:
            self._config = load_config(config)
        self._given_judge = backend is not None or scorer is not None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        if self._given_judge:
            raise TypeError(
                "this P-GenRM reward holds a judge loaded in this process (it was given backend= or scorer=), which "
                "cannot be pickled into another process; build it from the config alone (e.g. PGenRMReward(config)), "
                "and to share one judge between processes set the config's scorer.url to a running `pgenrm serve`"
            )
        # The validated config when there is one, so both processes score with the same settings.
        return {"config": self._config if self._config is not None else self._config_source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["config"])

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
                    if self._backend is None:
                        warn_if_gpu_hidden(config)
                    self._scorer = load_scorer(config, backend=self._backend)
        return self._scorer

    @property
    def loaded(self) -> bool:
        return self._scorer is not None

    def close(self) -> None:
        if self._scorer is not None:
            self._scorer.close()


_warned_gpu_hidden = False


def warn_if_gpu_hidden(config: PGenRMConfig) -> None:
    """Warn once per process when the config puts the judge on a GPU in this process but none is
    visible here. TRL's AsyncGRPOTrainer scores in a child it starts with CUDA_VISIBLE_DEVICES="",
    and sets that only after the reward has been unpickled, so this is checked when the judge is
    built, not when the reward arrives."""
    global _warned_gpu_hidden
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if _warned_gpu_hidden or config.scorer is not None or visible is None or visible.strip() not in ("", "-1"):
        return
    device = str(config.backend.options.get("device", ""))
    if config.backend.name == "vllm":
        named = "backend.name: vllm"
    elif device.startswith("cuda"):
        named = f"backend.options.device: {device}"
    else:
        return
    _warned_gpu_hidden = True
    warnings.warn(
        f"P-GenRM: the config puts the judge on a GPU ({named}), but this process sees none "
        f"(CUDA_VISIBLE_DEVICES={visible!r}, as in the process where TRL's AsyncGRPOTrainer scores rewards): the "
        "judge would run on the CPU here, or fail to start. Run one `pgenrm serve -c CONFIG` on the GPU and add "
        "`scorer: {url: http://HOST:8017}` to the config this reward reads, so every rollout process scores "
        "through it (docs/trl.md)", RuntimeWarning, stacklevel=3)


class WithLazyScorer:
    """`config`, `scorer` and `loaded` of an object that keeps its lazily built scorer in `self._lazy`, a
    `LazyScorer` (the adapters' reward objects: nothing loads before the first reward call)."""

    _lazy: LazyScorer

    @property
    def config(self) -> PGenRMConfig:
        return self._lazy.config  # None given -> $PGENRM_CONFIG or defaults

    @property
    def scorer(self) -> Scorer:
        """The core `Scorer`, built (and the judge loaded) on first use."""
        return self._lazy.scorer

    @property
    def loaded(self) -> bool:
        return self._lazy.loaded
