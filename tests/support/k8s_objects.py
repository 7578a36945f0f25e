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

NOW = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)
NS = "archon-system"


def ts(minutes_ago: float) -> str:
    return (NOW - timedelta(minutes=minutes_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, gpus: int = 1, memory: str = "131906556Ki") -> dict[str, Any]:
    allocatable = {"cpu": "31800m", "memory": memory, "pods": "110", "ephemeral-storage": "1"}
    if gpus:
        allocatable["nvidia.com/gpu"] = str(gpus)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": f"uid-{name}",
            "creationTimestamp": ts(10000),
            "labels": {"kubernetes.io/hostname": name},
        },
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


def deployment(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": ts(10000)},
        "spec": {**_workload_spec(name), "replicas": 1},
        "status": {"replicas": 1, "readyReplicas": 1, "availableReplicas": 1},
    }


def ingressclass(name: str = "nginx") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": name, "creationTimestamp": ts(10000)},
        "spec": {"controller": "k8s.io/ingress-nginx"},
    }


def configmap(**data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "vllm-config-b6t4m9447h",
            "namespace": NS,
            "creationTimestamp": ts(120),
        },
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
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{obj_name}.17a1b2c3d4e5f6a7",
            "namespace": NS,
            "creationTimestamp": ts(minutes_ago),
        },
        "involvedObject": {
            "kind": obj_kind,
            "namespace": NS,
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
            {"name": "model-pull", "image": "ghcr.io/archon-platform/archon:0.1.0"},
            {"name": "preflight", "image": "ghcr.io/archon-platform/archon:0.1.0"},
        ],
        "volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": "model-cache"}}],
        "runtimeClassName": "nvidia",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
    }
    if scheduled:
        spec["nodeName"] = node_name
    status: dict[str, Any] = {"phase": phase, "conditions": conditions, "qosClass": "Burstable"}
    if scheduled:
        status["startTime"] = ts(age_minutes)
        status["initContainerStatuses"] = (
            init_statuses
            if init_statuses is not None
            else [terminated("model-pull", 0, "Completed"), terminated("preflight", 0, "Completed")]
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
        "deployments": [
            deployment("argocd-server", "argocd"),
            deployment("ingress-nginx-controller", "ingress-nginx"),
        ],
        "ingressclasses": [ingressclass()],
    }


class InMemoryCluster:
    """A ClusterSource over plain objects: what `archon doctor` would read from a cluster."""

    def __init__(
        self,
        objects: dict[str, list[dict[str, Any]]],
        logs: dict[tuple[str, str, bool], str] | None = None,
        metrics: dict[str, str] | None = None,
        prometheus: dict[str, list[dict[str, Any]]] | None = None,
    ):
        self.objects = objects
        self.logs = logs or {}
        self.metrics = metrics or {}
        self.prom = prometheus or {}

    def now(self) -> datetime:
        return NOW

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None):
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


class FakeAPIServer:
    """Enough of the Kubernetes API for the kubernetes client to list, read logs and proxy."""

    PATHS = {
        "/api/v1/nodes": "nodes",
        "/apis/node.k8s.io/v1/runtimeclasses": "runtimeclasses",
        "/apis/apps/v1/daemonsets": "daemonsets",
        "/apis/apps/v1/deployments": "deployments",
        "/apis/networking.k8s.io/v1/ingressclasses": "ingressclasses",
        "/api/v1/pods": "pods",
    }

    def __init__(self, cluster: InMemoryCluster):
        api = self
        self.cluster = cluster

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

            def do_GET(self) -> None:
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                parts = url.path.strip("/").split("/")
                selector = query.get("labelSelector")
                if url.path in api.PATHS:
                    items = api.cluster.list(api.PATHS[url.path], None, selector)
                    return self._send(
                        200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items}
                    )
                # /api/v1/namespaces/{ns}/{kind}[/{name}[/log|/proxy/...]]
                if len(parts) >= 5 and parts[2] == "namespaces":
                    ns, kind = parts[3], parts[4]
                    if len(parts) == 5:
                        items = api.cluster.list(kind, ns, selector)
                        return self._send(
                            200,
                            {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items},
                        )
                    if kind == "pods" and len(parts) >= 7 and parts[6] == "log":
                        text = api.cluster.log(
                            ns,
                            parts[5],
                            query.get("container", ""),
                            previous=query.get("previous") == "true",
                        )
                        if text is None:
                            return self._send(
                                400,
                                {
                                    "kind": "Status",
                                    "code": 400,
                                    "message": "previous terminated container not found",
                                },
                            )
                        return self._send(200, text, text=True)
                    if kind == "pods" and len(parts) >= 8 and parts[6] == "proxy":
                        text = api.cluster.pod_metrics(ns, parts[5].split(":")[0], 8000)
                        if text is None:
                            return self._send(503, {"kind": "Status", "code": 503})
                        return self._send(200, text, text=True)
                self._send(404, {"kind": "Status", "code": 404, "message": "not found"})

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
                    "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                    "users": [{"name": "test", "user": {"token": "test-token"}}],
                }
            )
        )
        return path

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
