"""Does kube-prometheus-stack, installed with its defaults, pick up Archon's monitoring bundle?

Its default selectors (tests/data/kube-prometheus-stack/defaults.yaml, from the chart's
values.yaml and prometheus.yaml, source named there) are applied to the objects
`kubectl kustomize manifests/monitoring` renders, and each ServiceMonitor to the Services of the
model-server, agent and knowledge-base bundles, including a per-GPU copy in another namespace.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from tests.integration.test_manifests import find, kustomize

ROOT = Path(__file__).resolve().parents[2]
DEFAULTS = ROOT / "tests/data/kube-prometheus-stack/defaults.yaml"


def chart_defaults(release: str | None = None) -> dict[str, Any]:
    facts = yaml.safe_load(DEFAULTS.read_text())
    release = release or facts["release"]
    return yaml.safe_load(DEFAULTS.read_text().replace("{{ release }}", release))


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def selects_namespace(namespace_selector: dict[str, Any], monitor_ns: str, ns: str) -> bool:
    """A ServiceMonitor's spec.namespaceSelector (Prometheus Operator semantics)."""
    if namespace_selector.get("any"):
        return True
    names = namespace_selector.get("matchNames")
    return ns in names if names else ns == monitor_ns


def _labels(doc: dict[str, Any]) -> dict[str, str]:
    return doc["metadata"].get("labels") or {}


def test_default_kube_prometheus_stack_selects_every_servicemonitor_and_the_rules() -> None:
    prometheus = chart_defaults()["prometheus"]
    docs = kustomize(ROOT / "manifests/monitoring")
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    assert len(monitors) == 3
    # serviceMonitorNamespaceSelector / ruleNamespaceSelector {} : every namespace.
    assert prometheus["serviceMonitorNamespaceSelector"] == {}
    assert prometheus["ruleNamespaceSelector"] == {}
    for monitor in monitors:
        assert matches(prometheus["serviceMonitorSelector"], _labels(monitor)), monitor["metadata"]
    rule = find(docs, "PrometheusRule")
    assert matches(prometheus["ruleSelector"], _labels(rule))
    dashboards = chart_defaults()["grafana"]["dashboards"]
    configmap = find(docs, "ConfigMap")
    assert _labels(configmap)[dashboards["label"]] == dashboards["labelValue"]
    assert dashboards["searchNamespace"] == "ALL"


def test_without_the_release_label_nothing_would_be_scraped() -> None:
    """The check has teeth: the bundle as it was (no release label) is not selected."""
    prometheus = chart_defaults()["prometheus"]
    monitor = find(kustomize(ROOT / "manifests/monitoring"), "ServiceMonitor", "archon-agent")
    labels = {k: v for k, v in _labels(monitor).items() if k != "release"}
    assert not matches(prometheus["serviceMonitorSelector"], labels)


def test_an_overlay_relabels_for_another_release_name(tmp_path: Path) -> None:
    """docs/operations.md: for `helm install monitoring ...`, an overlay sets release=monitoring."""
    shutil.copytree(ROOT / "manifests/monitoring", tmp_path / "monitoring")
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": ["../monitoring"],
                "labels": [{"pairs": {"release": "monitoring"}}],
            }
        )
    )
    prometheus = chart_defaults("monitoring")["prometheus"]
    docs = kustomize(overlay)
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            assert matches(prometheus["serviceMonitorSelector"], _labels(doc))
        if doc["kind"] == "PrometheusRule":
            assert matches(prometheus["ruleSelector"], _labels(doc))


def _scraped(monitor: dict[str, Any], services: list[dict[str, Any]]) -> list[str]:
    spec = monitor["spec"]
    ports = {e["port"] for e in spec["endpoints"]}
    return [
        f"{s['metadata']['namespace']}/{s['metadata']['name']}"
        for s in services
        if selects_namespace(
            spec.get("namespaceSelector", {}),
            monitor["metadata"]["namespace"],
            s["metadata"]["namespace"],
        )
        and matches(spec["selector"], _labels(s))
        and ports & {p.get("name") for p in s["spec"]["ports"]}
    ]


def test_each_servicemonitor_finds_its_service_including_a_per_gpu_copy(tmp_path: Path) -> None:
    # The per-GPU copy as docs/deploy-kubernetes.md shows it: manifests/model-server in another
    # namespace, without the Ingress.
    shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    gpu1 = tmp_path / "manifests/overlays/gpu1"
    gpu1.mkdir()
    (gpu1 / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        "namespace: archon-gpu1\nresources:\n  - ../../model-server\npatches:\n"
        "  - patch: |\n      $patch: delete\n      apiVersion: networking.k8s.io/v1\n"
        "      kind: Ingress\n      metadata:\n        name: vllm\n"
    )
    services = [
        d
        for path in ("model-server", "overlays/gpu1", "agent", "knowledge-base")
        for d in kustomize(tmp_path / "manifests" / path)
        if d["kind"] == "Service"
    ]
    # A team's own vLLM elsewhere, labelled app=vllm too: not Archon's to scrape.
    services.append(
        {
            "kind": "Service",
            "metadata": {"name": "vllm", "namespace": "research", "labels": {"app": "vllm"}},
            "spec": {"ports": [{"name": "http", "port": 8000}]},
        }
    )
    monitors = {
        d["metadata"]["name"]: d
        for d in kustomize(ROOT / "manifests/monitoring")
        if d["kind"] == "ServiceMonitor"
    }
    assert _scraped(monitors["archon-model-server"], services) == [
        "archon-system/vllm",
        "archon-gpu1/vllm",
    ]
    assert _scraped(monitors["archon-agent"], services) == ["archon-agent/archon-agent"]
    assert _scraped(monitors["archon-knowledge-base"], services) == [
        "archon-knowledge-base/archon-knowledge-base"
    ]
