"""`archon argocd apply`: what the Tekton Task `argocd-application` runs (pipeline/)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from archon.cli import _fail, _setup_logging, app

argocd_app = typer.Typer(help="ArgoCD Applications for Archon's parts.", no_args_is_help=True)
app.add_typer(argocd_app, name="argocd")


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

    _setup_logging(log_level)
    try:
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
    except ConfigError as exc:
        _fail(str(exc), exc.exit_code)
        return
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
