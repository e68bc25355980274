"""Trained judges: the folder `pgenrm train` writes, its manifest, and the one shipped in the wheel.

A judge folder holds a LoRA adapter (peft's `adapter_config.json` + `adapter_model.safetensors`)
over a base causal LM, and `pgenrm_judge.json`, the manifest:

    {"base": "embedded" | HF id | folder, "format": "direct-v1", "criteria": "none",
     "reader": "logprob", "objective": "...", "data_hash": "...", "seed": 0, "metrics": {...},
     "command": "pgenrm train ..."}

The transformers backend loads such a folder by path (the adapter merged into the base once and
cached); `pgenrm train export` writes the merged model as a plain HF folder that vLLM, SGLang or
llama.cpp (after its GGUF conversion) can serve. The embedded default judge is the adapter shipped
in `pgenrm_plugins/judges/`, reproduced by the `command` its manifest records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MANIFEST = "pgenrm_judge.json"
SHIPPED_DIR = Path(__file__).parent / "judges" / "smollm2-135m-direct-v1"
# `backend.options.model` value that asks for the untrained embedded base model
BASE_MODEL = "embedded-base"


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def write_manifest(folder: str | Path, manifest: dict[str, Any]) -> Path:
    path = Path(folder) / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def shipped_judge() -> Path | None:
    """The trained judge that ships with the package, or None in a checkout that has none."""
    return SHIPPED_DIR if (SHIPPED_DIR / MANIFEST).is_file() else None


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def manifest_for_backend(backend_config) -> dict[str, Any] | None:
    """The manifest of the judge a backend config names, read without loading any weights: the
    shipped judge for the embedded default, else the manifest of a local folder that
    `backend.options.model` names, whatever the backend (a judge exported by `pgenrm train export`
    and served by vLLM keeps its `scoring` block), else None."""
    model = (backend_config.options or {}).get("model")
    if model == BASE_MODEL:
        return None
    if model is None and backend_config.name == "transformers":
        folder = shipped_judge()
    else:
        folder = Path(model) if isinstance(model, str) and model else None
    return read_manifest(folder) if folder is not None and folder.is_dir() else None


def _fingerprint(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = folder / name
        if path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()[:12]


def base_model_dir(base: str | None) -> str:
    """Where a manifest's `base` lives: the embedded SmolLM2 folder for "embedded", else as given."""
    if base in (None, "", "embedded", BASE_MODEL):
        from pgenrm_plugins.backends.embedded import embedded_model_dir

        return str(embedded_model_dir())
    return str(base)


def merged_model_dir(adapter: str | Path) -> Path:
    """A plain HF folder with the adapter merged into its base, built once under the pgenrm cache
    (keyed by the adapter's bytes) and renamed into place, so a crash never leaves half a model."""
    from pgenrm_plugins.backends.embedded import cache_root

    adapter = Path(adapter)
    target = cache_root() / f"merged-{adapter.name}-{_fingerprint(adapter)}"
    if (target / "model.safetensors").is_file():
        return target
    return export_merged(adapter, target, replace=False)


def export_merged(adapter: str | Path, target: str | Path, replace: bool = True) -> Path:
    """Write the adapter merged into its base as a full HF model folder (tokenizer and manifest
    included): what vLLM or SGLang serve by path, and what llama.cpp's GGUF converter reads.
    `replace=False` keeps a folder another process finished first (the shared cache)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pgenrm_plugins.backends.embedded import publish_model_folder

    adapter = Path(adapter)
    manifest = read_manifest(adapter) or {}
    base = base_model_dir(manifest.get("base"))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return publish_model_folder(Path(target), model, AutoTokenizer.from_pretrained(base), replace=replace,
                                write_extra=lambda folder: write_manifest(folder,
                                                                          {**manifest, "merged_from": str(adapter)}))


def resolve_model_dir(model: str | None) -> tuple[str, str]:
    """(folder or HF id to load, display name) for `backend.options.model`."""
    shipped = shipped_judge() if model is None else None
    if model == BASE_MODEL or (model is None and shipped is None):  # no trained judge here: the base, said so
        return base_model_dir("embedded"), "embedded:smollm2-135m-instruct (untrained base)"
    if shipped is not None:
        return str(merged_model_dir(shipped)), f"embedded:{shipped.name}"
    if Path(model).is_dir() and is_adapter(model):
        return str(merged_model_dir(model)), str(model)
    return model, model


def judge_settings(config) -> dict[tuple[str, str], Any]:
    """The settings a judge's manifest fills in for this config: {(section, key): value} for each
    key of its `scoring` block that the config leaves unset (an explicit setting always wins)."""
    scoring = (manifest_for_backend(config.backend) or {}).get("scoring") or {}
    filled = {}
    for section, values in scoring.items():
        target = getattr(config, section, None)
        for key, value in (values.items() if target is not None else ()):
            if key in type(target).model_fields and key not in target.model_fields_set:
                filled[(section, key)] = value
    return filled


def with_judge_defaults(config):
    """The config with the judge's own scoring settings filled in where the config leaves them at
    their defaults: a trained judge's manifest says how it was trained to be read (`scoring`, e.g.
    `reward.criteria: none`, `reward.max_history: 3`), and an explicit setting always wins."""
    filled = judge_settings(config)
    if not filled:
        return config
    config = config.model_copy(deep=True)
    for (section, key), value in filled.items():
        target = getattr(config, section)
        setattr(target, key, value)
        target.model_fields_set.discard(key)  # still "not set by the user"
    return config
