"""A private, throwaway PostgreSQL server from the distribution's binaries (Debian:
/usr/lib/postgresql/<version>/bin), for the tests and `pgenrm bench lookup`.

initdb and postgres refuse to run as root, so as root they run as the `postgres` OS user
(`runuser -u postgres --`), in a temporary folder that user owns, on a free loopback port.
Durability is switched off (fsync=off): the server holds throwaway data and is deleted on stop.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from pgenrm_plugins.testing.serve import free_port

BIN_GLOB = "/usr/lib/postgresql/*/bin"


def find_bindir() -> Path | None:
    """The newest PostgreSQL bin folder that has initdb, or None."""
    found = [Path(d) for d in glob.glob(BIN_GLOB) if (Path(d) / "initdb").is_file()]
    found.sort(key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)
    if found:
        return found[-1]
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class LocalPostgres:
    def __init__(self, bindir: Path | None = None, settings: dict[str, str] | None = None):
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise RuntimeError(
                "no PostgreSQL server binaries (initdb) found under /usr/lib/postgresql/*/bin: "
                "apt-get install postgresql, or set a DSN of a running server"
            )
        self.settings = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", **(settings or {})}
        self.root: Path | None = None
        self.port: int | None = None
        self._proc: subprocess.Popen | None = None

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres connect_timeout=10"

    def start(self, timeout_s: float = 60) -> "LocalPostgres":
        self.root = Path(tempfile.mkdtemp(prefix="pgenrm-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        data = self.root / "data"
        subprocess.run(
            self._as_owner() + [str(self.bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                                "--no-sync", "-E", "UTF8", "--locale=C"],
            check=True, capture_output=True, text=True,
        )
        self.port = free_port()
        args = [str(self.bindir / "postgres"), "-D", str(data), "-p", str(self.port), "-k", str(self.root),
                "-c", "listen_addresses=127.0.0.1"]
        for key, value in self.settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.root / "server.log", "wb")
        self._proc = subprocess.Popen(self._as_owner() + args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.dsn).close()
                return self
            except psycopg.OperationalError:
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    text = (self.root / "server.log").read_text(errors="replace")[-2000:]
                    self.stop()
                    raise RuntimeError(f"PostgreSQL did not start:\n{text}") from None
                time.sleep(0.2)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            # SIGINT to the postmaster itself (runuser does not pass it on) = fast shutdown.
            pid_file = self.root / "data" / "postmaster.pid"
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGINT)
            except (OSError, ValueError, IndexError):
                self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def __enter__(self) -> "LocalPostgres":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
