"""Interleaved serving benchmark: Archon with and without prompt-lookup speculation against
llama.cpp's `llama-server` with and without its `--spec-type` n-gram modes, on RAG-shaped
answers (or the synthetic workload of serve_bench.py).

Every server is up for the whole run and they take turns: each round runs the same requests on
every peer, one peer after the other, in an order rotated every round, so the drift of a shared
machine falls on all peers alike. Each round gives each peer's tok/s, and the ratios are taken
per round; the report gives their median and spread (min-max) over rounds.

RAG-shaped: each prompt is what the agent builds (archon.agent.rag.augment, the agent's
defaults: 3000 characters of context) from sections of the real documentation in
../shared/corpora, asking a question whose answer quotes them (a command, a setting, a
sentence); answers run until the model stops (no ignore_eos), at most --max-tokens, temperature
0. Reported: TTFT, end-to-end answer time, output tok/s (completion tokens from the usage).

    .venv/bin/python benchmarks/spec_bench.py --levels 1,8 --rounds 3
    .venv/bin/python benchmarks/spec_bench.py --workload synthetic --peers archon,llama-server
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import openai
from report import percentile, replace_section
from serve_bench import llama_server_command, machine
from serve_bench import prompt as synthetic_prompt

from archon.readiness import free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
DOCS = [  # documentation with commands and settings to quote
    "prometheus/docs/querying/basics.md",
    "prometheus/docs/getting_started.md",
    "prometheus/docs/storage.md",
    "prometheus/docs/federation.md",
    "prometheus/docs/installation.md",
    "prometheus/docs/management_api.md",
    "tekton-pipeline/docs/debug.md",
    "tekton-pipeline/docs/auth.md",
]
LLAMA_SPEC_TYPES = ("ngram-simple", "ngram-map-k", "ngram-mod", "ngram-cache")


@dataclass
class Peer:
    name: str
    command: list[str]
    proc: subprocess.Popen | None = None
    base: str = ""


@dataclass
class Run:
    peer: str
    round: int
    streams: int
    requests: int
    failed: int
    output_tokens: int
    wall_s: float
    tokens_per_s: float
    decode_tokens_per_s: float  # output tokens over the time after each first token
    ttft_p50_ms: float
    e2e_p50_s: float


def sections(path: Path) -> list[tuple[str, str]]:
    """(heading, text) of each Markdown section with at least 300 characters."""
    out: list[tuple[str, str]] = []
    heading, lines = path.stem, []
    for line in path.read_text().splitlines():
        if re.match(r"#{1,4} ", line):
            if len("\n".join(lines)) >= 300:
                out.append((heading, "\n".join(lines).strip()))
            heading, lines = line.lstrip("# ").strip(), []
        else:
            lines.append(line)
    if len("\n".join(lines)) >= 300:
        out.append((heading, "\n".join(lines).strip()))
    return out


def rag_prompts(count: int) -> list[list[dict[str, str]]]:
    """Chat messages as the agent sends them: a question about one section, that section and
    two others of the same file as the retrieved excerpts."""
    from archon.agent.rag import augment

    prompts: list[list[dict[str, str]]] = []
    pool = [(doc, s) for doc in DOCS for s in sections(CORPORA / doc)]
    for i in range(count):
        doc, (heading, _) = pool[(i * 7) % len(pool)]
        same = [s for d, s in pool if d == doc]
        first = next(j for j, s in enumerate(same) if s[0] == heading)
        picked = [same[(first + k) % len(same)] for k in range(min(3, len(same)))]
        chunks = [
            {"text": text, "source": doc.split("/")[0], "path": doc, "heading_path": [h]}
            for h, text in picked
        ]
        question = (
            f"What does the documentation say about {heading}? "
            "Quote the exact commands or settings it gives."
        )
        messages, _ = augment([{"role": "user", "content": question}], chunks, 3000, question)
        prompts.append(messages)
    return prompts


async def one(
    client: openai.AsyncOpenAI, messages: list, max_tokens: int, extra: dict
) -> tuple[bool, int, float | None, float]:
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    try:
        stream = await client.chat.completions.create(
            model="bench",
            messages=messages,  # type: ignore[arg-type]
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
            extra_body=extra or None,
        )
        async for chunk in stream:
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
            if chunk.choices and chunk.choices[0].delta.content and first is None:
                first = time.perf_counter() - start
        ok = tokens > 0
    except Exception:  # a failed request is a result, not a crash of the benchmark
        ok = False
    return ok, tokens, first, time.perf_counter() - start


async def level(
    peer: Peer, streams: int, prompts: list, max_tokens: int, extra: dict, rnd: int
) -> Run:
    async with openai.AsyncOpenAI(
        base_url=peer.base + "/v1", api_key="bench", max_retries=0, timeout=600
    ) as client:
        queue = list(prompts)

        async def worker() -> list[tuple[bool, int, float | None, float]]:
            done = []
            while queue:
                done.append(await one(client, queue.pop(0), max_tokens, extra))
            return done

        began = time.perf_counter()
        results = [
            r for rs in await asyncio.gather(*(worker() for _ in range(streams))) for r in rs
        ]
        wall = time.perf_counter() - began
    tokens = sum(r[1] for r in results)
    ttfts = [r[2] for r in results if r[0] and r[2] is not None]
    decoding = sum(r[3] - r[2] for r in results if r[0] and r[2] is not None)
    return Run(
        peer=peer.name,
        round=rnd,
        streams=streams,
        requests=len(results),
        failed=sum(1 for r in results if not r[0]),
        output_tokens=tokens,
        wall_s=round(wall, 2),
        tokens_per_s=round(tokens / wall, 2),
        decode_tokens_per_s=round(tokens / decoding, 2) if decoding else 0.0,
        ttft_p50_ms=round(1000 * percentile(ttfts, 50), 1),
        e2e_p50_s=round(percentile([r[3] for r in results if r[0]], 50), 2),
    )


def merge(parts: list[Run]) -> Run:
    """One peer's sequential single-request runs of a round as one run (one stream)."""
    first = parts[0]
    tokens = sum(r.output_tokens for r in parts)
    wall = sum(r.wall_s for r in parts)
    decoding = sum(r.output_tokens / r.decode_tokens_per_s for r in parts if r.decode_tokens_per_s)
    return Run(
        peer=first.peer,
        round=first.round,
        streams=1,
        requests=sum(r.requests for r in parts),
        failed=sum(r.failed for r in parts),
        output_tokens=tokens,
        wall_s=round(wall, 2),
        tokens_per_s=round(tokens / wall, 2) if wall else 0.0,
        decode_tokens_per_s=round(tokens / decoding, 2) if decoding else 0.0,
        ttft_p50_ms=statistics.median(r.ttft_p50_ms for r in parts),
        e2e_p50_s=statistics.median(r.e2e_p50_s for r in parts),
    )


def interval(ratios: list[float]) -> tuple[float, float]:
    """95% confidence interval of the geometric mean ratio (t interval on the log ratios)."""
    from scipy.stats import t

    if len(ratios) < 2:
        return float("nan"), float("nan")
    logs = [math.log(r) for r in ratios]
    mean, sd = statistics.fmean(logs), statistics.stdev(logs)
    half = t.ppf(0.975, len(logs) - 1) * sd / math.sqrt(len(logs))
    return math.exp(mean - half), math.exp(mean + half)


def peers_for(args: argparse.Namespace, model: str) -> list[Peer]:
    t, slots, ctx = str(args.threads), str(args.slots), args.ctx_per_slot
    archon = [sys.executable, "-m", "archon.cli", "serve", "--port", "{port}"]
    archon += ["--llm-model", model, "--served-model-name", "bench", "--parallel", slots]
    archon += ["--max-model-len", str(ctx), "--threads", t, "--log-level", "warning"]
    out: dict[str, Peer] = {
        "archon": Peer("archon", [*archon, "--env", "ARCHON_SPECULATIVE=false"]),
        "archon-spec": Peer("archon-spec", [*archon, "--env", "ARCHON_SPECULATIVE=true"]),
    }
    wanted = args.peers.split(",")
    if any(p.startswith("llama-server") for p in wanted):
        server = llama_server_command(model, args.slots, ctx, t)
        out["llama-server"] = Peer("llama-server", server)
        for kind in LLAMA_SPEC_TYPES:
            # The same draft length and lookup n-gram as archon-spec where the mode has them.
            spec = ["--spec-type", kind, "--spec-draft-n-max", str(args.draft)]
            if kind in ("ngram-simple", "ngram-map-k"):
                spec += [f"--spec-{kind}-size-n", "3", f"--spec-{kind}-size-m", str(args.draft)]
            out[f"llama-server-{kind}"] = Peer(f"llama-server-{kind}", [*server, *spec])
    return [out[name] for name in wanted]


def start(peer: Peer) -> None:
    port = free_port()
    cmd = [part.replace("{port}", str(port)) for part in peer.command]
    env = dict(os.environ)
    if "--env" in cmd:  # archon's own settings, by environment
        i = cmd.index("--env")
        key, value = cmd[i + 1].split("=", 1)
        env[key] = value
        del cmd[i : i + 2]
    log = open(ROOT / "benchmarks" / "results" / f"spec-{peer.name}.log", "wb")  # noqa: SIM115
    peer.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    peer.base = f"http://127.0.0.1:{port}"


def wait(peer: Peer) -> None:
    assert peer.proc is not None
    wait_until(
        lambda: httpx.get(peer.base + "/health", timeout=2).status_code == 200,
        timeout=240,
        what=peer.name,
        process=peer.proc,
        poll=0.3,
    )


def ratio_rows(
    runs: list[Run], pairs: list[tuple[str, str]], levels: list[int], field: str = "tokens_per_s"
) -> list[str]:
    by = {(r.peer, r.round, r.streams): getattr(r, field) for r in runs}
    rounds = sorted({r.round for r in runs})
    rows = [
        f"| ratio ({field}) | streams | median | min-max | geometric mean, 95% CI | per round |",
        "|---|---|---|---|---|---|",
    ]
    for a, b in pairs:
        for c in levels:
            per = [
                by[(a, k, c)] / by[(b, k, c)]
                for k in rounds
                if (a, k, c) in by and (b, k, c) in by and by[(b, k, c)]
            ]
            if per:
                low, high = interval(per)
                geo = math.exp(statistics.fmean(math.log(x) for x in per))
                rows.append(
                    f"| {a} / {b} | {c} | {statistics.median(per):.2f}x | "
                    f"{min(per):.2f}-{max(per):.2f} | {geo:.3f}x [{low:.3f}, {high:.3f}] | "
                    f"{' '.join(f'{x:.2f}' for x in per)} |"
                )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", choices=["rag", "synthetic"], default="rag")
    parser.add_argument("--levels", default="1,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--requests",
        type=int,
        default=0,
        help="per level, at least the streams; default max(2, streams)",
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--ctx-per-slot", type=int, default=2048)
    parser.add_argument("--draft", type=int, default=4, help="draft tokens, every peer")
    parser.add_argument(
        "--peers",
        default="archon,archon-spec,llama-server,"
        + ",".join(f"llama-server-{k}" for k in LLAMA_SPEC_TYPES),
    )
    parser.add_argument("--write", type=Path, help="write the results into this Markdown file")
    args = parser.parse_args()

    from archon.modelserver.models import resolve

    model = str(resolve("smollm2-135m-instruct").path)
    levels = [int(x) for x in args.levels.split(",")]
    (ROOT / "benchmarks" / "results").mkdir(exist_ok=True)
    peers = peers_for(args, model)
    for peer in peers:
        start(peer)
    runs: list[Run] = []
    try:
        for peer in peers:
            wait(peer)
        args.load_at_start = os.getloadavg()[0]
        print(f"machine: {machine()}; load average {os.getloadavg()}", flush=True)
        for rnd in range(args.rounds):
            order = peers[rnd % len(peers) :] + peers[: rnd % len(peers)]
            for c in levels:
                n = max(args.requests or 2, c)
                if args.workload == "rag":
                    prompts, extra = rag_prompts(n + 100 * rnd)[100 * rnd :], {}
                else:
                    prompts = [synthetic_prompt(i + 1000 * rnd) for i in range(n)]
                    extra = {"ignore_eos": True}
                if c == 1:
                    # One stream: the peers take turns request by request (A B A B ...), so
                    # the machine's drift between two requests is what separates them.
                    turns: dict[str, list[Run]] = {p.name: [] for p in order}
                    for one_prompt in prompts:
                        for peer in order:
                            turns[peer.name].append(
                                asyncio.run(
                                    level(peer, 1, [one_prompt], args.max_tokens, extra, rnd)
                                )
                            )
                    done = [merge(turns[peer.name]) for peer in order]
                else:
                    done = [
                        asyncio.run(level(peer, c, prompts, args.max_tokens, extra, rnd))
                        for peer in order
                    ]
                for run in done:
                    runs.append(run)
                    print(
                        f"round {rnd} c={c} {run.peer:<26} {run.tokens_per_s:7.1f} tok/s "
                        f"(decode {run.decode_tokens_per_s:6.1f}) "
                        f"TTFT p50 {run.ttft_p50_ms:7.0f} ms  e2e p50 {run.e2e_p50_s:6.2f} s  "
                        f"tokens {run.output_tokens} failed {run.failed}/{run.requests}",
                        flush=True,
                    )
    finally:
        for peer in peers:
            if peer.proc is not None:
                peer.proc.terminate()
                peer.proc.wait(timeout=30)
    names = [p.name for p in peers]
    pairs = [
        (a, b)
        for a, b in (("archon-spec", "archon"), ("archon", "llama-server"))
        if a in names and b in names
    ]
    pairs += [("archon-spec", n) for n in names if n.startswith("llama-server-")]
    table = ratio_rows(runs, pairs, levels)
    table += ["", *ratio_rows(runs, pairs, levels, "decode_tokens_per_s")]
    print("\n".join(table))
    stamp = time.strftime("%Y-%m-%d")
    out = ROOT / "benchmarks" / "results" / f"spec_bench_{args.workload}.json"
    out.write_text(
        json.dumps(
            {"date": stamp, "machine": machine(), "runs": [asdict(r) for r in runs]}, indent=1
        )
    )
    if args.write:
        write_markdown(args, runs, table, stamp)


def write_markdown(args: argparse.Namespace, runs: list[Run], table: list[str], stamp: str) -> None:
    rows = [
        "| round | streams | server | tok/s | decode tok/s | TTFT p50 | end-to-end p50 | "
        "output tokens | failed |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rows.append(
            f"| {r.round} | {r.streams} | {r.peer} | {r.tokens_per_s} | {r.decode_tokens_per_s} | "
            f"{r.ttft_p50_ms:.0f} ms | "
            f"{r.e2e_p50_s:.2f} s | {r.output_tokens} | {r.failed}/{r.requests} |"
        )
    section = "\n".join(
        [
            f"### Speculative decoding, interleaved ({args.workload}, {stamp})",
            "",
            f"Machine: {machine()}; load average {args.load_at_start:.1f} at the start (the "
            "per-round ratios are what to read, not the absolute tok/s). At 1 stream the peers "
            "take turns request by request, at more streams level by level; the 95% interval is "
            f"a t interval on the per-round log ratios. {args.threads} threads, "
            f"{args.slots} slots, at most {args.max_tokens} output tokens, temperature 0, "
            f"{args.rounds} rounds, draft length {args.draft}.",
            "",
            f"Command: `.venv/bin/python benchmarks/spec_bench.py --workload {args.workload} "
            f"--levels {args.levels} --rounds {args.rounds} --max-tokens {args.max_tokens} "
            f"--peers {args.peers} --write docs/benchmarks.md`",
            "",
            *table,
            "",
            *rows,
        ]
    )
    replace_section(args.write, f"spec_bench_{args.workload}", section)


if __name__ == "__main__":
    main()
