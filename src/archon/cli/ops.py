"""Operations: `archon status` (a running service), `archon doctor` (the cluster's runbooks),
`archon argocd apply` (what the Tekton Task `argocd-application` runs, pipeline/).

The work is in :mod:`archon.ops`; these functions read flags and print.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from archon.cli._common import Typer, setup_logging

if TYPE_CHECKING:
    from archon.ops.doctor.findings import Finding
    from archon.ops.status import Status


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


def _print_status(report: Status) -> None:
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


def doctor(
    namespace: Annotated[
        str,
        typer.Option(
            help="Namespace of the model server; a,b for several, or '*' for every namespace "
            "that has pods of the selector (each model server diagnosed on its own)."
        ),
    ] = "archon-system",
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

    from archon.ops.doctor import Scope, diagnose
    from archon.ops.doctor.source import ClusterSource, DumpCluster, LiveCluster, RecordingCluster

    source: ClusterSource
    if from_dir is not None:
        dumped = DumpCluster(from_dir)
        namespace = dumped.meta.get("namespace", namespace)
        selector = dumped.meta.get("selector", selector)
        configmap = dumped.meta.get("configmap", configmap)
        source = dumped
    else:
        source = LiveCluster(context, prometheus)
    if dump is not None:
        source = RecordingCluster(
            source, dump, namespace=namespace, selector=selector, configmap=configmap
        )
    findings = diagnose(Scope(source, namespace, selector, configmap))
    if json_output:
        typer.echo(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        _print_findings(findings)
    if findings:
        raise typer.Exit(1)


def _print_findings(findings: list[Finding]) -> None:
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


argocd_app = Typer(help="ArgoCD Applications for Archon's parts.", no_args_is_help=True, part="ops")


@argocd_app.command("apply")
def apply(
    name: Annotated[str, typer.Option(help="Name of the Application.")],
    repo_url: Annotated[str, typer.Option(help="Git repository with the manifests.")],
    path: Annotated[str, typer.Option(help="Kustomize directory inside the repository.")],
    destination_namespace: Annotated[str, typer.Option(help="Namespace the part runs in.")],
    revision: Annotated[str, typer.Option(help="Branch, tag or commit to follow.")] = "main",
    argocd_namespace: Annotated[str, typer.Option(help="Namespace of ArgoCD.")] = "argocd",
    project: Annotated[str, typer.Option(help="ArgoCD project.")] = "default",
    timeout: Annotated[str, typer.Option(help="How long to wait: 45m, 90s, 1h30m.")] = "45m",
    poll: Annotated[float, typer.Option(help="Seconds between two status reads.")] = 5.0,
    sync_status_file: Annotated[
        Path | None, typer.Option(help="Write the final sync status here (a Tekton result).")
    ] = None,
    health_status_file: Annotated[
        Path | None, typer.Option(help="Write the final health status here (a Tekton result).")
    ] = None,
    context: Annotated[str | None, typer.Option(help="kube context (default: current).")] = None,
    log_level: Annotated[str, typer.Option()] = "info",
) -> None:
    """Create or update the Application (auto-sync, prune, self-heal) and wait until it is
    Synced and Healthy; exit 1 when it is not by the timeout."""
    from archon.errors import ConfigError
    from archon.ops import argocd
    from archon.ops.kube import api_client

    setup_logging(log_level)
    seconds = argocd.parse_duration(timeout)
    if poll <= 0:
        raise ConfigError(f"--poll {poll}: must be above 0 seconds")
    target = argocd.Target(
        name=name,
        repo_url=repo_url,
        path=path,
        destination_namespace=destination_namespace,
        revision=revision,
        namespace=argocd_namespace,
        project=project,
    )
    outcome = argocd.apply_and_wait(api_client(context), target, timeout=seconds, poll=poll)
    for file, value in ((sync_status_file, outcome.sync), (health_status_file, outcome.health)):
        if file is not None:
            file.write_text(value)
    if outcome.ok:
        typer.echo(f"{name}: Synced and Healthy")
        return
    typer.echo(
        f"{name}: not Synced and Healthy within {timeout} (sync {outcome.sync}, health "
        f"{outcome.health}); see kubectl get pods,events -n {destination_namespace}",
        err=True,
    )
    for message in outcome.messages:
        typer.echo(f"  {message}", err=True)
    raise typer.Exit(1)
