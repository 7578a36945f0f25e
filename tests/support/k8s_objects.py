"""Kubernetes objects shaped as the API server and kubelet write them (camelCase JSON, RFC 3339
times, the scheduler's and kubelet's own messages), and an in-memory cluster that serves them
to `archon doctor` — directly, or as a fake API server for the kubernetes client."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from archon.ops.doctor.source import Forbidden

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
NS = "archon-system"


def ts(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(
    name: str,
    gpus: int = 1,
    memory: str = "131906556Ki",
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    allocatable = {"cpu": "31800m", "memory": memory, "pods": "110", "ephemeral-storage": "1"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {"podCIDR": "10.42.0.0/24"}
    if taints:
        spec["taints"] = taints
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": ts(10000),
            "labels": {"kubernetes.io/hostname": name},
        },
        "spec": spec,
        "status": {
            "allocatable": allocatable,
            "capacity": dict(allocatable),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "lastTransitionTime": ts(10000),
                }
            ],
        },
    }


def runtimeclass(name: str = "nvidia") -> dict[str, Any]:
    return {
        "apiVersion": "node.k8s.io/v1",
        "kind": "RuntimeClass",
        "handler": name,
        "metadata": {"name": name, "creationTimestamp": ts(10000)},
    }


def storageclass(
    name: str = "local-path",
    default: bool = True,
    provisioner: str = "rancher.io/local-path",
) -> dict[str, Any]:
    """As k3s ships its local-path class (the default-class annotation is how Kubernetes marks
    the default: kubernetes.io docs, "Change the default StorageClass")."""
    annotations = {"storageclass.kubernetes.io/is-default-class": "true"} if default else {}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": {"name": name, "creationTimestamp": ts(10000), "annotations": annotations},
        "provisioner": provisioner,
        "reclaimPolicy": "Delete",
        "volumeBindingMode": "WaitForFirstConsumer",
    }


def _workload_spec(name: str) -> dict[str, Any]:
    return {
        "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
        "template": {
            "metadata": {"labels": {"app.kubernetes.io/name": name}},
            "spec": {"containers": [{"name": name, "image": f"{name}:v1"}]},
        },
    }


def daemonset(name: str, namespace: str, ready: int = 1, desired: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": ts(10000)},
        "status": {
            "currentNumberScheduled": desired,
            "desiredNumberScheduled": desired,
            "numberAvailable": ready,
            "numberReady": ready,
            "numberMisscheduled": 0,
            "observedGeneration": 1,
            "updatedNumberScheduled": desired,
        },
        "spec": _workload_spec(name),
    }


def deployment(name: str, namespace: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": ts(10000)},
        "spec": {**_workload_spec(name), "replicas": replicas},
        "status": {
            "replicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
            "observedGeneration": 1,
        },
    }


def ingressclass(name: str = "nginx") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name, "creationTimestamp": ts(10000)},
        "spec": {"controller": "k8s.io/ingress-nginx"},
    }


def configmap(
    name: str = "vllm-config-b6t4m9447h", minutes_ago: float = 120, **data: str
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": ts(minutes_ago)},
        "data": {
            "llm_model": "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4",
            "gpu_memory_utilization": "0.90",
            "max_model_len": "8192",
            "tensor_parallel_size": "1",
            "quantization": "gptq_marlin",
            **data,
        },
    }


def pvc(phase: str = "Bound", name: str = "model-cache") -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": NS, "creationTimestamp": ts(120)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "volumeMode": "Filesystem",
            "resources": {"requests": {"storage": "50Gi"}},
        },
        "status": {"phase": phase},
    }
    if phase == "Bound":
        obj["spec"]["volumeName"] = "pvc-3f2a9c1e-8d4b-4e6f-a1b2-c3d4e5f6a7b8"
        obj["spec"]["storageClassName"] = "local-path"
        obj["status"]["capacity"] = {"storage": "50Gi"}
    return obj


def event(
    obj_kind: str,
    obj_name: str,
    reason: str,
    message: str,
    kind: str = "Warning",
    minutes_ago: float = 1,
    count: int = 1,
    namespace: str = NS,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{obj_name}.17a1b2c3d4e5f6a7",
            "namespace": namespace,
            "creationTimestamp": ts(minutes_ago + 5),
        },
        "involvedObject": {
            "kind": obj_kind,
            "namespace": namespace,
            "name": obj_name,
            "apiVersion": "v1" if obj_kind != "ReplicaSet" else "apps/v1",
        },
        "reason": reason,
        "message": message,
        "type": kind,
        "count": count,
        "firstTimestamp": ts(minutes_ago + 5),
        "lastTimestamp": ts(minutes_ago),
        "source": {"component": "default-scheduler" if reason == "FailedScheduling" else "kubelet"},
    }


def _container(name: str, image: str, gpu: bool, memory: str = "16Gi") -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": "8", "memory": "32Gi"}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
    return {
        "name": name,
        "image": image,
        "resources": {"requests": {"cpu": "4", "memory": memory}, "limits": limits},
    }


def pod(
    name: str = "vllm-6d5f8b7c9d-x2k4q",
    *,
    namespace: str = NS,
    phase: str = "Running",
    ready: bool = True,
    age_minutes: float = 120,
    scheduled: bool = True,
    schedule_message: str = "",
    init_statuses: list[dict[str, Any]] | None = None,
    statuses: list[dict[str, Any]] | None = None,
    node_name: str = "gpu-node-1",
    gpu: bool = True,
    memory: str = "16Gi",
    labels: dict[str, str] | None = None,
    configmap_name: str = "vllm-config-b6t4m9447h",
    tolerations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    conditions = [
        {
            "type": "PodScheduled",
            "status": "True" if scheduled else "False",
            "lastProbeTime": None,
            "lastTransitionTime": ts(age_minutes),
        }
    ]
    if not scheduled:
        conditions[0].update(reason="Unschedulable", message=schedule_message)
    else:
        conditions += [
            {"type": "Initialized", "status": "True", "lastTransitionTime": ts(age_minutes)},
            {
                "type": "Ready",
                "status": "True" if ready else "False",
                "lastTransitionTime": ts(age_minutes - 1),
                **(
                    {}
                    if ready
                    else {
                        "reason": "ContainersNotReady",
                        "message": "containers with unready status: [vllm]",
                    }
                ),
            },
            {
                "type": "ContainersReady",
                "status": "True" if ready else "False",
                "lastTransitionTime": ts(age_minutes - 1),
            },
        ]
    spec: dict[str, Any] = {
        "containers": [_container("vllm", "vllm/vllm-openai:v0.32.0", gpu, memory)],
        "initContainers": [
            {
                "name": name_,
                "image": "ghcr.io/archon-platform/archon:0.1.0",
                "envFrom": [{"prefix": "ARCHON_", "configMapRef": {"name": configmap_name}}],
            }
            for name_ in ("preflight",)  # the vllm container downloads (vllm-start.py)
        ],
        "volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}}],
        "runtimeClassName": "nvidia",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        # The DefaultTolerationSeconds admission plugin adds these to every pod.
        "tolerations": [
            *(tolerations or []),
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
    }
    if scheduled:
        spec["nodeName"] = node_name
    status: dict[str, Any] = {"phase": phase, "conditions": conditions, "qosClass": "Burstable"}
    if scheduled:
        status["startTime"] = ts(age_minutes)
        status["initContainerStatuses"] = (
            init_statuses
            if init_statuses is not None
            else [terminated("preflight", 0, "Completed")]
        )
        status["containerStatuses"] = (
            statuses if statuses is not None else [running("vllm", ready=ready)]
        )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "creationTimestamp": ts(age_minutes),
            "labels": labels
            if labels is not None
            else {"app": "vllm", "pod-template-hash": "6d5f8b7c9d"},
        },
        "spec": spec,
        "status": status,
    }


def running(name: str, *, ready: bool = True, restarts: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "ready": ready,
        "restartCount": restarts,
        "started": True,
        "image": "docker.io/vllm/vllm-openai:v0.32.0",
        "imageID": "docker.io/vllm@sha256:ab",
        "containerID": "containerd://9f8e7d6c",
        "state": {"running": {"startedAt": ts(30)}},
        "lastState": {},
    }


def terminated(name: str, code: int, reason: str) -> dict[str, Any]:
    return {
        "name": name,
        "ready": False,
        "restartCount": 0,
        "started": False,
        "image": "ghcr.io/archon-platform/archon:0.1.0",
        "imageID": "ghcr.io/a@sha256:cd",
        "containerID": "containerd://1a2b3c",
        "state": {
            "terminated": {
                "exitCode": code,
                "reason": reason,
                "startedAt": ts(100),
                "finishedAt": ts(99),
                "containerID": "containerd://1a2b3c",
            }
        },
        "lastState": {},
    }


def crashlooping(name: str, code: int, restarts: int = 6) -> dict[str, Any]:
    return {
        "name": name,
        "ready": False,
        "restartCount": restarts,
        "started": False,
        "image": "docker.io/vllm/vllm-openai:v0.32.0",
        "imageID": "docker.io/vllm@sha256:ab",
        "containerID": "containerd://5e6f7a8b",
        "state": {
            "waiting": {
                "reason": "CrashLoopBackOff",
                "message": f"back-off 5m0s restarting failed container={name} "
                f"pod=vllm-6d5f8b7c9d-x2k4q_archon-system(uid-vllm)",
            }
        },
        "lastState": {
            "terminated": {
                "exitCode": code,
                "reason": "Error",
                "startedAt": ts(6),
                "finishedAt": ts(5),
                "containerID": "containerd://5e6f7a8b",
            }
        },
    }


def init_running(name: str) -> dict[str, Any]:
    status = running(name, ready=False)
    status["image"] = "ghcr.io/archon-platform/archon:0.1.0"
    return status


def healthy_platform() -> dict[str, list[dict[str, Any]]]:
    """The cluster-wide objects of a cluster that meets the guide's prerequisites."""
    return {
        "nodes": [node("gpu-node-1"), node("cpu-node-1", gpus=0)],
        "runtimeclasses": [runtimeclass()],
        "daemonsets": [daemonset("nvidia-device-plugin-daemonset", "gpu-operator")],
        "storageclasses": [storageclass()],
        "deployments": [
            deployment("argocd-server", "argocd"),
            deployment("ingress-nginx-controller", "ingress-nginx"),
        ],
        "ingressclasses": [ingressclass()],
    }


API_GROUPS = {
    "runtimeclasses": "node.k8s.io",
    "daemonsets": "apps",
    "deployments": "apps",
    "replicasets": "apps",
    "ingressclasses": "networking.k8s.io",
    "storageclasses": "storage.k8s.io",
}


def forbidden_message(kind: str, namespace: str | None, user: str) -> str:
    """The API server's RBAC refusal, word for word (k8s.io/apiserver authorization)."""
    group = API_GROUPS.get(kind, "")
    resource = f"{kind}.{group}" if group else kind
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (
        f'{resource} is forbidden: User "{user}" cannot list resource "{kind}" in API group '
        f'"{group}" {scope}'
    )


class InMemoryCluster:
    """A ClusterSource over plain objects: what `archon doctor` would read from a cluster."""

    def __init__(
        self,
        objects: dict[str, list[dict[str, Any]]],
        logs: dict[tuple[str, str, bool], str] | None = None,
        metrics: dict[str, str] | None = None,
        prometheus: dict[str, list[dict[str, Any]]] | None = None,
        forbidden: set[tuple[str, str | None]] | None = None,
        user: str = "system:serviceaccount:archon-system:default",
        node_stats: dict[str, dict[str, Any]] | None = None,
    ):
        self.stats = node_stats or {}
        self.objects = objects
        self.logs = logs or {}
        self.metrics = metrics or {}
        self.prom = prometheus or {}
        self.forbidden = forbidden or set()
        self.user = user

    def now(self) -> datetime:
        return NOW

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None):
        if (kind, namespace) in self.forbidden:
            raise Forbidden(kind, namespace, forbidden_message(kind, namespace, self.user))
        items = self.objects.get(kind, [])
        if namespace:
            items = [o for o in items if o["metadata"].get("namespace") == namespace]
        if selector:
            key, _, value = selector.partition("=")
            items = [o for o in items if o["metadata"].get("labels", {}).get(key) == value]
        return items

    def log(self, namespace: str, pod: str, container: str, *, previous: bool, tail: int = 200):
        text = self.logs.get((pod, container, previous))
        return None if text is None else "\n".join(text.splitlines()[-tail:]) + "\n"

    def pod_metrics(self, namespace: str, pod: str, port: int):
        return self.metrics.get(pod)

    def prometheus(self, query: str):
        return self.prom.get(query)

    def node_stats(self, node: str):
        return self.stats.get(node)


class FakeArgoCD:
    """Stands in for ArgoCD's application controller: each read of an Application after a write
    moves its status one step along `steps` ((sync, health) pairs), as the controller would
    while it syncs, with status.reconciledAt set to the time of that step."""

    def __init__(self, steps: list[tuple[str, str]], health_message: str = ""):
        self.steps = steps
        self.health_message = health_message
        self.position: dict[str, int] = {}

    def written(self, app: dict[str, Any]) -> None:
        self.position[app["metadata"]["name"]] = 0
        app.pop("status", None)

    def read(self, app: dict[str, Any]) -> None:
        name = app["metadata"]["name"]
        step = self.position.get(name, len(self.steps))
        if step >= len(self.steps):
            return
        sync, health = self.steps[step]
        self.position[name] = step + 1
        status: dict[str, Any] = {
            "sync": {"status": sync, "revision": "4f1c2b7e9d"},
            "health": {"status": health},
            "reconciledAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if health == "Degraded" and self.health_message:
            status["health"]["message"] = self.health_message
        app["status"] = status


SUMMARY = "proxy/stats/summary"


class FakeAPIServer:
    """Enough of the Kubernetes API for the kubernetes client to list, read logs and proxy, and
    to create, patch and read ArgoCD Applications; RBAC refusals answer 403 as the API server
    does."""

    PATHS = {
        "/api/v1/nodes": "nodes",
        "/apis/node.k8s.io/v1/runtimeclasses": "runtimeclasses",
        "/apis/apps/v1/daemonsets": "daemonsets",
        "/apis/apps/v1/deployments": "deployments",
        "/apis/networking.k8s.io/v1/ingressclasses": "ingressclasses",
        "/apis/storage.k8s.io/v1/storageclasses": "storageclasses",
        "/api/v1/pods": "pods",
    }
    APPLICATIONS = "/apis/argoproj.io/v1alpha1/namespaces/"

    def __init__(self, cluster: InMemoryCluster, argocd: FakeArgoCD | None = None):
        api = self
        self.cluster = cluster
        self.argocd = argocd
        self.requests: list[tuple[str, str, Any]] = []
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: Any, text: bool = False) -> None:
                data = body.encode() if text else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if text else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code: int, reason: str, message: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": message,
                        "reason": reason,
                        "code": code,
                    },
                )

            def _list(self, kind: str, namespace: str | None, selector: str | None) -> None:
                try:
                    items = api.cluster.list(kind, namespace, selector)
                except Forbidden as exc:
                    return self._status(403, "Forbidden", exc.message)
                self._send(
                    200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}
                )

            def _body(self) -> Any:
                length = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(length) or b"null")

            def _application(self, method: str) -> None:
                parts = urlparse(self.path).path[len(api.APPLICATIONS) :].strip("/").split("/")
                namespace, plural = parts[0], parts[1]
                name = parts[2] if len(parts) > 2 else None
                body = self._body() if method in ("POST", "PATCH", "PUT") else None
                api.requests.append((method, self.path, body))
                if (plural, namespace) in api.cluster.forbidden:
                    verb = {"GET": "get", "POST": "create", "PATCH": "patch"}[method]
                    return self._status(
                        403,
                        "Forbidden",
                        f'applications.argoproj.io is forbidden: User "{api.cluster.user}" '
                        f'cannot {verb} resource "applications" in API group "argoproj.io" in '
                        f'the namespace "{namespace}"',
                    )
                with api.lock:
                    apps = api.cluster.objects.setdefault("applications", [])
                    found = next(
                        (
                            a
                            for a in apps
                            if a["metadata"]["name"] == name
                            and a["metadata"]["namespace"] == namespace
                        ),
                        None,
                    )
                    if method == "POST":
                        name = body["metadata"]["name"]
                        if any(a["metadata"]["name"] == name for a in apps):
                            return self._status(409, "AlreadyExists", f"{name} already exists")
                        body["metadata"].update(
                            namespace=namespace,
                            uid=f"uid-{name}",
                            resourceVersion="1",
                            generation=1,
                            creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        )
                        apps.append(body)
                        if api.argocd:
                            api.argocd.written(body)
                        return self._send(201, body)
                    if found is None:
                        return self._status(
                            404, "NotFound", f'applications.argoproj.io "{name}" not found'
                        )
                    if method == "PATCH":
                        assert "merge-patch" in self.headers.get("Content-Type", ""), self.headers
                        _merge(found, body)
                        found["metadata"]["generation"] += 1
                        if api.argocd:
                            api.argocd.written(found)
                        return self._send(200, found)
                    if api.argocd:
                        api.argocd.read(found)
                    return self._send(200, found)

            def do_POST(self) -> None:
                if self.path.startswith(api.APPLICATIONS):
                    return self._application("POST")
                self._status(405, "MethodNotAllowed", "not here")

            def do_PATCH(self) -> None:
                if self.path.startswith(api.APPLICATIONS):
                    return self._application("PATCH")
                self._status(405, "MethodNotAllowed", "not here")

            def do_GET(self) -> None:
                if self.path.startswith(api.APPLICATIONS):
                    return self._application("GET")
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                selector = query.get("labelSelector")
                if url.path in api.PATHS:
                    return self._list(api.PATHS[url.path], None, selector)
                # /api/v1/nodes/{node}/proxy/stats/summary: the kubelet's Summary API
                if len(parts) == 7 and parts[2] == "nodes" and "/".join(parts[4:]) == SUMMARY:
                    stats = api.cluster.node_stats(parts[3])
                    if stats is None:
                        return self._status(503, "ServiceUnavailable", "no kubelet")
                    return self._send(200, stats)
                # /apis/{group}/{version}/namespaces/{ns}/{kind}: a namespaced list of an API
                # group (networkpolicies, deployments in one namespace).
                if len(parts) == 6 and parts[0] == "apis" and parts[3] == "namespaces":
                    return self._list(parts[5], parts[4], selector)
                # /api/v1/namespaces/{ns}/{kind}[/{name}[/log|/proxy/...]]
                if len(parts) >= 5 and parts[2] == "namespaces":
                    ns, kind = parts[3], parts[4]
                    if len(parts) == 5:
                        return self._list(kind, ns, selector)
                    if kind == "pods" and len(parts) >= 7 and parts[6] == "log":
                        text = api.cluster.log(
                            ns,
                            parts[5],
                            query.get("container", ""),
                            previous=query.get("previous") == "true",
                        )
                        if text is None:
                            return self._status(
                                400,
                                "BadRequest",
                                f'previous terminated container "{query.get("container", "")}" '
                                f'in pod "{parts[5]}" not found',
                            )
                        return self._send(200, text, text=True)
                    if kind == "pods" and len(parts) == 6:
                        pod = next(
                            (
                                p
                                for p in api.cluster.objects.get("pods", [])
                                if p["metadata"]["name"] == parts[5]
                                and p["metadata"]["namespace"] == ns
                            ),
                            None,
                        )
                        if pod is None:
                            return self._status(404, "NotFound", f'pods "{parts[5]}" not found')
                        return self._send(200, pod)
                    if kind == "pods" and len(parts) >= 8 and parts[6] == "proxy":
                        text = api.cluster.pod_metrics(ns, parts[5].split(":")[0], 8000)
                        if text is None:
                            return self._send(503, {"kind": "Status", "code": 503})
                        return self._send(200, text, text=True)
                self._status(404, "NotFound", "the server could not find the requested resource")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "test",
                    "clusters": [{"name": "test", "cluster": {"server": self.url}}],
                    "contexts": [
                        {
                            "name": "test",
                            "context": {"cluster": "test", "user": "test", "namespace": NS},
                        }
                    ],
                    "users": [{"name": "test", "user": {"token": "test-token"}}],
                }
            )
        )
        return path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """JSON merge patch (RFC 7386), as the API server applies application/merge-patch+json."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_operator_daemonsets(namespace: str = "gpu-operator") -> list[dict[str, Any]]:
    """The DaemonSets of a GPU Operator install (v24.x/v25.x, one GPU node; names as the
    operator's ClusterPolicy creates them, cf. `kubectl get ds -n gpu-operator` in NVIDIA's
    GPU Operator docs). MPS and MIG are off, so their DaemonSets schedule no pod: 0/0."""
    one = [
        "gpu-feature-discovery",
        "nvidia-container-toolkit-daemonset",
        "nvidia-dcgm-exporter",
        "nvidia-device-plugin-daemonset",
        "nvidia-driver-daemonset",
        "nvidia-operator-validator",
    ]
    return (
        [daemonset(n, namespace) for n in one]
        + [
            daemonset("nvidia-device-plugin-mps-control-daemon", namespace, ready=0, desired=0),
            daemonset("nvidia-mig-manager", namespace, ready=0, desired=0),
        ]
        + [daemonset("gpu-operator-node-feature-discovery-worker", namespace, ready=3, desired=3)]
    )


def real_cluster(model_pod: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """A healthy cluster as a team runs it: one tainted GPU node and two CPU nodes (k3s), the GPU
    Operator, ArgoCD, ingress-nginx and kube-prometheus-stack in their own namespaces,
    kube-system's own workloads, and an Archon model server that was redeployed: an old
    ConfigMap left behind by `kubectl apply -k`, and ReplicaSet events from before the
    RuntimeClass existed (older than the current pod)."""
    pod_ = model_pod or pod(age_minutes=18, tolerations=[GPU_TOLERATION])
    cuda_validator = pod(
        "nvidia-cuda-validator-7hx2q",
        namespace="gpu-operator",
        phase="Succeeded",
        ready=False,
        age_minutes=9000,
        labels={"app": "nvidia-cuda-validator"},
        statuses=[terminated("cuda-validation", 0, "Completed")],
        init_statuses=[],
    )
    return {
        "nodes": [
            node("gpu-node-1", taints=[GPU_TAINT]),
            node("cpu-node-1", gpus=0),
            node("cpu-node-2", gpus=0),
        ],
        "runtimeclasses": [runtimeclass("nvidia"), runtimeclass("nvidia-cdi")],
        "storageclasses": [storageclass()],
        "daemonsets": [
            daemonset("kube-proxy", "kube-system", ready=3, desired=3),
            daemonset("svclb-ingress-nginx-controller-5d9c7", "kube-system", ready=3, desired=3),
            daemonset("kube-prometheus-stack-prometheus-node-exporter", "monitoring", 3, 3),
            *gpu_operator_daemonsets(),
        ],
        "deployments": [
            deployment("coredns", "kube-system"),
            deployment("metrics-server", "kube-system"),
            deployment("local-path-provisioner", "kube-system"),
            deployment("gpu-operator", "gpu-operator"),
            deployment("gpu-operator-node-feature-discovery-master", "gpu-operator"),
            *(
                deployment(n, "argocd")
                for n in (
                    "argocd-applicationset-controller",
                    "argocd-dex-server",
                    "argocd-notifications-controller",
                    "argocd-redis",
                    "argocd-repo-server",
                    "argocd-server",
                )
            ),
            deployment("ingress-nginx-controller", "ingress-nginx"),
            deployment("kube-prometheus-stack-operator", "monitoring"),
            deployment("kube-prometheus-stack-grafana", "monitoring"),
            deployment("kube-prometheus-stack-kube-state-metrics", "monitoring"),
            deployment("vllm", NS),
        ],
        "ingressclasses": [ingressclass()],
        "pods": [pod_, cuda_validator],
        "configmaps": [
            configmap("kube-root-ca.crt", 10000),
            configmap("vllm-config-7k2m9c4f8d", 300, gpu_memory_utilization="0.95"),
            configmap(),
        ],
        "persistentvolumeclaims": [pvc()],
        "events": [
            # Before the GPU Operator created the RuntimeClass; the current pod came after.
            event(
                "ReplicaSet",
                "vllm-6d5f8b7c9d",
                "FailedCreate",
                'Error creating: pods "vllm-6d5f8b7c9d-" is forbidden: pod rejected: '
                'RuntimeClass "nvidia" not found',
                minutes_ago=21,
                count=9,
            ),
            event(
                "ReplicaSet",
                "vllm-6d5f8b7c9d",
                "SuccessfulCreate",
                "Created pod: vllm-6d5f8b7c9d-x2k4q",
                kind="Normal",
                minutes_ago=18,
            ),
            event(
                "Pod",
                "vllm-6d5f8b7c9d-x2k4q",
                "Scheduled",
                "Successfully assigned archon-system/vllm-6d5f8b7c9d-x2k4q to gpu-node-1",
                kind="Normal",
                minutes_ago=18,
            ),
            event(
                "Pod",
                "vllm-6d5f8b7c9d-x2k4q",
                "Started",
                "Started container vllm",
                kind="Normal",
                minutes_ago=6,
            ),
        ],
    }
