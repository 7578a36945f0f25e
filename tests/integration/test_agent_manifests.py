"""The agent's Kubernetes bundle (manifests/agent) against the rest: its Deployment agrees with
its Service, Ingress, ConfigMap and Secret mount, with the settings `archon agent` reads, with
the ServiceMonitor, and with the model-server and knowledge-base Services and NetworkPolicies it
talks to; the ArgoCD Applications and Tekton pipelines of all three parts agree; and no two
Ingresses claim the same host and path. Schema validation and checkov run on manifests/agent in
test_manifests.py (it is one of its KUSTOMIZATIONS)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import time
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.test_manifests import find, kustomize, validate
from tests.support.servers import ARCHON, free_port, run_cli

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "manifests/agent"
AGENT_SAMPLE = ROOT / "tests/data/exporters/archon-agent.prom"
RULES = ROOT / "manifests/monitoring/prometheusrule.yaml"
DASHBOARD = ROOT / "manifests/monitoring/dashboards/archon-model-server.json"
# (pipeline, ArgoCD Application, kustomize path, namespace) of the three parts.
PARTS = [
    ("deploy-model-server", "archon-model-server", "manifests/model-server", "archon-system"),
    (
        "deploy-knowledge-base",
        "archon-knowledge-base",
        "manifests/knowledge-base",
        "archon-knowledge-base",
    ),
    ("deploy-agent", "archon-agent", "manifests/agent", "archon-agent"),
]


def agent_docs() -> list[dict[str, Any]]:
    return kustomize(AGENT)


def agent_pod(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    pod = find(docs, "Deployment", "archon-agent")["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    return pod, container


def container_env(container: dict[str, Any], configmap: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        assert source["configMapRef"]["name"] == configmap["metadata"]["name"]
        for key, value in configmap["data"].items():
            env[source.get("prefix", "") + key] = value
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def agent_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    _, container = agent_pod(docs)
    return container_env(container, find(docs, "ConfigMap"))


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, "only matchLabels is evaluated here"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def namespace_labels(docs: list[dict[str, Any]]) -> dict[str, str]:
    (namespace,) = [d for d in docs if d["kind"] == "Namespace"]
    name = namespace["metadata"]["name"]
    # The API server adds this label to every namespace.
    return {**namespace["metadata"].get("labels", {}), "kubernetes.io/metadata.name": name}


def allows(
    rules: list[dict[str, Any]],
    peer_key: str,
    own_namespace: str,
    peer_ns_labels: dict[str, str],
    peer_pod_labels: dict[str, str],
    port: int,
) -> bool:
    """Whether NetworkPolicy rules (ingress `from` or egress `to`) admit a peer on a TCP port."""
    for rule in rules:
        ports = rule.get("ports")
        if ports and not any(
            p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports
        ):
            continue
        peers = rule.get(peer_key)
        if not peers:
            return True
        for peer in peers:
            if "ipBlock" in peer:
                continue
            ns_ok = (
                selects(peer["namespaceSelector"], peer_ns_labels)
                if "namespaceSelector" in peer
                else peer_ns_labels["kubernetes.io/metadata.name"] == own_namespace
            )
            pod_ok = (
                selects(peer["podSelector"], peer_pod_labels) if "podSelector" in peer else True
            )
            if ns_ok and pod_ok:
                return True
    return False


def service_for_url(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url.removeprefix("dns+"))
    match = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?", parts.hostname)
    assert match, f"{url}: use http://<service>.<namespace>.svc:<port>"
    assert parts.port, f"{url}: give the port"
    return match[1], match[2], parts.port


def test_agent_bundle_shape() -> None:
    docs = agent_docs()
    for doc in docs:
        validate(doc)
    assert {d["metadata"].get("namespace", "archon-agent") for d in docs} == {"archon-agent"}
    find(docs, "Namespace", "archon-agent")
    kinds = {d["kind"] for d in docs}
    assert "PersistentVolumeClaim" not in kinds  # stateless
    assert "Secret" not in kinds  # API keys never come from Git
    deployment = find(docs, "Deployment", "archon-agent")
    pod, container = agent_pod(docs)
    assert container["image"].startswith("ghcr.io/archon-platform/archon:")
    # The same image as the other parts of Archon.
    ms_pod = find(kustomize(ROOT / "manifests/model-server"), "Deployment", "vllm")
    assert container["image"] == ms_pod["spec"]["template"]["spec"]["initContainers"][0]["image"]
    assert container["command"] == ["archon"] and container["args"] == ["agent"]
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    # Liveness and readiness both on /health: the agent answers "no healthy upstream" itself.
    assert "startupProbe" not in container or container["startupProbe"]["httpGet"]["path"] == (
        "/health"
    )
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    # Several replicas: a PodDisruptionBudget keeps one while nodes drain.
    replicas = deployment["spec"]["replicas"]
    if replicas > 1:
        pdb = find(docs, "PodDisruptionBudget")
        assert selects(pdb["spec"]["selector"], pod["metadata"]["labels"])
        assert 1 <= pdb["spec"]["minAvailable"] < replicas
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_ports_service_ingress_and_servicemonitor_agree() -> None:
    docs = agent_docs()
    pod, container = agent_pod(docs)
    env = agent_env(docs)
    (port,) = container["ports"]
    assert port["name"] == "http"
    assert port["containerPort"] == int(env["ARCHON_AGENT_PORT"]) == 8080
    assert env["ARCHON_AGENT_HOST"] == "0.0.0.0"

    service = find(docs, "Service", "archon-agent")
    assert selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    (service_port,) = service["spec"]["ports"]
    assert service_port == {"name": "http", "port": 8080, "targetPort": "http"}

    ingress = find(docs, "Ingress", "archon-agent")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "archon.home.local"
    (path,) = rule["http"]["paths"]
    assert (path["path"], path["pathType"]) == ("/", "Prefix")
    assert path["backend"]["service"] == {"name": "archon-agent", "port": {"name": "http"}}
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 600
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"

    monitors = kustomize(ROOT / "manifests/monitoring")
    monitor = find(monitors, "ServiceMonitor", "archon-agent")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service_port["name"] and endpoint["path"] == "/metrics"


def test_configmap_and_secret_reach_the_agent_as_its_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from archon.agent.settings import AgentSettings

    docs = agent_docs()
    pod, container = agent_pod(docs)
    configmap = find(docs, "ConfigMap")
    assert configmap["metadata"]["name"].startswith("agent-config-")  # generated: pods roll
    (source,) = container["envFrom"]
    assert source["prefix"] == "ARCHON_AGENT_"

    # The API keys file lies in the Secret's volume, under the item's path, read-only.
    env = agent_env(docs)
    keys_file = PurePosixPath(env["ARCHON_AGENT_API_KEYS_FILE"])
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (mount,) = [
        m for m in container["volumeMounts"] if keys_file.parent == PurePosixPath(m["mountPath"])
    ]
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "archon-agent-api-keys"
    assert not secret.get("optional", False)  # no Secret: the pod waits, never serves keyless
    assert [item["path"] for item in secret["items"]] == [keys_file.name]
    assert secret["items"][0]["key"] == "api-keys"
    # Every other path the agent may write is a volume: the root filesystem is read-only.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["HOME"] in mounts

    # pydantic-settings reads the pod's environment (lower-case keys after the prefix too).
    for key in [k for k in os.environ if k.upper().startswith("ARCHON_AGENT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = AgentSettings()
    assert settings.upstreams == ["dns+http://vllm-pods.archon-system.svc:8000"]
    assert settings.kb_url == "http://archon-knowledge-base.archon-knowledge-base.svc:8100"
    assert settings.host == "0.0.0.0" and settings.port == 8080
    assert str(settings.api_keys_file) == str(keys_file)
    assert settings.kb_timeout == 2
    # The model servers' optional key (vllm-api-key) reaches the setting the agent sends.
    (upstream_key,) = [e for e in container["env"] if "valueFrom" in e]
    assert upstream_key["name"] == "ARCHON_AGENT_UPSTREAM_API_KEY"
    assert upstream_key["name"].removeprefix("ARCHON_AGENT_").lower() in AgentSettings.model_fields
    ms_pod = find(kustomize(ROOT / "manifests/model-server"), "Deployment", "vllm")
    (ms_key,) = [
        e["valueFrom"]["secretKeyRef"]
        for c in ms_pod["spec"]["template"]["spec"]["containers"]
        for e in c.get("env", [])
        if e["name"] == "VLLM_API_KEY"
    ]
    assert upstream_key["valueFrom"]["secretKeyRef"] == ms_key  # same name, key, optional


def test_the_redis_overlay_shares_limits_between_the_replicas(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """manifests/overlays/agent-redis: redis_url names its Service, the agent may reach Redis
    and only the agent may, and the settings parse."""
    from archon.agent.settings import AgentSettings

    docs = kustomize(ROOT / "manifests/overlays/agent-redis")
    for doc in docs:
        validate(doc)
    env = agent_env(docs)
    url = urlsplit(env["ARCHON_AGENT_redis_url"])
    assert url.scheme == "redis"
    service = find(docs, "Service", url.hostname)
    (port,) = service["spec"]["ports"]
    assert port["port"] == url.port == 6379
    redis = find(docs, "Deployment", "archon-agent-redis")
    redis_pod = redis["spec"]["template"]
    assert selects({"matchLabels": service["spec"]["selector"]}, redis_pod["metadata"]["labels"])
    (container,) = redis_pod["spec"]["containers"]
    assert container["ports"][0]["containerPort"] == 6379
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "--save" in container["args"]  # counters only: nothing written to disk

    pod, _ = agent_pod(docs)
    agent_labels = pod["metadata"]["labels"]
    ns = namespace_labels(docs)
    egress = find(docs, "NetworkPolicy", "archon-agent")["spec"]["egress"]
    assert allows(egress, "to", "archon-agent", ns, redis_pod["metadata"]["labels"], 6379)
    ingress = find(docs, "NetworkPolicy", "archon-agent-redis")["spec"]["ingress"]
    assert allows(ingress, "from", "archon-agent", ns, agent_labels, 6379)
    assert not allows(ingress, "from", "archon-agent", ns, {"app": "other"}, 6379)
    # The base bundle is unchanged: no Redis, no redis_url (each replica counts for itself).
    assert "ARCHON_AGENT_redis_url" not in agent_env(agent_docs())

    for key in [k for k in os.environ if k.upper().startswith("ARCHON_AGENT_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = AgentSettings()
    assert settings.redis_url is not None
    assert settings.redis_url.get_secret_value() == "redis://archon-agent-redis:6379/0"
    assert settings.limits_fail_closed is False


def test_upstreams_and_knowledge_base_name_the_shipped_services() -> None:
    env = agent_env(agent_docs())
    urls = [u for u in re.split(r"[,\s]+", env["ARCHON_AGENT_upstreams"]) if u]
    targets = [(u, "manifests/model-server") for u in urls]
    targets.append((env["ARCHON_AGENT_kb_url"], "manifests/knowledge-base"))
    for url, path in targets:
        name, namespace, port = service_for_url(url)
        docs = kustomize(ROOT / path)
        service = find(docs, "Service", name)
        assert service["metadata"]["namespace"] == namespace, url
        assert port in [p["port"] for p in service["spec"]["ports"]], url
        if url.startswith("dns+"):
            # Found in DNS: a headless Service, one record per ready pod of the model server.
            assert service["spec"]["clusterIP"] == "None", url
            assert not service["spec"].get("publishNotReadyAddresses"), url
            pods = find(docs, "Deployment", "vllm")["spec"]["template"]["metadata"]["labels"]
            assert selects({"matchLabels": service["spec"]["selector"]}, pods), url


def test_the_model_server_is_scraped_once_per_pod() -> None:
    """The headless Service for the agent must not be a second scrape target of each pod."""
    monitors = kustomize(ROOT / "manifests/monitoring")
    selector = find(monitors, "ServiceMonitor", "archon-model-server")["spec"]["selector"]
    services = [d for d in kustomize(ROOT / "manifests/model-server") if d["kind"] == "Service"]
    scraped = [
        s["metadata"]["name"] for s in services if selects(selector, s["metadata"]["labels"])
    ]
    assert scraped == ["vllm"]


def test_network_policies_let_the_agent_through_and_no_one_else_in() -> None:
    docs = agent_docs()
    pod, container = agent_pod(docs)
    agent_ns = namespace_labels(docs)
    agent_labels = pod["metadata"]["labels"]
    policy = find(docs, "NetworkPolicy", "archon-agent")
    assert selects(policy["spec"]["podSelector"], agent_labels)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    port = container["ports"][0]["containerPort"]
    ingress, egress = policy["spec"]["ingress"], policy["spec"]["egress"]

    # In: the ingress controller and Prometheus; not any other namespace.
    for namespace in ("ingress-nginx", "monitoring"):
        ns = {"kubernetes.io/metadata.name": namespace}
        assert allows(ingress, "from", "archon-agent", ns, {}, port), namespace
    stranger = {"kubernetes.io/metadata.name": "default"}
    assert not allows(ingress, "from", "archon-agent", stranger, {}, port)

    # Out: DNS, and each model server and the knowledge base on their Services' target ports.
    kube_dns = {"kubernetes.io/metadata.name": "kube-system"}
    assert allows(egress, "to", "archon-agent", kube_dns, {"k8s-app": "kube-dns"}, 53)
    env = agent_env(docs)
    urls = [u for u in re.split(r"[,\s]+", env["ARCHON_AGENT_upstreams"]) if u]
    for url, path in [
        *((u, "manifests/model-server") for u in urls),
        (env["ARCHON_AGENT_kb_url"], "manifests/knowledge-base"),
    ]:
        name, _, service_port = service_for_url(url)
        target = kustomize(ROOT / path)
        service = find(target, "Service", name)
        (deployment,) = [
            d
            for d in target
            if d["kind"] == "Deployment"
            and selects(
                {"matchLabels": service["spec"]["selector"]},
                d["spec"]["template"]["metadata"]["labels"],
            )
        ]
        target_pod = deployment["spec"]["template"]
        (sp,) = [p for p in service["spec"]["ports"] if p["port"] == service_port]
        (target_port,) = [
            p["containerPort"]
            for c in target_pod["spec"]["containers"]
            for p in c.get("ports", [])
            if p["name"] == sp["targetPort"] or p["containerPort"] == sp["targetPort"]
        ]
        target_ns = namespace_labels(target)
        # The agent may leave toward it ...
        assert allows(
            egress, "to", "archon-agent", target_ns, target_pod["metadata"]["labels"], target_port
        ), url
        # ... and the model server's / knowledge base's own policy admits the agent.
        (their_policy,) = [
            d
            for d in target
            if d["kind"] == "NetworkPolicy"
            and selects(d["spec"]["podSelector"], target_pod["metadata"]["labels"])
        ]
        assert allows(
            their_policy["spec"]["ingress"],
            "from",
            target_ns["kubernetes.io/metadata.name"],
            agent_ns,
            agent_labels,
            target_port,
        ), url
    # Nothing else: no egress to the internet (the agent needs none).
    outside = {"kubernetes.io/metadata.name": "default"}
    assert not allows(egress, "to", "archon-agent", outside, {}, 443)


def all_kustomizations() -> list[Path]:
    return sorted(p.parent for p in (ROOT / "manifests").rglob("kustomization.yaml"))


def test_no_two_ingresses_claim_the_same_host_and_path() -> None:
    claims: dict[tuple[str, str], set[tuple[str, str]]] = {}
    for path in all_kustomizations():
        for doc in kustomize(path):
            if doc["kind"] != "Ingress":
                continue
            owner = (doc["metadata"].get("namespace", ""), doc["metadata"]["name"])
            for rule in doc["spec"]["rules"]:
                for http_path in rule["http"]["paths"]:
                    claims.setdefault((rule["host"], http_path["path"]), set()).add(owner)
    clashes = {claim: owners for claim, owners in claims.items() if len(owners) > 1}
    assert not clashes
    assert claims[("archon.home.local", "/")] == {("archon-agent", "archon-agent")}
    assert claims[("models.archon.home.local", "/")] == {("archon-system", "vllm")}


@pytest.mark.parametrize(("pipeline_name", "app_name", "path", "namespace"), PARTS)
def test_pipeline_and_application_deploy_the_same_part(
    pipeline_name: str, app_name: str, path: str, namespace: str
) -> None:
    pipelines = kustomize(ROOT / "pipeline")
    for doc in pipelines:
        validate(doc)
    pipeline = find(pipelines, "Pipeline", pipeline_name)
    params = {p["name"]: p["default"] for p in pipeline["spec"]["params"]}
    assert params["manifest-path"] == path
    assert params["app-name"] == app_name
    assert params["target-namespace"] == namespace
    # A PipelineRun without params, as the operations guide writes it, names this pipeline.
    run = {
        "apiVersion": "tekton.dev/v1",
        "kind": "PipelineRun",
        "metadata": {"generateName": f"{pipeline_name}-", "namespace": "pipeline-system"},
        "spec": {"pipelineRef": {"name": pipeline_name}},
    }
    validate(run)
    task_names = {t["taskRef"]["name"] for t in pipeline["spec"]["tasks"]}
    assert task_names <= {d["metadata"]["name"] for d in pipelines if d["kind"] == "Task"}

    # The Application the step creates equals manifests/argocd's: tests/integration/test_pipeline.py
    # runs the step's real command line for every pipeline.
    applications = kustomize(ROOT / "manifests/argocd")
    for doc in applications:
        validate(doc)
    standalone = find(applications, "Application", app_name)
    assert standalone["spec"]["source"]["path"] == path
    assert standalone["spec"]["destination"]["namespace"] == namespace
    # The path builds, into the namespace the Application names.
    docs = kustomize(ROOT / path)
    assert {d["metadata"].get("namespace", namespace) for d in docs} == {namespace}


# ---- the metrics the monitoring bundle reads from the agent ----


def sample_families() -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", AGENT_SAMPLE.read_text(), re.M))


def label_names(text: str) -> dict[str, frozenset[str]]:
    """Label names of each metric family's samples in an exposition text (le aside)."""
    names: dict[str, frozenset[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            names[family.name] = frozenset(sample.labels) - {"le"}
    return names


def _family(name: str) -> str:
    return re.sub(r"_(bucket|count|sum)$", "", name)


def test_alerts_and_dashboard_read_only_the_agents_metrics() -> None:
    """Every archon_agent_* name the rules and the dashboard use is one the agent exports
    (tests/data/exporters/archon-agent.prom, which the Prometheus of test_monitoring scrapes)."""
    families = sample_families()
    assert set(families) == {
        "archon_agent_request_duration_seconds",
        "archon_agent_requests_total",
        "archon_agent_time_to_first_token_seconds",
        "archon_agent_retrieval_duration_seconds",
        "archon_agent_rag_requests_total",
        "archon_agent_upstream_errors_total",
        "archon_agent_upstream_in_flight",
        "archon_agent_upstream_healthy",
        "archon_agent_knowledge_base_up",
        "archon_agent_key_requests_total",
        "archon_agent_tokens_total",
        "archon_agent_rate_limited_total",
        "archon_agent_limits_backend_errors_total",
        "archon_agent_key_budget_tokens",
        "archon_agent_key_budget_used_tokens",
        "archon_agent_queue_depth",
        "archon_agent_queue_wait_seconds",
        "archon_agent_shed_total",
    }
    text = RULES.read_text() + json.dumps(json.loads(DASHBOARD.read_text()))
    used = {_family(n) for n in re.findall(r"archon_agent_[a-z_]+", text)}
    assert used
    assert used <= set(families), used - set(families)
    outcomes = set(re.findall(r'outcome="(\w+)"', AGENT_SAMPLE.read_text()))
    assert outcomes == {"used", "none", "degraded", "off"}


def _agent_available() -> bool:
    try:
        return run_cli("agent", "--help", timeout=60).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def test_the_agent_starts_with_the_pods_environment(tmp_path: Path) -> None:
    """`archon agent` with the Deployment's environment (addresses made local): /health for the
    probes, /ready 503 without a model server, /metrics for Prometheus without a key, the
    Secret's digest file guarding /v1, and every metric family the monitoring bundle reads."""
    if not _agent_available():
        pytest.skip("`archon agent` is not there yet")
    docs = agent_docs()
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ARCHON_")}
    env.update(agent_env(docs))
    key = "test-key-" + hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]
    digest = "sha256:" + hashlib.sha256(key.encode()).hexdigest()
    hashed = subprocess.run(
        [*ARCHON, "agent", "hash-key"], input=key, capture_output=True, text=True, timeout=60
    )
    if hashed.returncode == 0:
        assert hashed.stdout.strip() == digest
    keys = tmp_path / "api-keys"
    keys.write_text(f"# the Secret archon-agent-api-keys holds digests only\n{digest}\n")
    kb_token = tmp_path / "kb-token"  # the Secret archon-kb-service-token's file
    kb_token.write_text("kb-service-token\n")
    port = free_port()
    env.update(
        {
            "ARCHON_AGENT_HOST": "127.0.0.1",
            "ARCHON_AGENT_PORT": str(port),
            "ARCHON_AGENT_API_KEYS_FILE": str(keys),
            "ARCHON_AGENT_KB_TOKEN_FILE": str(kb_token),
            "ARCHON_AGENT_upstreams": f"http://127.0.0.1:{free_port()}",
            "ARCHON_AGENT_kb_url": f"http://127.0.0.1:{free_port()}",
            "ARCHON_AGENT_health_interval": "0.5",
            "HOME": str(tmp_path),
        }
    )
    log = (tmp_path / "agent.log").open("wb")
    process = subprocess.Popen(
        [*ARCHON, "agent"], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "agent.log").read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "agent.log").read_text()
            time.sleep(0.1)
        time.sleep(1.5)  # a few health checks of the (absent) upstream
        ready = httpx.get(f"{url}/ready", timeout=5)
        assert ready.status_code == 503 and ready.json()["auth"] is True
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
        authorised = httpx.get(
            f"{url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5
        )
        assert authorised.status_code != 401
        metrics = httpx.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200
        real = dict(re.findall(r"^# TYPE (\S+) (\S+)$", metrics.text, re.M))
        for name, kind in sample_families().items():
            assert real.get(name) == kind, f"{name}: {kind} in the sample, {real.get(name)} real"
        # Where the agent has samples already, they carry the sample's label names.
        assert label_names(metrics.text).items() <= label_names(AGENT_SAMPLE.read_text()).items()
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
