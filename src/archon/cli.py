"""The ``archon`` command: a thin layer over the library; heavy imports stay inside commands."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Archon: self-hosted LLM platform (model server, knowledge base, RAG agent).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_CONFIG = 2
EXIT_LOAD_FAILED = 3


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str, code: int = EXIT_CONFIG) -> None:
    typer.echo(f"archon: error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(help="Kubernetes ConfigMap YAML with vllm-config keys (llm_model, ...)."),
    ] = None,
    llm_model: Annotated[
        str | None, typer.Option(help="Bundled name, .gguf path or org/repo:file.gguf.")
    ] = None,
    served_model_name: Annotated[str | None, typer.Option()] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    max_model_len: Annotated[int | None, typer.Option()] = None,
    parallel: Annotated[int | None, typer.Option(help="Sequences decoded together.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run the OpenAI-compatible model server (llama.cpp on CPU)."""
    from archon.errors import ConfigError
    from archon.settings import load_model_server_settings

    _setup_logging(log_level)
    overrides: dict[str, Any] = {
        k: v
        for k, v in {
            "llm_model": llm_model,
            "served_model_name": served_model_name,
            "host": host,
            "port": port,
            "max_model_len": max_model_len,
            "parallel": parallel,
            "threads": threads,
        }.items()
        if v is not None
    }
    try:
        settings = load_model_server_settings(config, overrides)
        from archon.modelserver import models

        model = models.resolve(settings.llm_model)
    except ConfigError as exc:
        _fail(str(exc))
        return

    import uvicorn

    from archon.modelserver.app import create_app

    exit_code = 0
    server: uvicorn.Server | None = None

    def on_fatal(message: str) -> None:
        nonlocal exit_code
        logging.getLogger("archon").error("%s", message)
        exit_code = EXIT_LOAD_FAILED
        if server is not None:
            server.should_exit = True

    fastapi_app = create_app(settings, model, on_fatal=on_fatal)
    server = uvicorn.Server(
        uvicorn.Config(
            fastapi_app,
            host=settings.host,
            port=settings.port,
            log_level=log_level.lower(),
            timeout_graceful_shutdown=5,
        )
    )
    shown_host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    typer.echo(
        f"Archon model server on http://{shown_host}:{settings.port}/v1 "
        f"(model '{fastapi_app.state.runtime.served_name}'; /health turns 200 when loaded)",
        err=True,
    )
    server.run()
    if exit_code:
        raise typer.Exit(exit_code)


@app.command()
def version() -> None:
    """Print Archon's version."""
    from archon import __version__

    typer.echo(__version__)


if __name__ == "__main__":
    app()
