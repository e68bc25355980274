"""The `vllm` backend: the judge in process on CUDA GPUs through vLLM's offline `LLM` engine.

Thin on purpose: every call is one batched `LLM.chat`, and vLLM does the rest (continuous
batching, paged attention, and prefix caching, which is on by default because the requests of one
group share a long persona-and-criteria prefix). vLLM is imported only when the backend is built,
so the plugin registers, and `pgenrm plugins` lists it, on machines without vLLM.
"""

from __future__ import annotations

import math
from typing import Sequence

from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins.backends.base import BackendStats, Conversation, Generation, GenerationRequest
from pgenrm_plugins.hookspecs import hookimpl

INSTALL_HINT = "the vllm backend needs vLLM: pip install 'pgenrm-plugins[vllm]' on a CUDA machine"
TOP_LOGPROBS = 20


class VLLMOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="HF model id or local folder, e.g. Tongyi-ConvAI/P-GenRM-8B-PRISM")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int = Field(8192, ge=1)
    dtype: str = "auto"
    enable_prefix_caching: bool = Field(True, description="reuse the KV cache of prefixes shared across requests")


class VLLMBackend:
    name = "vllm"

    def __init__(self, options: VLLMOptions):
        try:
            import vllm
        except ImportError as e:
            raise ImportError(INSTALL_HINT) from e
        self.options = options
        self._vllm = vllm
        self.llm = vllm.LLM(
            model=options.model,
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len,
            dtype=options.dtype,
            enable_prefix_caching=options.enable_prefix_caching,
        )
        self.stats = BackendStats()

    def _chat(self, conversations: Sequence[Conversation], params, prefill: str = ""):
        if prefill:  # continue a partial assistant turn (one prefill for the whole call)
            conversations = [[*m, {"role": "assistant", "content": prefill}] for m in conversations]
        outputs = self.llm.chat([list(m) for m in conversations], params, use_tqdm=False,
                                add_generation_prompt=not prefill, continue_final_message=bool(prefill))
        self.stats.prompt_tokens += sum(len(o.prompt_token_ids or ()) for o in outputs)
        return outputs

    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        if not requests:
            return []
        params = [
            self._vllm.SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_new_tokens,
                                      seed=r.seed, stop=list(r.stop) or None)
            for r in requests
        ]
        # The scorer gives every request of a call the same prefill; a mixed call goes without.
        prefill = requests[0].prefill if len({r.prefill for r in requests}) == 1 else ""
        outputs = self._chat([r.messages for r in requests], params, prefill)
        results = [[Generation(prefill + c.text, len(c.token_ids)) for c in o.outputs] for o in outputs]
        self.stats.generate_calls += 1
        self.stats.generated_tokens += sum(g.tokens for gens in results for g in gens)
        return results

    def next_token_probs(
        self, conversations: Sequence[Conversation], candidates: Sequence[str]
    ) -> list[dict[str, float]]:
        if not conversations:
            return []
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0, logprobs=TOP_LOGPROBS)
        outputs = self._chat(conversations, params)
        self.stats.prob_calls += 1
        tokenizer = None
        results = []
        for o in outputs:
            probs = dict.fromkeys(candidates, 0.0)
            for token_id, lp in (o.outputs[0].logprobs or [{}])[0].items():
                text = lp.decoded_token
                if text is None:
                    tokenizer = tokenizer or self.llm.get_tokenizer()
                    text = tokenizer.decode([token_id])
                if text.strip() in probs:
                    probs[text.strip()] += math.exp(lp.logprob)
            results.append(probs)
        return results

    def close(self) -> None:
        self.llm = None


@hookimpl
def register_backends(register):
    register(
        "vllm",
        VLLMBackend,
        options=VLLMOptions,
        description="in-process vLLM on CUDA GPUs (batched LLM.chat, prefix caching); needs pgenrm-plugins[vllm]",
    )
