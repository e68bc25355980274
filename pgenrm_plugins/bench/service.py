"""Throughput of the scoring service under OpenRLHF's load shape, against the same requests one at a time.

OpenRLHF sends one completion per HTTP request, rollout_batch x n_samples of them at once, the G
completions of one (user, prompt) arriving separately. Here `clients` concurrent clients (32, like
a busy rollout) POST those single-sample requests to `/get_reward`; then, for comparison, the very
same requests go one at a time to the very same service, judge and settings, in the same run. The
concurrent side gains from the batcher: one backend batch for many callers, and one persona and
criteria chain per (user, prompt) instead of one per completion.

Both sides must give every sample the same reward (a reward never depends on its batch-mates); the
largest difference is printed next to the speed. (These two sides run without the service's
de-duplication, or the second would only read the first's answers.)

Then a retry storm, as OpenRLHF makes when the judge falls behind its timeout: every request sent
twice, the second while the first is in flight, to a fresh service with and without
de-duplication; judge time per distinct request is printed for both.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from pgenrm_plugins.bench.speed import grpo_batch
from pgenrm_plugins.config import config_dict
from pgenrm_plugins.testing.serve import metric


def chatml(messages: list[dict]) -> str:
    """The prompt as OpenRLHF sends it: chat-templated (ChatML, the embedded judge's template)."""
    turns = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    return turns + "<|im_start|>assistant\n"


def openrlhf_samples(prompts: int, completions: int) -> list[dict]:
    """`prompts` x `completions` single-sample `/get_reward` bodies, in rollout order (a group's
    completions next to each other), each with the user's id and history in its label."""
    bodies = []
    for request in grpo_batch(prompts, completions):
        prompt = chatml([{"role": "user", "content": request.prompt}])
        label = json.dumps({"user_id": request.user_id,
                            "history": [h.model_dump(mode="json") for h in request.history]})
        for completion in request.completions:
            bodies.append({"query": [prompt + completion + "<|im_end|>"], "prompts": [prompt], "labels": [label]})
    return bodies


@contextmanager
def running_service(app):
    """`app` under uvicorn on a free 127.0.0.1 port, in a background thread; yields its URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the service did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


def _reward(response: httpx.Response) -> float:
    if response.status_code != 200:
        raise RuntimeError(f"the service answered {response.status_code}: {response.text[:300]}")
    return response.json()["rewards"][0]


def one_at_a_time(url: str, bodies: list[dict]) -> tuple[list[float], float]:
    with httpx.Client(timeout=600) as http:
        started = time.perf_counter()
        rewards = [_reward(http.post(url, json=b)) for b in bodies]
        return rewards, time.perf_counter() - started


def concurrently(url: str, bodies: list[dict], clients: int) -> tuple[list[float], float]:
    """`clients` workers, each posting one sample at a time, taking the next from a shared queue."""

    async def go():
        rewards: list[float | None] = [None] * len(bodies)
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(len(bodies)):
            queue.put_nowait(i)

        async def client(http: httpx.AsyncClient):
            while not queue.empty():
                i = queue.get_nowait()
                rewards[i] = _reward(await http.post(url, json=bodies[i]))

        async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients)) as http:
            started = time.perf_counter()
            await asyncio.gather(*(client(http) for _ in range(clients)))
            return rewards, time.perf_counter() - started

    return asyncio.run(go())


def retry_storm(app, bodies: list[dict], clients: int) -> dict:
    """Every body twice in a row to a fresh service: the judge time it spent per distinct request."""
    doubled = [b for b in bodies for _ in (0, 1)]
    with running_service(app) as base:
        rewards, seconds = concurrently(f"{base}/get_reward", doubled, clients)
        text = httpx.get(f"{base}/metrics").text
    return {"seconds": seconds, "rewards": rewards[::2],
            "completions_judged": metric(text, "pgenrm_batch_completions_sum"),
            "judge_seconds_per_distinct": metric(text, "pgenrm_batch_seconds_sum") / len(bodies)}


def run_service_bench(config_path, prompts: int, completions: int, clients: int, chains: int,
                      max_new_tokens: int, max_wait_ms: float, output: Path | None, console: Console) -> dict:
    from pgenrm_plugins.scoring import Scorer
    from pgenrm_plugins.server.app import ServerSettings, create_app

    cfg = config_dict(str(config_path) if config_path else None)
    cfg.setdefault("sampling", {}).update(chains=chains, max_new_tokens=max_new_tokens)
    bodies = openrlhf_samples(prompts, completions)
    with console.status("loading the judge..."):
        scorer = Scorer(cfg)
    settings = ServerSettings(max_wait_ms=max_wait_ms, max_batch_requests=max(64, clients), dedupe=False)
    try:
        with running_service(create_app(scorer, settings)) as base:
            url = f"{base}/get_reward"
            with console.status("warming up..."):
                one_at_a_time(url, bodies[:1])  # first-call costs (threads, allocator) on neither side
            with console.status(f"{len(bodies)} requests, one at a time..."):
                seq_rewards, seq_s = one_at_a_time(url, bodies)
            with console.status(f"the same {len(bodies)} requests, {clients} concurrent clients..."):
                conc_rewards, conc_s = concurrently(url, bodies, clients)
            batches = httpx.get(f"{base}/healthz").json()["batches"]
        storm = {}
        for dedupe in (False, True):
            name = "with de-duplication" if dedupe else "without de-duplication"
            with console.status(f"retry storm, {name}: {2 * len(bodies)} requests..."):
                storm[name] = retry_storm(create_app(scorer, settings.model_copy(update={"dedupe": dedupe})),
                                          bodies, clients)
    finally:
        scorer.close()
    n = len(bodies)
    max_diff = max(abs(a - b) for a, b in zip(seq_rewards, conc_rewards))
    rows = {
        "one at a time": {"seconds": seq_s, "rewards_per_s": n / seq_s},
        f"{clients} concurrent clients": {"seconds": conc_s, "rewards_per_s": n / conc_s},
    }
    ratio = seq_s / conc_s
    table = Table(title=f"{prompts} prompts x {completions} completions = {n} single-sample /get_reward requests, "
                        f"Ind-{chains}, chains up to {max_new_tokens} tokens, judge: {scorer.backend.name}",
                  title_justify="left")
    for col in ("clients", "seconds", "rewards/s", "speed-up"):
        table.add_column(col, justify="left" if col == "clients" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['seconds']:.1f}", f"{r['rewards_per_s']:.2f}",
                      f"{r['seconds'] and seq_s / r['seconds']:.1f}x")
    console.print(table)
    console.print(f"speed-up {ratio:.1f}x; largest reward difference between the two runs {max_diff:.2g}; "
                  f"backend batches in all {batches}", highlight=False)
    storm_table = Table(title=f"retry storm: each of the {n} requests sent twice, the second while the first is "
                              "in flight", title_justify="left")
    for col in ("service", "seconds", "completions judged", "judge s / distinct request", "answers that differ"):
        storm_table.add_column(col, justify="left" if col == "service" else "right")
    for name, r in storm.items():
        r["answers_that_differ"] = sum(abs(a - b) > 1e-4 for a, b in zip(r.pop("rewards"), seq_rewards))
        storm_table.add_row(name, f"{r['seconds']:.1f}", f"{r['completions_judged']:.0f}",
                            f"{r['judge_seconds_per_distinct']:.2f}", str(r["answers_that_differ"]))
    console.print(storm_table)
    report = {"prompts": prompts, "completions": completions, "requests": n, "clients": clients, "chains": chains,
              "max_new_tokens": max_new_tokens, "max_wait_ms": max_wait_ms, "backend": scorer.backend.name,
              "setups": rows, "speedup": ratio, "max_reward_difference": max_diff, "retry_storm": storm}
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report
