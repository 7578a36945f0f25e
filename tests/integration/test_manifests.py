"""The Kubernetes bundle: kustomize builds, schema validation, checkov, and the promises the
operations guide makes (kubectl apply -k, the Tekton pipeline, model updates through ArgoCD)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.support import fake_hub
from tests.support.servers import ARCHON, run_cli

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "tests" / "data" / "crds"
KUSTOMIZATIONS = [
    "manifests/model-server",
    "manifests/overlays/cpu",
    "manifests/agent",
    "manifests/overlays/agent-redis",
    "pipeline",
    "manifests/argocd",
]
CRD_SCHEMAS = {
    ("tekton.dev/v1", "Pipeline"): "tekton-pipeline.yaml",
    ("tekton.dev/v1", "Task"): "tekton-task.yaml",
    ("tekton.dev/v1", "PipelineRun"): "tekton-pipelinerun.yaml",
    ("argoproj.io/v1alpha1", "Application"): "argocd-application.yaml",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheus-rule.yaml",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "service-monitor.yaml",
}
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def kustomize(path: Path | str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["kubectl", "kustomize", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def vllm_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The generated vllm-config-<hash> ConfigMap (the base also has vllm-start-<hash>)."""
    (configmap,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("vllm-config-")
    ]
    return configmap


def crd_validator(filename: str) -> jsonschema.Draft202012Validator:
    common = yaml.safe_load((CRDS / "common.yaml").read_text())
    schema = {**yaml.safe_load((CRDS / filename).read_text()), "$id": filename}
    registry = Registry().with_resources(
        [
            ("common.yaml", Resource.from_contents(common, DRAFT202012)),
            (filename, Resource.from_contents(schema, DRAFT202012)),
        ]
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict[str, Any]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    if key in CRD_SCHEMAS:
        errors = list(crd_validator(CRD_SCHEMAS[key]).iter_errors(doc))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    else:
        kubernetes_validate.validate(doc, "1.32.0", strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_kustomization_builds_and_validates(path: str) -> None:
    docs = kustomize(ROOT / path)
    assert docs
    for doc in docs:
        validate(doc)


def test_schemas_catch_a_misspelt_field() -> None:
    app = yaml.safe_load((ROOT / "manifests/argocd/model-server-application.yaml").read_text())
    broken = copy.deepcopy(app)
    broken["spec"]["syncPolicy"]["automated"]["selfheal"] = True
    with pytest.raises(AssertionError):
        validate(broken)
    validate(app)


def test_base_matches_the_operations_guide() -> None:
    docs = kustomize(ROOT / "manifests/model-server")
    assert all(d["metadata"].get("namespace", "archon-system") == "archon-system" for d in docs)
    find(docs, "Namespace", "archon-system")
    quota = find(docs, "ResourceQuota")
    assert quota["spec"]["hard"]["requests.nvidia.com/gpu"] == "1"
    find(docs, "LimitRange")
    pvc = find(docs, "PersistentVolumeClaim", "model-cache")
    assert pvc["spec"]["resources"]["requests"]["storage"] == "50Gi"
    service = find(docs, "Service", "vllm")
    assert service["spec"]["ports"][0]["port"] == 8000
    ingress = find(docs, "Ingress", "vllm")
    assert ingress["spec"]["rules"][0]["host"] == "models.archon.home.local"
    assert (
        int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
        >= 600
    )

    deployment = find(docs, "Deployment", "vllm")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["strategy"]["type"] == "Recreate"
    assert spec["template"]["metadata"]["labels"]["app"] == "vllm"
    assert pod["runtimeClassName"] == "nvidia"
    (vllm,) = pod["containers"]
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", vllm["image"])
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 1
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert vllm[probe]["httpGet"]["path"] == "/health"
    startup = vllm["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600
    # The download runs in the vllm container (tests/integration/test_vllm_start.py), where
    # the guide's `kubectl logs -l app=vllm -f` looks; preflight only sizes the model.
    assert [c["name"] for c in pod["initContainers"]] == ["preflight"]
    assert "--no-pull" in pod["initContainers"][0]["args"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in [*pod["initContainers"], vllm]:
        sc = container["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_cpu_overlay_serves_with_archon_under_the_same_names() -> None:
    docs = kustomize(ROOT / "manifests/overlays/cpu")
    pod = find(docs, "Deployment", "vllm")["spec"]["template"]["spec"]
    assert "runtimeClassName" not in pod
    assert not pod.get("initContainers")
    (container,) = pod["containers"]
    assert container["image"].startswith("ghcr.io/archon-platform/archon:")
    assert container["command"] == ["archon"] and container["args"] == ["serve"]
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    assert container["ports"][0]["containerPort"] == 8000
    assert find(docs, "Service", "vllm")["spec"]["ports"][0]["port"] == 8000
    data = find(docs, "ConfigMap")["data"]
    assert data["llm_model"] == "smollm2-135m-instruct"


def _render_with(tmp_path: Path, llm_model: str) -> list[dict[str, Any]]:
    copy_root = tmp_path / llm_model.replace("/", "_")
    shutil.copytree(ROOT / "manifests", copy_root / "manifests")
    configmap = copy_root / "manifests/model-server/configmap.yaml"
    text = configmap.read_text()
    configmap.write_text(re.sub(r"llm_model=\S+", f"llm_model={llm_model}", text))
    return kustomize(copy_root / "manifests/model-server")


def test_editing_llm_model_changes_the_pod_template(tmp_path: Path) -> None:
    """The guide's model update: a changed ConfigMap alone restarts nothing in Kubernetes."""
    before = _render_with(tmp_path, "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4")
    after = _render_with(tmp_path, "Qwen/Qwen2.5-Coder-7B-Instruct-GPTQ-Int4")
    cm_before, cm_after = vllm_config(before), vllm_config(after)
    assert cm_before["metadata"]["name"] != cm_after["metadata"]["name"]
    template_before = find(before, "Deployment")["spec"]["template"]
    template_after = find(after, "Deployment")["spec"]["template"]
    assert template_before != template_after
    refs = json.dumps(template_after)
    assert cm_after["metadata"]["name"] in refs and cm_before["metadata"]["name"] not in refs


def test_archon_reads_the_configmap_file_the_guide_edits() -> None:
    result = run_cli(
        "serve",
        "--engine",
        "vllm",
        "--config",
        str(ROOT / "manifests/model-server/configmap.yaml"),
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    assert "--model Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4" in result.stdout


def _pod_env(container: dict[str, Any], configmap: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives a container: envFrom with prefix, then env."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        for key, value in configmap["data"].items():
            env[source.get("prefix", "") + key] = value
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        ref = item.get("valueFrom", {}).get("configMapKeyRef")
        if ref is not None:
            assert ref["name"] == configmap["metadata"]["name"]
            env[item["name"]] = configmap["data"][ref["key"]]
    return env


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("ARCHON_", "HF_"))}


def _flags_to_dict(args: list[str]) -> dict[str, str]:
    out, key = {}, None
    for arg in args:
        if arg.startswith("--"):
            key = arg[2:]
            out[key] = "true"
        else:
            out[key] = arg
    return out


def test_the_pod_gives_vllm_the_args_dry_run_builds(tmp_path: Path) -> None:
    """One source of truth: the Deployment's vLLM arguments are what `--dry-run` prints."""
    docs = kustomize(ROOT / "manifests/model-server")
    configmap = vllm_config(docs)
    pod = find(docs, "Deployment", "vllm")["spec"]["template"]["spec"]
    (preflight,) = pod["initContainers"]
    (vllm,) = pod["containers"]

    # What `--dry-run` builds from the same ConfigMap, in the preflight container's environment.
    env = {**_clean_env(), **_pod_env(preflight, configmap)}
    dry = subprocess.run(
        [*ARCHON, "serve", "--engine", "vllm", "--dry-run"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout.split()
    entry = dry.index("vllm.entrypoints.openai.api_server")
    dry_args = dry[entry + 1 :]

    # Run the preflight's command as the pod would (hub: the stand-in with the real config.json
    # of the model, nothing downloaded; GPU: 16 GiB as NVML would report on the guide's card).
    flag = "--write-vllm-config="
    (written_at,) = [a[len(flag) :] for a in preflight["args"] if a.startswith(flag)]
    assert vllm["command"] == ["python3", "/opt/archon/vllm-start.py"]
    assert vllm["args"] == [
        "--",
        "python3",
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--config",
        written_at,
    ]
    mounts = {m["name"]: m["mountPath"] for m in vllm["volumeMounts"]}
    assert Path(written_at).parent == Path(mounts["run-archon"])

    hub = fake_hub.FakeHub(fake_hub.load_tree(fake_hub.MODEL_FACTS)).start()
    try:
        local = tmp_path / "vllm.yaml"
        side = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "models")}
        args = [a.replace(written_at, local.as_posix()) for a in preflight["args"]]
        args = [a.replace("/run/archon/", f"{tmp_path}/") for a in args]
        result = subprocess.run(
            [*ARCHON, *args],
            capture_output=True,
            text=True,
            env={
                **_clean_env(),
                **_pod_env(preflight, configmap),
                **side,
                "ARCHON_GPU_MEMORY": "16GiB",
            },
        )
        assert result.returncode == 0, result.stderr
        assert "VRAM check passed" in result.stderr
        assert not (tmp_path / "preflight-failed.json").exists()
        assert not list((tmp_path / "models").rglob("*.safetensors"))  # sized, not downloaded
    finally:
        hub.stop()

    written = {k: str(v) for k, v in yaml.safe_load(local.read_text()).items()}
    assert written == _flags_to_dict(dry_args)
    assert written["host"] == "0.0.0.0" and written["port"] == "8000"

    if VLLM_PYTHON.exists():  # and vLLM itself reads both the same way
        probe = (
            "import json, sys; from vllm.entrypoints.launchers.cli_args import make_arg_parser; "
            "from vllm.utils.argparse_utils import FlexibleArgumentParser; "
            "p = lambda a: vars(make_arg_parser(FlexibleArgumentParser()).parse_args(a)); "
            f"print(json.dumps(p({dry_args!r}) == p(['--config', {str(local)!r}])))"
        )
        same = subprocess.run(
            [str(VLLM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=300
        )
        assert same.stdout.strip().splitlines()[-1] == "true", same.stderr[-2000:]


GUIDE_PIPELINERUN = """
apiVersion: tekton.dev/v1
kind: PipelineRun
metadata:
  generateName: deploy-model-server-
  namespace: pipeline-system
spec:
  pipelineRef:
    name: deploy-model-server
"""


def test_the_guides_pipelinerun_runs_our_pipeline_with_defaults() -> None:
    run = yaml.safe_load(GUIDE_PIPELINERUN)
    validate(run)
    docs = kustomize(ROOT / "pipeline")
    pipeline = find(docs, "Pipeline", run["spec"]["pipelineRef"]["name"])
    assert pipeline["metadata"]["namespace"] == run["metadata"]["namespace"]
    params = {p["name"]: p for p in pipeline["spec"]["params"]}
    for name in ("git-url", "git-revision", "manifest-path", "app-name", "target-namespace"):
        assert "default" in params[name], name
    assert params["manifest-path"]["default"] == "manifests/model-server"
    assert params["target-namespace"]["default"] == "archon-system"
    task_names = {t["taskRef"]["name"] for t in pipeline["spec"]["tasks"]}
    shipped = {d["metadata"]["name"] for d in docs if d["kind"] == "Task"}
    assert task_names <= shipped  # no external task needed
    binding = find(docs, "RoleBinding")
    assert binding["subjects"][0] == {
        "kind": "ServiceAccount",
        "name": "default",
        "namespace": "pipeline-system",
    }


@pytest.mark.skipif(
    not CHECKOV.exists(), reason="run scripts/setup-checkov-venv.sh (make test does)"
)
def test_checkov_passes_on_rendered_manifests_and_dockerfile(tmp_path: Path) -> None:
    for path in KUSTOMIZATIONS:
        docs = kustomize(ROOT / path)
        (tmp_path / (path.replace("/", "-") + ".yaml")).write_text(yaml.safe_dump_all(docs))
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    result = subprocess.run(
        [
            str(CHECKOV),
            "-d",
            str(tmp_path),
            "--framework",
            "kubernetes",
            "dockerfile",
            "--compact",
            "--quiet",
            "--skip-download",
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        (r["check_type"], c["check_id"], c["resource"])
        for r in reports
        for c in r.get("results", {}).get("failed_checks", [])
    ]
    passed = sum(r.get("summary", {}).get("passed", 0) for r in reports)
    assert not failed
    assert passed > 50
    skipped = [c for r in reports for c in r.get("results", {}).get("skipped_checks", [])]
    assert all(c.get("check_result", {}).get("suppress_comment") for c in skipped)


def test_knowledge_base_bundle_agrees_with_the_code() -> None:
    from archon.kb.settings import KnowledgeBaseSettings
    from archon.kb.sources import load_sources

    docs = kustomize(ROOT / "manifests/knowledge-base")
    deployment = find(docs, "Deployment", "archon-knowledge-base")
    assert deployment["spec"]["strategy"]["type"] == "Recreate"  # one process per local store
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    config = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("kb-config")
    )
    env = {f"ARCHON_KB_{k}": v for k, v in config["data"].items()}
    env.update({e["name"]: e["value"] for e in container["env"] if "value" in e})
    settings = KnowledgeBaseSettings(
        **{
            k.removeprefix("ARCHON_KB_").lower(): v
            for k, v in env.items()
            if k.startswith("ARCHON_KB_")
        }
    )
    assert settings.sync_interval == 3600
    sources_cm = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("kb-sources")
    )
    tmp = Path(settings.sources)
    assert tmp.name == "sources.yaml"
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "sources.yaml"
        path.write_text(sources_cm["data"]["sources.yaml"])
        assert [s.name for s in load_sources(path)] == ["archon"]
    cron = find(docs, "CronJob", "kb-sync")
    args = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"]
    service = find(docs, "Service", "archon-knowledge-base")
    assert args[-1] == f"http://archon-knowledge-base:{service['spec']['ports'][0]['port']}"
    server_mode = kustomize(ROOT / "manifests/overlays/kb-qdrant")
    config = next(
        d
        for d in server_mode
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("kb-config")
    )
    assert config["data"]["qdrant"] == "http://qdrant:6333"
    find(server_mode, "StatefulSet", "qdrant")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {})
    if doc["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    if doc["kind"] == "Task":
        return spec["steps"]
    pod = spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


@pytest.mark.parametrize(
    "path", [*KUSTOMIZATIONS, "manifests/knowledge-base", "manifests/overlays/kb-qdrant"]
)
def test_pinned_images_are_pulled_if_not_present(path: str) -> None:
    """A pinned tag never changes: IfNotPresent lets an image loaded into kind/k3s be used
    (Always would make the kubelet ask a registry that may not have it)."""
    for doc in kustomize(ROOT / path):
        for container in _containers(doc):
            image = container["image"]
            assert re.search(r":v?\d+\.\d+", image) and not image.endswith(":latest"), image
            assert container.get("imagePullPolicy") == "IfNotPresent", (doc["kind"], image)


def test_a_first_download_is_no_failed_rollout() -> None:
    """ArgoCD reports a Deployment Degraded once its progress deadline passes: the deadline must
    cover the first download (the guide: 15-30 min) plus the startup probe's loading budget."""
    for path, loading in (("manifests/model-server", 15 * 60), ("manifests/overlays/cpu", 0)):
        deployment = find(kustomize(ROOT / path), "Deployment", "vllm")
        pod = deployment["spec"]["template"]["spec"]
        # Both engines download in the serving container, after it started: the startup
        # probe's budget must hold the download and the loading, the deadline that budget.
        assert [c["name"] for c in pod.get("initContainers", [])] in (["preflight"], []), path
        (server,) = pod["containers"]
        probe = server["startupProbe"]
        budget = probe["periodSeconds"] * probe["failureThreshold"]
        download = 30 * 60
        assert budget >= download + loading, path
        assert deployment["spec"]["progressDeadlineSeconds"] >= budget, path


def test_the_gpu_pod_tolerates_the_usual_gpu_node_taint() -> None:
    from archon.ops.doctor.scope import tolerates

    deployment = find(kustomize(ROOT / "manifests/model-server"), "Deployment", "vllm")
    pod = {"spec": deployment["spec"]["template"]["spec"]}
    assert tolerates(pod, {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"})
    assert not tolerates(pod, {"key": "dedicated", "value": "db", "effect": "NoSchedule"})
