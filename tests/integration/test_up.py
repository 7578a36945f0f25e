"""`archon up`: the whole stack from one command, asked through the `openai` SDK, stopped by
Ctrl-C (SIGINT) with nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.servers import ARCHON, MODEL, free_port, port_open
from tests.support.stack import querying_docs_sources

pytestmark = pytest.mark.slow


def as_from_a_terminal() -> None:
    """Ctrl-C reaches `archon up` even when the test run itself ignores SIGINT (started under
    nohup or `&`): a process that starts with SIGINT ignored keeps ignoring it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt(process: subprocess.Popen) -> int:
    """Ctrl-C for `archon up`; its exit status once it has stopped everything."""
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


def test_up_starts_everything_answers_with_sources_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    ports = {"model": free_port(), "kb": free_port(), "agent": free_port()}
    out = (tmp_path / "up.out").open("w+")
    process = subprocess.Popen(
        [
            *ARCHON,
            "up",
            "--sources",
            str(querying_docs_sources(tmp_path)),
            "--model-port",
            str(ports["model"]),
            "--kb-port",
            str(ports["kb"]),
            "--agent-port",
            str(ports["agent"]),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=as_from_a_terminal,
        env={**os.environ, "ARCHON_THREADS": "2", "ARCHON_AGENT_KB_TIMEOUT": "30"},
    )
    try:
        deadline = time.monotonic() + 600
        while "Press Ctrl-C" not in (tmp_path / "up.out").read_text():
            assert process.poll() is None, (tmp_path / "up.out").read_text()
            assert time.monotonic() < deadline, (tmp_path / "up.out").read_text()
            time.sleep(0.5)
        banner = (tmp_path / "up.out").read_text()
        agent_url = f"http://127.0.0.1:{ports['agent']}"
        assert f"Chat page       {agent_url}/" in banner
        assert "knowledge base ready" in banner

        client = openai.OpenAI(base_url=agent_url + "/v1", api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What does the histogram_quantile function do?"}],
            max_tokens=16,
        )
        assert raw.headers["x-archon-rag"] == "used"
        paths = {s["path"] for s in raw.parse().model_extra["sources"]}
        assert "docs/querying/functions.md" in paths
        assert httpx.get(agent_url + "/", timeout=10).status_code == 200  # the chat page
    finally:
        code = interrupt(process)
    assert code == 0, (tmp_path / "up.out").read_text()
    time.sleep(0.5)
    for name, port in ports.items():
        assert not port_open(port), f"the {name} still listens on {port}"
    assert (tmp_path / "data" / "logs" / "agent.log").is_file()


def test_up_refuses_a_busy_port_and_names_the_flag(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        result = subprocess.run(
            [
                *ARCHON,
                "up",
                "--no-kb",
                "--agent-port",
                str(port),
                "--model-port",
                str(free_port()),
                "--data-dir",
                str(tmp_path),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
    assert result.returncode == 2
    assert f"port {port} (the agent) is in use; choose another with --agent-port" in result.stderr


def children(pid: int) -> dict[int, str]:
    """The direct child processes of ``pid`` and their command lines (from /proc)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found[int(entry.name)] = cmdline
    return found


def test_up_restarts_a_part_that_dies_and_the_agent_answers_degraded_meanwhile(
    tmp_path: Path,
) -> None:
    ports = {"model": free_port(), "agent": free_port()}
    out_path = tmp_path / "up.out"
    process = subprocess.Popen(
        [
            *ARCHON,
            "up",
            "--no-kb",
            "--model-port",
            str(ports["model"]),
            "--agent-port",
            str(ports["agent"]),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=out_path.open("w"),
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=as_from_a_terminal,
        env={**os.environ, "ARCHON_THREADS": "2", "ARCHON_AGENT_HEALTH_INTERVAL": "1"},
    )

    def wait_output(text: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while text not in out_path.read_text():
            assert process.poll() is None, out_path.read_text()
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.3)

    agent_url = f"http://127.0.0.1:{ports['agent']}"
    client = openai.OpenAI(base_url=agent_url + "/v1", api_key="unused", max_retries=0)
    ask = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    try:
        wait_output("Press Ctrl-C")
        (model_pid,) = [p for p, cmd in children(process.pid).items() if " serve " in cmd]
        os.kill(model_pid, signal.SIGKILL)
        wait_output("the model server exited with status -9; restarting it in 1s", 30)
        # Meanwhile the agent stays up and says why it cannot answer (or, if the restarted
        # server loaded that fast, answers).
        try:
            client.chat.completions.create(**ask)
        except openai.InternalServerError as exc:
            assert exc.status_code == 503
            assert exc.body["code"] == "no_healthy_upstream"
        wait_output("model server: restarted (1 of 5 in a row)", 30)
        wait_output("model server is back at", 300)
        deadline = time.monotonic() + 30  # the agent's next health round finds it
        while httpx.get(agent_url + "/ready", timeout=5).status_code != 200:
            assert time.monotonic() < deadline, out_path.read_text()
            time.sleep(0.3)
        assert client.chat.completions.create(**ask).choices[0].message.content is not None
        assert process.poll() is None  # up kept going
    finally:
        code = interrupt(process)
    assert code == 0, out_path.read_text()
    for name, port in ports.items():
        assert not port_open(port), f"the {name} still listens on {port}"


def test_a_part_that_keeps_dying_stops_up_after_the_restarts(tmp_path: Path) -> None:
    from archon.stack import Part, PartFailed, supervise

    # A real `archon serve` that exits at once (a bad port): every restart fails the same way.
    part = Part("model server", ["serve", "--port", "-1"], "http://127.0.0.1:9", tmp_path / "l")
    part.start()
    said: list[str] = []
    began = time.monotonic()
    with pytest.raises(PartFailed, match="again after 3 restarts in a row") as failed:
        supervise([part], said.append, delays=(0.1, 0.2, 0.4), stable_after=60, poll=0.05)
    assert failed.value.part is part
    assert time.monotonic() - began < 60
    restarts = [line for line in said if line.startswith("model server: restarted")]
    assert restarts == [f"model server: restarted ({n} of 3 in a row)" for n in (1, 2, 3)]
    assert "restarting it in 0.4s (the agent answers 503 no_healthy_upstream meanwhile)" in (
        "\n".join(said)
    )
    assert "port" in part.log_tail()  # the reason is in its log, shown with the first death
