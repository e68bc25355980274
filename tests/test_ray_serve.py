"""The scoring service as a Ray Serve deployment: a local Ray cluster on CPU, 2 replicas each
loading the real embedded judge, requests through Ray's HTTP proxy, answers compared with the same
judge in this process.

Costs on the 2-core machine (printed with -s): starting Ray about 5-15 s, the 2 replicas (import
torch, load the judge) another 20-60 s; the whole test about a minute.
"""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest

from pgenrm_plugins.frameworks.openrlhf import prompt_of
from pgenrm_plugins.scoring import Scorer
from pgenrm_plugins.testing.serve import free_port

try:
    import ray
    from ray import serve

    from pgenrm_plugins.server.ray_serve import APP_NAME, build_app
except ImportError as exc:  # the Makefile installs the ray extra: a missing Ray is a broken environment
    pytest.fail(f"needs the ray extra: pip install 'pgenrm-plugins[ray]' ({exc})", pytrace=False)

# The same tiny judge settings as tests/test_server.py: the judge runs end to end, briefly.
JUDGE_CONFIG = {"sampling": {"chains": 1, "max_new_tokens": 8, "seed": 3}}
HISTORY = [{"prompt": "What is a good name for a cat?", "chosen": "Miso.",
            "rejected": "Choosing a name is personal! Many people pick names from food or books."}]
PROMPT = "<|im_start|>user\nHow can I fall asleep faster?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def ray_service():
    """Ray on this machine with 2 CPUs, Serve's proxy on a free loopback port, 2 replicas."""
    port = free_port()
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False,
             namespace="pgenrm-test")
    t1 = time.perf_counter()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(JUDGE_CONFIG, {"api_key": "k", "max_wait_ms": 200}, replicas=2, replica_cpus=1),
                  name=APP_NAME, route_prefix="/")
        t2 = time.perf_counter()
        print(f"\nRay started in {t1 - t0:.1f}s; 2 replicas up in {t2 - t1:.1f}s")
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_replicas_serve_correct_rewards_over_http(ray_service, judge):
    url, auth = ray_service, {"Authorization": "Bearer k"}
    # both replicas are up and answering through the proxy (each reports its own process id)
    pids = set()
    for _ in range(200):
        r = httpx.get(f"{url}/healthz", timeout=30)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        pids.add(r.json()["pid"])
        if len(pids) == 2:
            break
    assert len(pids) == 2, pids

    rows = [{"user_id": user, "history": HISTORY, "prompt": "How can I fall asleep faster?", "completions": [c]}
            for user in ("ann", "bob") for c in ("Keep a fixed bedtime.", "Sleep is complicated.")]
    samples = [{"query": [PROMPT + c + "<|im_end|>"], "prompts": [PROMPT],
                "labels": [json.dumps({"user_id": "cy", "history": HISTORY})]} for c in ("Warm milk.", "Count sheep.")]

    async def go():
        async with httpx.AsyncClient(timeout=300, headers=auth) as http:
            return await asyncio.gather(*(http.post(f"{url}/v1/score", json=row) for row in rows),
                                        *(http.post(f"{url}/get_reward", json=s) for s in samples))
    replies = asyncio.run(go())
    assert [r.status_code for r in replies] == [200] * 6, [r.text for r in replies]

    # the same requests scored by the same judge in this process (a reward never depends on its batch-mates)
    local = Scorer(JUDGE_CONFIG, backend=judge)
    want = [res.rewards[0] for res in local.score(rows)]
    want += [res.rewards[0] for res in local.score(
        [{"user_id": "cy", "history": HISTORY, "prompt": prompt_of(PROMPT), "completions": [c]}
         for c in ("Warm milk.", "Count sheep.")])]
    got = [r.json()["rewards"][0] for r in replies]
    assert got == pytest.approx(want, abs=1e-4)
    assert all(0.0 <= x <= 1.0 for x in got)

    # the service's own checks hold behind the proxy
    assert httpx.post(f"{url}/v1/score", json=rows[0], timeout=30).status_code == 401
    r = httpx.post(f"{url}/v1/score", json=dict(rows[0], completions=[]), headers=auth, timeout=30)
    assert r.status_code == 422 and "completions" in r.json()["detail"]
    assert "pgenrm_batch_completions" in httpx.get(f"{url}/metrics", headers=auth, timeout=30).text
