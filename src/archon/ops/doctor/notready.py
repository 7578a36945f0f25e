"""Runbook "ArchonModelServerNotReady": a server that was ready and stopped being ready.

Not "still loading" (it loaded and served), not a crash loop (the crashloop check), not a lost
node (the gpu-node check): its readiness probe fails on a node that is well. The kubelet's
Unhealthy events ("Readiness probe failed: ...", pkg/kubelet/prober) and the vllm container's
log say why.
"""

from __future__ import annotations

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.nodes import lost_gpu_nodes
from archon.ops.doctor.scope import (
    EPOCH,
    Scope,
    condition,
    container_statuses,
    event_time,
    is_terminating,
    name,
    timestamp,
    was_ready_before,
)

RUNBOOK = "docs/runbooks/ArchonModelServerNotReady.md"
GRACE_S = 5 * 60  # the alert's `for`: a probe blip during a burst is no finding


def check(scope: Scope) -> list[Finding]:
    found = []
    now = scope.source.now()
    lost = lost_gpu_nodes(scope)
    for pod in scope.pods():
        if (
            not was_ready_before(pod)
            or is_terminating(pod)
            or pod.get("spec", {}).get("nodeName") in lost
            or any(s.get("state", {}).get("waiting") for _, s in container_statuses(pod))
        ):
            continue
        ready = condition(pod, "Ready") or {}
        since = ready.get("lastTransitionTime", "?")
        changed = timestamp(since) or now
        if (now - changed).total_seconds() < GRACE_S:
            continue
        probes = [
            e.get("message", "")
            for e in sorted(scope.events_about(name(pod)), key=lambda e: event_time(e) or EPOCH)
            if e.get("reason") == "Unhealthy"
        ]
        log = scope.source.log(scope.namespace, name(pod), "vllm", previous=False) or ""
        tail = [x for x in log.strip().splitlines() if x.strip()][-3:]
        found.append(
            Finding(
                "not-ready",
                "error",
                f"{name(pod)} served, and is not ready since {since}",
                "Its readiness probe (/health) fails while the container runs: the engine died "
                "or hangs (the log below), or it is overloaded (probe timeouts under load). "
                f"kubectl logs -n {scope.namespace} {name(pod)} -c vllm --tail=100; if the "
                f"engine is dead, kubectl delete pod -n {scope.namespace} {name(pod)} restarts "
                "it (the liveness probe does the same after 60 s of failures).",
                [
                    f"pod {name(pod)}: Ready=False since {since}, after serving",
                    *probes[-1:],
                    *[f"vllm: {x}" for x in tail],
                ],
                RUNBOOK,
            )
        )
    return found
