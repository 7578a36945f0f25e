"""`archon up`: model server, knowledge base and agent on this machine, until Ctrl-C.

The processes are started and watched by :func:`archon.stack.run`; this reads flags and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from archon.cli._common import fail


def up(
    sources: Annotated[
        Path | None,
        typer.Option(help="Sources file for the knowledge base (default: this project's docs)."),
    ] = None,
    llm_model: Annotated[
        str | None, typer.Option(help="Model for the model server (default: bundled SmolLM2).")
    ] = None,
    no_kb: Annotated[bool, typer.Option("--no-kb", help="No knowledge base.")] = False,
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    model_port: Annotated[int, typer.Option()] = 8000,
    kb_port: Annotated[int, typer.Option()] = 8100,
    agent_port: Annotated[int, typer.Option()] = 8080,
    data_dir: Annotated[Path, typer.Option(help="Logs and the knowledge base's data.")] = Path(
        ".archon"
    ),
) -> None:
    """Run model server, knowledge base and agent on this machine until Ctrl-C."""
    from archon.stack import StackOptions, run

    if sources is not None and not sources.is_file():
        fail(f"--sources {sources}: file not found")

    def report(line: str) -> None:
        typer.echo(f"archon up: {line}", err=True)

    def banner(parts: list[Any]) -> None:
        urls = {p.name: p.url for p in parts}
        agent_url = urls["agent"]
        typer.echo("")
        typer.echo(f"  Chat page       {agent_url}/")
        typer.echo(f"  OpenAI API      {agent_url}/v1   (answers with your docs and their sources)")
        typer.echo(f"  Model server    {urls['model server']}/v1")
        if "knowledge base" in urls:
            typer.echo(f"  Knowledge base  {urls['knowledge base']}/query")
        typer.echo("")
        typer.echo(
            "  Ask:  curl " + agent_url + "/v1/chat/completions -H 'content-type: "
            'application/json\' -d \'{"messages":[{"role":"user","content":'
            '"What is Archon?"}]}\''
        )
        typer.echo("  Press Ctrl-C to stop everything.")
        typer.echo("")

    options = StackOptions(
        host=host,
        model_port=model_port,
        kb_port=kb_port,
        agent_port=agent_port,
        llm_model=llm_model,
        sources=sources,
        knowledge_base=not no_kb,
        data_dir=data_dir,
    )
    raise typer.Exit(run(options, report, banner))
