# ruff: noqa: E501  (the Markdown report template has long table rows)
"""Agent scheduling benchmarks on real model servers (`archon serve`, the bundled SmolLM2-135M,
one CPU thread each), interleaved in one run so that other load on the machine hits every
variant alike.

priority: two model servers saturated by a batch client (streams marked x-archon-priority:
    batch, more of them than the servers have slots), and an interactive client asking one short
    question after another. Variants: an agent with the admission queue (upstream_concurrency =
    the servers' slots: interactive requests overtake queued batch ones) and the same agent
    without it (upstream_concurrency 0: the model servers queue first come, first served).
    Reported: the interactive TTFT p50/p95, its failed requests, and the batch tokens/s.
routing: two model servers of unequal capacity (4 slots and 1 slot), clients sending a mix of
    short and long streamed requests. Variants: routing=signals, least-in-flight, round-robin.
    Reported: TTFT p50/p95 over all requests and the aggregate completion tokens/s.

    .venv/bin/python benchmarks/agent_sched_bench.py priority            # about 4 minutes
    .venv/bin/python benchmarks/agent_sched_bench.py routing             # about 4 minutes
    .venv/bin/python benchmarks/agent_sched_bench.py priority --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from agent_bench import Processes, free_port, machine, wait_ready
from report import percentile, replace_section

ROOT = Path(__file__).resolve().parent.parent
ARCHON = [str(ROOT / ".venv" / "bin" / "archon")]
QUESTION = "Name one planet."
LONG = "Write a short story about a lighthouse keeper and a storm."


@dataclass
class Tally:
    ttft: list[float] = field(default_factory=list)
    failed: int = 0
    tokens: int = 0
    requests: int = 0


async def stream(
    session: aiohttp.ClientSession,
    url: str,
    content: str,
    max_tokens: int,
    tally: Tally,
    headers: dict[str, str] | None = None,
) -> None:
    body = {
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
    }
    began = time.perf_counter()
    first = None
    try:
        async with session.post(
            url + "/v1/chat/completions", json=body, headers=headers or {}
        ) as resp:
            if resp.status != 200:
                tally.failed += 1
                await resp.read()
                return
            async for line in resp.content:
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    tally.failed += 1
                    return
                if first is None and any(
                    (c.get("delta") or {}).get("content") for c in event.get("choices") or []
                ):
                    first = time.perf_counter() - began
                if event.get("usage"):
                    tally.tokens += int(event["usage"].get("completion_tokens") or 0)
    except (aiohttp.ClientError, TimeoutError):
        tally.failed += 1
        return
    tally.requests += 1
    if first is not None:
        tally.ttft.append(first)


async def priority_phase(url: str, seconds: float, batch_streams: int) -> tuple[Tally, Tally]:
    """Batch streams keep the servers full; the interactive client asks one after another."""
    batch, interactive = Tally(), Tally()
    deadline = time.monotonic() + seconds
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def batch_worker(w: int) -> None:
            while time.monotonic() < deadline:
                await stream(
                    session, url, f"{LONG} ({w})", 48, batch, {"x-archon-priority": "batch"}
                )

        async def interactive_worker() -> None:
            await asyncio.sleep(2.0)  # let the batch client fill the servers first
            while time.monotonic() < deadline:
                await stream(session, url, QUESTION, 8, interactive)
                await asyncio.sleep(0.5)

        await asyncio.gather(*(batch_worker(w) for w in range(batch_streams)), interactive_worker())
    return interactive, batch


async def routing_phase(url: str, seconds: float, clients: int, seed: int) -> Tally:
    """Closed-loop clients, each request short (8 tokens) or long (64) at random (1 in 3 long)."""
    tally = Tally()
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as session:

        async def worker(w: int) -> None:
            while time.monotonic() < deadline:
                long = rng.random() < 1 / 3
                await stream(session, url, LONG if long else QUESTION, 64 if long else 8, tally)

        await asyncio.gather(*(worker(w) for w in range(clients)))
    return tally


def start_model_servers(procs: Processes, slots: list[int]) -> list[str]:
    urls = []
    for n, parallel in enumerate(slots):
        port = free_port()
        name = f"serve-{n}"
        proc = procs.start(
            name,
            [
                *ARCHON,
                "serve",
                "--port",
                str(port),
                "--parallel",
                str(parallel),
                "--max-model-len",
                "1024",
            ],
            {"ARCHON_THREADS": "1", "ARCHON_MAX_WAITING": "0"},
        )
        urls.append(f"http://127.0.0.1:{port}")
        wait_ready(name, urls[-1] + "/health", proc, timeout=300)
    return urls


def start_agent(procs: Processes, name: str, upstreams: list[str], env: dict[str, str]) -> str:
    port = free_port()
    proc = procs.start(
        name,
        [
            *ARCHON,
            "agent",
            "--port",
            str(port),
            "--no-kb",
            *[a for u in upstreams for a in ("--upstream", u)],
        ],
        {"ARCHON_AGENT_HEALTH_INTERVAL": "1", "ARCHON_AGENT_AFFINITY": "false", **env},
    )
    url = f"http://127.0.0.1:{port}"
    wait_ready(name, url + "/ready", proc)
    return url


def ms(x: float) -> str:
    return f"{x * 1000:.0f} ms"


def run_priority(args: argparse.Namespace, procs: Processes) -> str:
    slots = [args.slots, args.slots]
    ups = start_model_servers(procs, slots)
    limit = args.concurrency or args.slots
    variants = {
        f"with priorities (upstream_concurrency {limit})": start_agent(
            procs,
            "agent-queue",
            ups,
            {
                "ARCHON_AGENT_UPSTREAM_CONCURRENCY": str(limit),
                "ARCHON_AGENT_QUEUE_SIZE": "1000",
                "ARCHON_AGENT_QUEUE_TIMEOUT_BATCH": "600",
                "ARCHON_AGENT_QUEUE_TIMEOUT_INTERACTIVE": "600",
            },
        ),
        "without (upstream_concurrency 0)": start_agent(procs, "agent-fifo", ups, {}),
    }
    totals = {name: (Tally(), Tally()) for name in variants}
    for r in range(args.rounds):
        for name, url in variants.items() if r % 2 == 0 else reversed(variants.items()):
            interactive, batch = asyncio.run(priority_phase(url, args.seconds, args.batch_streams))
            ti, tb = totals[name]
            ti.ttft += interactive.ttft
            ti.failed += interactive.failed
            ti.requests += interactive.requests
            tb.tokens += batch.tokens
            tb.failed += batch.failed
            print(
                f"round {r + 1} {name}: interactive p95 {ms(percentile(interactive.ttft, 95))}"
                f" ({len(interactive.ttft)} asked, {interactive.failed} failed), batch "
                f"{batch.tokens / args.seconds:.1f} tok/s",
                flush=True,
            )
    rows = []
    base = percentile(totals["without (upstream_concurrency 0)"][0].ttft, 95)
    for name, (ti, tb) in totals.items():
        p95 = percentile(ti.ttft, 95)
        rows.append(
            f"| {name} | {ms(percentile(ti.ttft, 50))} | {ms(p95)} | {base / p95:.2f}x | "
            f"{len(ti.ttft)} | {ti.failed} | {tb.tokens / (args.seconds * args.rounds):.1f} | {tb.failed} |"
        )
    return "\n".join(
        [
            "### Priorities under overload",
            "",
            f"{time.strftime('%Y-%m-%d')}: two `archon serve` model servers (bundled SmolLM2-135M, {args.slots} slots, 1 thread "
            f"each) kept full by a batch client ({args.batch_streams} concurrent streams of 48 "
            "tokens, `x-archon-priority: batch`); an interactive client asks an 8-token question, "
            f"waits 0.5 s, asks again. {args.rounds} rounds of {args.seconds:.0f} s per variant, "
            f"taking turns. {machine()}.",
            "",
            "| agent | interactive TTFT p50 | p95 | p95: without ÷ this | asked | failed | batch tok/s | batch failed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Reproduce: `.venv/bin/python benchmarks/agent_sched_bench.py priority`.",
        ]
    )


def run_routing(args: argparse.Namespace, procs: Processes) -> str:
    ups = start_model_servers(procs, [4, 1])
    variants = {
        policy: start_agent(procs, f"agent-{policy}", ups, {"ARCHON_AGENT_ROUTING": policy})
        for policy in ("signals", "least-in-flight", "round-robin")
    }
    totals = {name: Tally() for name in variants}
    order = list(variants.items())
    for r in range(args.rounds):
        for name, url in order[r % 3 :] + order[: r % 3]:
            tally = asyncio.run(routing_phase(url, args.seconds, args.clients, seed=r))
            t = totals[name]
            t.ttft += tally.ttft
            t.tokens += tally.tokens
            t.failed += tally.failed
            print(
                f"round {r + 1} {name}: TTFT p95 {ms(percentile(tally.ttft, 95))}, "
                f"{tally.tokens / args.seconds:.1f} tok/s, {tally.failed} failed",
                flush=True,
            )
    base = totals["least-in-flight"]
    rows = []
    for name, t in totals.items():
        tps = t.tokens / (args.seconds * args.rounds)
        rows.append(
            f"| {name} | {ms(percentile(t.ttft, 50))} | {ms(percentile(t.ttft, 95))} | "
            f"{percentile(base.ttft, 95) / percentile(t.ttft, 95):.2f}x | {tps:.1f} | "
            f"{tps / (base.tokens / (args.seconds * args.rounds)):.2f}x | {len(t.ttft)} | {t.failed} |"
        )
    return "\n".join(
        [
            "### Routing on the model servers' own signals",
            "",
            f"{time.strftime('%Y-%m-%d')}: two `archon serve` model servers of unequal capacity (bundled SmolLM2-135M, 1 thread "
            f"each; 4 slots and 1 slot), {args.clients} closed-loop clients streaming a mix of "
            "8-token questions and 64-token stories (1 in 3), health_interval 1 s, affinity off. "
            f"{args.rounds} rounds of {args.seconds:.0f} s per policy, taking turns. {machine()}.",
            "",
            "| routing | TTFT p50 | p95 | p95: least-in-flight ÷ this | completion tok/s | ÷ least-in-flight | requests | failed |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
            *rows,
            "",
            "Reproduce: `.venv/bin/python benchmarks/agent_sched_bench.py routing`.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", choices=["priority", "routing"])
    parser.add_argument("--seconds", type=float, default=40.0, help="per variant and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slots", type=int, default=2, help="priority: slots per server")
    parser.add_argument(
        "--concurrency",
        type=int,
        help="priority: the queued agent's upstream_concurrency (default: --slots)",
    )
    parser.add_argument("--batch-streams", type=int, default=8)
    parser.add_argument("--clients", type=int, default=6, help="routing: concurrent clients")
    parser.add_argument("--write", type=Path, help="write the results into this Markdown file")
    args = parser.parse_args()
    import agent_bench

    agent_bench.LOGS = Path(tempfile.mkdtemp(prefix=f"agent-{args.scenario}-bench-"))
    procs = Processes()
    try:
        text = (run_priority if args.scenario == "priority" else run_routing)(args, procs)
    finally:
        procs.stop()
    print(text)
    if args.write:
        replace_section(args.write, f"agent-{args.scenario}", text)


if __name__ == "__main__":
    main()
