"""What one doctor run looks at, and helpers over API objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.source import ClusterSource, Forbidden


@dataclass
class Scope:
    source: ClusterSource
    namespace: str
    selector: str
    configmap: str
    port: int = 8000
    # (kind, namespace) -> (the API server's message, what could not be checked)
    denied: dict[tuple[str, str | None], tuple[str, list[str]]] = field(default_factory=dict)

    def read(
        self,
        kind: str,
        namespace: str | None = None,
        selector: str | None = None,
        *,
        purpose: str,
    ) -> list[dict[str, Any]] | None:
        """The objects, or None when RBAC refuses the read: unknown is not the same as none.

        Namespace "*" (`--namespace '*'`) reads every namespace."""
        namespace = None if namespace == "*" else namespace
        try:
            return self.source.list(kind, namespace, selector)
        except Forbidden as exc:
            _, skipped = self.denied.setdefault((kind, namespace), (exc.message, []))
            if purpose not in skipped:
                skipped.append(purpose)
            return None

    def pods(self) -> list[dict[str, Any]]:
        return (
            self.read("pods", self.namespace, self.selector, purpose="the model server's pods")
            or []
        )

    def events_about(self, name: str) -> list[dict[str, Any]]:
        events = self.read("events", self.namespace, purpose="the events of its pods") or []
        return [e for e in events if e.get("involvedObject", {}).get("name") == name]

    def settings(self, pod: dict[str, Any] | None = None) -> dict[str, str]:
        """The data of the model server's ConfigMap: the one the pod references (the generated
        name carries a hash, and `kubectl apply -k` leaves the old ones behind)."""
        matching = [
            cm
            for cm in self.read("configmaps", self.namespace, purpose="the vllm-config values")
            or []
            if name(cm) == self.configmap or name(cm).startswith(self.configmap + "-")
        ]
        referenced = configmaps_of(pod) if pod is not None else set()
        for cm in matching:
            if name(cm) in referenced:
                return cm.get("data") or {}
        newest = max(
            matching, key=lambda cm: cm["metadata"].get("creationTimestamp", ""), default=None
        )
        return (newest or {}).get("data") or {}

    def access_findings(self) -> list[Finding]:
        found = []
        for (kind, namespace), (message, skipped) in self.denied.items():
            where = f"in namespace {namespace}" if namespace else "cluster-wide"
            verb = f"kubectl auth can-i list {kind}" + (f" -n {namespace}" if namespace else "")
            found.append(
                Finding(
                    "access",
                    "warning",
                    f"cannot read {kind} ({where}): forbidden",
                    f"Not checked: {', '.join(skipped)}. Run archon doctor with a context that may "
                    f"list {kind} {where} ({verb} says), or ask for a read-only ClusterRole.",
                    [message],
                )
            )
        return found


def name(obj: dict[str, Any]) -> str:
    text: str = obj["metadata"]["name"]
    return text


def timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def age_seconds(obj: dict[str, Any], now: datetime) -> float:
    created = timestamp(obj["metadata"]["creationTimestamp"])
    assert created is not None
    return (now - created).total_seconds()


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def event_time(event: dict[str, Any]) -> datetime | None:
    """When an event last happened: core/v1 lastTimestamp, else the events.k8s.io fields."""
    return (
        timestamp(event.get("lastTimestamp"))
        or timestamp((event.get("series") or {}).get("lastObservedTime"))
        or timestamp(event.get("eventTime"))
        or timestamp(event.get("metadata", {}).get("creationTimestamp"))
    )


def is_ready(pod: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in pod.get("status", {}).get("conditions", [])
    )


def container_statuses(pod: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    status = pod.get("status", {})
    return [("init", s) for s in status.get("initContainerStatuses", [])] + [
        ("main", s) for s in status.get("containerStatuses", [])
    ]


def configmaps_of(pod: dict[str, Any]) -> set[str]:
    spec = pod.get("spec", {})
    names = {
        source["configMapRef"]["name"]
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]
        for source in c.get("envFrom", [])
        if "configMapRef" in source
    }
    names |= {v["configMap"]["name"] for v in spec.get("volumes", []) if "configMap" in v}
    return names


def gpu_request(pod: dict[str, Any]) -> int:
    total = 0
    for container in pod.get("spec", {}).get("containers", []):
        limits = container.get("resources", {}).get("limits", {})
        total += int(limits.get("nvidia.com/gpu", 0))
    return total


def gpus_of(node: dict[str, Any]) -> int:
    return int(node.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu", "0"))


def tolerates(pod: dict[str, Any], taint: dict[str, Any]) -> bool:
    """The scheduler's toleration match (k8s.io/api core/v1 Toleration.ToleratesTaint)."""
    for t in pod.get("spec", {}).get("tolerations", []) or []:
        if t.get("effect") and t["effect"] != taint.get("effect"):
            continue
        operator = t.get("operator", "Equal")
        if not t.get("key"):
            if operator == "Exists":
                return True
            continue
        if t["key"] != taint.get("key"):
            continue
        if operator == "Exists" or t.get("value", "") == taint.get("value", ""):
            return True
    return False


def untolerated_taints(pod: dict[str, Any], node: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        taint
        for taint in node.get("spec", {}).get("taints", []) or []
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not tolerates(pod, taint)
    ]


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The status condition of that type (pods and nodes), or None."""
    return next(
        (c for c in obj.get("status", {}).get("conditions", []) or [] if c.get("type") == kind),
        None,
    )


def is_terminating(pod: dict[str, Any]) -> bool:
    """Deleted, waiting for its kubelet to confirm: on a lost node it stays so for good."""
    return bool(pod["metadata"].get("deletionTimestamp"))


def was_ready_before(pod: dict[str, Any]) -> bool:
    """Ready turned False well after the containers started: it was True in between.

    The kubelet sets Ready=False when the pod starts; a later transition to False can only come
    from True. A server that ran for days and then lost readiness is not "still loading".
    """
    ready = condition(pod, "Ready")
    if ready is None or ready.get("status") == "True":
        return False
    changed = timestamp(ready.get("lastTransitionTime"))
    started = [
        t
        for _, s in container_statuses(pod)
        if (t := timestamp(s.get("state", {}).get("running", {}).get("startedAt")))
    ]
    return changed is not None and bool(started) and (changed - max(started)).total_seconds() > 60


def gpu_capacity(node: dict[str, Any]) -> int:
    return int(node.get("status", {}).get("capacity", {}).get("nvidia.com/gpu", "0"))
