"""Trained judges: the folder `pgenrm train` writes, its manifest, and the one shipped in the wheel.

A judge folder holds a LoRA adapter (peft's `adapter_config.json` + `adapter_model.safetensors`)
over a base causal LM, and `pgenrm_judge.json`, the manifest (`JudgeManifest`):

    {"base": "embedded" | HF id | folder, "protocol": "direct-v1", "stage": "score",
     "criteria": "none", "reader": "logprob", "objective": "...", "data": "...", "data_hash": "...",
     "seed": 0, "settings": {...}, "metrics": {...}, "command": "pgenrm train ...",
     "scoring": {"reward": {"criteria": "none", "max_history": 4, ...}, "sampling": {...}}}

Its `scoring` block holds the settings the judge was trained to be read with; they fill in the
config's `reward.*` / `sampling.*` / `chain.*` / `prototypes.*` keys a config leaves unset
(`with_judge_defaults`), whatever backend serves the judge (`manifest_for_backend`).

The transformers backend loads such a folder by path (the adapter merged into the base once and
cached); `pgenrm train export` writes the merged model as a plain HF folder that vLLM, SGLang or
llama.cpp (after its GGUF conversion) can serve. The embedded default judge is the adapter shipped
in `pgenrm_plugins/judges/`, reproduced by the `command` its manifest records.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, model_validator

from pgenrm_plugins.config import ChainConfig, ConfigError, PrototypeConfig, RewardConfig, SamplingConfig

MANIFEST = "pgenrm_judge.json"
JUDGES_DIR = Path(__file__).parents[1] / "judges"
# the embedded default; judge J stays loadable as embedded:smollm2-135m-direct-v1
SHIPPED_DIR = JUDGES_DIR / "smollm2-135m-synthesis-v1"
# `backend.options.model` value that asks for the untrained embedded base model
BASE_MODEL = "embedded-base"
# `backend.options.model: embedded:NAME` names a judge that ships in JUDGES_DIR
NAMED = "embedded:"


# The config sections a manifest's `scoring` block may fill in, each validated by its own model.
SCORING_SECTIONS: dict[str, type[BaseModel]] = {
    "chain": ChainConfig, "sampling": SamplingConfig, "reward": RewardConfig, "prototypes": PrototypeConfig,
}


class ManifestError(ConfigError):
    """A `pgenrm_judge.json` that cannot be read; the message names the file and each bad field. A
    ConfigError: the config names a judge it cannot use, so every command reports it as one."""


class ScoringBlock(BaseModel):
    """A manifest's `scoring` block: {section: {key: value}} for the config keys the judge was
    trained to be read with. Each section's keys and values are validated by the config's own
    model for it (an unknown key or a bad value is an error naming it)."""

    model_config = ConfigDict(extra="forbid")

    chain: dict[str, Any] = Field(default_factory=dict)
    sampling: dict[str, Any] = Field(default_factory=dict)
    reward: dict[str, Any] = Field(default_factory=dict)
    prototypes: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _known_keys(self) -> "ScoringBlock":
        for section, model in SCORING_SECTIONS.items():
            try:
                model.model_validate(getattr(self, section))
            except ValidationError as exc:
                e = exc.errors()[0]
                raise ValueError(f"{section}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}") from None
        return self

    def items(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(section, its settings) for each section that sets something."""
        return ((section, values) for section in SCORING_SECTIONS if (values := getattr(self, section)))


class JudgeManifest(BaseModel):
    """`pgenrm_judge.json`: what a judge folder is and how it was made. Keys it does not name are
    kept as they are (extra="allow"), so manifests of older and newer versions still load and
    round-trip; only the keys given are written back."""

    model_config = ConfigDict(extra="allow")

    base: str | None = Field(None, description='"embedded", an HF id or a folder: what the adapter sits on')
    protocol: str | None = Field(
        None, validation_alias=AliasChoices("protocol", "format"),  # "format" until December 2026
        description="what the judge was trained to be asked and to answer: direct-v1 (a digit after the history), "
                    "chain-v1 (a whole evaluation chain), synthesis-v1 (a synthesis, then a digit per criterion)")
    stage: str | None = Field(None, description="the `pgenrm train` stage that wrote it: score, psi, cre, synthesis")
    criteria: Literal["generated", "none", "synthesis"] | None = Field(
        None, description="the reward.criteria it was trained for (`reward.criteria: auto` follows it)")
    reader: Literal["logprob", "parse"] | None = None
    objective: str | None = None
    teacher: Any = None
    data: str | None = None
    data_hash: str | None = None
    train_users: int | None = None
    seed: int | None = None
    init: dict[str, Any] | None = Field(None, description="the judge a stage started from (cre --init)")
    process_reward: dict[str, Any] | None = None
    settings: dict[str, Any] = Field(default_factory=dict, description="the training settings")
    scoring: ScoringBlock = Field(default_factory=ScoringBlock)
    command: str | None = Field(None, description="the command that reproduces it")
    metrics: dict[str, Any] = Field(default_factory=dict)
    merged_from: str | None = Field(None, description="the adapter folder an exported, merged model came from")
    merged_fingerprint: str | None = Field(None, description="that adapter's fingerprint (`judge_fingerprint`)")

    @classmethod
    def parse(cls, data: Any, where: str | Path) -> "JudgeManifest":
        """Validate `data`; a ManifestError names `where` and each bad field."""
        if not isinstance(data, dict):
            raise ManifestError(f"{where}: a judge manifest must be a JSON object, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            fields = "\n".join(map(_describe, exc.errors()))
            raise ManifestError(f"{where}: invalid judge manifest:\n{fields}") from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_unset=True)


def _describe(error: dict[str, Any]) -> str:
    """One line per bad field; a `scoring` section's own error ("reward.key: why") joins its path."""
    where = ".".join(str(p) for p in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "value_error" and (m := re.match(r"([\w.]+): (.*)", str(error["ctx"]["error"]), re.S)):
        where, message = f"{where}.{m[1]}", m[2]
    return f"  {where}: {message}"


def read_manifest(folder: str | Path) -> JudgeManifest | None:
    """The folder's manifest, None when it has none; ManifestError (naming the file and the field)
    when it cannot be read."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from None
    return JudgeManifest.parse(data, path)


def write_manifest(folder: str | Path, manifest: JudgeManifest | dict[str, Any]) -> Path:
    """Write a manifest (a dict is validated first), atomically."""
    path = Path(folder) / MANIFEST
    if not isinstance(manifest, JudgeManifest):
        manifest = JudgeManifest.parse(manifest, path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest.to_json(), indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)
    return path


def shipped_judge() -> Path | None:
    """The trained judge that ships with the package, or None in a checkout that has none."""
    return SHIPPED_DIR if (SHIPPED_DIR / MANIFEST).is_file() else None


def shipped_judges() -> dict[str, Path]:
    """Every trained judge that ships with the package, by name (`backend.options.model: embedded:NAME`)."""
    return {p.name: p for p in sorted(JUDGES_DIR.iterdir()) if (p / MANIFEST).is_file()} if JUDGES_DIR.is_dir() \
        else {}


def named_judge(model: str) -> Path:
    """The shipped judge folder `embedded:NAME` names; ConfigError listing the shipped ones if none."""
    found = shipped_judges().get(model[len(NAMED):])
    if found is None:
        shipped = ", ".join(NAMED + name for name in shipped_judges()) or "none in this checkout"
        raise ConfigError(f"backend.options.model {model!r}: no judge of that name ships with pgenrm "
                          f"(shipped: {shipped}); or give a judge folder's path")
    return found


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def judge_folder(backend_config) -> Path | None:
    """The judge folder a backend config names, whatever the backend: the shipped judge for the
    embedded default, else a local folder that `backend.options.model` names, else None."""
    model = (backend_config.options or {}).get("model")
    if model == BASE_MODEL:
        return None
    if model is None and backend_config.name == "transformers":
        folder = shipped_judge()
    elif isinstance(model, str) and model.startswith(NAMED):
        folder = named_judge(model)
    else:
        folder = Path(model) if isinstance(model, str) and model else None
    return folder if folder is not None and folder.is_dir() else None


def manifest_for_backend(backend_config) -> JudgeManifest | None:
    """The manifest of the judge a backend config names (`judge_folder`), read without loading any
    weights: a judge exported by `pgenrm train export` and served by vLLM keeps its `scoring` block."""
    folder = judge_folder(backend_config)
    return read_manifest(folder) if folder is not None else None


def judge_fingerprint(backend_config) -> str | None:
    """The adapter bytes' hash of the judge folder a backend config names (None: no folder)."""
    folder = judge_folder(backend_config)
    return _fingerprint(folder) if folder is not None else None


def _fingerprint(folder: Path) -> str:
    """What a judge's results depend on: its adapter's bytes; for a merged (exported) folder, the
    adapter fingerprint its export recorded, else its weight files' names, sizes and times (the
    weights of a large model are too big to hash on every start)."""
    import hashlib

    h = hashlib.sha256()
    adapter = [folder / name for name in ("adapter_config.json", "adapter_model.safetensors")]
    if any(path.is_file() for path in adapter):
        for path in adapter:
            if path.is_file():
                h.update(path.read_bytes())
        return h.hexdigest()[:12]
    manifest = read_manifest(folder)
    if manifest is not None and manifest.merged_fingerprint:
        return manifest.merged_fingerprint
    for path in sorted(folder.glob("*.safetensors")):
        h.update(f"{path.name}:{path.stat().st_size}:{path.stat().st_mtime_ns}".encode())
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
    manifest = read_manifest(adapter) or JudgeManifest()
    base = base_model_dir(manifest.base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return publish_model_folder(Path(target), model, AutoTokenizer.from_pretrained(base), replace=replace,
                                write_extra=lambda folder: write_manifest(
                                    folder, manifest.model_copy(update={"merged_from": str(adapter),
                                                                        "merged_fingerprint": _fingerprint(adapter)})))


def resolve_model_dir(model: str | None) -> tuple[str, str]:
    """(folder or HF id to load, display name) for `backend.options.model`."""
    shipped = shipped_judge() if model is None else None
    if model == BASE_MODEL or (model is None and shipped is None):  # no trained judge here: the base, said so
        return base_model_dir("embedded"), "embedded:smollm2-135m-instruct (untrained base)"
    if model is not None and model.startswith(NAMED):
        shipped = named_judge(model)
    if shipped is not None:
        return str(merged_model_dir(shipped)), f"{NAMED}{shipped.name}"
    if Path(model).is_dir() and is_adapter(model):
        return str(merged_model_dir(model)), str(model)
    return model, model


def judge_settings(config) -> dict[tuple[str, str], Any]:
    """The settings a judge's manifest fills in for this config: {(section, key): value} for each
    key of its `scoring` block that the config leaves unset (an explicit setting always wins)."""
    manifest = manifest_for_backend(config.backend)
    filled = {}
    for section, values in (manifest.scoring.items() if manifest is not None else ()):
        target = getattr(config, section)
        for key, value in values.items():
            if key not in target.model_fields_set:
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
