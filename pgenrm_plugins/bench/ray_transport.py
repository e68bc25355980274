"""`pgenrm bench ray-transport`: inside a Ray cluster, does calling the scoring deployment through a
Ray Serve handle beat HTTP through Serve's proxy?

Only the transport is measured: one deployment answers both ways with the same ready-made reply
(a `ScoreResult` per request, shaped as `/v1/score` answers), so the judge's time, the same either
way, does not hide the difference. The caller is a Ray actor, as verl's reward workers and
OpenRLHF's rollout actors are, sending one verl-shaped sample per call, `concurrency` at a time.
Set the printed per-call cost beside the judge's time per sample (`pgenrm bench workers`).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pgenrm_plugins.bench.speed import grpo_batch
from pgenrm_plugins.types import Components, ScoreResult

APP = "pgenrm-transport-bench"


def sample_bodies(samples: int) -> list[dict]:
    """One /v1/score body per sample: a user, history, prompt and one completion."""
    requests = grpo_batch(max(1, samples // 8 + 1), 8)
    bodies = []
    for r in requests:
        for c in r.completions:
            bodies.append(r.model_copy(update={"completions": [c], "reference": None}).model_dump(mode="json"))
    return bodies[:samples]


def _answer(body: dict) -> dict:
    completions = len(body.get("completions", []))
    return ScoreResult(rewards=[0.5] * completions, components=Components(chains_sampled=1)).model_dump(mode="json")


def _deployment():
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(num_replicas=1, max_ongoing_requests=512, ray_actor_options={"num_cpus": 0})
    @serve.ingress(api)
    class Answerer:
        @api.post("/v1/score")
        async def http(self, body: dict) -> dict:  # a dict parameter is the JSON body
            return _answer(body)

        async def score(self, body: dict) -> dict:
            return _answer(body)

    return Answerer.bind()


def _caller_class():
    import ray

    @ray.remote(num_cpus=0)
    class Caller:
        """Stands where a reward worker stands: in the cluster, calling the deployment."""

        async def run(self, how: str, url: str, bodies: list[dict], concurrency: int) -> dict:
            import asyncio

            import httpx
            from ray import serve

            handle = serve.get_app_handle(APP)
            gate = asyncio.Semaphore(concurrency)
            latencies: list[float] = []

            async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency)) as http:
                async def one(body):
                    async with gate:
                        t = time.perf_counter()
                        if how == "http":
                            response = await http.post(f"{url}/v1/score", json=body)
                            response.raise_for_status()
                            response.json()
                        else:
                            await handle.score.remote(body)
                        latencies.append(time.perf_counter() - t)

                await one(bodies[0])  # connection set-up and first-call costs, on neither side
                latencies.clear()
                started = time.perf_counter()
                await asyncio.gather(*(one(b) for b in bodies))
                wall = time.perf_counter() - started
            return {"wall_s": wall, "latencies": latencies}

    return Caller


def run_ray_transport(samples: int, concurrency: int, rounds: int, output: Path | None, console: Console) -> dict:
    import ray
    from ray import serve

    from pgenrm_plugins.testing.serve import free_port

    bodies = sample_bodies(samples)
    port = free_port()
    with console.status("starting Ray and the deployment..."):
        ray.init(include_dashboard=False, log_to_driver=False, namespace=APP, object_store_memory=128 * 1024**2)
    try:
        with console.status("starting Ray and the deployment..."):
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(_deployment(), name=APP, route_prefix="/")
            caller = _caller_class().remote()
        url = f"http://127.0.0.1:{port}"
        runs: dict[str, list[dict]] = {"HTTP through Serve's proxy": [], "Ray Serve handle": []}
        with console.status(f"{rounds} rounds of {len(bodies)} calls each way, alternating..."):
            for _ in range(rounds):  # alternate, so a busy moment of the machine hits both
                for name, how in (("HTTP through Serve's proxy", "http"), ("Ray Serve handle", "handle")):
                    runs[name].append(ray.get(caller.run.remote(how, url, bodies, concurrency)))
    finally:
        serve.shutdown()
        ray.shutdown()
    rows = {}
    for name, rs in runs.items():
        lat = sorted(x for r in rs for x in r["latencies"])
        rows[name] = {"median_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))],
                      "calls_per_s": sum(len(r["latencies"]) for r in rs) / sum(r["wall_s"] for r in rs)}
    table = Table(title=f"{len(bodies)} one-sample /v1/score calls x {rounds} rounds, {concurrency} in flight, from "
                        "a Ray actor; the reply is ready-made (transport only)", title_justify="left")
    for col in ("transport", "latency ms (median)", "latency ms (p95)", "calls/s"):
        table.add_column(col, justify="left" if col == "transport" else "right")
    for name, r in rows.items():
        table.add_row(name, f"{r['median_ms']:.1f}", f"{r['p95_ms']:.1f}", f"{r['calls_per_s']:.0f}")
    console.print(table)
    http, handle = rows["HTTP through Serve's proxy"], rows["Ray Serve handle"]
    console.print(f"the handle's calls/s: {handle['calls_per_s'] / http['calls_per_s']:.2f}x HTTP's; set the "
                  "per-call cost beside the judge's seconds per sample from `pgenrm bench workers`.", highlight=False)
    report = {"samples": len(bodies), "concurrency": concurrency, "rounds": rounds, "transports": rows}
    if output:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2))
    return report
