"""Runbook "Pod Stuck in Pending": why the scheduler (or admission) cannot place the pod."""

from __future__ import annotations

import re
from typing import Any

from archon.modelserver.settings import parse_bytes
from archon.ops.doctor.findings import Finding
from archon.ops.doctor.nodes import LOST_TAINTS, lost_gpu_nodes
from archon.ops.doctor.scope import (
    EPOCH,
    Scope,
    event_time,
    gpu_request,
    gpus_of,
    name,
    timestamp,
    untolerated_taints,
)

RUNBOOK = "docs/runbooks/ArchonModelServerPending.md"


def check(scope: Scope) -> list[Finding]:
    found: list[Finding] = []
    pods = scope.pods()
    for pod in pods:
        status = pod.get("status", {})
        if status.get("phase") != "Pending":
            continue
        if any("running" in s.get("state", {}) for s in status.get("initContainerStatuses", [])):
            continue  # scheduled and busy in an init container: the loading check's business
        text = _why_pending(scope, pod)
        if not text:
            continue
        if ("nvidia.com/gpu" in text or "untolerated taint" in text) and lost_gpu_nodes(scope):
            continue  # its GPU is on a lost node: the gpu-node check names the node
        found.append(_classify(scope, pod, text))
    found.extend(_rejected_by_admission(scope, pods))
    return found


def _why_pending(scope: Scope, pod: dict[str, Any]) -> str:
    """The scheduler's current word (the PodScheduled condition), else the latest events.

    Events outlive their cause by an hour: only the newest burst says what is wrong now.
    """
    condition = [
        c.get("message", "")
        for c in pod.get("status", {}).get("conditions", [])
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message")
    ]
    if condition:
        return "\n".join(condition)
    created = timestamp(pod["metadata"].get("creationTimestamp"))
    events = [
        (when, e.get("message", ""))
        for e in scope.events_about(name(pod))
        if e.get("reason") in ("FailedScheduling", "FailedMount", "FailedCreate")
        and (when := event_time(e)) is not None
        and (created is None or when >= created)
    ]
    if not events:
        return ""
    newest = max(when for when, _ in events)
    return "\n".join(m for when, m in events if m and (newest - when).total_seconds() <= 120)


TOLERATION_YAML = "tolerations:\n  - key: {key}\n    operator: Exists\n    effect: {effect}"


def _classify(scope: Scope, pod: dict[str, Any], text: str) -> Finding:
    pod_name = name(pod)
    evidence = [f"pod {pod_name}: {line}" for line in sorted(set(text.splitlines()))[:3]]
    gpu_nodes: list[dict[str, Any]] | None = None
    if "nvidia.com/gpu" in text or "untolerated taint" in text:
        nodes = scope.read("nodes", purpose="GPU nodes and their taints")
        gpu_nodes = None if nodes is None else [n for n in nodes if gpus_of(n)]
    # Before "Insufficient nvidia.com/gpu": a tainted GPU node next to GPU-less nodes makes the
    # scheduler say both, and only the taint is the cause.
    # A lost node's taints (not-ready, unreachable) are no toleration to add.
    tainted = [
        (n, taint)
        for n in gpu_nodes or []
        for taint in untolerated_taints(pod, n)
        if taint.get("key") not in LOST_TAINTS
    ]
    if tainted or ("untolerated taint" in text and gpu_nodes is None):
        first = tainted[0][1] if tainted else {"key": "nvidia.com/gpu", "effect": "NoSchedule"}
        return Finding(
            "pending",
            "error",
            "Pod Pending: the GPU node is tainted",
            "Add a toleration for the GPU node's taint to the vllm Deployment's pod spec "
            "(manifests/model-server/deployment.yaml):\n"
            + TOLERATION_YAML.format(key=first["key"], effect=first["effect"]),
            evidence
            + [
                f"node {name(n)} ({gpus_of(n)} GPU) has taint {t['key']}"
                f"{'=' + t['value'] if t.get('value') else ''}:{t['effect']}, "
                "which the pod does not tolerate"
                for n, t in tainted
            ],
            RUNBOOK,
        )
    if "Insufficient nvidia.com/gpu" in text:
        return _no_free_gpu(scope, pod, evidence, gpu_nodes)
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
        evidence.append(f"the pod requests {requested / 2**30:.1f} GiB")
        nodes = scope.read("nodes", purpose="the largest node's memory")
        if nodes is not None:
            largest = max(
                (
                    parse_bytes(n.get("status", {}).get("allocatable", {}).get("memory", "0"))
                    for n in nodes
                ),
                default=0,
            )
            evidence[-1] += f"; the largest node allocates {largest / 2**30:.1f} GiB"
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
    return Finding(
        "pending",
        "error",
        "Pod Pending",
        "Read the scheduler's message above; "
        "kubectl describe pod -n " + scope.namespace + " " + pod_name,
        evidence,
        RUNBOOK,
    )


def _no_free_gpu(
    scope: Scope, pod: dict[str, Any], evidence: list[str], gpu_nodes: list[dict[str, Any]] | None
) -> Finding:
    pod_name = name(pod)
    everyone = scope.read("pods", purpose="which pod holds the GPU")
    holders = [
        f"{p['metadata']['namespace']}/{name(p)} on {p['spec'].get('nodeName', '?')} "
        f"holds {gpu_request(p)} GPU"
        for p in everyone or []
        if gpu_request(p)
        and name(p) != pod_name
        and p.get("status", {}).get("phase") in ("Running", "Pending")
        and p["spec"].get("nodeName")
    ]
    if holders:
        fix = (
            "Free a GPU: " + "; ".join(holders) + ". The model server uses Recreate, so an old "
            "replica should not hold it; delete stray pods or move other workloads."
        )
    elif gpu_nodes:
        fix = (
            "GPU nodes exist ("
            + ", ".join(f"{name(n)}: {gpus_of(n)} GPU" for n in gpu_nodes)
            + ") but the pod fits none of them: check its nodeSelector and affinity, and that "
            "it asks for no more GPUs than a node has (kubectl describe pod -n "
            f"{scope.namespace} {pod_name})"
        )
    elif gpu_nodes is None or everyone is None:
        fix = (
            "Every GPU is taken or there is none, and this user may not see which: kubectl "
            "describe nodes | grep nvidia.com/gpu (with a context that may read nodes and pods)"
        )
    else:
        fix = (
            "No pod holds a GPU: the nodes advertise none. Check the NVIDIA device plugin "
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


def _unbound_pvc(scope: Scope, evidence: list[str]) -> Finding:
    claims = scope.read("persistentvolumeclaims", scope.namespace, purpose="the model-cache PVC")
    for pvc in claims or []:
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


def _rejected_by_admission(scope: Scope, pods: list[dict[str, Any]]) -> list[Finding]:
    """A missing RuntimeClass rejects the pod at creation: there is no pod, only RS events.

    Only a rejection newer than every current pod counts (a pod created since then was
    admitted: the RuntimeClass exists now), and none when the RuntimeClass is there.
    """
    events = scope.read("events", scope.namespace, purpose="the ReplicaSet's events") or []
    created = [t for p in pods if (t := timestamp(p["metadata"].get("creationTimestamp")))]
    classes = scope.read("runtimeclasses", purpose="RuntimeClass nvidia")
    present = {name(rc) for rc in classes or []}
    for event in sorted(events, key=lambda e: event_time(e) or EPOCH):
        message = event.get("message", "")
        if not (
            event.get("reason") == "FailedCreate"
            and "RuntimeClass" in message
            and event.get("involvedObject", {}).get("kind") == "ReplicaSet"
        ):
            continue
        when = event_time(event)
        if when is not None and any(t >= when for t in created):
            continue
        missing = re.search(r'RuntimeClass "([^"]+)" not found', message)
        if missing and missing.group(1) in present:
            continue
        return [
            Finding(
                "pending",
                "error",
                "Pods cannot be created: RuntimeClass not found",
                "Deploy the RuntimeClass first: kubectl get runtimeclass nvidia "
                "(the NVIDIA GPU Operator creates it)",
                [f"ReplicaSet {event['involvedObject']['name']}: {message}"],
                RUNBOOK,
            )
        ]
    return []
