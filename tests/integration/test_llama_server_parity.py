"""The CPU engine's sampling against llama.cpp's own llama-server, the outside oracle.

Both run the same llama.cpp (llama-server is built from the sdist of the llama-cpp-python that
Archon pins, by benchmarks/build_llama_server.sh, which `make test` runs first). At temperature
0 both are deterministic, so for the same prompt tokens, penalties and logit bias they must
write the same text. llama-server's defaults match ours where it matters: the penalties look at
the last 64 tokens, prompt included (--repeat-last-n 64); top-k 40 / top-p 0.95 / min-p 0.05 only
narrow the candidates before the argmax of temperature 0, so they cannot change its pick.

Archon runs on a server of its own here, fresh like llama-server: llama.cpp's float results
depend a little on how a prompt is split into batches, so a KV prefix reused from an earlier,
different request (as on the suite's shared server) can turn one greedy pick 160 characters
later. That is batching, not sampling; both servers have it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from archon.modelserver.engines.llamacpp_native import use_repack
from tests.support.servers import MODEL, Server, free_port, start_server

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "List the parts of a Kubernetes cluster, then list them again, and again:"


@pytest.fixture(scope="module")
def llama_server(
    bundled_model_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    binary = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "build_llama_server.sh")],
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    ).stdout.strip()
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "llama-server.log"
    # The same weight layout as our engine's (cpu_repack=auto): byte parity needs the same
    # kernels, and AMX's crash llama-server too.
    import llama_cpp

    llama_cpp.llama_backend_init()
    repack = use_repack("auto", llama_cpp.llama_print_system_info())
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-m", str(bundled_model_path), "--host", "127.0.0.1", "--port", str(port),
             "-c", "2048", "-np", "1", "-t", "2", "--no-webui",
             "--repack" if repack else "--no-repack"],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    server = Server(process, port, log)
    try:
        server.wait_ready(timeout=120)
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        tmp_path_factory.mktemp("parity"), "--parallel", "1", "--max-model-len", "2048"
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _prompt_tokens(server: Server) -> list[int]:
    chat = httpx.post(
        f"{server.url}/tokenize", json={"messages": [{"role": "user", "content": PROMPT}]}
    )
    return chat.json()["tokens"]


CASES = {
    "plain": {},
    "frequency": {"frequency_penalty": 1.5},
    "presence": {"presence_penalty": 1.5},
    "repetition": {"repetition_penalty": 1.3},
    "all three": {"frequency_penalty": 0.5, "presence_penalty": 0.5, "repetition_penalty": 1.1},
    "negative": {"frequency_penalty": -1.0},
}


def _archon(server: Server, tokens: list[int], case: dict, bias: dict[str, float]) -> str:
    body = {"model": MODEL, "prompt": tokens, "max_tokens": 40, "temperature": 0,
            "ignore_eos": True, "logit_bias": bias, **case}  # fmt: skip
    r = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def _llama(url: str, tokens: list[int], case: dict, bias: dict[str, float]) -> str:
    body = {
        "prompt": tokens,
        "n_predict": 40,
        "temperature": 0,
        "ignore_eos": True,
        "cache_prompt": False,
        "repeat_last_n": 64,
        "frequency_penalty": case.get("frequency_penalty", 0.0),
        "presence_penalty": case.get("presence_penalty", 0.0),
        "repeat_penalty": case.get("repetition_penalty", 1.0),
        "logit_bias": [[int(k), v] for k, v in bias.items()],
    }
    r = httpx.post(f"{url}/completion", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["content"]


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_penalties_write_what_llama_server_writes(
    server: Server, llama_server: str, case: dict
) -> None:
    tokens = _prompt_tokens(server)
    ours = _archon(server, tokens, case, {})
    if case:  # the penalty changed something, so agreeing on it means something
        assert ours != _archon(server, tokens, {}, {})
    assert ours == _llama(llama_server, tokens, case, {})


def test_logit_bias_writes_what_llama_server_writes(server: Server, llama_server: str) -> None:
    tokens = _prompt_tokens(server)
    plain = _archon(server, tokens, {}, {})
    first = httpx.post(
        f"{server.url}/tokenize", json={"prompt": plain, "add_special_tokens": False}
    ).json()["tokens"][:3]
    bias = {str(t): -100.0 for t in first}
    ours = _archon(server, tokens, {"frequency_penalty": 0.3}, bias)
    assert ours != plain
    assert ours == _llama(llama_server, tokens, {"frequency_penalty": 0.3}, bias)
