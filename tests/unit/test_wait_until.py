"""tests/support's one readiness wait fails loudly: a dead process or a deadline raises, with
the log, instead of letting a fixture carry on."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from tests.support.servers import free_port, wait_until


def test_returns_once_the_check_holds_and_treats_connection_errors_as_not_yet() -> None:
    calls = []

    def check() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("not listening yet")
        return True

    wait_until(check, timeout=10, what="thing", poll=0)
    assert len(calls) == 3


def test_a_deadline_raises_with_the_log() -> None:
    with pytest.raises(TimeoutError, match=r"thing: not within 0.2s:\nthe log"):
        wait_until(lambda: False, timeout=0.2, what="thing", log=lambda: "the log", poll=0.05)


def test_a_process_that_exits_raises_with_its_status() -> None:
    process = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    process.wait()
    with pytest.raises(RuntimeError, match="the process exited 3"):
        wait_until(lambda: False, timeout=30, what="server", process=process)


def test_other_errors_of_the_check_are_not_swallowed() -> None:
    def check() -> bool:
        raise KeyError("bug in the check")

    with pytest.raises(KeyError):
        wait_until(check, timeout=5, what="thing")


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
