"""Streaming benchmark: `archon serve` against llama.cpp's `llama-server` and llama-cpp-python's
server, same model, same threads, same machine, one after the other in the same run.

For 1, 4 and 8 concurrent streaming chat clients it reports TTFT p50/p95, inter-token latency,
aggregate output tokens/s and failed streams, then the ratios archon / llama-server.

    .venv/bin/python benchmarks/serve_bench.py                # all peers
    .venv/bin/python benchmarks/serve_bench.py --write docs/benchmarks.md

With --structured it measures the cost of structured output instead: archon and llama-server
each serve the same requests with and without a `json_schema` response_format (a grammar), and
the report gives each server's tok/s with the schema over its tok/s without it.

    .venv/bin/python benchmarks/serve_bench.py --structured --write docs/benchmarks.md

The peers here run one after the other, so machine drift lands on one of them: for ratios
that can tell a 5% change, use spec_bench.py (all servers up, rounds interleaved, the ratio per
round with its median and spread; `--workload synthetic` is this workload).

`llama-server` is built once from the pinned llama-cpp-python sdist by build_llama_server.sh
into ~/.cache/archon/bench (about 9 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openai
from report import percentile, replace_section

from archon.readiness import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent

TOPICS = [
    "Kubernetes readiness probes",
    "GPU memory fragmentation",
    "Prometheus recording rules",
    "Argo CD sync waves",
    "Tekton pipeline results",
    "vector database indexes",
    "TLS certificate rotation",
    "rolling deployments",
    "log aggregation",
    "autoscaling",
    "container image caching",
    "service meshes",
    "etcd backups",
    "node affinity",
    "persistent volume claims",
    "network policies",
]


@dataclass
class Peer:
    name: str
    command: list[str]
    model: str  # the name to send in requests
    extra_body: dict = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class LevelResult:
    peer: str
    concurrency: int
    requests: int
    failed: int
    output_tokens: int
    wall_s: float
    tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    itl_mean_ms: float


def prompt(i: int) -> list[dict[str, str]]:
    topic = TOPICS[i % len(TOPICS)]
    return [
        {"role": "system", "content": f"You are assistant #{i}. Answer in plain prose."},
        {
            "role": "user",
            "content": f"Request {i}: write a detailed explanation of {topic} for a new "
            "platform engineer, with an example and the most common mistakes.",
        },
    ]


# A long, fully structured answer: the grammar constrains every token of it.
INVENTORY_SCHEMA = {
    "type": "object",
    "properties": {
        "services": {
            "type": "array",
            "minItems": 16,
            "maxItems": 16,
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "maxLength": 24},
                    "replicas": {"type": "integer"},
                    "healthy": {"type": "boolean"},
                },
                "required": ["name", "replicas", "healthy"],
            },
        }
    },
    "required": ["services"],
}
STRUCTURED = {
    "response_format": {
        "type": "json_schema",
        "json_schema": {"name": "inventory", "schema": INVENTORY_SCHEMA, "strict": True},
    }
}


async def one_stream(
    client: openai.AsyncOpenAI, peer: Peer, i: int, max_tokens: int
) -> tuple[bool, int, float | None, list[float]]:
    start = time.perf_counter()
    first: float | None = None
    last = start
    gaps: list[float] = []
    tokens = 0
    try:
        stream = await client.chat.completions.create(
            model=peer.model,
            messages=prompt(i),
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_body=peer.extra_body or None,
        )
        finished = False
        async for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.delta and choice.delta.content:
                now = time.perf_counter()
                if first is None:
                    first = now - start
                else:
                    gaps.append(now - last)
                last = now
                tokens += 1
            if choice.finish_reason:
                finished = True
        ok = finished and tokens > 0
    except Exception:  # a failed stream is a result, not a crash of the benchmark
        ok = False
    return ok, tokens, first, gaps


async def run_level(
    base_url: str, peer: Peer, concurrency: int, rounds: int, max_tokens: int, offset: int
) -> LevelResult:
    async with openai.AsyncOpenAI(
        base_url=base_url, api_key="bench", max_retries=0, timeout=600
    ) as client:

        async def worker(w: int) -> list[tuple[bool, int, float | None, list[float]]]:
            return [
                await one_stream(client, peer, offset + w * rounds + r, max_tokens)
                for r in range(rounds)
            ]

        began = time.perf_counter()
        per_worker = await asyncio.gather(*(worker(w) for w in range(concurrency)))
        wall = time.perf_counter() - began
    results = [r for rs in per_worker for r in rs]
    ttfts = [r[2] for r in results if r[0] and r[2] is not None]
    gaps = [g for r in results if r[0] for g in r[3]]
    tokens = sum(r[1] for r in results)
    return LevelResult(
        peer=peer.name,
        concurrency=concurrency,
        requests=len(results),
        failed=sum(1 for r in results if not r[0]),
        output_tokens=tokens,
        wall_s=round(wall, 2),
        tokens_per_s=round(tokens / wall, 1),
        ttft_p50_ms=round(1000 * percentile(ttfts, 50), 1),
        ttft_p95_ms=round(1000 * percentile(ttfts, 95), 1),
        itl_p50_ms=round(1000 * percentile(gaps, 50), 2),
        itl_mean_ms=round(1000 * statistics.fmean(gaps), 2) if gaps else float("nan"),
    )


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    def ready() -> bool:
        health = httpx.get(url + "/health", timeout=2).status_code
        # llama_cpp.server has no /health: there /v1/models answers once loaded.
        return health == 200 or (
            health == 404 and httpx.get(url + "/v1/models", timeout=2).status_code == 200
        )

    wait_until(ready, timeout=timeout, what=url, process=proc, poll=0.2)


def bench_peer(
    peer: Peer,
    levels: list[int],
    rounds: int,
    max_tokens: int,
    modes: dict[str, dict] | None = None,
) -> list[LevelResult]:
    """Start the peer once; run every level in every mode (a suffix -> the request's extras)."""
    modes = modes or {"": peer.extra_body}
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in peer.command]
    log = open(ROOT / "benchmarks" / "results" / f"{peer.name}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **peer.env},
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc)
        # Warm-up: page the weights in, let allocators settle.
        asyncio.run(run_level(base + "/v1", peer, 2, 1, 16, offset=10_000))
        out = []
        for (suffix, extra), level in ((m, lv) for m in modes.items() for lv in levels):
            run_as = Peer(peer.name + suffix, peer.command, peer.model, extra, peer.env)
            result = asyncio.run(
                run_level(base + "/v1", run_as, level, rounds, max_tokens, offset=level * 1000)
            )
            print(
                f"  {run_as.name:<22} c={level}: {result.tokens_per_s:7.1f} tok/s  "
                f"TTFT p50 {result.ttft_p50_ms:7.0f} ms p95 {result.ttft_p95_ms:7.0f} ms  "
                f"ITL p50 {result.itl_p50_ms:6.1f} ms  failed {result.failed}/{result.requests}",
                flush=True,
            )
            out.append(result)
        return out
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def llama_server_command(model: str, slots: int, ctx_per_slot: int, threads: str) -> list[str]:
    """llama.cpp's own server (built once by build_llama_server.sh, the llama.cpp that our
    llama-cpp-python vendors) as a peer: ``slots`` sequences of ``ctx_per_slot`` tokens, a
    ``{port}`` placeholder, and the same weight layout as `archon serve` (cpu_repack=auto):
    llama-server repacks by default, and a build with AMX then dies on many VMs at the first
    prompt (signal 4)."""
    from llama_cpp import llama_print_system_info

    from archon.modelserver.engines.llamacpp_native import use_repack

    build = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "build_llama_server.sh")],
        check=True,
        capture_output=True,
        text=True,
    )
    binary = build.stdout.strip().splitlines()[-1]
    repack = use_repack("auto", llama_print_system_info())
    return [
        *(binary, "-m", model, "--port", "{port}", "-np", str(slots)),
        *("-c", str(ctx_per_slot * slots), "-t", threads, "--no-webui", "--log-disable"),
        "--repack" if repack else "--no-repack",
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def ratio_table(results: list[LevelResult], baseline: str) -> list[str]:
    by = {(r.peer, r.concurrency): r for r in results}
    lines = [
        f"| streams | archon tok/s | {baseline} tok/s | ratio | archon TTFT p95 | "
        f"{baseline} TTFT p95 | ratio | failed streams archon / {baseline} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (peer, c), ours in sorted(by.items()):
        if peer != "archon" or (baseline, c) not in by:
            continue
        base = by[(baseline, c)]
        lines.append(
            f"| {c} | {ours.tokens_per_s} | {base.tokens_per_s} | "
            f"{ours.tokens_per_s / base.tokens_per_s:.2f}x | {ours.ttft_p95_ms:.0f} ms | "
            f"{base.ttft_p95_ms:.0f} ms | {ours.ttft_p95_ms / base.ttft_p95_ms:.2f}x | "
            f"{ours.failed} / {base.failed} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=2, help="sequential requests per client")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument(
        "--peers", default="archon,llama-server,llama-cpp-python,llama-cpp-python-no-interrupt"
    )
    parser.add_argument("--write", type=Path, help="write the results into this Markdown file")
    parser.add_argument(
        "--structured",
        action="store_true",
        help="measure json_schema output against plain output on archon and llama-server",
    )
    args = parser.parse_args()
    if args.structured and args.peers == parser.get_default("peers"):
        args.peers = "archon,llama-server"

    from archon.modelserver.models import resolve

    model_path = str(resolve("smollm2-135m-instruct").path)
    levels = [int(x) for x in args.levels.split(",")]
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    t, slots, ctx = str(args.threads), args.slots, args.ctx_per_slot
    py = sys.executable

    peers: dict[str, Peer] = {
        "archon": Peer(
            "archon",
            [
                py,
                "-m",
                "archon.cli",
                "serve",
                "--port",
                "{port}",
                "--llm-model",
                model_path,
                "--served-model-name",
                "bench",
                "--parallel",
                str(slots),
                "--max-model-len",
                str(ctx),
                "--threads",
                t,
                "--log-level",
                "warning",
            ],
            "bench",
            extra_body={"ignore_eos": True},
        ),
        "llama-cpp-python": Peer(
            "llama-cpp-python",
            [
                py,
                "-m",
                "llama_cpp.server",
                "--model",
                model_path,
                "--port",
                "{port}",
                "--n_threads",
                t,
                "--n_ctx",
                str(ctx),
            ],
            model_path,
        ),
        "llama-cpp-python-no-interrupt": Peer(
            "llama-cpp-python-no-interrupt",
            [
                py,
                "-m",
                "llama_cpp.server",
                "--model",
                model_path,
                "--port",
                "{port}",
                "--n_threads",
                t,
                "--n_ctx",
                str(ctx),
                "--interrupt_requests",
                "False",
            ],
            model_path,
        ),
    }
    wanted = args.peers.split(",")
    if "llama-server" in wanted:
        peers["llama-server"] = Peer(
            "llama-server",
            llama_server_command(model_path, slots, ctx, t),
            "bench",
            extra_body={"ignore_eos": True},
        )
    # llama-cpp-python has no ignore_eos: forbid the end token by logit_bias instead.
    eos = _eos_token(model_path)
    for name in ("llama-cpp-python", "llama-cpp-python-no-interrupt"):
        peers[name].extra_body = {"logit_bias": {str(eos): -100}}

    print(f"machine: {machine()}")
    print(
        f"model: SmolLM2-135M-Instruct Q4_1, threads={t}, slots={slots}, ctx/slot={ctx}, "
        f"max_tokens={args.max_tokens}, rounds={args.rounds}"
    )
    results: list[LevelResult] = []
    for name in wanted:
        print(f"{name}:", flush=True)
        # Structured runs end where the schema ends: no ignore_eos there.
        modes = (
            {"": peers[name].extra_body, "+json_schema": STRUCTURED} if args.structured else None
        )
        results += bench_peer(peers[name], levels, args.rounds, args.max_tokens, modes)
    if args.structured:
        write_structured(args, results, levels, wanted)
        return

    print()
    table: list[str] = []
    for baseline in wanted:
        if baseline != "archon" and "archon" in wanted:
            table += [f"archon / {baseline}:", "", *ratio_table(results, baseline), ""]
    print("\n".join(table))
    stamp = time.strftime("%Y-%m-%d")
    (ROOT / "benchmarks" / "results" / "serve_bench.json").write_text(
        json.dumps(
            {"date": stamp, "machine": machine(), "results": [asdict(r) for r in results]}, indent=2
        )
    )
    if args.write:
        write_markdown(args.write, results, table, stamp, args)


def write_structured(
    args: argparse.Namespace, results: list[LevelResult], levels: list[int], wanted: list[str]
) -> None:
    by = {(r.peer, r.concurrency): r for r in results}
    lines = [
        "| server | streams | tok/s plain | tok/s json_schema | json_schema / plain | "
        "TTFT p95 plain | TTFT p95 json_schema | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in wanted:
        for c in levels:
            plain, structured = by[(name, c)], by[(name + "+json_schema", c)]
            lines.append(
                f"| {name} | {c} | {plain.tokens_per_s} | {structured.tokens_per_s} | "
                f"{structured.tokens_per_s / plain.tokens_per_s:.2f}x | "
                f"{plain.ttft_p95_ms:.0f} ms | {structured.ttft_p95_ms:.0f} ms | "
                f"{plain.failed + structured.failed} |"
            )
    print("\n".join(lines))
    if not args.write:
        return
    stamp = time.strftime("%Y-%m-%d")
    section = "\n".join(
        [
            f"### Structured output cost ({stamp})",
            "",
            f"Machine: {machine()}. Model: SmolLM2-135M-Instruct Q4_1 (bundled), "
            f"{args.threads} threads, {args.slots} slots, up to {args.max_tokens} output tokens, "
            f"{args.rounds} sequential requests per client, temperature 0. The same chat requests "
            "with and without a `json_schema` response_format of 16 objects (every token "
            "constrained); the plain runs disable end-of-sequence, the structured ones end "
            "with the schema.",
            "",
            "Command: `.venv/bin/python benchmarks/serve_bench.py --structured "
            "--write docs/benchmarks.md`",
            "",
            *lines,
        ]
    )
    replace_section(args.write, "serve_bench_structured", section)


def _eos_token(model_path: str) -> int:
    from llama_cpp import Llama

    return Llama(model_path, vocab_only=True, verbose=False).token_eos()


def write_markdown(
    path: Path, results: list[LevelResult], table: list[str], stamp: str, args: argparse.Namespace
) -> None:
    rows = [
        "| server | streams | tok/s | TTFT p50 | TTFT p95 | ITL p50 | ITL mean | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.peer} | {r.concurrency} | {r.tokens_per_s} | {r.ttft_p50_ms:.0f} ms | "
            f"{r.ttft_p95_ms:.0f} ms | {r.itl_p50_ms:.1f} ms | {r.itl_mean_ms:.1f} ms | "
            f"{r.failed}/{r.requests} |"
        )
    section = "\n".join(
        [
            f"### Model server streaming ({stamp})",
            "",
            f"Machine: {machine()}. Model: SmolLM2-135M-Instruct Q4_1 (bundled), "
            f"{args.threads} threads, {args.slots} slots of {args.ctx_per_slot} tokens, "
            f"{args.max_tokens} output tokens per request (end-of-sequence disabled), "
            f"{args.rounds} sequential requests per client, temperature 0.",
            "",
            "Command: `.venv/bin/python benchmarks/serve_bench.py --write docs/benchmarks.md`",
            "",
            "Ratios of archon to each peer (a tok/s ratio above 1 and a TTFT ratio below 1 "
            "favour archon):",
            "",
            *table,
            "",
            "All runs:",
            "",
            *rows,
        ]
    )
    replace_section(path, "serve_bench", section)


if __name__ == "__main__":
    main()
