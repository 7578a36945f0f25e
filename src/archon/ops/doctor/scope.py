"""What one doctor run looks at, and helpers over API objects."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from archon.ops.doctor.source import ClusterSource


@dataclass
class Scope:
    source: ClusterSource
    namespace: str
    selector: str
    configmap: str
    port: int = 8000

    def pods(self) -> list[dict[str, Any]]:
        return self.source.list("pods", self.namespace, self.selector)

    def events_about(self, name: str) -> list[dict[str, Any]]:
        return [
            e
            for e in self.source.list("events", self.namespace)
            if e.get("involvedObject", {}).get("name") == name
        ]

    def settings(self) -> dict[str, str]:
        """The data of the model server's ConfigMap (the generated name carries a hash)."""
        for cm in self.source.list("configmaps", self.namespace):
            name = cm["metadata"]["name"]
            if name == self.configmap or name.startswith(self.configmap + "-"):
                return cm.get("data") or {}
        return {}


def name(obj: dict[str, Any]) -> str:
    return obj["metadata"]["name"]


def age_seconds(obj: dict[str, Any], now: datetime) -> float:
    created = datetime.fromisoformat(obj["metadata"]["creationTimestamp"].replace("Z", "+00:00"))
    return (now - created).total_seconds()


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


def gpu_request(pod: dict[str, Any]) -> int:
    total = 0
    for container in pod.get("spec", {}).get("containers", []):
        limits = container.get("resources", {}).get("limits", {})
        total += int(limits.get("nvidia.com/gpu", 0))
    return total
