"""Runbook "Pod Stuck in Pending": why the scheduler (or admission) cannot place the pod."""

from __future__ import annotations

import re
from typing import Any

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import Scope, gpu_request, name
from archon.settings import parse_bytes

RUNBOOK = "docs/runbooks/ArchonModelServerPending.md"


def check(scope: Scope) -> list[Finding]:
    found: list[Finding] = []
    for pod in scope.pods():
        status = pod.get("status", {})
        if status.get("phase") != "Pending":
            continue
        if any("running" in s.get("state", {}) for s in status.get("initContainerStatuses", [])):
            continue  # scheduled and busy in an init container: the loading check's business
        messages = [
            c.get("message", "")
            for c in status.get("conditions", [])
            if c.get("type") == "PodScheduled" and c.get("status") == "False"
        ] + [
            e.get("message", "")
            for e in scope.events_about(name(pod))
            if e.get("reason") in ("FailedScheduling", "FailedMount", "FailedCreate")
        ]
        text = "\n".join(m for m in messages if m)
        if not text:
            continue
        found.append(_classify(scope, pod, text))
    found.extend(_rejected_by_admission(scope))
    return found


def _classify(scope: Scope, pod: dict[str, Any], text: str) -> Finding:
    pod_name = name(pod)
    evidence = [f"pod {pod_name}: {line}" for line in sorted(set(text.splitlines()))[:3]]
    if "Insufficient nvidia.com/gpu" in text:
        holders = [
            f"{p['metadata']['namespace']}/{name(p)} on {p['spec'].get('nodeName', '?')} "
            f"holds {gpu_request(p)} GPU"
            for p in scope.source.list("pods")
            if gpu_request(p)
            and name(p) != pod_name
            and p.get("status", {}).get("phase") in ("Running", "Pending")
            and p["spec"].get("nodeName")
        ]
        fix = (
            "Free a GPU: " + "; ".join(holders) + ". The model server uses Recreate, so an old "
            "replica should not hold it; delete stray pods or move other workloads."
            if holders
            else "No pod holds a GPU: the nodes advertise none. Check the NVIDIA device plugin "
            "(kubectl describe nodes | grep nvidia.com/gpu) and the node's driver."
        )
        return Finding(
            "pending",
            "error",
            "Pod Pending: Insufficient nvidia.com/gpu",
            fix,
            evidence + holders,
            RUNBOOK,
        )
    if "RuntimeClass" in text and "not found" in text:
        return Finding(
            "pending",
            "error",
            "Pod Pending: RuntimeClass not found",
            "Deploy the RuntimeClass first: kubectl get runtimeclass nvidia "
            "(the NVIDIA GPU Operator creates it)",
            evidence,
            RUNBOOK,
        )
    if "Insufficient memory" in text:
        requested = sum(
            parse_bytes(str(c.get("resources", {}).get("requests", {}).get("memory", "0")))
            for c in pod["spec"].get("containers", [])
        )
        largest = max(
            (
                parse_bytes(n.get("status", {}).get("allocatable", {}).get("memory", "0"))
                for n in scope.source.list("nodes")
            ),
            default=0,
        )
        evidence.append(
            f"the pod requests {requested / 2**30:.1f} GiB; the largest node allocates "
            f"{largest / 2**30:.1f} GiB"
        )
        return Finding(
            "pending",
            "error",
            "Pod Pending: Insufficient memory",
            "Lower resources.requests.memory of the vllm container in "
            "manifests/model-server/deployment.yaml to what a node has free, or add "
            "a node with more memory",
            evidence,
            RUNBOOK,
        )
    if re.search(r"unbound .*PersistentVolumeClaims|persistentvolumeclaim .* not found", text):
        return _unbound_pvc(scope, evidence)
    if "untolerated taint" in text:
        return Finding(
            "pending",
            "error",
            "Pod Pending: the GPU node is tainted",
            "Add a toleration for the GPU node's taint to the Deployment (GPU nodes "
            "are often tainted nvidia.com/gpu=present:NoSchedule)",
            evidence,
            RUNBOOK,
        )
    return Finding(
        "pending",
        "error",
        "Pod Pending",
        "Read the scheduler's message above; "
        "kubectl describe pod -n " + scope.namespace + " " + pod_name,
        evidence,
        RUNBOOK,
    )


def _unbound_pvc(scope: Scope, evidence: list[str]) -> Finding:
    for pvc in scope.source.list("persistentvolumeclaims", scope.namespace):
        if pvc.get("status", {}).get("phase") != "Bound":
            evidence.append(f"PVC {name(pvc)} is {pvc.get('status', {}).get('phase', '?')}")
            evidence += [
                f"PVC {name(pvc)}: {e.get('message', '')}" for e in scope.events_about(name(pvc))
            ][:2]
    return Finding(
        "pending",
        "error",
        "Pod Pending: its PVC is not bound",
        "Give the cluster a default StorageClass, or set storageClassName in "
        "manifests/model-server/pvc.yaml to one that exists (kubectl get storageclass)",
        evidence,
        RUNBOOK,
    )


def _rejected_by_admission(scope: Scope) -> list[Finding]:
    """A missing RuntimeClass rejects the pod at creation: there is no pod, only RS events."""
    found = []
    for event in scope.source.list("events", scope.namespace):
        message = event.get("message", "")
        if (
            event.get("reason") == "FailedCreate"
            and "RuntimeClass" in message
            and event.get("involvedObject", {}).get("kind") == "ReplicaSet"
        ):
            found.append(
                Finding(
                    "pending",
                    "error",
                    "Pods cannot be created: RuntimeClass not found",
                    "Deploy the RuntimeClass first: kubectl get runtimeclass nvidia "
                    "(the NVIDIA GPU Operator creates it)",
                    [f"ReplicaSet {event['involvedObject']['name']}: {message}"],
                    RUNBOOK,
                )
            )
            break
    return found
