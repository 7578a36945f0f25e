"""The Tekton Task's step, as the pipeline's kustomize build gives it, run for real: its command
line (params and result paths substituted as Tekton does) against an API server that serves
ArgoCD Applications, with a stand-in for ArgoCD's controller moving their status."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_manifests import find, kustomize, validate
from tests.support import k8s_objects as k
from tests.support.servers import ARCHON, run_cli

ROOT = Path(__file__).resolve().parents[2]
SYNCING = [("OutOfSync", "Missing"), ("Synced", "Progressing"), ("Synced", "Healthy")]


def _step(pipeline: str, tmp_path: Path, **overrides: str) -> tuple[list[str], dict[str, Path]]:
    """The step's command line with $(params.*) and $(results.*.path) filled in."""
    docs = kustomize(ROOT / "pipeline")
    task = find(docs, "Task", "argocd-application")
    (step,) = task["spec"]["steps"]
    assert "script" not in step  # a script needs a shell in the image
    assert step["image"].startswith("ghcr.io/archon-platform/archon:")
    assert step["imagePullPolicy"] == "IfNotPresent"
    assert step["command"] == ["archon"]
    params = {p["name"]: p.get("default") for p in task["spec"]["params"]}
    params.update(
        {p["name"]: p["default"] for p in find(docs, "Pipeline", pipeline)["spec"]["params"]}
    )
    params.update(overrides)
    results = {r["name"]: tmp_path / f"result-{r['name']}" for r in task["spec"]["results"]}

    def fill(arg: str) -> str:
        arg = re.sub(r"\$\(params\.([a-z-]+)\)", lambda m: str(params[m[1]]), arg)
        return re.sub(r"\$\(results\.([a-z-]+)\.path\)", lambda m: str(results[m[1]]), arg)

    args = [fill(a) for a in step["args"]]
    assert not [a for a in args if "$(" in a], args
    return args, results


def _run(args: list[str], api: k.FakeAPIServer, tmp_path: Path, *extra: str):
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    return subprocess.run(
        [*ARCHON, *args, "--poll=0.05", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={"KUBECONFIG": str(kubeconfig), "PATH": "/usr/bin:/bin"},
    )


def _application(api: k.FakeAPIServer, name: str) -> dict[str, Any]:
    (app,) = [a for a in api.cluster.objects["applications"] if a["metadata"]["name"] == name]
    return app


@pytest.mark.parametrize(
    ("pipeline", "application"),
    [
        ("deploy-model-server", "archon-model-server"),
        ("deploy-knowledge-base", "archon-knowledge-base"),
        ("deploy-agent", "archon-agent"),
    ],
)
def test_the_step_creates_the_manifests_application_and_waits_for_healthy(
    tmp_path: Path, pipeline: str, application: str
) -> None:
    args, results = _step(pipeline, tmp_path)
    api = k.FakeAPIServer(k.InMemoryCluster({}), k.FakeArgoCD(SYNCING))
    try:
        result = _run(args, api, tmp_path)
    finally:
        api.stop()
    assert result.returncode == 0, result.stderr
    assert f"{application}: Synced and Healthy" in result.stdout
    assert results["sync-status"].read_text() == "Synced"
    assert results["health-status"].read_text() == "Healthy"
    # Progress is in the step's log (what `tkn pr logs` shows).
    assert "sync OutOfSync, health Missing" in result.stderr
    created = _application(api, application)
    standalone = find(kustomize(ROOT / "manifests/argocd"), "Application", application)
    assert created["spec"] == standalone["spec"]
    assert created["metadata"]["namespace"] == standalone["metadata"]["namespace"] == "argocd"
    meta = created["metadata"]
    validate(
        {
            "apiVersion": created["apiVersion"],
            "kind": created["kind"],
            "metadata": {k_: meta[k_] for k_ in ("name", "namespace", "labels")},
            "spec": created["spec"],
        }
    )
    policy = created["spec"]["syncPolicy"]
    assert policy["automated"] == {"prune": True, "selfHeal": True}
    assert "CreateNamespace=true" in policy["syncOptions"]


def test_a_second_run_updates_the_application_and_waits_for_the_new_spec(tmp_path: Path) -> None:
    api = k.FakeAPIServer(k.InMemoryCluster({}), k.FakeArgoCD(SYNCING))
    try:
        first, _ = _step("deploy-model-server", tmp_path)
        assert _run(first, api, tmp_path).returncode == 0
        second, results = _step("deploy-model-server", tmp_path, **{"git-revision": "v0.2.0"})
        result = _run(second, api, tmp_path)
    finally:
        api.stop()
    assert result.returncode == 0, result.stderr
    assert "updated Application argocd/archon-model-server" in result.stderr
    methods = [m for m, _, _ in api.requests if m != "GET"]
    assert methods == ["POST", "PATCH"]
    app = _application(api, "archon-model-server")
    assert app["spec"]["source"]["targetRevision"] == "v0.2.0"
    assert results["health-status"].read_text() == "Healthy"


def test_not_healthy_in_time_fails_with_argocds_reason(tmp_path: Path) -> None:
    args, results = _step("deploy-model-server", tmp_path, **{"wait-timeout": "2s"})
    message = 'Deployment "vllm" exceeded its progress deadline'
    api = k.FakeAPIServer(
        k.InMemoryCluster({}),
        k.FakeArgoCD([("OutOfSync", "Missing"), ("Synced", "Degraded")], health_message=message),
    )
    try:
        result = _run(args, api, tmp_path)
    finally:
        api.stop()
    assert result.returncode == 1
    assert results["sync-status"].read_text() == "Synced"
    assert results["health-status"].read_text() == "Degraded"
    assert message in result.stderr
    assert "kubectl get pods,events -n archon-system" in result.stderr


def test_rbac_refusal_is_one_clear_line(tmp_path: Path) -> None:
    args, _ = _step("deploy-model-server", tmp_path)
    api = k.FakeAPIServer(
        k.InMemoryCluster(
            {},
            forbidden={("applications", "argocd")},
            user="system:serviceaccount:pipeline-system:default",
        )
    )
    try:
        result = _run(args, api, tmp_path)
    finally:
        api.stop()
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "forbidden" in line and "pipeline/rbac.yaml" in line


def test_a_malformed_timeout_names_the_setting(tmp_path: Path) -> None:
    result = run_cli(
        "argocd",
        "apply",
        "--name=a",
        "--repo-url=u",
        "--path=p",
        "--destination-namespace=n",
        "--timeout=45x",
    )
    assert result.returncode == 2
    assert "--timeout '45x': expected a duration" in result.stderr
