"""`archon argocd apply`: create or update an ArgoCD Application and wait until it is Synced and
Healthy, through the kubernetes client (no shell, no kubectl: the Tekton step runs it in
Archon's own image)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from archon.errors import ConfigError

log = logging.getLogger("archon.argocd")

GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "applications"
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")


def parse_duration(text: str, setting: str = "--timeout") -> float:
    """Go-style durations as Tekton params carry them: 45m, 90s, 1h30m."""
    match = DURATION.fullmatch(text.strip())
    if not text.strip() or not match or not any(match.groups()):
        raise ConfigError(f"{setting} {text!r}: expected a duration such as 45m, 90s or 1h30m")
    hours, minutes, seconds = (int(g or 0) for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


@dataclass(frozen=True)
class Target:
    """What the Application deploys: the same fields as manifests/argocd/*-application.yaml."""

    name: str
    repo_url: str
    path: str
    destination_namespace: str
    revision: str = "main"
    namespace: str = "argocd"
    project: str = "default"

    def application(self) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Application",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {"app.kubernetes.io/part-of": "archon"},
            },
            "spec": {
                "project": self.project,
                "source": {
                    "repoURL": self.repo_url,
                    "targetRevision": self.revision,
                    "path": self.path,
                },
                "destination": {
                    "server": "https://kubernetes.default.svc",
                    "namespace": self.destination_namespace,
                },
                "syncPolicy": {
                    "automated": {"prune": True, "selfHeal": True},
                    "syncOptions": ["CreateNamespace=true"],
                    "retry": {
                        "limit": 5,
                        "backoff": {"duration": "10s", "factor": 2, "maxDuration": "5m"},
                    },
                },
            },
        }


@dataclass
class Outcome:
    sync: str = "Unknown"
    health: str = "Unknown"
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.sync == "Synced" and self.health == "Healthy"


def _status(app: dict[str, Any]) -> Outcome:
    status = app.get("status") or {}
    messages = [f"{c.get('type')}: {c.get('message')}" for c in status.get("conditions") or [] if c]
    health = status.get("health") or {}
    if health.get("message"):
        messages.append(f"health: {health['message']}")
    operation = status.get("operationState") or {}
    if operation.get("phase") in ("Failed", "Error") and operation.get("message"):
        messages.append(f"sync {operation['phase']}: {operation['message']}")
    return Outcome(
        (status.get("sync") or {}).get("status") or "Unknown",
        health.get("status") or "Unknown",
        messages,
    )


def _reconciled_since(app: dict[str, Any], since: datetime) -> bool:
    """ArgoCD has looked at the Application since we wrote it (status.reconciledAt)."""
    stamp = (app.get("status") or {}).get("reconciledAt")
    if not stamp:
        return False
    when = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return when >= since.replace(microsecond=0)


class Applications:
    """ArgoCD Applications through the kubernetes client's CustomObjectsApi."""

    def __init__(self, api_client: Any):
        from kubernetes import client

        self._api = client.CustomObjectsApi(api_client)
        self._exc = client.exceptions.ApiException

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        from archon.ops.kube import api_message

        try:
            return fn(GROUP, VERSION, *args, PLURAL, **kw)
        except self._exc as exc:
            if exc.status == 404 and what != "get":
                raise ConfigError(
                    f"cannot {what} applications.argoproj.io in namespace {args[0]}: the API "
                    "server has no such resource (is ArgoCD installed? --argocd-namespace?)"
                ) from None
            if exc.status == 403:
                raise ConfigError(
                    f"cannot {what} applications.argoproj.io in namespace {args[0]}: "
                    f"forbidden ({api_message(exc)}); pipeline/rbac.yaml grants it to the "
                    "default ServiceAccount of pipeline-system"
                ) from None
            raise

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self._call(
                "get", self._api.get_namespaced_custom_object, namespace, name=name
            )
            return found
        except self._exc as exc:
            if exc.status == 404:
                return None
            raise

    def apply(self, target: Target) -> str:
        """Create the Application, or replace the spec and labels of the one that is there."""
        body = target.application()
        existing = self.get(target.namespace, target.name)
        if existing is None:
            self._call(
                "create", self._api.create_namespaced_custom_object, target.namespace, body=body
            )
            return "created"
        patch = {"metadata": {"labels": body["metadata"]["labels"]}, "spec": body["spec"]}
        self._call(
            "patch",
            self._api.patch_namespaced_custom_object,
            target.namespace,
            name=target.name,
            body=patch,
        )
        return "updated"


def wait(
    apps: Applications,
    target: Target,
    *,
    since: datetime,
    timeout: float,
    poll: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    """Poll until Synced and Healthy (as ArgoCD saw the spec we wrote), or the timeout."""
    deadline = clock() + timeout
    outcome, shown = Outcome(), None
    while True:
        app = apps.get(target.namespace, target.name)
        if app is not None:
            outcome = _status(app)
            fresh = _reconciled_since(app, since)
            state = (outcome.sync, outcome.health, tuple(outcome.messages), fresh)
            if state != shown:
                shown = state
                log.info(
                    "%s: sync %s, health %s%s%s",
                    target.name,
                    outcome.sync,
                    outcome.health,
                    "" if fresh else " (not yet reconciled since the update)",
                    "".join(f"; {m}" for m in outcome.messages),
                )
            if outcome.ok and fresh:
                return outcome
        if clock() >= deadline:
            if app is None:
                outcome.messages.append("the Application disappeared")
            return outcome
        time.sleep(min(poll, max(deadline - clock(), 0)))


def apply_and_wait(
    api_client: Any, target: Target, *, timeout: float, poll: float = 5.0
) -> Outcome:
    apps = Applications(api_client)
    since = datetime.now(UTC)
    action = apps.apply(target)
    log.info(
        "%s Application %s/%s (%s %s @ %s -> namespace %s); waiting up to %.0f s for Synced "
        "and Healthy",
        action,
        target.namespace,
        target.name,
        target.repo_url,
        target.path,
        target.revision,
        target.destination_namespace,
        timeout,
    )
    return wait(apps, target, since=since, timeout=timeout, poll=poll)
