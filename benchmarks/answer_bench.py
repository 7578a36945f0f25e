"""Answer quality of the whole stack on the judged answer set (benchmarks/data/answers.jsonl):
the bundled model server, a knowledge base over Archon's docs and ../shared/corpora, and agents
in front, scored by `archon agent eval`'s library (archon.agent.answer_eval).

Variants run in the same session against the same model server and knowledge base, one question
at a time, so their numbers compare. A variant is NAME=AGENT[:JSON]: AGENT is `current` (this
checkout's agent, its defaults), `before` (the agent from --before-src, e.g. an older
commit's `git archive` — the old prompt and no generation defaults) or the path of another
src/ tree (a prompt variant); JSON is a request's own
values (`{"temperature": 1.0}`), which win over the agent's defaults.

    git archive 22a7a20 src | tar -x -C /tmp/before        # the agent before issue 15
    .venv/bin/python benchmarks/answer_bench.py --kb-data /tmp/answers-kb \\
        --before-src /tmp/before/src --split tune \\
        --variant 'before=before:{"max_tokens": 512}' --variant after=current

The knowledge base's data dir is synced once from --sources (default: this checkout's docs and
README as `archon`, and the three corpora) and reused by later runs. --kb-src runs the knowledge
base from another source tree too (to keep retrieval fixed while src/archon/kb/ changes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT.parent / "shared" / "corpora"
sys.path.insert(0, str(ROOT / "src"))

from archon.agent.answer_eval import load_answers, report, run, summarise  # noqa: E402
from archon.readiness import free_port, wait_until  # noqa: E402


def default_sources(path: Path) -> Path:
    names = {"tekton": "tekton-pipeline", "prometheus": "prometheus", "argo-cd": "argo-cd"}
    lines = [
        "sources:",
        "  - name: archon",
        f"    path: {ROOT}",
        '    include: ["docs/**/*.md", "README.md"]',
    ]
    for name, folder in names.items():
        lines += [
            f"  - name: {name}",
            f"    path: {CORPORA / folder}",
            '    include: ["docs/**/*.md"]',
        ]
    path.write_text("\n".join(lines) + "\n")
    return path


def spawn(
    args: list[str], log: Path, env: dict[str, str], src: Path | None = None
) -> subprocess.Popen:
    full = {**os.environ, **env}
    if src is not None:
        full["PYTHONPATH"] = str(src)
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "archon.cli", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full,
        )


def wait(url: str, proc: subprocess.Popen, log: Path, timeout: float = 600) -> None:
    wait_until(
        lambda: httpx.get(url, timeout=5).status_code == 200,
        timeout=timeout,
        what=url,
        process=proc,
        log=lambda: log.read_text()[-3000:],
        poll=0.5,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--answers", type=Path, default=ROOT / "benchmarks/data/answers.jsonl")
    parser.add_argument("--split", default=None, help="tune or test (default: both)")
    parser.add_argument(
        "--kb-data", type=Path, required=True, help="knowledge-base data dir (kept)"
    )
    parser.add_argument("--sources", type=Path, default=None)
    parser.add_argument(
        "--kb-src", type=Path, default=None, help="run the knowledge base from this src/"
    )
    parser.add_argument("--before-src", type=Path, default=None, help="src/ of the `before` agent")
    parser.add_argument("--variant", action="append", default=[], help="NAME=AGENT[:JSON]")
    parser.add_argument("--agent-env", default="{}", help="JSON of ARCHON_AGENT_* for both agents")
    parser.add_argument("--concurrency", type=int, default=1, help="questions asked at once")
    parser.add_argument("--out", type=Path, default=None, help="write scores and answers as JSON")
    args = parser.parse_args()
    variants = []
    for spec in args.variant or ["after=current"]:
        name, _, rest = spec.partition("=")
        agent, _, params = rest.partition(":")
        if agent == "before" and args.before_src:
            agent = str(args.before_src)
        elif agent != "current" and not (Path(agent) / "archon").is_dir():
            raise SystemExit(
                f"--variant {spec}: AGENT is current, before (with --before-src) or a src/ dir"
            )
        variants.append((name, agent, json.loads(params) if params else {}))
    questions = load_answers(args.answers, args.split)
    # A plain SIGTERM would skip the finally below and leave the servers running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args.kb_data.mkdir(parents=True, exist_ok=True)
    logs = args.kb_data / "bench-logs"
    logs.mkdir(exist_ok=True)
    sources = args.sources or default_sources(args.kb_data / "sources.yaml")
    kb_env = {"ARCHON_KB_DATA_DIR": str(args.kb_data)}
    if not (args.kb_data / "state.db").exists():
        print("syncing the knowledge base once (minutes)...", file=sys.stderr)
        sync = spawn(
            ["kb", "sync", "--sources", str(sources), "--json"],
            logs / "sync.log",
            kb_env,
            args.kb_src,
        )
        if sync.wait() != 0:
            raise SystemExit((logs / "sync.log").read_text()[-3000:])
    procs: list[subprocess.Popen] = []
    try:
        model_port, kb_port = free_port(), free_port()
        model = spawn(["serve", "--port", str(model_port)], logs / "model.log", {})
        procs.append(model)
        kb = spawn(
            [
                "kb",
                "serve",
                "--sources",
                str(sources),
                "--port",
                str(kb_port),
                "--sync-interval",
                "0",
            ],
            logs / "kb.log",
            kb_env,
            args.kb_src,
        )
        procs.append(kb)
        agents: dict[str, str] = {}
        agent_logs: list[Path] = []
        agent_env = {"ARCHON_AGENT_KB_TIMEOUT": "30", **json.loads(args.agent_env)}
        for kind in dict.fromkeys(a for _, a, _ in variants):
            port = free_port()
            cmd = ["agent", "--port", str(port), "--upstream", f"http://127.0.0.1:{model_port}"]
            cmd += ["--kb-url", f"http://127.0.0.1:{kb_port}"]
            src = None if kind == "current" else Path(kind)
            label = "current" if src is None else src.parent.name
            procs.append(spawn(cmd, logs / f"agent-{label}.log", agent_env, src))
            agent_logs.append(logs / f"agent-{label}.log")
            agents[kind] = f"http://127.0.0.1:{port}"
        wait(f"http://127.0.0.1:{model_port}/health", model, logs / "model.log")
        wait(f"http://127.0.0.1:{kb_port}/ready", kb, logs / "kb.log")
        for n, url in enumerate(agents.values()):
            wait(url + "/ready", procs[n + 2], agent_logs[n])
        results = {}
        for name, kind, params in variants:
            began = time.perf_counter()
            answers = run(
                agents[kind],
                questions,
                params=params,
                concurrency=args.concurrency,
                progress=_progress(name),
                count_tokens=tokenizer(f"http://127.0.0.1:{model_port}"),
            )
            scores = summarise(answers, questions)
            took = time.perf_counter() - began
            print(f"\n== {name} ({kind} agent, request {json.dumps(params)}): {took:.0f} s")
            print(report(scores), flush=True)
            results[name] = {
                "agent": kind,
                "params": params,
                "seconds": took,
                "scores": [s.__dict__ for s in scores],
                "answers": [a.__dict__ for a in answers],
            }
        if args.out:
            meta = {
                "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
            }
            args.out.write_text(json.dumps({"meta": meta, "variants": results}, indent=1))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


def tokenizer(model_url: str):
    """The whole answer's length in the model's own tokens (the model server's /tokenize)."""

    def count(text: str) -> int:
        resp = httpx.post(
            model_url + "/tokenize",
            json={"prompt": text, "add_special_tokens": False},
            timeout=30,
        )
        resp.raise_for_status()
        return int(resp.json()["count"])

    return count


def _progress(name: str):
    def show(a) -> None:
        mark = "F" if a.essential else ("R" if a.refused else ".")
        cite = {True: "c", False: "x", None: "-"}[a.cites_relevant]
        print(
            f"{name} {a.id} {mark}{cite} {a.completion_tokens} tok {a.seconds:.1f}s"
            + (f" ERROR {a.error}" if a.error else ""),
            file=sys.stderr,
            flush=True,
        )

    return show


if __name__ == "__main__":
    main()
