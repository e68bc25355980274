"""The `vllm` backend: the install hint everywhere; real generation only on a CUDA machine with vLLM
and a small local model named by env PGENRM_VLLM_TEST_MODEL."""

from __future__ import annotations

import os
import sys

import pytest
from pydantic import ValidationError

from pgenrm_plugins.backends.base import GenerationRequest
from pgenrm_plugins.backends.vllm_backend import VLLMBackend, VLLMOptions, register_backends

TRIPOD = [{"role": "user", "content": "Answer with one digit from 1 to 9: how many legs does a tripod have?"}]


def test_without_vllm_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` fail even where installed
    with pytest.raises(ImportError, match=r"pip install 'pgenrm-plugins\[vllm\]' on a CUDA machine"):
        VLLMBackend(VLLMOptions(model="Tongyi-ConvAI/P-GenRM-8B-PRISM"))


def test_options_and_registration():
    with pytest.raises(ValidationError, match="model\n  Field required"):
        VLLMOptions()
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        VLLMOptions(model="m", tensor_parallel=2)
    o = VLLMOptions(model="m")
    assert o.enable_prefix_caching and o.gpu_memory_utilization == 0.85 and o.max_model_len == 8192
    seen = {}
    register_backends(lambda name, factory, options=None, description="": seen.update({name: (factory, options)}))
    assert seen["vllm"] == (VLLMBackend, VLLMOptions)


@pytest.mark.gpu
def test_real_vllm_on_gpu():
    pytest.importorskip("vllm")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    model = os.environ.get("PGENRM_VLLM_TEST_MODEL")
    if not model:
        pytest.skip("set PGENRM_VLLM_TEST_MODEL to a small local chat model")
    b = VLLMBackend(VLLMOptions(model=model, max_model_len=2048, gpu_memory_utilization=0.5))
    try:
        [gens] = b.generate([GenerationRequest(TRIPOD, n=2, max_new_tokens=8, temperature=0.9, seed=1)])
        assert len(gens) == 2 and all(g.text and 0 < g.tokens <= 8 for g in gens)
        assert b.stats.generated_tokens == sum(g.tokens for g in gens)
        [again] = b.generate([GenerationRequest(TRIPOD, n=2, max_new_tokens=8, temperature=0.9, seed=1)])
        assert [g.text for g in again] == [g.text for g in gens]
        [p] = b.next_token_probs([TRIPOD], [str(d) for d in range(1, 10)])
        assert all(0 <= v <= 1 for v in p.values()) and 0 < sum(p.values()) <= 1 + 1e-6
    finally:
        b.close()
