"""The `transformers` backend: any causal LM in process, CPU or GPU. The embedded default.

Why it is fast enough to be the default:
- `generate` batches every sample of every request with the same sampling settings. Each row
  draws from its own seeded generator (`SeededSampler`), so a chain, and the reward built on
  it, never depends on what else was in the batch.
- `next_token_probs` lays the rows of one call out as a prefix tree and runs every shared piece
  once: one user's history and prompt, then each criteria chain, then each completion under it,
  then only each criterion's name, each level on top of the cached keys and values of the level
  above. Only the last position's logits are computed.
"""

from __future__ import annotations

import inspect
import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins.backends.base import BackendStats, Conversation, Generation, GenerationRequest
from pgenrm_plugins.hookspecs import hookimpl

# Rows sharing fewer tokens than this are not worth a separate pass for what they share.
MIN_SHARED_PREFIX = 16



def cache_argument(forward) -> str:
    """The keyword under which `forward` takes a prefix's keys and values: transformers 5.2x renamed
    it `cache`; verl pins a 5.10 that only knows `past_key_values`."""
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"

class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="HF model id, local folder, or a judge folder from `pgenrm train` "
                              "(LoRA adapter); empty = the embedded trained judge (SmolLM2-135M + shipped adapter); "
                              "'embedded-base' = the untrained SmolLM2-135M-Instruct")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_rows: int = Field(16, ge=1, description="rows per forward pass when reading probabilities")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")
    kept_tokens: int = Field(16384, ge=0, description="tokens of keys and values kept from the last generate call "
                             "(prompts and chains), so questions about a chain start from it; 0 = keep none")


class TransformersBackend:
    name = "transformers"

    def __init__(self, options: TransformersOptions | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pgenrm_plugins.backends.embedded import END_OF_TURN
        from pgenrm_plugins.backends.judge_folder import read_manifest, resolve_model_dir

        self.options = options = options or TransformersOptions()
        if options.threads:
            torch.set_num_threads(options.threads)
        self.torch = torch
        from transformers import LogitsProcessorList

        self._processors = LogitsProcessorList
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        dtype = options.dtype
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        path, self.model_name = resolve_model_dir(options.model)
        self.manifest = read_manifest(path) if Path(path).is_dir() else None
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype),
                                                          **attention_options(self.device.type)).to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        eos = {self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id}
        if isinstance(end, int) and end != self.tokenizer.unk_token_id:
            eos.add(end)
        self.eos_ids = sorted(i for i in eos if isinstance(i, int))
        self._cache_arg = cache_argument(self.model.forward)
        self.stats = BackendStats()
        self._kept = KeptPrefixes(options.kept_tokens)

    # -- helpers ---------------------------------------------------------------------------
    def _encode(self, messages: Conversation) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # some tokenizers return a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)

    def _left_pad(self, rows: Sequence[Sequence[int]]):
        torch = self.torch
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    def _generated(self, row, prompt_len: int, prefill: str) -> Generation:
        new = row[prompt_len:].tolist()
        for j, tok in enumerate(new):
            if tok in self.eos_ids:
                new = new[:j]
                break
        return Generation(prefill + self.tokenizer.decode(new, skip_special_tokens=True), len(new))

    # -- the contract ----------------------------------------------------------------------
    def generate(self, requests: Sequence[GenerationRequest]) -> list[list[Generation]]:
        # One row per sample, each with its own seed (request seed + sample index), so requests of
        # any seed batch together and a row's text never depends on its batch-mates.
        rows = [(i, k) for i, r in enumerate(requests) for k in range(r.n)]
        rows.sort(key=lambda row: _sampling_key(requests[row[0]]))
        results: list[list[Generation]] = [[] for _ in requests]
        self._kept.clear()
        for _, group in itertools.groupby(rows, key=lambda row: _sampling_key(requests[row[0]])):
            group = list(group)
            for start in range(0, len(group), self.options.max_batch_rows):
                chunk = group[start:start + self.options.max_batch_rows]
                for (i, _k), gen in zip(chunk, self._run(requests, chunk)):
                    results[i].append(gen)
        return results

    def _run(self, requests: Sequence[GenerationRequest], rows: list[tuple[int, int]]) -> list[Generation]:
        torch = self.torch
        first = requests[rows[0][0]]
        prompts = {i: self._encode(requests[i].messages)
                   + self.tokenizer.encode(requests[i].prefill, add_special_tokens=False) for i, _ in rows}
        unique = list(prompts)
        ids, mask = self._left_pad([prompts[i] for i in unique])
        kwargs = dict(do_sample=False, max_new_tokens=first.max_new_tokens,
                      eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id)
        # A preallocated cache, written in place: a growing one copies all its keys and values at
        # every new token (on CPU that copying was 82% of a decoding step).
        cache = self._static_cache(ids.shape[1] + first.max_new_tokens)
        with torch.inference_mode():
            if len(unique) < len(rows):
                # The samples of one request (Ind-N) share their whole prompt: prefill it once and
                # give every sample the keys and values of all but its last token.
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                out = self.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                                 position_ids=positions[:, :-1], use_cache=True)
                where = {i: u for u, i in enumerate(unique)}
                owner = torch.tensor([where[i] for i, _ in rows], device=self.device)
                _select(getattr(out, self._cache_arg), owner, into=cache)
                ids, mask = ids[owner], mask[owner]
            kwargs[self._cache_arg] = cache
            if first.temperature > 0:
                seeds = [(requests[i].seed or 0) + k for i, k in rows]
                sampler = SeededSampler(seeds, first.temperature, first.top_p, self.device)
                kwargs["logits_processor"] = self._processors([sampler])
            if first.stop:
                kwargs.update(stop_strings=list(first.stop), tokenizer=self.tokenizer)
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        width = ids.shape[1]
        gens = [self._generated(row, width, requests[i].prefill) for row, (i, _) in zip(out, rows)]
        for j, (row, (i, _)) in enumerate(zip(out, rows)):
            # Keys and values exist for the prompt and every generated token but the last.
            chain = row[width:width + max(gens[j].tokens - 1, 0)].tolist()
            self._kept.keep(prompts[i] + chain, cache, j, width - len(prompts[i]))
        self.stats.generate_calls += 1
        self.stats.prompt_tokens += sum(len(prompts[i]) for i in unique)
        self._count_reused(sum(len(prompts[i]) for i, _ in rows) - sum(len(prompts[i]) for i in unique))
        self.stats.generated_tokens += sum(g.tokens for g in gens)
        return gens

    def _static_cache(self, length: int):
        from transformers import StaticCache

        return StaticCache(config=self.model.config, max_cache_len=length)

    def next_token_probs(self, conversations: Sequence[Conversation],
                         candidates: Sequence[str]) -> list[dict[str, float]]:
        cand_ids = []
        for c in candidates:
            ids = self.tokenizer.encode(c, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"candidate {c!r} is {len(ids)} tokens in this tokenizer; "
                                 "candidates must be single tokens")
            cand_ids.append(ids[0])
        rows = [self._encode(m) for m in conversations]
        self.stats.prob_calls += 1
        if not rows:
            return []
        probs: list[dict[str, float] | None] = [None] * len(rows)
        before = self.stats.prompt_tokens
        # Rows that continue what the last generate call computed (a chain and its prompt) start
        # from its kept keys and values; the rest from nothing (a prefix of length 0).
        picks = [self._kept.longest(r) for r in rows]
        starts = sorted(set(picks))
        cache, mask = self._kept.batch(starts, self.device)
        rest = [r[length:] for r, (_, length) in zip(rows, picks)]
        nodes, parents = [], []
        for p, start in enumerate(starts):
            tree = _subtrees(rest, [i for i, pick in enumerate(picks) if pick == start], 0)
            nodes += tree
            parents += [p] * len(tree)
        self._walk(nodes, cache, mask, parents, cand_ids, candidates, probs)
        self._count_reused(sum(len(r) for r in rows) - (self.stats.prompt_tokens - before))
        return probs

    def _walk(self, nodes: list[_Node], cache, past_mask, parent_rows: list[int], cand_ids, candidates, probs) -> None:
        """Run `nodes` (each continuing row `parent_rows[j]` of `cache`) in batches, read the
        candidates' probabilities where rows end, then their children on top of the new cache.

        Every shared prefix of the call is computed once: e.g. history and prompt once per
        request, the criteria chain once per chain, a completion once per chain, then only each
        criterion's name."""
        torch = self.torch
        for chunk in _batches([len(n.tokens) for n in nodes], self.options.max_batch_rows):
            owner = torch.tensor([parent_rows[j] for j in chunk], device=self.device)
            keep = any(nodes[j].children for j in chunk)
            logits, new_cache, mask = self._extend([nodes[j].tokens for j in chunk], past_mask[owner],
                                                   _select(cache, owner), keep_cache=keep)
            p = torch.softmax(logits.float(), dim=-1)[:, cand_ids].cpu().tolist()
            for pos, j in enumerate(chunk):
                for r in nodes[j].rows:
                    probs[r] = dict(zip(candidates, p[pos]))
            if keep:
                kids = [(child, pos) for pos, j in enumerate(chunk) for child in nodes[j].children]
                self._walk([c for c, _ in kids], new_cache, mask, [pos for _, pos in kids], cand_ids, candidates, probs)

    def _extend(self, pieces: list[list[int]], past_mask, cache, keep_cache: bool = False):
        """Run left-padded `pieces` on top of `cache` (attention mask `past_mask`, one row per piece).

        Positions are explicit, so padding leaves no gap: each row's tokens get the positions
        they would have had if the row had run on its own. Returns (last logits, cache, mask)."""
        torch = self.torch
        ids, mask = self._left_pad(pieces)
        width = ids.shape[1]
        pads = width - mask.sum(dim=1, keepdim=True)
        positions = (past_mask.sum(dim=1, keepdim=True) + torch.arange(width, device=self.device)[None, :]
                     - pads).clamp(min=0)
        full_mask = torch.cat([past_mask, mask], dim=1)
        kwargs = {self._cache_arg: cache} if cache is not None else {}
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=full_mask, position_ids=positions,
                             logits_to_keep=1, use_cache=keep_cache, **kwargs)
        self.stats.prompt_tokens += int(mask.sum())
        return out.logits[:, -1, :], (getattr(out, self._cache_arg) if keep_cache else None), full_mask

    def _count_reused(self, tokens: int) -> None:
        self.stats.extra["prefix_tokens_reused"] = self.stats.extra.get("prefix_tokens_reused", 0) + tokens

    def close(self) -> None:
        self.model = None


CPU_ATTENTION = "pgenrm_sdpa_gqa"


def attention_options(device_type: str | None = None) -> dict:
    """`from_pretrained` keyword arguments for the attention to use on `device_type` (default:
    where a trainer will put the model, CUDA when there is one).

    On CPU: an SDPA attention that keeps grouped keys and values grouped under a padding mask
    (registered once). Transformers' `sdpa` copies them out to every query head whenever there is
    a mask (it lets the kernel share them only mask-free, a limit of CUDA's kernels); with SmolLM2's
    3 key-value heads for 9 query heads that copying was most of a CPU decoding step, and torch's
    CPU kernel takes the mask and `enable_gqa` together, forward and backward. Elsewhere:
    transformers' own choice."""
    if device_type is None:
        import torch

        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type != "cpu":
        return {}
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    if CPU_ATTENTION not in AttentionInterface._global_mapping:
        AttentionInterface.register(CPU_ATTENTION, _sdpa_gqa)
        ALL_MASK_ATTENTION_FUNCTIONS.register(CPU_ATTENTION, sdpa_mask)
    return {"attn_implementation": CPU_ATTENTION}


def _sdpa_gqa(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
              **_kwargs):
    import torch

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
        is_causal=bool(query.shape[2] > 1 and attention_mask is None and causal),
        enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _sampling_key(r: GenerationRequest):
    return (r.temperature, r.top_p, r.max_new_tokens, r.stop)


class SeededSampler:
    """Sampling with one random generator per row, inside a batched greedy `generate`.

    Adding Gumbel noise to the (temperature-scaled, top-p filtered) logits and taking the argmax
    draws exactly from the softmax; with a generator per row, each row's draw depends on its own
    seed only, which `generate(do_sample=True)` (one global generator) cannot give."""

    def __init__(self, seeds: Sequence[int], temperature: float, top_p: float, device):
        import torch

        self.torch = torch
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        torch = self.torch
        scores = scores.float() / self.temperature
        if self.top_p < 1.0:
            ordered, index = scores.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            drop_sorted = probs.cumsum(dim=-1) - probs > self.top_p  # keep the smallest set reaching top_p
            drop = torch.zeros_like(drop_sorted).scatter(1, index, drop_sorted)
            scores = scores.masked_fill(drop, float("-inf"))
        vocab = scores.shape[-1]
        uniform = torch.stack([torch.rand(vocab, generator=g, device=scores.device) for g in self.generators])
        gumbel = -torch.log(-torch.log(uniform.clamp(1e-10, 1.0 - 1e-7)))
        return scores + gumbel


def _select(cache, rows, into=None):
    """`rows` of `cache` (a tensor of indices, repeats allowed) written into `into` (default: a new
    growing cache), which is returned; `cache` itself is left as it was, for the other batches
    that continue it."""
    if cache is None:
        return None
    if into is None:
        from transformers import DynamicCache

        into = DynamicCache()
    for i, layer in enumerate(cache.layers):
        into.update(layer.keys[rows], layer.values[rows], i)
    return into


# A batch is cut where padding would make it this much larger than its rows' own tokens.
MAX_PADDING = 1.25


def _batches(lengths: list[int], max_rows: int) -> list[list[int]]:
    """Indices of `lengths` in batches of at most `max_rows`, shortest first, each cut before
    left padding would grow it past MAX_PADDING times its real tokens."""
    batches: list[list[int]] = []
    real = 0
    for j in sorted(range(len(lengths)), key=lengths.__getitem__):
        batch = batches[-1] if batches else []
        if batch and len(batch) < max_rows and (len(batch) + 1) * lengths[j] <= MAX_PADDING * (real + lengths[j]):
            batch.append(j)
            real += lengths[j]
        else:
            batches.append([j])
            real = lengths[j]
    return batches


class KeptPrefixes:
    """Keys and values of the rows of the last `generate` call (prompt and chain), at most `budget`
    tokens of them: a probability read whose rows continue a chain (every question about it) starts
    from there instead of computing the history, the prompt and the chain again."""

    def __init__(self, budget: int):
        self.budget, self.tokens = budget, 0
        self.rows: list[tuple[np.ndarray, list, list]] = []  # (tokens, keys per layer, values per layer)

    def clear(self) -> None:
        self.rows, self.tokens = [], 0

    def keep(self, tokens: list[int], cache, row: int, start: int) -> None:
        """Keep `tokens`, whose keys and values are row `row` of `cache` from position `start` on."""
        if self.tokens + len(tokens) > self.budget or len(tokens) < MIN_SHARED_PREFIX:
            return
        end = start + len(tokens)
        self.rows.append((np.asarray(tokens), [layer.keys[row, :, start:end].clone() for layer in cache.layers],
                          [layer.values[row, :, start:end].clone() for layer in cache.layers]))
        self.tokens += len(tokens)

    def longest(self, tokens: list[int]) -> tuple[int, int]:
        """(kept row, length) of the longest kept prefix of `tokens`, leaving it one token of its
        own; (-1, 0) when none is worth it."""
        best, row = (-1, 0), np.asarray(tokens)
        for k, (kept, _, _) in enumerate(self.rows):
            n = min(len(kept), len(row) - 1)
            differ = np.flatnonzero(kept[:n] != row[:n])
            length = int(differ[0]) if len(differ) else n
            if length >= max(best[1] + 1, MIN_SHARED_PREFIX):
                best = (k, length)
        return best

    def batch(self, picks: list[tuple[int, int]], device):
        """A cache of one row per (kept row, length) pick, left-padded, and its attention mask; a
        pick of length 0 is a row of padding only (None when every pick is)."""
        import torch
        from transformers import DynamicCache

        width = max(length for _, length in picks)
        mask = torch.zeros((len(picks), width), dtype=torch.long, device=device)
        if width == 0:
            return None, mask
        cache = DynamicCache()
        first = next(k for k, length in picks if length)
        for layer, (keys, values) in enumerate(zip(self.rows[first][1], self.rows[first][2])):
            k_out = keys.new_zeros((len(picks), keys.shape[0], width, keys.shape[2]))
            v_out = values.new_zeros((len(picks), values.shape[0], width, values.shape[2]))
            for p, (k, length) in enumerate(picks):
                if length:
                    k_out[p, :, width - length:] = self.rows[k][1][layer][:, :length]
                    v_out[p, :, width - length:] = self.rows[k][2][layer][:, :length]
            cache.update(k_out, v_out, layer)
        for p, (_, length) in enumerate(picks):
            if length:
                mask[p, width - length:] = 1
        return cache, mask


@dataclass
class _Node:
    """A piece of token rows in a prefix tree: `tokens` is shared by every row below the node,
    `rows` end right after it (the rows whose next-token probabilities are read here)."""

    tokens: list[int]
    rows: list[int] = field(default_factory=list)
    children: list[_Node] = field(default_factory=list)


def prefix_tree(rows: Sequence[Sequence[int]]) -> list[_Node]:
    """The rows as a radix tree (top-level nodes returned). A node of fewer than MIN_SHARED_PREFIX
    tokens is folded into its children: a separate pass for a few tokens costs more than it saves."""
    return _subtrees(rows, list(range(len(rows))), 0)


def _subtrees(rows, members: list[int], start: int) -> list[_Node]:
    by_next: dict[int, list[int]] = {}
    for i in members:
        by_next.setdefault(rows[i][start], []).append(i)
    nodes = []
    for group in by_next.values():
        end = start + len(os.path.commonprefix([rows[i][start:] for i in group]))
        node = _Node(list(rows[group[0]][start:end]), [i for i in group if len(rows[i]) == end])
        node.children = _subtrees(rows, [i for i in group if len(rows[i]) > end], end)
        if node.children and len(node.tokens) < MIN_SHARED_PREFIX:
            if node.rows:
                nodes.append(_Node(node.tokens, node.rows))
            nodes.extend(_Node(node.tokens + c.tokens, c.rows, c.children) for c in node.children)
        else:
            nodes.append(node)
    return nodes


@hookimpl
def register_backends(register):
    register(
        "transformers",
        TransformersBackend,
        options=TransformersOptions,
        description="in-process Hugging Face causal LM; default: embedded SmolLM2-135M-Instruct (CPU or GPU)",
    )
