"""Start real knowledge-base and agent processes for tests (model servers: servers.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.support.servers import ARCHON, Server, free_port

PROMETHEUS_DOCS = Path(__file__).resolve().parents[3] / "shared" / "corpora" / "prometheus"


def _spawn(tmp: Path, name: str, args: list[str], env: dict[str, str], port: int) -> Server:
    log_path = tmp / f"{name}-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*ARCHON, *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **env},
        )
    return Server(process, port, log_path)


def wait_for(
    server: Server, check: Callable[[str], bool], timeout: float = 300.0, what: str = "ready"
) -> None:
    server.wait_for(lambda: check(server.url), timeout, what, poll=0.2)


def querying_docs_sources(tmp: Path) -> Path:
    """A sources file over the Prometheus querying docs (7 files) of ../shared/corpora."""
    path = tmp / "sources.yaml"
    path.write_text(
        "sources:\n"
        "  - name: prometheus\n"
        f"    path: {PROMETHEUS_DOCS}\n"
        '    include: ["docs/querying/*.md"]\n'
        '    url_template: "https://docs.example.test/{path}#L{line}"\n'
    )
    return path


def start_kb(
    tmp: Path, sources: Path, port: int | None = None, env: dict[str, str] | None = None
) -> Server:
    """`archon kb serve`, returned once its first sync is done."""
    port = port or free_port()
    data = tmp / f"kb-data-{port}"
    server = _spawn(
        tmp,
        "kb",
        ["kb", "serve", "--sources", str(sources), "--port", str(port), "--sync-interval", "3600"],
        {"ARCHON_KB_DATA_DIR": str(data), **(env or {})},
        port,
    )

    def synced(url: str) -> bool:
        resp = httpx.get(url + "/sync", timeout=5)
        return resp.status_code == 200 and not resp.json()["running"] and resp.json()["last"]

    wait_for(server, synced, what="synced")
    return server


def start_agent(
    tmp: Path,
    upstreams: list[str],
    kb_url: str | None,
    env: dict[str, str] | None = None,
    port: int | None = None,
) -> Server:
    """`archon agent`, returned once it answers /health (upstreams may still be down)."""
    port = port or free_port()
    args = ["agent", "--port", str(port)]
    for url in upstreams:
        args += ["--upstream", url]
    args += ["--kb-url", kb_url] if kb_url else ["--no-kb"]
    # Generous KB timeout: on a loaded 2-core machine a query can take a second or two.
    server = _spawn(
        tmp,
        "agent",
        args,
        {"ARCHON_AGENT_KB_TIMEOUT": "30", "ARCHON_AGENT_HEALTH_INTERVAL": "1", **(env or {})},
        port,
    )
    wait_for(server, lambda url: httpx.get(url + "/health", timeout=2).status_code == 200)
    return server


def wait_agent_ready(agent: Server, healthy: int = 1, timeout: float = 120.0) -> None:
    def enough(url: str) -> bool:
        ups = httpx.get(url + "/ready", timeout=5).json()["upstreams"]
        return sum(u["healthy"] for u in ups) >= healthy

    wait_for(agent, enough, timeout, what=f"routing to {healthy} upstream(s)")


@contextmanager
def running_agent(
    tmp: Path,
    upstreams: list[str],
    kb_url: str | None,
    env: dict[str, str] | None = None,
    healthy: int = 1,
) -> Iterator[Server]:
    """`archon agent` routing to ``healthy`` of its upstreams, stopped on the way out."""
    agent = start_agent(tmp, upstreams, kb_url, env=env)
    try:
        wait_agent_ready(agent, healthy)
        yield agent
    finally:
        agent.stop()
