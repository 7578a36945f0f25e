"""Whether the namespace's NetworkPolicies let the model server reach the hub (HTTPS) and DNS.

The API's rules (networking.k8s.io/v1 NetworkPolicy): a pod selected by any policy with policy
type Egress may send only what one of those policies' egress rules allows; a rule without ports
allows every port, a rule without `to` every destination. The hub is outside the cluster, so
only a rule with no `to` or an ipBlock of 0.0.0.0/0 reaches it (a proxy or a mirror aside).
"""

from __future__ import annotations

from typing import Any

from archon.ops.doctor.scope import Scope, name

FIX = (
    "Allow the model server's egress in its namespace: TCP 443 to outside the cluster (the hub) "
    "and UDP/TCP 53 (DNS), as manifests/model-server/networkpolicy.yaml does (kubectl apply -k "
    "manifests/model-server/ applies it); or point HF_ENDPOINT at a mirror the policies allow."
)


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """metav1.LabelSelector matching: matchLabels and matchExpressions, all must hold."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        present = key in labels
        if (
            (op == "In" and labels.get(key) not in values)
            or (op == "NotIn" and present and labels.get(key) in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


def _allows_port(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports") or []
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        number, end = p.get("port"), p.get("endPort")
        if (
            number is None
            or number == port
            or (end and isinstance(number, int) and number <= port <= end)
        ):
            return True
    return False


def _outside(rule: dict[str, Any]) -> bool:
    peers = rule.get("to") or []
    return not peers or any(
        (p.get("ipBlock") or {}).get("cidr") in ("0.0.0.0/0", "::/0") for p in peers
    )


def _egress(policy: dict[str, Any]) -> bool:
    spec = policy.get("spec", {})
    types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
    return "Egress" in types


def blocked(scope: Scope, pod: dict[str, Any]) -> list[str]:
    """Evidence that the pod's egress to the hub or to DNS is cut; empty when it is not (or
    when the policies cannot be read)."""
    policies = scope.read("networkpolicies", scope.namespace, purpose="egress to the hub") or []
    labels = pod["metadata"].get("labels") or {}
    mine = [
        p
        for p in policies
        if _egress(p) and selects(p.get("spec", {}).get("podSelector") or {}, labels)
    ]
    if not mine:
        return []
    rules = [r for p in mine for r in p.get("spec", {}).get("egress") or []]
    names = ", ".join(name(p) for p in mine)
    found = []
    if not any(_allows_port(r, 443, "TCP") and _outside(r) for r in rules):
        found.append(
            f"NetworkPolicy {names} select(s) pod {name(pod)} and allow no egress to TCP 443 "
            "outside the cluster (the hub)"
        )
    if not any(_allows_port(r, 53, "UDP") for r in rules):
        found.append(f"NetworkPolicy {names} allow(s) no DNS (UDP 53) from pod {name(pod)}")
    return found
