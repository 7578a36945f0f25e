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

from tests.conftest import MODEL
from tests.support.servers import ARCHON, free_port, port_open
from tests.support.stack import querying_docs_sources

pytestmark = pytest.mark.slow


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
        process.send_signal(signal.SIGINT)
        try:
            code = process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
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
