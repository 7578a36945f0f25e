"""`archon doctor`: the operations guide's prerequisites and runbooks, run against a cluster."""

from __future__ import annotations

import dataclasses

from archon.ops.doctor import (
    containers,
    crashloop,
    latency,
    loading,
    nodes,
    notready,
    pending,
    prerequisites,
)
from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import Scope

# Cluster-wide: run once, whatever the namespaces.
CLUSTER_CHECKS = {"prerequisites": prerequisites.check}
# Per model server's namespace: its pods, events, ConfigMap and PVC.
CHECKS = {
    "gpu-node": nodes.check,
    "pending": pending.check,
    "containers": containers.check,
    "crashloop": crashloop.check,
    "slow-loading": loading.check,
    "not-ready": notready.check,
    "latency": latency.check,
}


def namespaces(scope: Scope) -> list[str]:
    """The namespaces to diagnose: `--namespace a,b`, or `*` for every namespace that has pods
    matching the selector (one model server per GPU, one namespace each, as the guide scales)."""
    if scope.namespace != "*":
        return [ns.strip() for ns in scope.namespace.split(",") if ns.strip()]
    pods = scope.read("pods", None, scope.selector, purpose="the model servers' namespaces")
    return sorted({p["metadata"]["namespace"] for p in pods or []})


def diagnose(scope: Scope) -> list[Finding]:
    spaces = namespaces(scope)
    scopes = [dataclasses.replace(scope, namespace=ns, denied=scope.denied) for ns in spaces]
    findings: list[Finding] = []
    for check in CLUSTER_CHECKS.values():
        findings.extend(check(scopes[0] if scopes else scope))
    if not spaces and scope.namespace == "*" and ("pods", None) not in scope.denied:
        findings.append(
            Finding(
                "pending",
                "warning",
                f"No model server found: no pod matches {scope.selector} in any namespace",
                "Deploy it (kubectl apply -k manifests/model-server/), or give doctor the "
                "selector of your pods (--selector)",
                [f"pods with {scope.selector}: none"],
            )
        )
    for each in scopes:
        for check in CHECKS.values():
            for finding in check(each):
                finding.namespace = each.namespace
                if len(scopes) > 1:  # say whose it is, each server diagnosed on its own
                    finding.title = f"{each.namespace}: {finding.title}"
                findings.append(finding)
    return findings + scope.access_findings()


__all__ = ["CHECKS", "CLUSTER_CHECKS", "Finding", "Scope", "diagnose", "namespaces"]
