"""`archon doctor`: the operations guide's prerequisites and runbooks, run against a cluster."""

from __future__ import annotations

from archon.ops.doctor import (
    containers,
    crashloop,
    latency,
    loading,
    nodes,
    pending,
    prerequisites,
)
from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import Scope

CHECKS = {
    "prerequisites": prerequisites.check,
    "gpu-node": nodes.check,
    "pending": pending.check,
    "containers": containers.check,
    "crashloop": crashloop.check,
    "slow-loading": loading.check,
    "latency": latency.check,
}


def diagnose(scope: Scope) -> list[Finding]:
    findings: list[Finding] = []
    for check in CHECKS.values():
        findings.extend(check(scope))
    return findings + scope.access_findings()


__all__ = ["CHECKS", "Finding", "Scope", "diagnose"]
