"""The model server's commands: `archon serve`, `archon model pull`, `archon config check`.

The work is in :mod:`archon.modelserver.launch` (both engines) and
:mod:`archon.modelserver.sizing` (the GPU budget); these functions read flags and print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from archon.cli._common import Typer, fail, model_server_settings, setup_logging

if TYPE_CHECKING:
    from archon.errors import ConfigError


def serve(
    config: Annotated[
        Path | None,
        typer.Option(help="Kubernetes ConfigMap YAML with vllm-config keys (llm_model, ...)."),
    ] = None,
    engine: Annotated[
        str | None, typer.Option(help="llamacpp (CPU, default) or vllm (GPU).")
    ] = None,
    llm_model: Annotated[
        str | None, typer.Option(help="Bundled name, .gguf path, org/repo:file.gguf, org/repo.")
    ] = None,
    served_model_name: Annotated[str | None, typer.Option()] = None,
    host: Annotated[str | None, typer.Option()] = None,
    port: Annotated[int | None, typer.Option()] = None,
    max_model_len: Annotated[int | None, typer.Option()] = None,
    parallel: Annotated[int | None, typer.Option(help="Sequences decoded together.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all).")] = None,
    embedding_model: Annotated[
        str | None,
        typer.Option(help="Embedding model served by name: all-MiniLM-L6-v2, a directory, none."),
    ] = None,
    llm_pooling: Annotated[
        str | None,
        typer.Option(help="Pooling of the GGUF's own embeddings: model, mean, cls, last, none."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="vllm: print the vLLM command and exit.")] = False,
    write_vllm_config: Annotated[
        Path | None,
        typer.Option(help="vllm: pull and check, then write vLLM's --config file and exit."),
    ] = None,
    pull: Annotated[
        bool,
        typer.Option(
            help="vllm: download the model first (--no-pull: size it from config.json and the "
            "safetensors index only; the vllm container downloads it)."
        ),
    ] = True,
    failure_file: Annotated[
        Path | None,
        typer.Option(
            help="vllm, with --write-vllm-config: write a failed check there as JSON "
            "(exit_code, message) and exit 0, for the vllm container to report and exit with."
        ),
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Run the OpenAI-compatible model server: llama.cpp on CPU, or vLLM on a GPU."""
    from archon.errors import ConfigError
    from archon.modelserver import launch

    setup_logging(log_level)
    if failure_file is not None:
        if write_vllm_config is None:
            fail("--failure-file needs --write-vllm-config")
        failure_file.unlink(missing_ok=True)
    try:
        settings = model_server_settings(
            config,
            {
                "engine": engine,
                "llm_model": llm_model,
                "served_model_name": served_model_name,
                "host": host,
                "port": port,
                "max_model_len": max_model_len,
                "parallel": parallel,
                "threads": threads,
                "embedding_model": embedding_model,
                "llm_pooling": llm_pooling,
            },
        )
        if settings.engine == "vllm":
            if dry_run:
                typer.echo(launch.build_vllm_launch(settings).shell())
                return
            launch.run_vllm(settings, write_config_to=write_vllm_config, pull=pull)
            return
    except ConfigError as exc:
        if failure_file is None:
            raise
        _write_failure(failure_file, exc)
        return
    if dry_run or write_vllm_config:
        fail("--dry-run and --write-vllm-config apply to --engine vllm only")
    exit_code = launch.run_llamacpp(settings, log_level, lambda line: typer.echo(line, err=True))
    if exit_code:
        raise typer.Exit(exit_code)


def _write_failure(path: Path, exc: ConfigError) -> None:
    """A failed preflight check, left for the vllm container to report (its log is the one
    `kubectl logs -l app=vllm --previous` shows) and exit with."""
    import json

    typer.echo(f"archon: error: {exc} (reported by the vllm container)", err=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code": exc.exit_code, "message": str(exc)}))


model_app = Typer(help="Manage model files.", no_args_is_help=True, part="modelserver")


@model_app.command("pull")
def model_pull(
    reference: Annotated[
        str | None, typer.Argument(help="Model reference; default: llm_model of the settings.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option(help="ConfigMap YAML to read llm_model from.")
    ] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Download a model into the Hugging Face cache (HF_HOME), with progress; resumes."""
    from archon.modelserver import models

    setup_logging(log_level)
    settings = model_server_settings(config, {"llm_model": reference})
    path = models.pull(settings.llm_model, log_interval=settings.download_log_interval)
    typer.echo(str(path))


config_app = Typer(help="Check configuration.", no_args_is_help=True, part="modelserver")


@config_app.command("check")
def config_check(
    configmap: Annotated[Path, typer.Argument(help="vllm-config ConfigMap YAML.")],
    gpu_memory: Annotated[
        str | None, typer.Option(help="Memory per GPU, e.g. 16GiB (default: NVML, else error).")
    ] = None,
) -> None:
    """Estimate whether llm_model fits the GPU with these settings, and what would."""
    from rich.console import Console
    from rich.table import Table

    from archon.errors import InsufficientVRAMError
    from archon.modelserver import sizing

    console = Console()
    settings = model_server_settings(configmap, {})
    facts = sizing.load_facts(settings.llm_model)
    budget = sizing.gpu_budget(settings, gpu_memory)
    if budget is None:
        fail("no GPU visible through NVML: pass --gpu-memory, e.g. --gpu-memory 16GiB")
    report = sizing.estimate_for(facts, settings, budget.memory)
    table = Table(title=f"{configmap} on {sizing.gib(budget.memory)} ({budget.source})")
    table.add_column("item")
    table.add_column("memory", justify="right")
    for item, value in report.rows():
        table.add_row(item, value)
    console.print(table)
    if report.fits:
        console.print(
            f"fits: room for {report.headroom_tokens} KV-cache tokens "
            f"({report.headroom_tokens // report.max_model_len} full sequences)"
        )
        return
    console.print("does not fit: " + "; ".join(report.advice))
    raise typer.Exit(InsufficientVRAMError.exit_code)
