"""How full the model cache is, and from where that number comes.

The kubelet measures each mounted PVC and publishes it as kubelet_volume_stats_used_bytes and
kubelet_volume_stats_capacity_bytes (k8s.io/kubernetes pkg/kubelet/metrics, scraped by
kube-prometheus-stack's kubelet ServiceMonitor): with --prometheus doctor quotes those. Else it
asks the kubelet itself, through the API server's node proxy, for its Summary API
(/stats/summary: pods[].volume[] with pvcRef, usedBytes, capacityBytes; k8s.io/kubelet
pkg/apis/stats/v1alpha1). Without either it has the PVC's size (status.capacity) and what the
download's own log measured.
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
    where = "kubelet_volume_stats from Prometheus"
    if used is None or not capacity:
        used, capacity = _summary(scope, pod, claim)
        where = f"the kubelet's stats/summary on {pod['spec'].get('nodeName')}"
    if used is not None and capacity:
        holds = (
            f"the PVC {claim} holds {used / 2**30:.1f} of {capacity / 2**30:.1f} GiB "
            f"({100 * used / capacity:.0f}%, {where})"
        )
        return [f"PVC {claim}: {used / 2**30:.1f} GiB used of {capacity / 2**30:.1f} GiB"], holds
    return (
        [f"PVC {claim}: {size} (the kubelet reports no usage for this volume)"],
        f"the PVC {claim} is {size}",
    )


def _summary(scope: Scope, pod: dict[str, Any], claim: str) -> tuple[float | None, float | None]:
    """usedBytes and capacityBytes of the claim in the kubelet's Summary API (read through the
    API server's node proxy: RBAC nodes/proxy), for the pod's own node."""
    node = pod.get("spec", {}).get("nodeName")
    stats = scope.source.node_stats(node) if node else None
    for entry in (stats or {}).get("pods", []):
        for volume in entry.get("volume", []) or []:
            ref = volume.get("pvcRef") or {}
            if ref.get("name") == claim and ref.get("namespace") == scope.namespace:
                return volume.get("usedBytes"), volume.get("capacityBytes")
    return None, None
