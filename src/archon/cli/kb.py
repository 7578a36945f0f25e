"""The knowledge base's commands: `archon kb sync`, `archon kb eval`, `archon kb serve`.

The work is in :class:`archon.kb.service.KnowledgeBase` (sync, search) and
:func:`archon.kb.app.create_app` (the HTTP service); these functions read flags and print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from archon.cli._common import Typer, setup_logging

if TYPE_CHECKING:
    from archon.kb.service import KnowledgeBase

kb_app = Typer(
    help="The knowledge base: sync docs, serve queries.", no_args_is_help=True, part="kb"
)


@kb_app.command("sync")
def kb_sync(
    sources: Annotated[Path | None, typer.Option(help="Sources file (YAML).")] = None,
    server: Annotated[
        str | None, typer.Option(help="Ask a running `archon kb serve` to sync instead.")
    ] = None,
    reindex: Annotated[bool, typer.Option(help="Drop every chunk and embed again.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON summary.")] = False,
    log_level: Annotated[str, typer.Option()] = "warning",
) -> None:
    """Sync the sources' Markdown into the store: incremental, crash-safe, prunes deletions."""
    import json

    setup_logging(log_level)
    if server:
        import httpx

        from archon.kb.settings import load_kb_settings

        # The service token (ARCHON_KB_SERVICE_TOKEN or _FILE), as the service wants it.
        token = load_kb_settings().token()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        response = httpx.post(f"{server.rstrip('/')}/sync", headers=headers, timeout=30)
        typer.echo(response.text)
        raise typer.Exit(0 if response.status_code in (202, 409) else 1)
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import load_kb_settings

    settings = load_kb_settings({"sources": sources})
    kb = KnowledgeBase(settings, reindex=reindex)
    try:
        report = _sync_with_progress(kb, settings.sources, quiet=json_output)
    finally:
        kb.close()
    if json_output:
        from dataclasses import asdict

        typer.echo(json.dumps(asdict(report), indent=2))
    else:
        for s in report.sources:
            state = (
                f"[error] {s.error}"
                if s.error
                else (
                    f"+{s.added} ~{s.changed} ={s.unchanged} -{s.deleted} files, "
                    f"{s.chunks_written} chunks written"
                )
            )
            typer.echo(f"{s.name}: {state}")
        typer.echo(f"synced in {report.seconds:.1f}s")
    if not report.ok:
        raise typer.Exit(1)


def _sync_with_progress(kb: KnowledgeBase, sources: Path, *, quiet: bool) -> Any:
    if quiet:
        return kb.sync(sources)
    from rich.progress import Progress, TaskID

    with Progress(transient=True) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(source: str, done: int, total: int) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(source, total=total)
            bar.update(tasks[source], completed=done)

        return kb.sync(sources, progress)


@kb_app.command("eval")
def kb_eval(
    queries: Annotated[
        list[Path],
        typer.Argument(
            help="JSON lines: {query, relevant: {source:path: grade 1-2}, split}; several "
            "files, or a directory of *.jsonl, are one set."
        ),
    ],
    split: Annotated[
        str | None, typer.Option(help="Only the queries of this split (tune or test).")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Graded nDCG@10 and recall@10 of dense, BM25 and hybrid search on a judged query set."""
    import json
    from dataclasses import asdict

    from archon.errors import ConfigError
    from archon.kb.evaluate import evaluate, load_queries
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import load_kb_settings

    setup_logging("warning")
    files = [f for q in queries for f in (sorted(q.glob("*.jsonl")) if q.is_dir() else [q])]
    judged = [j for f in files for j in load_queries(f) if split is None or j.split == split]
    if not judged:
        raise ConfigError(f"no queries in split {split!r} in {', '.join(map(str, files))}")
    kb = KnowledgeBase(load_kb_settings())
    try:
        scores = evaluate(kb, judged)
    finally:
        kb.close()
    if json_output:
        typer.echo(json.dumps([asdict(s) for s in scores], indent=2))
        return
    typer.echo(f"{len(judged)} queries")
    for s in scores:
        kinds = "  ".join(f"{k} {v:.3f}" for k, v in s.by_kind.items() if k != "-")
        line = f"{s.mode:<7} nDCG@10 {s.ndcg_at_10:.3f}  recall@10 {s.recall_at_10:.3f}"
        typer.echo(line + (f"  ({kinds})" if kinds else ""))


@kb_app.command("serve")
def kb_serve(
    sources: Annotated[Path | None, typer.Option(help="Sources file (YAML).")] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    sync_interval: Annotated[
        float | None, typer.Option(help="Seconds between syncs run by the service; 0 = none.")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Serve /query over the store (and run syncs on a schedule or on POST /sync)."""
    from archon.kb.settings import load_kb_settings

    setup_logging(log_level)
    settings = load_kb_settings(
        {"sources": sources, "host": host, "port": port, "sync_interval": sync_interval}
    )
    import uvicorn

    from archon.kb.app import create_app

    typer.echo(f"Archon knowledge base on http://{settings.host}:{settings.port}", err=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=log_level.lower()
    )
