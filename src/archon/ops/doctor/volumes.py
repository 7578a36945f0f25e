"""How full the model cache is, and from where that number comes.

The kubelet measures each mounted PVC and publishes it as kubelet_volume_stats_used_bytes and
kubelet_volume_stats_capacity_bytes (k8s.io/kubernetes pkg/kubelet/metrics, scraped by
kube-prometheus-stack's kubelet ServiceMonitor): with --prometheus doctor quotes those. Without
them it has the PVC's size (status.capacity) and what the download's own log measured. Volumes
with no filesystem stats (hostPath-backed ones such as local-path) report no kubelet numbers.
"""

from __future__ import annotations

from typing import Any

from archon.ops.doctor.scope import Scope, name

USED = 'kubelet_volume_stats_used_bytes{namespace="%s",persistentvolumeclaim="%s"}'
CAPACITY = 'kubelet_volume_stats_capacity_bytes{namespace="%s",persistentvolumeclaim="%s"}'


def _claims(pod: dict[str, Any]) -> list[str]:
    names = [
        v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("spec", {}).get("volumes", [])
        if "persistentVolumeClaim" in v
    ]
    return sorted(names, key=lambda n: n != "model-cache")


def _value(result: list[dict[str, Any]] | None) -> float | None:
    try:
        return float(result[0]["value"][1]) if result else None
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def model_cache_usage(scope: Scope, pod: dict[str, Any]) -> tuple[list[str], str]:
    """(evidence lines, one sentence "the PVC X holds A of B GiB (source)")."""
    claims = _claims(pod)
    if not claims:
        return [], ""
    claim = claims[0]
    pvcs = scope.read("persistentvolumeclaims", scope.namespace, purpose="the model-cache size")
    pvc = next((p for p in pvcs or [] if name(p) == claim), None)
    size = (
        (pvc or {}).get("status", {}).get("capacity", {}).get("storage")
        or (pvc or {}).get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
        or "?"
    )
    used = _value(scope.source.prometheus(USED % (scope.namespace, claim)))
    capacity = _value(scope.source.prometheus(CAPACITY % (scope.namespace, claim)))
    if used is not None and capacity:
        holds = (
            f"the PVC {claim} holds {used / 2**30:.1f} of {capacity / 2**30:.1f} GiB "
            f"({100 * used / capacity:.0f}%, kubelet_volume_stats from Prometheus)"
        )
        return [f"PVC {claim}: {used / 2**30:.1f} GiB used of {capacity / 2**30:.1f} GiB"], holds
    return (
        [f"PVC {claim}: {size} (no kubelet_volume_stats: run with --prometheus for its usage)"],
        f"the PVC {claim} is {size}",
    )
