"""The agent's commands: `archon agent` (serve the RAG gateway), `archon agent hash-key`,
`archon agent usage`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from archon.cli._common import Typer, fail, setup_logging

agent_app = Typer(
    help="The RAG gateway: OpenAI API with retrieval, in front of the model servers.",
    invoke_without_command=True,
    part="agent",
)


@agent_app.callback()
def agent(
    ctx: typer.Context,
    upstream: Annotated[
        list[str] | None,
        typer.Option(help="Model-server base URL; repeat for several (default :8000)."),
    ] = None,
    kb_url: Annotated[str | None, typer.Option(help="Knowledge-base base URL.")] = None,
    no_kb: Annotated[bool, typer.Option("--no-kb", help="Answer without retrieval.")] = False,
    api_keys_file: Annotated[
        Path | None, typer.Option(help="File of API keys or sha256:<hex> digests.")
    ] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve the agent (settings from flags, then ARCHON_AGENT_* environment variables)."""
    if ctx.invoked_subcommand is not None:
        return
    from archon.agent.settings import load_agent_settings

    setup_logging(log_level)
    settings = load_agent_settings(
        {
            "upstreams": upstream or None,
            "kb_url": "" if no_kb else kb_url,
            "api_keys_file": api_keys_file,
            "host": host,
            "port": port,
        }
    )
    import uvicorn

    from archon.agent.app import create_app

    application = create_app(settings)
    rag = f"knowledge base {settings.kb_url}" if settings.kb_url else "retrieval off"
    typer.echo(
        f"Archon agent on http://{settings.host}:{settings.port} "
        f"({len(settings.upstreams)} model server(s), {rag})",
        err=True,
    )
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level.lower(),
        access_log=False,
    )


@agent_app.command("hash-key")
def hash_key() -> None:
    """Read an API key from stdin and print the sha256:<hex> digest to store instead of it."""
    from archon.agent.auth import hash_key as digest_of

    key = sys.stdin.readline().strip()
    if not key:
        fail('no key on stdin (try: echo -n "$KEY" | archon agent hash-key)')
    typer.echo(digest_of(key))


@agent_app.command("usage")
def usage(
    url: Annotated[str, typer.Option(help="The agent's base URL.")] = "http://127.0.0.1:8080",
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ARCHON_API_KEY",
            help="A key of the agent's keys file: an admin key shows every key, another its own.",
        ),
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the JSON.")] = False,
) -> None:
    """Requests and tokens per named key and model (today and this month, UTC) and limits."""
    import json

    import httpx

    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        resp = httpx.get(url.rstrip("/") + "/v1/usage", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        fail(f"{url} is unreachable: {exc}", 1)
    if resp.status_code != 200:
        try:
            message = resp.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = resp.text[:200]
        fail(f"{url}/v1/usage answered {resp.status_code}: {message}", 1)
    report = resp.json()
    if json_output:
        typer.echo(json.dumps(report, indent=2))
        return
    _print_usage(url, report)


def _print_usage(url: str, report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not report["data"]:
        console.print(
            f"{url}: no usage to show (no key is named in the agent's keys file, "
            "or this key is not one of them)"
        )
        return
    table = Table(title=f"archon agent usage {url} ({report.get('backend')})")
    for column in ("key", "period", "model", "requests", "prompt", "completion", "total"):
        table.add_column(
            column, justify="left" if column in ("key", "period", "model") else "right"
        )
    table.add_column("budget", justify="right")
    table.add_column("limits")
    for entry in report["data"]:
        parts = [entry["priority"], *(f"{k}={v}" for k, v in entry["limits"].items())]
        if entry.get("models"):
            parts.append("models=" + "|".join(entry["models"]))
        if entry.get("max_tokens"):
            parts.append(f"max_tokens={entry['max_tokens']}")
        if entry.get("admin"):
            parts.append("admin")
        limits = ", ".join(parts)
        first = True
        for period in ("today", "month"):
            p = entry[period]
            budget = ""
            if p["budget"]:
                share = 100 * p["total_tokens"] / p["budget"]
                colour = "red" if share >= 90 else ("yellow" if share >= 75 else "green")
                budget = f"[{colour}]{share:.0f}%[/{colour}] of {p['budget']:,}"
            table.add_row(
                entry["key"] if first else "",
                f"{period} {p['period']}",
                "all",
                f"{p['requests']:,}",
                f"{p['prompt_tokens']:,}",
                f"{p['completion_tokens']:,}",
                f"{p['total_tokens']:,}",
                budget,
                limits if first else "",
            )
            first = False
            if period == "today":
                for model, c in p["models"].items():
                    table.add_row(
                        "",
                        "",
                        model,
                        f"{c['requests']:,}",
                        f"{c['prompt_tokens']:,}",
                        f"{c['completion_tokens']:,}",
                        f"{c['prompt_tokens'] + c['completion_tokens']:,}",
                        "",
                        "",
                    )
        table.add_section()
    console.print(table)


@agent_app.command("eval")
def agent_eval(
    answers: Annotated[
        Path,
        typer.Argument(
            help="JSON lines: question, facts (each a list of alternatives), cite (source:path "
            "files), answerable, split; see benchmarks/data/answers.jsonl."
        ),
    ],
    split: Annotated[
        str | None, typer.Option(help="Only the questions of this split (tune or test).")
    ] = None,
    url: Annotated[
        str, typer.Option("--agent", help="The running agent's base URL.")
    ] = "http://127.0.0.1:8080",
    api_key: Annotated[
        str | None, typer.Option(envvar="ARCHON_API_KEY", help="A key, if the agent has keys.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="The 'model' to ask for.")] = None,
    fields: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="A request field NAME=VALUE (VALUE as JSON), e.g. --set temperature=0.5; "
            "repeatable. The agent's generation defaults fill in the rest.",
        ),
    ] = None,
    json_file: Annotated[
        Path | None, typer.Option("--json", help="Also write the scores and answers here.")
    ] = None,
    concurrency: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            help="Questions asked at once (quicker; the times then include sharing the server).",
        ),
    ] = 1,
    quiet: Annotated[bool, typer.Option(help="No line per question on stderr.")] = False,
) -> None:
    """Ask each judged question through the agent, one at a time; print fact recall, citation
    precision, refusals, answer length and time per split."""
    import json

    from archon.agent.answer_eval import Answer, as_json, load_answers, report, run, summarise

    params: dict[str, Any] = {}
    for item in fields or []:
        name, sep, raw = item.partition("=")
        if not sep or not name.strip():
            fail(f"--set {item!r}: expected NAME=VALUE, for example temperature=0.2")
        try:
            params[name.strip()] = json.loads(raw)
        except ValueError:
            params[name.strip()] = raw  # a bare string
    questions = load_answers(answers, split)

    def progress(a: Answer) -> None:
        if quiet:
            return
        fact = "fact" if a.essential else ("refused" if a.refused else "no-fact")
        cite = {True: "cites-relevant", False: "cites-other", None: "cites-nothing"}
        line = f"{a.id} {fact} {cite[a.cites_relevant]} {a.completion_tokens} tokens"
        line += f" {a.seconds:.1f}s" + (f" error: {a.error}" if a.error else "")
        typer.echo(line, err=True)

    found = run(
        url,
        questions,
        api_key=api_key,
        model=model,
        params=params,
        concurrency=concurrency,
        progress=progress,
    )
    if all(a.error for a in found):
        fail(f"no question got an answer from {url}: {found[0].error}", 1)
    scores = summarise(found, questions)
    typer.echo(report(scores))
    if json_file is not None:
        json_file.write_text(json.dumps(as_json(found, scores), indent=1))
