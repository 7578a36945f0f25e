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


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # One line per HTTP request of the downloader is noise next to our progress lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _fail(message: str, code: int = EXIT_CONFIG) -> None:
    typer.echo(f"archon: error: {message}", err=True)
    raise typer.Exit(code)


def _settings(config: Path | None, overrides: dict[str, Any]):
    from archon.settings import load_model_server_settings

    return load_model_server_settings(config, {k: v for k, v in overrides.items() if v is not None})


@app.command()
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

    _setup_logging(log_level)
    if failure_file is not None:
        if write_vllm_config is None:
            _fail("--failure-file needs --write-vllm-config")
        failure_file.unlink(missing_ok=True)
    try:
        settings = _settings(
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
            },
        )
        if settings.engine == "vllm":
            _serve_vllm(settings, dry_run=dry_run, write_config=write_vllm_config, pull=pull)
            return
        if dry_run or write_vllm_config:
            _fail("--dry-run and --write-vllm-config apply to --engine vllm only")
        from archon.modelserver import models

        model = models.resolve_gguf(settings.llm_model)
    except ConfigError as exc:
        if failure_file is not None:
            _write_failure(failure_file, exc)
            return
        _fail(str(exc), exc.exit_code)
        return
    _serve_llamacpp(settings, model, log_level)


def _write_failure(path: Path, exc: Any) -> None:
    """A failed preflight check, left for the vllm container to report (its log is the one
    `kubectl logs -l app=vllm --previous` shows) and exit with."""
    import json

    typer.echo(f"archon: error: {exc} (reported by the vllm container)", err=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code": exc.exit_code, "message": str(exc)}))


def _serve_vllm(settings: Any, *, dry_run: bool, write_config: Path | None, pull: bool) -> None:
    from archon.errors import ConfigError
    from archon.modelserver import models, sizing
    from archon.modelserver.engines import vllm

    launch = vllm.build_vllm_launch(settings)
    if dry_run:
        typer.echo(launch.shell())
        return
    log = logging.getLogger("archon.vllm")
    if not pull and write_config is None:
        _fail("--no-pull applies to --write-vllm-config (the preflight) only")
    if write_config is None:
        vllm.check_installed(launch)
    if pull:
        path = models.pull(settings.llm_model, log_interval=settings.download_log_interval)
        facts_from: str | None = str(path) if path.is_dir() else None
    else:
        # config.json and the safetensors index: from a complete cache, else a few KB from the
        # hub. The download itself, and naming its failures, is the vllm container's.
        facts_from = settings.llm_model
    try:
        facts = sizing.load_facts(facts_from) if facts_from is not None else None
    except ConfigError as exc:
        # Sizing is advice: an odd config.json, or a hub the preflight cannot ask, must not
        # block serving; the vllm container's download names a hub failure precisely.
        log.warning("VRAM check skipped: %s", exc)
        facts = None
    log.info("%s", vllm.preflight(settings, facts))
    if write_config is not None:
        vllm.write_config(launch, write_config)
        log.info("wrote vLLM's arguments to %s: %s", write_config, " ".join(launch.args))
        return
    # The model is in the cache now: vLLM must not wait on the hub.
    offline = {"HF_HUB_OFFLINE": "1"} if models.parse_repo(settings.llm_model) else {}
    vllm.exec_vllm(launch, offline)


def _serve_llamacpp(settings: Any, model: Any, log_level: str) -> None:
    import uvicorn

    from archon.errors import ConfigError
    from archon.modelserver.app import create_app

    exit_code = 0
    server: uvicorn.Server | None = None

    def on_fatal(exc: ConfigError) -> None:
        nonlocal exit_code
        logging.getLogger("archon").error("%s", exc)
        exit_code = exc.exit_code
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


model_app = typer.Typer(help="Manage model files.", no_args_is_help=True)
app.add_typer(model_app, name="model")


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
    from archon.errors import ConfigError
    from archon.modelserver import models

    _setup_logging(log_level)
    try:
        settings = _settings(config, {"llm_model": reference})
        path = models.pull(settings.llm_model, log_interval=settings.download_log_interval)
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
    typer.echo(str(path))


config_app = typer.Typer(help="Check configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


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

    from archon.errors import ConfigError, InsufficientVRAMError
    from archon.modelserver import sizing
    from archon.settings import parse_bytes

    console = Console()
    try:
        settings = _settings(configmap, {})
        facts = sizing.load_facts(settings.llm_model)
        if gpu_memory:
            memory, source = parse_bytes(gpu_memory), "--gpu-memory"
        elif (gpus := sizing.detect_gpus()) is not None:
            memory, source = gpus.memory, f"NVML ({gpus.count} GPU)"
        elif settings.gpu_memory:
            memory, source = parse_bytes(settings.gpu_memory), "gpu_memory setting"
        else:
            _fail("no GPU visible through NVML: pass --gpu-memory, e.g. --gpu-memory 16GiB")
            return
    except ValueError as exc:
        _fail(f"--gpu-memory: {exc}")
        return
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
    report = sizing.estimate_for(facts, settings, memory)
    table = Table(title=f"{configmap} on {sizing.gib(memory)} ({source})")
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


@app.command()
def status(
    url: Annotated[str, typer.Argument(help="Base URL of a model server (or agent, KB).")] = (
        "http://127.0.0.1:8000"
    ),
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    interval: Annotated[
        float, typer.Option(help="Seconds between two /metrics reads, for tokens/s.")
    ] = 2.0,
) -> None:
    """Health, served model and latency/throughput of a running service."""
    import json

    from archon.ops.status import collect

    report = collect(url, interval=interval)
    if json_output:
        typer.echo(json.dumps(report.as_dict(), indent=2))
    else:
        _print_status(report)
    if not report.healthy:
        raise typer.Exit(1)


def _print_status(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not report.reachable:
        console.print(f"[red]{report.url} is unreachable[/red]: {report.error}")
        return
    table = Table(title=f"archon status {report.url}", show_header=False)
    table.add_column("item")
    table.add_column("value")
    state = report.health.get("status", "?")
    colour = "green" if report.healthy else "red"
    extra = report.health.get("phase", "")
    if "progress" in report.health:
        extra += f" {100 * report.health['progress']:.0f}%"
    table.add_row("health", f"[{colour}]{state}[/{colour}] {extra}".strip())
    for model in report.models:
        table.add_row("model", f"{model.get('id')} (max_model_len {model.get('max_model_len')})")

    def seconds(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"

    s = report.summary
    if s:
        table.add_row("TTFT p50 / p95", f"{seconds(s['ttft_p50_s'])} / {seconds(s['ttft_p95_s'])}")
        table.add_row("e2e latency p95", seconds(s["e2e_p95_s"]))
        table.add_row("inter-token p50", seconds(s["itl_p50_s"]))
        tps = s["tokens_per_s"]
        table.add_row("tokens/s (now)", "-" if tps is None else f"{tps:.1f}")
        table.add_row(
            "running / waiting",
            f"{s['running']:.0f} / {s['waiting']:.0f}" if s["running"] is not None else "-",
        )
        kv = s["kv_cache_usage"]
        table.add_row("KV cache", "-" if kv is None else f"{100 * kv:.1f}%")
    if report.finished:
        table.add_row(
            "finished", ", ".join(f"{k} {v:.0f}" for k, v in sorted(report.finished.items()))
        )
    console.print(table)


@app.command()
def doctor(
    namespace: Annotated[str, typer.Option(help="Namespace of the model server.")] = (
        "archon-system"
    ),
    selector: Annotated[str, typer.Option(help="Label selector of its pods.")] = "app=vllm",
    configmap: Annotated[str, typer.Option(help="Its ConfigMap (before the hash).")] = (
        "vllm-config"
    ),
    context: Annotated[str | None, typer.Option(help="kube context (default: current).")] = None,
    prometheus: Annotated[
        str | None, typer.Option(help="Prometheus URL for latency and GPU data.")
    ] = None,
    dump: Annotated[
        Path | None, typer.Option(help="Also save every object and log read into DIR.")
    ] = None,
    from_dir: Annotated[
        Path | None, typer.Option("--from", help="Diagnose a dump instead of a cluster.")
    ] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Run the operations guide's prerequisite check and runbooks against the cluster."""
    import json

    from archon.errors import ConfigError
    from archon.ops.doctor import Scope, diagnose
    from archon.ops.doctor.source import ClusterSource, DumpCluster, LiveCluster, RecordingCluster

    try:
        source: ClusterSource
        if from_dir is not None:
            source = DumpCluster(from_dir)
            meta = source.meta
            namespace = meta.get("namespace", namespace)
            selector = meta.get("selector", selector)
            configmap = meta.get("configmap", configmap)
        else:
            source = LiveCluster(context, prometheus)
        if dump is not None:
            source = RecordingCluster(
                source, dump, namespace=namespace, selector=selector, configmap=configmap
            )
        findings = diagnose(Scope(source, namespace, selector, configmap))
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
    if json_output:
        typer.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        _print_findings(findings)
    if findings:
        raise typer.Exit(1)


def _print_findings(findings: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not findings:
        console.print("[green]no problems found[/green]")
        return
    table = Table(title="archon doctor", show_lines=True)
    for column in ("check", "problem", "evidence", "fix"):
        table.add_column(column, overflow="fold")
    for f in findings:
        colour = "red" if f.severity == "error" else "yellow"
        table.add_row(f.check, f"[{colour}]{f.title}[/{colour}]", "\n".join(f.evidence), f.fix)
    console.print(table)


kb_app = typer.Typer(help="The knowledge base: sync docs, serve queries.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")


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

    from archon.errors import ConfigError

    _setup_logging(log_level)
    if server:
        import httpx

        response = httpx.post(f"{server.rstrip('/')}/sync", timeout=30)
        typer.echo(response.text)
        raise typer.Exit(0 if response.status_code in (202, 409) else 1)
    try:
        from archon.kb.service import KnowledgeBase
        from archon.settings import load_kb_settings

        settings = load_kb_settings({"sources": sources})
        kb = KnowledgeBase(settings, reindex=reindex)
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
    try:
        report = _sync_with_progress(kb, settings.sources, quiet=json_output)
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
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


def _sync_with_progress(kb: Any, sources: Path, *, quiet: bool) -> Any:
    if quiet:
        return kb.sync(sources)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        tasks: dict[str, Any] = {}

        def progress(source: str, done: int, total: int) -> None:
            if source not in tasks:
                tasks[source] = bar.add_task(source, total=total)
            bar.update(tasks[source], completed=done)

        return kb.sync(sources, progress)


@kb_app.command("eval")
def kb_eval(
    queries: Annotated[
        Path,
        typer.Argument(help="JSON lines: {query, relevant: {source:path: grade 1-2}, split}."),
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
    from archon.settings import load_kb_settings

    _setup_logging("warning")
    try:
        judged = load_queries(queries, split)
        kb = KnowledgeBase(load_kb_settings())
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
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
    from archon.errors import ConfigError
    from archon.settings import load_kb_settings

    _setup_logging(log_level)
    try:
        settings = load_kb_settings(
            {"sources": sources, "host": host, "port": port, "sync_interval": sync_interval}
        )
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
    import uvicorn

    from archon.kb.app import create_app

    typer.echo(f"Archon knowledge base on http://{settings.host}:{settings.port}", err=True)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port, log_level=log_level.lower()
    )


@app.command()
def version() -> None:
    """Print Archon's version."""
    from archon import __version__

    typer.echo(__version__)


# Commands that live in their own modules register themselves on `app`.
from archon.cli import agent as _agent  # noqa: E402, F401
from archon.cli import argocd as _argocd  # noqa: E402, F401
