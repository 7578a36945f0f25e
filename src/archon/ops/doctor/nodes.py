"""A lost GPU node: NotReady or unreachable, or a GPU the device plugin marked unhealthy.

What the node controller and the kubelet write when a node goes (k8s.io/kubernetes
pkg/controller/nodelifecycle: the Ready condition turns Unknown with "Kubelet stopped posting node
status.", taints node.kubernetes.io/unreachable and not-ready; pods there stay Terminating until
the kubelet confirms), and what NVIDIA's device plugin does on a critical XID such as 79 ("GPU
has fallen off the bus"): it logs `XidCriticalError: Xid=79 on Device=GPU-...` and withdraws the
GPU, so the node's allocatable nvidia.com/gpu drops below its capacity.
"""

from __future__ import annotations

import re
from typing import Any

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import (
    Scope,
    condition,
    container_statuses,
    gpu_capacity,
    gpus_of,
    is_terminating,
    name,
)

RUNBOOK = "docs/runbooks/ArchonGPUNodeNotReady.md"
LOST_TAINTS = ("node.kubernetes.io/unreachable", "node.kubernetes.io/not-ready")
XID = re.compile(r"XidCriticalError: Xid=(\d+)|NVRM: Xid \([^)]*\): (\d+)")


def trouble(node: dict[str, Any]) -> list[str]:
    """What is wrong with a node, in the API server's words; empty when it is well."""
    found = []
    ready = condition(node, "Ready")
    if ready is not None and ready.get("status") != "True":
        found.append(
            f"node {name(node)}: Ready={ready.get('status')} since "
            f"{ready.get('lastTransitionTime', '?')} ({ready.get('reason', '?')}: "
            f"{ready.get('message', '')})"
        )
    for taint in node.get("spec", {}).get("taints", []) or []:
        if taint.get("key") in LOST_TAINTS:
            since = f" since {taint['timeAdded']}" if taint.get("timeAdded") else ""
            found.append(f"node {name(node)}: taint {taint['key']}:{taint.get('effect')}{since}")
    capacity, allocatable = gpu_capacity(node), gpus_of(node)
    if capacity > allocatable:
        found.append(
            f"node {name(node)}: nvidia.com/gpu allocatable {allocatable} of capacity "
            f"{capacity}: the device plugin marked {capacity - allocatable} GPU unhealthy"
        )
    return found


def lost_gpu_nodes(scope: Scope) -> dict[str, list[str]]:
    """GPU nodes in trouble: node name -> evidence. Empty when nodes cannot be read."""
    nodes = scope.read("nodes", purpose="the GPU nodes' conditions") or []
    return {
        name(n): evidence
        for n in nodes
        if gpu_capacity(n) or gpus_of(n)
        if (evidence := trouble(n))
    }


def check(scope: Scope) -> list[Finding]:
    pods = scope.pods()
    lost = lost_gpu_nodes(scope)
    if not lost:
        return []
    waiting = [
        p
        for p in pods
        if p.get("status", {}).get("phase") == "Pending" and not p["spec"].get("nodeName")
    ]
    found = []
    for node, evidence in lost.items():
        here = [p for p in pods if p["spec"].get("nodeName") == node]
        if not here and not waiting:
            continue  # no model server of this scope ran there or waits for a GPU: not ours
        evidence = list(evidence)
        for p in here:
            stuck_in = [
                f"{s['name']} {s['state']['waiting'].get('reason')}"
                for _, s in container_statuses(p)
                if s.get("state", {}).get("waiting", {}).get("reason")
            ]
            state = (
                f"Terminating since {p['metadata']['deletionTimestamp']}"
                if is_terminating(p)
                else f"{p.get('status', {}).get('phase', '?')}, "
                f"{'ready' if _ready(p) else 'not ready'}"
                + (f" ({', '.join(stuck_in)})" if stuck_in else "")
            )
            evidence.append(f"pod {name(p)} on {node}: {state}")
        for p in waiting:
            evidence.append(f"pod {name(p)}: Pending, waiting for a GPU")
        evidence += _xid_lines(scope, node)
        unhealthy_only = all("allocatable" in line for line in lost[node])
        title = (
            f"GPU on node {node} is unhealthy (withdrawn by the device plugin)"
            if unhealthy_only
            else f"GPU node {node} is lost (NotReady)"
        )
        found.append(
            Finding("gpu-node", "error", title, _fix(scope, node, here), evidence, RUNBOOK)
        )
    return found


def _ready(pod: dict[str, Any]) -> bool:
    ready = condition(pod, "Ready")
    return ready is not None and ready.get("status") == "True"


def _fix(scope: Scope, node: str, here: list[dict[str, Any]]) -> str:
    steps = [
        f"kubectl cordon {node}",
        "on the host: nvidia-smi and `dmesg | grep -i xid` (Xid 79 = the GPU fell off the bus: "
        "power-cycle the node; repeated, replace the GPU), or DCGM's DCGM_FI_DEV_XID_ERRORS",
        f"kubectl drain {node} --ignore-daemonsets --delete-emptydir-data",
    ]
    stuck = [name(p) for p in here if is_terminating(p)]
    if stuck:
        steps.append(
            f"once the node is confirmed down, release the stuck pod: kubectl delete pod -n "
            f"{scope.namespace} {stuck[0]} --force --grace-period=0 (the model-cache PVC is "
            "ReadWriteOnce: the replacement needs another GPU node that can mount it, or this "
            "one back)"
        )
    return "; ".join(steps)


def _xid_lines(scope: Scope, node: str) -> list[str]:
    """The device plugin's XID lines on that node (unreadable when its kubelet is gone)."""
    pods = scope.read("pods", purpose="the NVIDIA device plugin's log") or []
    lines: list[str] = []
    for p in pods:
        if "nvidia-device-plugin" not in name(p) or p["spec"].get("nodeName") != node:
            continue
        container = (p["spec"].get("containers") or [{}])[0].get("name", "")
        log = scope.source.log(p["metadata"]["namespace"], name(p), container, previous=False)
        lines += [
            f"{p['metadata']['namespace']}/{name(p)}: {x.strip()}"
            for x in (log or "").splitlines()
            if XID.search(x)
        ][-2:]
    return lines
