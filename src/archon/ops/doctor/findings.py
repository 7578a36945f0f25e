"""What `archon doctor` reports: a problem, the evidence it saw, and the exact fix."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Severity = Literal["error", "warning"]


@dataclass
class Finding:
    check: str  # prerequisites | pending | crashloop | slow-loading | latency | access
    severity: Severity
    title: str
    fix: str
    evidence: list[str] = field(default_factory=list)
    runbook: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
