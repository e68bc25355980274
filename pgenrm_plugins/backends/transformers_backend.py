"""The `transformers` backend: any causal LM in process, CPU or GPU. The embedded default.

Why it is fast enough to be the default:
- `generate` batches every sample of every request with the same sampling settings. Each row
  draws from its own seeded generator (`SeededSampler`), so a chain, and the reward built on
  it, never depends on what else was in the batch.
- `next_token_probs` finds the prefix that the rows of one call share (every question about one
  chain repeats the same history, prompt and criteria), runs it once, and feeds only each row's
  own suffix on top of the cached keys and values. Only the last position's logits are computed.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from pathlib import Path
from typing import Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from pgenrm_plugins.backends.base import BackendStats, Conversation, Generation, GenerationRequest
from pgenrm_plugins.hookspecs import hookimpl

# Rows sharing fewer tokens than this are not worth a separate prefix pass.
MIN_SHARED_PREFIX = 16


class TransformersOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="HF model id, local folder, or a judge folder from `pgenrm train` "
                              "(LoRA adapter); empty = the embedded trained judge (SmolLM2-135M + shipped adapter); "
                              "'embedded-base' = the untrained SmolLM2-135M-Instruct")
    device: str = Field("auto", description="'auto' (cuda when present), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_rows: int = Field(16, ge=1, description="rows per forward pass when reading probabilities")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's choice)")


class TransformersBackend:
    name = "transformers"

    def __init__(self, options: TransformersOptions | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pgenrm_plugins.backends.embedded import END_OF_TURN
        from pgenrm_plugins.judge import read_manifest, resolve_model_dir

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
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(self.device).eval()
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        end = self.tokenizer.convert_tokens_to_ids(END_OF_TURN)
        eos = {self.tokenizer.eos_token_id, self.model.generation_config.eos_token_id}
        if isinstance(end, int) and end != self.tokenizer.unk_token_id:
            eos.add(end)
        self.eos_ids = sorted(i for i in eos if isinstance(i, int))
        # transformers 5.2x renamed the cache argument; verl pins a 5.10 that only knows the old name.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.stats = BackendStats()

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
        encoded = [self._encode(requests[i].messages)
                   + self.tokenizer.encode(requests[i].prefill, add_special_tokens=False) for i, _ in rows]
        ids, mask = self._left_pad(encoded)
        kwargs = dict(do_sample=False, max_new_tokens=first.max_new_tokens,
                      eos_token_id=self.eos_ids, pad_token_id=self.tokenizer.pad_token_id)
        if first.temperature > 0:
            seeds = [(requests[i].seed or 0) + k for i, k in rows]
            sampler = SeededSampler(seeds, first.temperature, first.top_p, self.device)
            kwargs["logits_processor"] = self._processors([sampler])
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=self.tokenizer)
        with torch.inference_mode():
            out = self.model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        width = ids.shape[1]
        gens = [self._generated(row, width, requests[i].prefill) for row, (i, _) in zip(out, rows)]
        self.stats.generate_calls += 1
        self.stats.prompt_tokens += sum(len(e) for e in encoded)
        self.stats.generated_tokens += sum(g.tokens for g in gens)
        return gens

    def next_token_probs(self, conversations: Sequence[Conversation],
                         candidates: Sequence[str]) -> list[dict[str, float]]:
        torch = self.torch
        cand_ids = []
        for c in candidates:
            ids = self.tokenizer.encode(c, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"candidate {c!r} is {len(ids)} tokens in this tokenizer; "
                                 "candidates must be single tokens")
            cand_ids.append(ids[0])
        rows = [self._encode(m) for m in conversations]
        self.stats.prob_calls += 1
        root = shared_prefix_len(rows)  # e.g. history + prompt + criteria chain
        cache = None
        if root:
            with torch.inference_mode():
                prefix = torch.tensor([rows[0][:root]], device=self.device)
                cache = getattr(self.model(input_ids=prefix, use_cache=True), self._cache_arg)
            self.stats.prompt_tokens += root
            self._count_reused(root * (len(rows) - 1))
        probs: list[dict[str, float]] = []
        for start in range(0, len(rows), self.options.max_batch_rows):
            logits = self._chunk_logits(rows[start:start + self.options.max_batch_rows], root, cache)
            p = torch.softmax(logits.float(), dim=-1)[:, cand_ids]
            probs.extend(dict(zip(candidates, row)) for row in p.cpu().tolist())
        return probs

    def _chunk_logits(self, rows: list[list[int]], root: int, cache):
        """Last-token logits of `rows`, which all start with the `root` tokens held in `cache`.

        A second level of sharing: consecutive rows that also share a stem after the root (one
        completion asked about several criteria) run that stem once, then only their own tails."""
        torch = self.torch
        runs = _runs_sharing_a_stem(rows, root)
        root_mask = torch.ones((len(runs), root), dtype=torch.long, device=self.device)
        if len(runs) == len(rows):  # nothing more to share
            return self._extend([r[root:] for r in rows], root_mask, _repeat(cache, len(rows)))[0]
        stems = [rows[members[0]][root:stem] for stem, members in runs]
        _, stem_cache, stem_mask = self._extend(stems, root_mask, _repeat(cache, len(runs)), keep_cache=True)
        owner = torch.tensor([k for k, (_, members) in enumerate(runs) for _ in members], device=self.device)
        stem_cache.batch_select_indices(owner)
        tails = [rows[i][stem:] for stem, members in runs for i in members]
        self._count_reused(sum((len(members) - 1) * (stem - root) for stem, members in runs))
        return self._extend(tails, stem_mask[owner], stem_cache)[0]

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


def _repeat(cache, rows: int):
    """A copy of a one-row cache for `rows` rows (the forward pass appends to it in place)."""
    if cache is None:
        return None
    cache = copy.deepcopy(cache)
    cache.batch_repeat_interleave(rows)
    return cache


def _runs_sharing_a_stem(rows: list[list[int]], root: int) -> list[tuple[int, list[int]]]:
    """Consecutive rows grouped by a common stem after `root`: [(stem end, [row indices])].
    A row that shares less than MIN_SHARED_PREFIX more tokens with its run starts a new run."""
    runs: list[tuple[int, list[int]]] = []
    for i, row in enumerate(rows):
        if runs:
            members = runs[-1][1]
            stem = shared_prefix_len([rows[m] for m in members] + [row])
            if stem - root >= MIN_SHARED_PREFIX:
                runs[-1] = (stem, members + [i])
                continue
        runs.append((len(row) - 1, [i]))
    return runs


def shared_prefix_len(rows: Sequence[Sequence[int]]) -> int:
    """Tokens every row starts with, leaving each row at least one token of its own; 0 when
    too short to be worth a separate pass."""
    if len(rows) < 2:
        return 0
    shared = min(_common_prefix(rows[0], r) for r in rows[1:])
    shared = min(shared, *(len(r) - 1 for r in rows))
    return shared if shared >= MIN_SHARED_PREFIX else 0


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    for k in range(n):
        if a[k] != b[k]:
            return k
    return n


@hookimpl
def register_backends(register):
    register(
        "transformers",
        TransformersBackend,
        options=TransformersOptions,
        description="in-process Hugging Face causal LM; default: embedded SmolLM2-135M-Instruct (CPU or GPU)",
    )
