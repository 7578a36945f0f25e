"""Beyond `max_waiting` queued requests the server answers 503 at once instead of piling up."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.support.servers import start_server

MODEL = "smollm2-135m-instruct"
LONG = {"model": MODEL, "prompt": "List numbers:", "max_tokens": 400, "ignore_eos": True}


def _gauge(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(name)


async def _wait_for(url: str, name: str, value: float) -> None:
    deadline = time.monotonic() + 30
    while _gauge(url, name) < value:
        assert time.monotonic() < deadline, f"{name} never reached {value}"
        await asyncio.sleep(0.02)


def test_full_queue_is_503_queue_full(tmp_path: Path) -> None:
    srv = start_server(tmp_path, "--parallel", "1", env={"ARCHON_MAX_WAITING": "1"})
    try:
        srv.wait_ready()

        async def main() -> httpx.Response:
            async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
                running = asyncio.create_task(client.post("/v1/completions", json=LONG))
                await _wait_for(srv.url, "vllm:num_requests_running", 1)
                queued = asyncio.create_task(client.post("/v1/completions", json=LONG))
                await _wait_for(srv.url, "vllm:num_requests_waiting", 1)
                refused = await client.post("/v1/completions", json=LONG)
                running.cancel()
                queued.cancel()
                return refused

        refused = asyncio.run(main())
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "queue_full"
    finally:
        srv.stop()
