"""Starting local servers: a free port, whether one is taken, and waiting until one is ready.

`archon up` checks its ports and waits for its parts with these; tests and benchmarks start
their servers with them too (tests/support/servers.py re-exports them).
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable

import httpx


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_in_use(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Whether something accepts connections on ``host:port``."""
    with socket.socket() as s:
        s.settimeout(timeout)
        return s.connect_ex((host, port)) == 0


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    process: subprocess.Popen[bytes] | None = None,
    log: Callable[[], str] = str,
    poll: float = 0.1,
) -> None:
    """Return once ``check()`` is true; raise when ``process`` exits first (RuntimeError) or the
    deadline passes (TimeoutError), with ``log()`` in the message. A check that raises
    httpx.HTTPError or OSError (not listening yet) counts as not yet; any other error is the
    check's own and goes to the caller."""
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{what}: the process exited {process.returncode}:\n{log()}")
        try:
            if check():
                return
        except (httpx.HTTPError, OSError):
            pass
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g}s:\n{log()}")
        time.sleep(poll)
