"""Start real ``archon serve`` processes on free ports and wait for them.

``wait_until`` (the one readiness wait, loud at its deadline), ``free_port`` and ``port_open``
are archon.readiness', which `archon up` uses too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from archon.readiness import free_port, port_in_use, wait_until

ARCHON = [sys.executable, "-m", "archon.cli"]
# The bundled model every test server serves, and the shared server's settings (conftest.py).
MODEL = "smollm2-135m-instruct"
SLOTS = 2
MAX_REQUEST_BYTES = 64 * 1024


def port_open(port: int) -> bool:
    return port_in_use(port)


@dataclass
class Server:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self, timeout: float = 60.0) -> None:
        self.wait_for(lambda: port_open(self.port), timeout, "listening", poll=0.05)

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.wait_for(
            lambda: httpx.get(f"{self.url}/health", timeout=2).status_code == 200, timeout
        )

    def wait_for(
        self, check: Callable[[], bool], timeout: float, what: str = "ready", poll: float = 0.1
    ) -> None:
        """Until ``check()``; loudly, with this server's log, when it exits or times out."""
        wait_until(
            check,
            timeout=timeout,
            what=f"{self.url} {what}",
            process=self.process,
            log=self.log,
            poll=poll,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    tmp: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None
) -> Server:
    port = port or free_port()
    log_path = tmp / f"serve-{port}.log"
    full_env = {**os.environ, "ARCHON_THREADS": "2", **(env or {})}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*ARCHON, "serve", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
        )
    return Server(process, port, log_path)


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*ARCHON, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
