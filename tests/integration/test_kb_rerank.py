"""The optional rerank stage of a real `archon kb serve`, against a stand-in rerank endpoint in
the Jina/Cohere shape that vLLM and llama-server answer (no cross-encoder weights can be had
here): the reranker's order wins when it answers; on a timeout or an error the fused order
stands, the query still answers, and the outcome is counted."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tests.integration.test_kb import CORPORA, make_repo, sources_file
from tests.support.servers import free_port
from tests.support.stack import start_kb

pytestmark = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is missing")
QUERY = "how do I query series with a label matcher?"


class StandIn:
    """Scores the last document it is sent (the fused order's lowest candidate) 1.0 and the
    others 0.0; or stalls, or fails. (It preferred documents mentioning federation until issue
    25's smaller chunks left none among this query's candidates.)"""

    def __init__(self) -> None:
        self.mode = "prefer"
        self.requests: list[dict] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                stand_in.requests.append({"path": self.path, **body})
                if stand_in.mode == "slow":
                    time.sleep(3)
                if stand_in.mode == "error":
                    self.send_response(500)
                    self.end_headers()
                    self.wfile.write(b'{"error": "model crashed"}')
                    return
                results = [
                    {"index": i, "relevance_score": 1.0 if i == len(body["documents"]) - 1 else 0.0}
                    for i in range(len(body["documents"]))
                ]
                payload = json.dumps({"results": results}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, StandIn]]:
    tmp = tmp_path_factory.mktemp("rerank")
    sources = sources_file(tmp, make_repo(tmp))
    stand_in = StandIn()
    env = {
        "ARCHON_KB_RERANK_URL": stand_in.url,
        "ARCHON_KB_RERANK_MODEL": "bge-reranker-v2-m3",
        "ARCHON_KB_RERANK_TIMEOUT": "0.5",
        "ARCHON_KB_RERANK_CANDIDATES": "12",
    }
    try:
        server = start_kb(tmp, sources, env=env)
        try:
            yield server.url, stand_in
        finally:
            server.stop()
    finally:
        stand_in.server.shutdown()


def ask(url: str) -> list[dict]:
    response = httpx.post(f"{url}/query", json={"query": QUERY, "top_k": 5}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()["chunks"]


def outcomes(url: str) -> dict[str, float]:
    found = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("archon_kb_rerank_total{"):
            name, value = line.rsplit(" ", 1)
            found[name.split('"')[1]] = float(value)
    return found


def test_the_rerankers_order_wins(served: tuple[str, StandIn]) -> None:
    url, stand_in = served
    stand_in.mode = "prefer"
    stand_in.requests.clear()
    chunks = ask(url)
    request = stand_in.requests[-1]
    assert request["path"] == "/v1/rerank"
    assert request["model"] == "bge-reranker-v2-m3"
    assert request["query"] == QUERY
    assert len(request["documents"]) == 12 == request["top_n"]
    assert len(chunks) == 5
    # The fused order's last candidate comes first: the reranker's order wins.
    assert chunks[0]["score"] == 1.0
    assert chunks[0]["text"].strip()[:80] in request["documents"][-1]
    assert chunks[0]["text"].strip()[:80] not in request["documents"][0]
    assert outcomes(url).get("used", 0) >= 1


@pytest.mark.parametrize("mode", ["slow", "error"])
def test_without_the_reranker_the_fused_order_stands(served: tuple[str, StandIn], mode) -> None:
    url, stand_in = served
    stand_in.mode = mode
    before = outcomes(url)
    began = time.monotonic()
    chunks = ask(url)
    assert time.monotonic() - began < 2.5, "the rerank timeout bounds the wait"
    stand_in.mode = "prefer"
    assert len(chunks) == 5
    scores = [c["score"] for c in chunks]
    assert scores == sorted(scores, reverse=True)
    assert all(s < 0.1 for s in scores), "fused (RRF) scores, not the reranker's"
    label = "timeout" if mode == "slow" else "failed"
    assert outcomes(url).get(label, 0) == before.get(label, 0) + 1
