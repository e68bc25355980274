"""`serve()` as a user runs it: its own process, the embedded judge loaded from the (default)
config, healthz up, then SIGTERM and a clean exit after draining."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def test_serve_starts_answers_health_and_stops_on_sigterm(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "pgenrm.yaml"
    config.write_text("sampling: {chains: 1, max_new_tokens: 8}\n")
    env = dict(os.environ, PGENRM_API_KEY="k")
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from pgenrm_plugins.server import serve; serve({str(config)!r}, '127.0.0.1', {port})"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "serve() did not come up in 120 s"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 401  # the env token is on
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Authorization": "Bearer k"})
        assert "pgenrm_queue_depth" in metrics.text
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught: exit by SIGTERM
        assert proc.wait(60) in (0, -signal.SIGTERM)
        log = proc.stdout.read()
        assert "Application shutdown complete" in log, log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
