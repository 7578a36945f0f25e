"""What `archon doctor` reports: a problem, the evidence it saw, and the exact fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass
class Finding:
    check: str  # prerequisites | gpu-node | pending | containers | crashloop | slow-loading |
    # not-ready | latency | access
    severity: Severity
    title: str
    fix: str
    evidence: list[str] = field(default_factory=list)
    runbook: str | None = None
    namespace: str | None = None  # the model server's namespace; None for cluster-wide

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
