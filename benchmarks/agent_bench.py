# ruff: noqa: E501  (the Markdown report template has long table rows)
"""Agent overhead benchmark: what `archon agent` adds over a direct call to a model server, against
the LiteLLM proxy, same fake upstream, same client, same machine, interleaved in the same run.

Targets: the fake upstream itself (direct), `archon agent` with retrieval off (`--no-kb`), the
same agent with retrieval on against a fake knowledge base (and with it turned off per request by
`"archon": {"rag": false}`), the agent with retrieval off and a named key whose (never reached)
limits are counted in the process (`archon-limits`) or in a local redis-server
(`archon-limits-redis`), and LiteLLM's proxy (one worker, no database, no callbacks). The
upstream and the knowledge base are tiny raw-asyncio HTTP/1.1 servers in their own processes,
far faster than any target, so what is measured is the proxy's own cost. For each target:
non-streamed latency at concurrency 1 (p50/p99), time to the first content chunk of a stream at
concurrency 1 (p50/p99), and requests/s with 32 concurrent clients. Added latency is target
minus direct. Targets take turns (blocks of 50 requests at concurrency 1, one load phase each per
round), so that other load on the machine hits them all alike.

    .venv/bin/python benchmarks/agent_bench.py                 # about 4 minutes
    .venv/bin/python benchmarks/agent_bench.py --quick         # under a minute
    .venv/bin/python benchmarks/agent_bench.py --write docs/benchmarks.md

LiteLLM lives in its own venv: `bash scripts/setup-litellm-venv.sh` (or `make bench-agent`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from report import percentile, replace_section

from archon.readiness import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent

RESULTS = ROOT / "benchmarks" / "results"
LOGS = Path(tempfile.gettempdir())  # main() makes a fresh folder for servers' logs and configs
LITELLM_VENV = ROOT / ".venv-litellm"
BASELINE_SRC = ""  # --baseline-src
MODEL = "fake"
# The fake upstream's answer; the first content piece is the marker the stream timer waits for.
FIRST_PIECE = "Benchmarked-answer:"
PIECES = [FIRST_PIECE, " readiness", " probes", " gate", " traffic."]
ANSWER = "".join(PIECES)
QUESTION = "How do Kubernetes readiness probes decide when a pod gets traffic?"


def run(coro):
    """asyncio.run on uvloop (a dependency of archon, via uvicorn[standard]) where it is there."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --------------------------------------------------------------------------------------------
# Fake servers: raw asyncio HTTP/1.1 with keep-alive, no framework, canned responses.
# --------------------------------------------------------------------------------------------


def _chunk_text(i: int) -> str:
    words = (
        "A readiness probe tells the kubelet when a container can accept traffic; until it "
        "passes, the pod's IP stays out of the Service endpoints. "
    )
    return f"[{i}] " + (words * 8)[:800]


KB_CHUNKS = [
    {
        "id": f"docs/probes.md#{i}",
        "score": round(0.9 - i * 0.05, 3),
        "text": _chunk_text(i),
        "heading_path": ["Pods", "Probes", f"Part {i}"],
        "source": "kubernetes",
        "path": "docs/probes.md",
        "start_line": 10 + 20 * i,
        "end_line": 29 + 20 * i,
        "url": f"https://example.com/docs/probes.md#L{10 + 20 * i}",
        "commit": "0123456789abcdef0123456789abcdef01234567",
    }
    for i in range(4)
]


def _response(status: str, body: bytes, ctype: bytes = b"application/json") -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\ncontent-type: " + ctype
        + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )  # fmt: skip


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class FakeHTTP(asyncio.Protocol):
    """One connection: parses pipelined HTTP/1.1 requests (Content-Length or chunked bodies)."""

    def __init__(self, handler) -> None:
        self.handler = handler
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = bytes(self.buf[:end]).split(b"\r\n")
            method, target = lines[0].split(b" ", 2)[:2]
            length, chunked, close = 0, False, False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
                elif name == b"connection" and value.strip().lower() == b"close":
                    close = True
            start = end + 4
            if chunked:
                body, consumed = bytearray(), start
                while True:
                    eol = self.buf.find(b"\r\n", consumed)
                    if eol < 0:
                        return
                    size = int(bytes(self.buf[consumed:eol]).split(b";")[0], 16)
                    if size == 0:
                        tail = self.buf.find(b"\r\n\r\n", eol)
                        if tail < 0:
                            return
                        consumed = tail + 4
                        break
                    if len(self.buf) < eol + 2 + size + 2:
                        return
                    body += self.buf[eol + 2 : eol + 2 + size]
                    consumed = eol + 2 + size + 2
                del self.buf[:consumed]
                body = bytes(body)
            else:
                if len(self.buf) < start + length:
                    return
                body = bytes(self.buf[start : start + length])
                del self.buf[: start + length]
            self.transport.write(self.handler(method, target.split(b"?")[0], body))
            if close:
                self.transport.close()
                return


def upstream_handler():
    models = json.dumps(
        {
            "object": "list",
            "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}],
        }
    ).encode()
    usage = {
        "prompt_tokens": 40,
        "completion_tokens": len(PIECES),
        "total_tokens": 40 + len(PIECES),
    }
    cache: dict[tuple[str, bool, bool], bytes] = {}

    def completion(model: str) -> bytes:
        return _response(
            "200 OK",
            json.dumps(
                {
                    "id": "chatcmpl-bench",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": ANSWER},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            ).encode(),
        )

    def stream(model: str, include_usage: bool) -> bytes:
        def event(delta: dict, finish: str | None = None, **extra) -> bytes:
            payload = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
                **extra,
            }
            return _chunked(b"data: " + json.dumps(payload).encode() + b"\n\n")

        parts = [event({"role": "assistant", "content": ""})]
        parts += [event({"content": piece}) for piece in PIECES]
        parts.append(event({}, "stop"))
        if include_usage:
            payload = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": model,
                "choices": [],
                "usage": usage,
            }
            parts.append(_chunked(b"data: " + json.dumps(payload).encode() + b"\n\n"))
        parts.append(_chunked(b"data: [DONE]\n\n"))
        head = (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        return head + b"".join(parts) + b"0\r\n\r\n"

    def handle(method: bytes, path: bytes, body: bytes) -> bytes:
        if path.endswith(b"/chat/completions") and method == b"POST":
            try:
                request = json.loads(body)
            except ValueError:
                return _response("400 Bad Request", b'{"error":"bad json"}')
            model = str(request.get("model") or MODEL)
            streamed = bool(request.get("stream"))
            include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
            key = (model, streamed, include_usage)
            if key not in cache:
                cache[key] = stream(model, include_usage) if streamed else completion(model)
            return cache[key]
        if path.endswith(b"/models"):
            return _response("200 OK", models)
        if path in (b"/health", b"/ready", b"/healthz", b"/"):
            return _response("200 OK", b'{"status":"ok"}')
        return _response("404 Not Found", b'{"error":"not found"}')

    return handle


def kb_handler():
    answer = _response("200 OK", json.dumps({"chunks": KB_CHUNKS, "took_ms": 0.1}).encode())

    def handle(method: bytes, path: bytes, body: bytes) -> bytes:
        if path == b"/query" and method == b"POST":
            return answer
        if method == b"GET":
            return _response("200 OK", b'{"status":"ok"}')
        return _response("404 Not Found", b'{"error":"not found"}')

    return handle


def serve_fake(kind: str, port: int) -> None:
    handler = upstream_handler() if kind == "upstream" else kb_handler()

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: FakeHTTP(handler), "127.0.0.1", port, backlog=1024, reuse_address=True
        )
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        run(serve())


# --------------------------------------------------------------------------------------------
# Processes
# --------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGTERM it if the benchmark dies, even by SIGKILL."""
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Processes:
    """Started servers, each in its own process group, all stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, cmd: list[str], env: dict[str, str | None] | None = None
    ) -> subprocess.Popen:
        log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None},
            preexec_fn=_die_with_parent,
            cwd=ROOT,
        )
        log.close()
        self.procs.append((name, proc))
        return proc

    def stop(self) -> None:
        for _, proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for _, proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.clear()


def wait_ready(name: str, url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    import urllib.request

    def ready() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200

    def log_tail() -> str:
        log = LOGS / f"{name}.log"
        return "last log lines:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])

    wait_until(ready, timeout=timeout, what=f"{name}: {url}", process=proc, log=log_tail, poll=0.2)


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process and all its descendants (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        if current in stats:
            total += stats[current][1]
        todo += [child for child, (ppid, _) in stats.items() if ppid == current]
    return total


# --------------------------------------------------------------------------------------------
# Client: one aiohttp session per phase, keep-alive, the same for every target.
# --------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    url: str  # base URL, requests go to {url}/v1/chat/completions
    pid: int | None = None  # the proxy process whose CPU time is counted
    extra: dict = field(default_factory=dict)  # merged into every request body


def body(target: Target, stream: bool, i: int) -> bytes:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful platform assistant."},
                {"role": "user", "content": f"{QUESTION} (#{i})"},
            ],
            "max_tokens": 16,
            "temperature": 0,
            "stream": stream,
            **target.extra,
        }
    ).encode()


# Both proxies check this key (LiteLLM refuses to start without a master key); direct ignores it.
API_KEY = "sk-" + os.urandom(24).hex()
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {API_KEY}"}


async def one(session, url: str, payload: bytes, stream: bool) -> tuple[bool, float]:
    """One request; returns (ok, seconds to the whole answer or to the first content piece)."""
    marker = FIRST_PIECE.encode()
    began = time.perf_counter()
    try:
        async with session.post(url, data=payload, headers=HEADERS) as response:
            if not stream:
                data = await response.read()
                return (
                    response.status == 200 and ANSWER.encode() in data,
                    time.perf_counter() - began,
                )
            seen, first = bytearray(), None
            async for piece in response.content.iter_any():
                seen += piece
                if first is None and marker in seen:
                    first = time.perf_counter() - began
            ok = response.status == 200 and first is not None and b"[DONE]" in seen
            return ok, first if first is not None else float("nan")
    except Exception:  # a failed request is a result, not a crash of the benchmark
        return False, float("nan")


def _session(concurrency: int):
    import aiohttp

    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency, force_close=False),
        timeout=aiohttp.ClientTimeout(total=60),
    )


async def sequential(target: Target, n: int, stream: bool, offset: int) -> tuple[list[float], int]:
    url = target.url + "/v1/chat/completions"
    times, failed = [], 0
    async with _session(1) as session:
        for i in range(n):
            ok, seconds = await one(session, url, body(target, stream, offset + i), stream)
            if ok:
                times.append(seconds)
            else:
                failed += 1
    return times, failed


async def load(
    target: Target, concurrency: int, seconds: float
) -> tuple[int, int, float, list[float]]:
    url = target.url + "/v1/chat/completions"
    payloads = [body(target, False, i) for i in range(64)]
    done, failed, times = 0, 0, []
    async with _session(concurrency) as session:
        began = time.perf_counter()
        stop = began + seconds

        async def worker(w: int) -> None:
            nonlocal done, failed
            i = w
            while time.perf_counter() < stop:
                ok, t = await one(session, url, payloads[i % 64], False)
                i += concurrency
                if ok:
                    done += 1
                    times.append(t)
                else:
                    failed += 1

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - began
    return done, failed, wall, times


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


@dataclass
class Result:
    """Samples (milliseconds) kept per round."""

    target: str
    latency_ms: list[list[float]] = field(default_factory=list)
    ttft_ms: list[list[float]] = field(default_factory=list)
    load_ms: list[list[float]] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    cpu_ms_per_request: list[float] = field(default_factory=list)
    requests: int = 0
    failed: int = 0


def per_round(rounds: list[list[float]], q: float) -> float:
    """The median over rounds of each round's q-th percentile."""
    values = [percentile(r, q) for r in rounds if r]
    return statistics.median(values) if values else float("nan")


def summary(r: Result) -> dict:
    def pooled(rounds: list[list[float]], q: float) -> float:
        return percentile([x for one in rounds for x in one], q)

    return {
        "target": r.target,
        "p50_ms": pooled(r.latency_ms, 50),
        "p99_ms": pooled(r.latency_ms, 99),
        "ttft_p50_ms": pooled(r.ttft_ms, 50),
        "ttft_p99_ms": pooled(r.ttft_ms, 99),
        "rps": statistics.median(r.rps) if r.rps else float("nan"),
        "load_p50_ms": pooled(r.load_ms, 50),
        "load_p99_ms": pooled(r.load_ms, 99),
        "cpu_ms_per_request": (
            statistics.median(r.cpu_ms_per_request) if r.cpu_ms_per_request else float("nan")
        ),
        "median_of_rounds": {
            "p50_ms": per_round(r.latency_ms, 50),
            "p99_ms": per_round(r.latency_ms, 99),
            "ttft_p50_ms": per_round(r.ttft_ms, 50),
            "ttft_p99_ms": per_round(r.ttft_ms, 99),
        },
        "rounds": {
            "p50_ms": [round(percentile(x, 50), 3) for x in r.latency_ms],
            "p99_ms": [round(percentile(x, 99), 3) for x in r.latency_ms],
            "ttft_p50_ms": [round(percentile(x, 50), 3) for x in r.ttft_ms],
            "rps": [round(x, 1) for x in r.rps],
            "cpu_ms_per_request": [round(x, 3) for x in r.cpu_ms_per_request],
        },
        "requests": r.requests,
        "failed": r.failed,
    }


async def blocks(
    targets: list[Target], n: int, stream: bool, offset: int, block: int
) -> dict[str, tuple[list[float], int]]:
    """n requests to each target at concurrency 1, in blocks of `block` requests that take
    turns (the order rotating), so that outside load falls on every target alike. Before each
    block: a pause for the previous target's after-work to end, and one unmeasured request."""
    out: dict[str, tuple[list[float], int]] = {t.name: ([], 0) for t in targets}
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(_session(1)) for _ in targets]
        urls = [t.url + "/v1/chat/completions" for t in targets]
        for b, start in enumerate(range(0, n, block)):
            for k in range(len(targets)):
                j = (b + k) % len(targets)
                t = targets[j]
                await asyncio.sleep(0.02)
                await one(sessions[j], urls[j], body(t, stream, offset + start), stream)
                times, failed = out[t.name]
                for i in range(start, min(n, start + block)):
                    ok, seconds = await one(
                        sessions[j], urls[j], body(t, stream, offset + i), stream
                    )
                    if ok:
                        times.append(seconds)
                    else:
                        failed += 1
                out[t.name] = (times, failed)
    return out


def run_rounds(targets: list[Target], args: argparse.Namespace) -> dict[str, Result]:
    results = {t.name: Result(t.name) for t in targets}
    n = max(1, args.requests // args.rounds)
    n_stream = max(1, args.stream_requests // args.rounds)
    for t in targets:  # warm-up: connections, lazy imports, caches
        run(sequential(t, args.warmup, False, 900_000))
        run(sequential(t, max(1, args.warmup // 4), True, 900_000))
        run(load(t, args.concurrency, 0.5))
    for rnd in range(args.rounds):
        for stream, count in ((False, n), (True, n_stream)):
            turns = run(blocks(targets, count, stream, rnd * n, args.block))
            for name, (times, failed) in turns.items():
                res = results[name]
                (res.ttft_ms if stream else res.latency_ms).append([1000 * x for x in times])
                res.requests += count
                res.failed += failed
        order = targets[rnd % len(targets) :] + targets[: rnd % len(targets)]
        for t in order:
            res = results[t.name]
            cpu0 = tree_cpu_seconds(t.pid) if t.pid else None
            done, failed, wall, times = run(load(t, args.concurrency, args.duration))
            if cpu0 is not None and done:
                res.cpu_ms_per_request.append(1000 * (tree_cpu_seconds(t.pid) - cpu0) / done)
            res.rps.append(done / wall)
            res.load_ms.append([1000 * x for x in times])
            res.requests += done + failed
            res.failed += failed
        for t in targets:
            res = results[t.name]
            print(
                f"  round {rnd + 1}/{args.rounds} {t.name:<26} "
                f"p50 {percentile(res.latency_ms[-1], 50):6.2f} ms  "
                f"p99 {percentile(res.latency_ms[-1], 99):6.2f} ms  "
                f"first chunk p50 {percentile(res.ttft_ms[-1], 50):6.2f} ms  "
                f"{res.rps[-1]:6.0f} req/s  failed {res.failed}",
                flush=True,
            )
    return results


def litellm_config(upstream_port: int, directory: Path) -> Path:
    config = {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                    "api_key": "sk-fake",
                },
            }
        ],
        "litellm_settings": {
            "telemetry": False,
            "set_verbose": False,
            "drop_params": True,
            "callbacks": [],
            "success_callback": [],
            "failure_callback": [],
        },
        "general_settings": {
            "master_key": API_KEY,
            "disable_spend_logs": True,
            "disable_error_logs": True,
        },
    }
    path = directory / "litellm.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the cost map from the network
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_ADMIN_UI": "True",
    "NO_DOCS": "True",
    "STORE_MODEL_IN_DB": "False",
    "DATABASE_URL": None,  # None: removed from the environment (no database)
}


def versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {"python": platform.python_version()}
    for name in ("archon", "aiohttp"):
        with contextlib.suppress(Exception):
            out[name] = version(name)
    with contextlib.suppress(Exception):
        git = ["git", "-C", str(ROOT)]
        head = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "src"], capture_output=True, text=True
        )
        out["archon"] += f" (git {head.stdout.strip()}{', src/ changed' if dirty.stdout else ''})"
    with contextlib.suppress(Exception):
        out["litellm"] = subprocess.run(
            [str(LITELLM_VENV / "bin" / "python"), "-c",
             "from importlib.metadata import version; print(version('litellm'))"],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.strip()  # fmt: skip
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}"


def agent_available() -> bool:
    try:
        import archon.cli  # noqa: F401
    except Exception:
        return False
    probe = subprocess.run(
        [sys.executable, "-m", "archon.cli", "agent", "--help"], capture_output=True, timeout=60
    )
    return probe.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="non-streamed requests at c=1")
    parser.add_argument("--stream-requests", type=int, default=1000, help="streams at c=1")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of load per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--block", type=int, default=50, help="c=1 requests in a row to one target, then the next"
    )
    parser.add_argument(
        "--quick", action="store_true", help="defaults of 300 requests, 2 rounds of 2 s load"
    )
    parser.add_argument(
        "--targets",
        default="direct,archon-rag-off,archon-limits,archon-limits-redis,archon-rag-on,"
        "archon-rag-off-per-request,litellm",
    )
    parser.add_argument(
        "--baseline-src",
        help="the src/ of another checkout: adds the target archon-baseline (its agent, "
        "retrieval off) to compare a change against the code before it",
    )
    parser.add_argument("--write", type=Path, help="write the results into this Markdown file")
    parser.add_argument("--serve-fake", choices=["upstream", "kb"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    if parser.parse_known_args()[0].quick:
        parser.set_defaults(requests=300, stream_requests=300, rounds=2, duration=2.0, warmup=50)
    args = parser.parse_args()
    global LOGS
    if args.serve_fake:
        serve_fake(args.serve_fake, args.port)
        return

    wanted = args.targets.split(",")
    if args.baseline_src:
        global BASELINE_SRC
        BASELINE_SRC = str(Path(args.baseline_src).resolve())
        wanted.insert(wanted.index("archon-rag-off") + 1 if "archon-rag-off" in wanted else 1,
                      "archon-baseline")  # fmt: skip
    if any(name.startswith("archon") for name in wanted) and not agent_available():
        print("`archon agent` is not available: skipping the archon targets", flush=True)
        wanted = [name for name in wanted if not name.startswith("archon")]
    if "litellm" in wanted and not (LITELLM_VENV / "bin" / "litellm").exists():
        sys.exit("LiteLLM is not installed: run `bash scripts/setup-litellm-venv.sh` first")

    LOGS = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    procs = Processes()

    def on_signal(signum, _frame):
        print(f"stopped by signal {signum}", file=sys.stderr, flush=True)
        procs.stop()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        targets = start_targets(procs, wanted, LOGS)
        print(f"machine: {machine()}; versions: {versions()}; logs in {LOGS}", flush=True)
        print(
            f"{args.requests} requests + {args.stream_requests} streams at c=1 and "
            f"{args.duration:g} s at c={args.concurrency}, per target, over {args.rounds} rounds",
            flush=True,
        )
        began = time.perf_counter()
        load_before = os.getloadavg()[0]
        results = run_rounds(targets, args)
        load = f"{load_before:.1f} to {os.getloadavg()[0]:.1f}"
        print(f"measured in {time.perf_counter() - began:.0f} s", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        procs.stop()

    summaries = [summary(results[t.name]) for t in targets]
    table = tables(summaries)
    print()
    print("\n".join(table))
    stamp = time.strftime("%Y-%m-%d")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "agent_bench.json").write_text(
        json.dumps(
            {
                "date": stamp,
                "machine": machine(),
                "load_average": load,
                "versions": versions(),
                "args": {k: v for k, v in vars(args).items() if k not in ("write",)},
                "results": summaries,
                "raw": {name: asdict(r) for name, r in results.items()},
            },
            indent=1,
            default=str,
        )
    )
    if args.write:
        write_markdown(args.write, table, stamp, args, load)


def start_targets(procs: Processes, wanted: list[str], tmp: Path) -> list[Target]:
    me = [sys.executable, str(Path(__file__).resolve())]
    up_port, kb_port = free_port(), free_port()
    up = procs.start("upstream", [*me, "--serve-fake", "upstream", "--port", str(up_port)])
    wait_ready("upstream", f"http://127.0.0.1:{up_port}/health", up)
    upstream = f"http://127.0.0.1:{up_port}"
    kb_url = f"http://127.0.0.1:{kb_port}"
    if any(name in ("archon-rag-on", "archon-rag-off-per-request") for name in wanted):
        kb = procs.start("kb", [*me, "--serve-fake", "kb", "--port", str(kb_port)])
        wait_ready("kb", kb_url + "/health", kb)

    targets: list[Target] = []
    agents: dict[str, tuple[subprocess.Popen, str]] = {}

    def agent(
        name: str, *retrieval: str, env: dict[str, str] | None = None
    ) -> tuple[subprocess.Popen, str]:
        port = free_port()
        cmd = [sys.executable, "-m", "archon.cli", "agent", "--host", "127.0.0.1",
               "--port", str(port), "--upstream", upstream, "--log-level", "warning", *retrieval]  # fmt: skip
        proc = procs.start(name, cmd, env=env or {"ARCHON_AGENT_API_KEYS": API_KEY})
        return proc, f"http://127.0.0.1:{port}"

    def metered(redis_url: str | None = None) -> dict[str, str]:
        """The same key, named in a YAML keys file with limits it never reaches: every request
        is admitted, counted and settled (in the process, or in Redis)."""
        keys = tmp / "bench-keys.yaml"
        digest = "sha256:" + hashlib.sha256(API_KEY.encode()).hexdigest()
        keys.write_text(
            "keys:\n  - name: bench\n    key: " + digest + "\n"
            "    requests_per_minute: 100000000\n    tokens_per_minute: 1000000000000\n"
        )
        env = {"ARCHON_AGENT_API_KEYS_FILE": str(keys)}
        return {**env, "ARCHON_AGENT_REDIS_URL": redis_url} if redis_url else env

    for name in wanted:
        if name == "direct":
            targets.append(Target("direct", upstream))
        elif name == "archon-rag-off":
            agents[name] = agent(name, "--no-kb")
        elif name == "archon-limits":
            agents[name] = agent(name, "--no-kb", env=metered())
        elif name == "archon-baseline":
            # The same agent from another checkout's src/ (--baseline-src): a change's cost,
            # measured against the code before it in the same run.
            baseline = {"ARCHON_AGENT_API_KEYS": API_KEY, "PYTHONPATH": BASELINE_SRC}
            agents[name] = agent(name, "--no-kb", env=baseline)
        elif name == "archon-limits-redis":
            redis_port = free_port()
            redis = procs.start("redis", ["redis-server", "--port", str(redis_port), "--bind",
                                          "127.0.0.1", "--save", "", "--appendonly", "no"])  # fmt: skip
            wait_redis(redis_port, redis)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            agents[name] = agent(name, "--no-kb", env=metered(redis_url))
        elif name in ("archon-rag-on", "archon-rag-off-per-request") and "kb" not in agents:
            agents["kb"] = agent("archon-kb", "--kb-url", kb_url)
        elif name == "litellm":
            port = free_port()
            cmd = [str(LITELLM_VENV / "bin" / "litellm"), "--config",
                   str(litellm_config(up_port, tmp)), "--host", "127.0.0.1", "--port", str(port),
                   "--num_workers", "1"]  # fmt: skip
            agents[name] = (procs.start(name, cmd, env=LITELLM_ENV), f"http://127.0.0.1:{port}")
    for key, (proc, url) in agents.items():
        ready = "/health/liveliness" if key == "litellm" else "/ready"
        wait_ready(key, url + ready, proc, timeout=180)
    for name in wanted:
        if name in ("archon-rag-off", "archon-baseline", "archon-limits", "archon-limits-redis"):
            proc, url = agents[name]
            targets.append(Target(name, url, proc.pid))
        elif name == "archon-rag-on":
            proc, url = agents["kb"]
            targets.append(Target(name, url, proc.pid))
        elif name == "archon-rag-off-per-request":
            proc, url = agents["kb"]
            targets.append(Target(name, url, proc.pid, extra={"archon": {"rag": False}}))
        elif name == "litellm":
            proc, url = agents[name]
            targets.append(Target(name, url, proc.pid))
    # Every target must answer correctly, retrieving or not as its name says, before any timing.
    for t in targets:
        for stream in (False, True):
            _, failed = run(sequential(t, 1, stream, 0))
            if failed:
                raise RuntimeError(
                    f"{t.name} did not answer a {'streamed' if stream else 'plain'} request"
                )
        if t.name.startswith("archon"):
            rag, sources = run(probe(t))
            if (rag == "used") != (t.name == "archon-rag-on") or (rag == "used") != bool(sources):
                raise RuntimeError(f"{t.name}: x-archon-rag {rag!r} with {len(sources)} sources")
    return targets


def wait_redis(port: int, proc: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5) as s:
            s.sendall(b"PING\r\n")
            if s.recv(16).startswith(b"+PONG"):
                return
        time.sleep(0.1)
    raise RuntimeError("redis-server did not start (Debian's redis-server package)")


async def probe(target: Target) -> tuple[str | None, list]:
    async with _session(1) as session:
        url = target.url + "/v1/chat/completions"
        async with session.post(url, data=body(target, False, 0), headers=HEADERS) as response:
            data = await response.json()
            return response.headers.get("x-archon-rag"), data.get("sources") or []


def _ms(x: float) -> str:
    return f"{x:.2f} ms" if x == x else "n/a"


def tables(summaries: list[dict]) -> list[str]:
    by = {s["target"]: s for s in summaries}
    direct, lite = by.get("direct"), by.get("litellm")

    def added(s: dict, key: str) -> str:
        return _ms(s[key] - direct[key]) if direct and s is not direct else "—"

    lines = [
        "Concurrency 1 (added = target - direct):",
        "",
        "| target | p50 | p99 | added p50 | added p99 | first chunk p50 | first chunk p99 | added first chunk p50 | added first chunk p99 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        lines.append(
            f"| {s['target']} | {_ms(s['p50_ms'])} | {_ms(s['p99_ms'])} | {added(s, 'p50_ms')} | "
            f"{added(s, 'p99_ms')} | {_ms(s['ttft_p50_ms'])} | {_ms(s['ttft_p99_ms'])} | "
            f"{added(s, 'ttft_p50_ms')} | {added(s, 'ttft_p99_ms')} |"
        )
    lines += [
        "",
        "Throughput, 32 concurrent clients (median of rounds):",
        "",
        "| target | req/s | x direct | x litellm | p50 under load | p99 under load | proxy CPU per request | failed requests |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        cpu = s["cpu_ms_per_request"]
        x_direct = f"{s['rps'] / direct['rps']:.2f}x" if direct and s is not direct else "—"
        x_lite = f"{s['rps'] / lite['rps']:.1f}x" if lite and s is not lite else "—"
        lines.append(
            f"| {s['target']} | {s['rps']:.0f} | {x_direct} | {x_lite} | {_ms(s['load_p50_ms'])} | "
            f"{_ms(s['load_p99_ms'])} | {_ms(cpu) if cpu == cpu else '—'} | "
            f"{s['failed']}/{s['requests']} |"
        )
    limited, shared = by.get("archon-limits"), by.get("archon-limits-redis")
    if limited and direct:
        p50 = limited["p50_ms"] - direct["p50_ms"]
        lines += [
            "",
            f"Goal, a named key with limits counted in the process: added p50 {p50:.2f} ms "
            f"(goal ≤ 1.5 ms: {'met' if p50 <= 1.5 else 'missed'})"
            + (
                f"; in Redis: added p50 {shared['p50_ms'] - direct['p50_ms']:.2f} ms, p99 "
                f"{shared['p99_ms'] - direct['p99_ms']:.2f} ms (reported, no goal)."
                if shared
                else "."
            ),
        ]
    off = by.get("archon-rag-off")
    if off and direct and lite:
        p50 = off["p50_ms"] - direct["p50_ms"]
        p99 = off["p99_ms"] - direct["p99_ms"]
        ratio = off["rps"] / lite["rps"]
        lines += [
            "",
            f"Goals, retrieval off: added p50 {p50:.2f} ms (goal ≤ 1 ms: "
            f"{'met' if p50 <= 1 else 'missed'}), added p99 {p99:.2f} ms (goal ≤ 5 ms: "
            f"{'met' if p99 <= 5 else 'missed'}), {ratio:.1f}x LiteLLM's req/s (goal ≥ 5x: "
            f"{'met' if ratio >= 5 else 'missed'}).",
        ]
    return lines


def write_markdown(
    path: Path, table: list[str], stamp: str, args: argparse.Namespace, load: str
) -> None:
    v = versions()
    command = ".venv/bin/python benchmarks/agent_bench.py" + (" --quick" if args.quick else "")
    section = "\n".join(
        [
            f"### Agent overhead against the LiteLLM proxy ({stamp})",
            "",
            f"Machine: {machine()}; load average {load} (other work was running). "
            f"Versions: archon {v.get('archon', '?')}, LiteLLM {v.get('litellm', '?')} (one "
            f"worker, no database, no callbacks), Python {v['python']}, client aiohttp "
            f"{v.get('aiohttp', '?')} on uvloop.",
            "",
            f"Command: `{command} --write docs/benchmarks.md` (`make bench-agent` also sets up "
            "LiteLLM's venv first)",
            "",
            "Upstream: a raw-asyncio fake OpenAI server answering a fixed 5-piece completion "
            "(streamed: 7 events and [DONE]); knowledge base: a fake `/query` answering 4 chunks "
            "of 800 characters. Both proxies check an API key. "
            f"Concurrency 1: {args.requests} non-streamed requests and {args.stream_requests} "
            "streams per target (first chunk: time to the first content piece), in blocks of "
            f"{args.block} that take turns between targets over {args.rounds} rounds; "
            f"throughput: {args.concurrency} clients for {args.duration:g} s per target per round. "
            "Proxy CPU per request: the proxy process's CPU time during the throughput phase "
            "divided by the requests it served, which other load on the machine disturbs less "
            "than the timings. The p99s at concurrency 1 are the most sensitive to other load: "
            "a proxied request needs two more process wake-ups than a direct one, and each can "
            "wait for a busy core.",
            "",
            *table,
        ]
    )
    replace_section(path, "agent_bench", section)


if __name__ == "__main__":
    main()
