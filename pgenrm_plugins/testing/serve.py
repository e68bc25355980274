"""`pgenrm serve` in its own process, as a user starts it, for the tests and the benchmarks that
need one real shared service (and its own memory, apart from the caller's)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, name: str) -> float:
    """One unlabelled sample of a Prometheus text page (0.0 when absent: nothing counted yet)."""
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


class ServeProcess:
    def __init__(self, proc: subprocess.Popen, url: str, log: Path):
        self.proc, self.url, self.log = proc, url, log

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=30).text

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]


@contextmanager
def pgenrm_serve(config: str | os.PathLike, port: int | None = None, *args: str,
                 start_timeout_s: float = 180) -> Iterator[ServeProcess]:
    """Start `pgenrm serve --config CONFIG --port PORT ARGS...`, wait for /healthz, yield it; on exit
    SIGTERM (the service drains), then kill if it lingers."""
    port = port or free_port()
    exe = shutil.which("pgenrm", path=str(Path(sys.executable).parent)) or "pgenrm"
    log = Path(tempfile.mkstemp(prefix="pgenrm-serve-", suffix=".log")[1])
    with log.open("w") as out:
        proc = subprocess.Popen([exe, "serve", "--config", str(config), "--port", str(port),
                                 "--log-level", "warning", *args], stdout=out, stderr=subprocess.STDOUT)
    served = ServeProcess(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"pgenrm serve exited with {proc.returncode}:\n{served.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"pgenrm serve did not answer /healthz in {start_timeout_s:.0f} s:\n"
                                   f"{served.log_tail()}")
            try:
                if httpx.get(f"{served.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.unlink(missing_ok=True)
