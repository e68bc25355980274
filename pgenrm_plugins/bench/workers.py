"""`pgenrm bench workers`: one verl-shaped batch over several reward workers, each with a judge of
its own, against the same workers sharing one `pgenrm serve`.

verl's trainer reorders a rollout batch by sequence length (`trainer.balance_batch`, on by default)
before the reward, and `RewardLoopManager` then hands each of its `reward.num_workers` workers one
contiguous chunk. So a GRPO group's samples end up on several workers. A seeded shuffle stands in for
the reordering here. Each worker is its own process (spawned, as Ray starts actors) and scores its
chunk as verl's `RewardLoopWorker` does: one concurrent call per sample, coalesced per (user, prompt).

- in-process: every worker loads its own judge, with the CPU share a Ray actor gets
  (`OMP_NUM_THREADS` = cores / workers); a group split over k workers has its chain written k times.
- shared service: the workers hold no judge (`scorer:` config), one `pgenrm serve` holds it with all
  cores and merges each group's parts from all workers into one request.

Printed: wall time of the scoring (judges already loaded), judge load time, evaluation chains
written, peak resident memory of the workers and of the service, and the largest reward difference
between the two setups.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import os
import random
import re
import tempfile
import time
from pathlib import Path
from queue import Empty

import yaml
from rich.console import Console
from rich.table import Table

from pgenrm_plugins.bench.speed import grpo_batch
from pgenrm_plugins.config import config_dict
from pgenrm_plugins.testing.serve import free_port, metric, pgenrm_serve

FIELDS = ("user_id", "history", "persona")


def verl_chunks(prompts: int, completions: int, workers: int, seed: int) -> list[list[dict]]:
    """The batch's samples, reordered (seeded), cut into `workers` contiguous chunks as
    `DataProto.chunk` does."""
    samples = []
    for g, request in enumerate(grpo_batch(prompts, completions)):
        fields = request.model_dump(mode="json", include=set(FIELDS))
        samples += [{"group": g, "fields": fields, "prompt": request.prompt, "completion": c}
                    for c in request.completions]
    random.Random(seed).shuffle(samples)
    size = -(-len(samples) // workers)
    return [samples[i:i + size] for i in range(0, len(samples), size)]


def _kib(field: str, pid: int | str = "self") -> int:
    """A /proc/PID/status memory line (VmRSS: resident now, VmHWM: peak) in KiB."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))


class _CountingScorer:
    """A worker's own scorer, counting the chains it samples (the service counts its own)."""

    def __init__(self, inner):
        self.inner, self.chains = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def score(self, requests):
        results = self.inner.score(requests)
        self.chains += sum(r.components.chains_sampled for r in results)
        return results


def _worker(config: dict, threads: int | None, samples: list[dict], ready, go, results) -> None:
    """One reward worker (a spawned process): build the judge, report ready, score on `go`."""
    if threads:  # before torch is imported: what Ray gives an actor with `threads` CPUs
        os.environ["OMP_NUM_THREADS"] = str(threads)
    from pgenrm_plugins.frameworks.coalescing import SampleCoalescer
    from pgenrm_plugins.frameworks.user_fields import FieldSource, read_user_fields
    from pgenrm_plugins.scoring import load_scorer

    source = FieldSource("bench", "extra_info", "the benchmark's own samples")
    started = time.perf_counter()
    scorer = _CountingScorer(load_scorer(config))  # the judge loads here (none with a scorer: section)
    judge = SampleCoalescer(scorer=scorer)
    ready.put({"pid": os.getpid(), "load_s": time.perf_counter() - started})
    go.wait()

    async def chunk():
        return await asyncio.gather(*(judge.ascore(read_user_fields(s["fields"], source), s["prompt"],
                                                   s["completion"]) for s in samples))

    started = time.perf_counter()
    rewards = asyncio.run(chunk())
    seconds = time.perf_counter() - started
    judge.close()
    scorer.inner.close()
    results.put({"pid": os.getpid(), "seconds": seconds, "chains": scorer.chains, "peak_kib": _kib("VmHWM"),
                 "rewards": [r.reward for r in rewards],
                 "neutral": sum(r.components["pgenrm_neutral"] for r in rewards)})


def run_workers(config: dict, chunks: list[list[dict]], threads: int | None) -> dict:
    """Every chunk in its own worker process; wall time from the moment all judges are loaded."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_worker, args=(config, threads, chunk, ready, go, results)) for chunk in chunks]
    for p in procs:
        p.start()
    try:
        loaded = [_get(ready, procs) for _ in procs]
        started = time.perf_counter()
        go.set()
        done = [_get(results, procs) for _ in procs]
        wall = time.perf_counter() - started
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    by_pid = {d["pid"]: d for d in done}
    order = [p.pid for p in procs]
    return {"wall_s": wall, "load_s": max(d["load_s"] for d in loaded),
            "workers_mib": sum(d["peak_kib"] for d in done) / 1024, "service_mib": 0.0,
            "chains": sum(d["chains"] for d in done), "neutral": sum(d["neutral"] for d in done),
            "rewards": [r for pid in order for r in by_pid[pid]["rewards"]]}


def _get(queue, procs, timeout_s: float = 1800):
    """The next message, or an error as soon as a worker died without sending one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return queue.get(timeout=1)
        except Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"a benchmark worker failed (exit code {dead[0].exitcode if dead else 'timeout'}); "
                                   "its traceback is above") from None


def run_workers_bench(config_path, prompts: int, completions: int, workers: int, chains: int,
                      max_new_tokens: int, max_wait_ms: float, seed: int, output: Path | None,
                      console: Console) -> dict:
    cfg = config_dict(str(config_path) if config_path else None)
    if not config_path:  # generated criteria: a group has a persona-and-criteria chain to share
        cfg.setdefault("reward", {})["criteria"] = "generated"
    cfg.setdefault("sampling", {}).update(chains=chains, max_new_tokens=max_new_tokens)
    cfg.pop("scorer", None)
    chunks = verl_chunks(prompts, completions, workers, seed)
    spread = sum(len({s["group"] for s in c}) for c in chunks) / prompts
    cores = os.cpu_count() or 1
    rows = {}
    with console.status(f"{workers} workers, each loading its own judge, scoring its chunk..."):
        rows["in-process judges"] = run_workers(cfg, chunks, threads=max(1, cores // workers))
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        shared = Path(tmp) / "pgenrm.yaml"
        client = {**cfg, "scorer": {"url": f"http://127.0.0.1:{port}", "timeout_s": 1800}}
        shared.write_text(yaml.safe_dump(client))  # the service reads it too, and ignores scorer:
        console.print("starting pgenrm serve (it loads its judge)...")
        started = time.perf_counter()
        with pgenrm_serve(shared, port, "--max-wait-ms", str(max_wait_ms)) as served:
            serve_load = time.perf_counter() - started
            with console.status(f"{workers} workers, no judge of their own, sharing the service..."):
                row = run_workers(client, chunks, threads=None)
            text = served.metrics()
            row.update(chains=metric(text, "pgenrm_chains_sampled_total"), load_s=serve_load,
                       service_mib=_kib("VmHWM", served.proc.pid) / 1024,
                       service_batches=metric(text, "pgenrm_batch_seconds_count"))
            rows["one shared service"] = row
    a, b = rows["in-process judges"], rows["one shared service"]
    max_diff = max(abs(x - y) for x, y in zip(a.pop("rewards"), b.pop("rewards")))
    n = prompts * completions
    table = Table(title=f"{prompts} prompts x {completions} samples = {n} over {workers} workers (a group on "
                        f"{spread:.1f} workers on average), Ind-{chains}, chains up to {max_new_tokens} tokens, "
                        f"{cores} cores", title_justify="left")
    for col in ("setup", "scoring wall s", "rewards/s", "judge load s", "chains written", "workers' memory MiB",
                "service memory MiB", "total MiB", "neutral"):
        table.add_column(col, justify="left" if col == "setup" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['wall_s']:.1f}", f"{n / r['wall_s']:.2f}", f"{r['load_s']:.1f}",
                      f"{r['chains']:.0f}", f"{r['workers_mib']:.0f}", f"{r['service_mib']:.0f}",
                      f"{r['workers_mib'] + r['service_mib']:.0f}", f"{r['neutral']:.0f}")
    console.print(table)
    console.print(f"shared service: {a['wall_s'] / b['wall_s']:.1f}x as fast as the in-process judges, "
                  f"{a['chains'] / max(b['chains'], 1):.1f}x fewer chains, "
                  f"{a['workers_mib'] / (b['workers_mib'] + b['service_mib']):.1f}x less memory in all; largest "
                  f"reward difference between the setups {max_diff:.2g}. Memory: peak resident memory of each "
                  "process, summed.", highlight=False)
    report = {"prompts": prompts, "completions": completions, "workers": workers, "chains": chains,
              "max_new_tokens": max_new_tokens, "max_wait_ms": max_wait_ms, "seed": seed, "cores": cores,
              "workers_per_group": spread, "setups": rows, "max_reward_difference": max_diff}
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report

