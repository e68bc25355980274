"""A llama.cpp server that dies in the middle of a test module fails that module's tests with its
exit code and the tail of its log (the plugin in tests/llama_server.py), not with a string of
httpx ConnectErrors. Proven on the real server: a generated test module uses the real `llama_server`
fixture, kills the server with SIGSEGV in the middle and then talks to it; pytest runs that module
in a subprocess and we read what it reported."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.server

TESTS = Path(__file__).resolve().parent

CONFTEST = '''
import resource

import pytest

# no core file of the killed server in the test folder (and no time spent writing one)
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
pytest_plugins = ["llama_server"]
'''

MODULE = '''
import os
import signal
from pathlib import Path

import httpx
from llama_server import llama_server  # noqa: F401

from pgenrm_plugins.backends.base import GenerationRequest
from pgenrm_plugins.backends.openai_backend import OpenAIBackend, OpenAIOptions


def test_before(llama_server):
    assert httpx.get(f"{llama_server.base_url}/models", timeout=30).status_code == 200


def test_own_failure(llama_server):
    assert httpx.get(f"{llama_server.base_url}/models", timeout=30).status_code == 404, "its own failure"


def test_dies(llama_server):
    os.kill(llama_server.process.pid, signal.SIGSEGV)
    httpx.get(f"{llama_server.base_url}/models", timeout=30)


def test_later_request(llama_server):
    Path("ran-test_later_request").touch()
    httpx.get(f"{llama_server.base_url}/models", timeout=30)


def test_later_backend(llama_server):
    # would retry with back-off for about a minute before giving up
    Path("ran-test_later_backend").touch()
    backend = OpenAIBackend(OpenAIOptions(base_urls=[llama_server.base_url], max_retries=6, backoff_s=10))
    backend.generate([GenerationRequest([{"role": "user", "content": "Hi"}], max_new_tokens=2)])


def test_without_the_server():
    assert True
'''

# a server that dies after the module's last request: no test sees it, the module's teardown reports it
QUIET_DEATH = '''
import os
import signal

from llama_server import llama_server  # noqa: F401


def test_kills_and_leaves(llama_server):
    os.kill(llama_server.process.pid, signal.SIGSEGV)
'''


def test_a_server_killed_mid_module_fails_its_tests_with_exit_code_and_log(pytester, monkeypatch):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_inner=MODULE, test_quiet=QUIET_DEATH)
    monkeypatch.setenv("COLUMNS", "1000")  # the short summary shows the whole first line of each message
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    result = pytester.runpytest_subprocess("-rA", "-p", "no:cacheprovider", "--junitxml=junit.xml", timeout=300)
    out = result.stdout.str() + result.stderr.str()

    result.assert_outcomes(passed=3, failed=2, errors=3)
    # a test that fails on its own while the server runs keeps its own report
    result.stdout.fnmatch_lines(["FAILED test_inner.py::test_own_failure - AssertionError: its own failure*"])
    # (a) the test during which the server died: its exit code, the signal and the tail of its log
    # (llama.cpp's and uvicorn's start-up lines), in place of the client's error
    message = "llama.cpp server exited with code -11 (killed by SIGSEGV); the last lines of its log"
    failed = out.split("_ test_dies _", 1)[1].split("\n_", 1)[0]
    assert message in failed, out
    assert "Uvicorn running on http://127.0.0.1:" in failed and '"GET /v1/models HTTP/1.1" 200 OK' in failed, out
    result.stdout.fnmatch_lines([f"FAILED test_inner.py::test_dies - Failed: {message}*"])
    # (b) every later test that uses the fixture fails at once, before its body runs, with the same message
    result.stdout.fnmatch_lines_random([f"ERROR test_inner.py::test_later_request - Failed: {message}*",
                                        f"ERROR test_inner.py::test_later_backend - Failed: {message}*"])
    assert not list(pytester.path.glob("ran-*"))
    times = {case.get("name"): float(case.get("time"))
             for case in ET.parse(pytester.path / "junit.xml").iter("testcase")}
    assert times["test_later_request"] < 2 and times["test_later_backend"] < 2, times
    # not the client's errors
    for client_error in ("ConnectError", "RemoteProtocolError", "ReadError", "Connection refused", "gave up after"):
        assert client_error not in out, out
    assert out.count("exited with code -11") >= 3 * 2  # each report, and its line in the short summary
    # a death that no test saw is reported at the teardown of the module's last test
    result.stdout.fnmatch_lines([f"ERROR test_quiet.py::test_kills_and_leaves - Failed: {message}*"])
