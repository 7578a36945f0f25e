# ruff: noqa: E501  (kubelet, containerd, vLLM and hub messages are long lines; kept verbatim)
"""`archon doctor` on the failures beyond the guide's four runbooks: image pulls, a missing
ConfigMap key or Secret, OOMKilled, vLLM refusing its configuration, gated models, a full model
cache, evictions, a probe on the wrong port, a lost GPU node; and clusters where something else
is failing, or a rolling update is in progress, where it must say nothing.

Each text is the real program's: the multi-line logs are files in tests/data/doctor/ (README.md
there names each one's source); the kubelet's and the API server's texts are inline, with the
k8s.io/kubernetes file that writes them.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from archon.ops.doctor import Scope, diagnose
from archon.ops.doctor.source import RecordingCluster
from tests.support import k8s_objects as k
from tests.support.servers import run_cli

DATA = Path(__file__).resolve().parents[1] / "data" / "doctor"
POD = "vllm-6d5f8b7c9d-x2k4q"
NEW_POD = "vllm-6d5f8b7c9d-q8w7z"


def log(name: str) -> str:
    return (DATA / name).read_text()


def waiting(
    name: str, reason: str, message: str, image: str = "vllm/vllm-openai:v0.32.0"
) -> dict[str, Any]:
    """A container the kubelet has not started: state.waiting as kuberuntime writes it."""
    return {
        "name": name,
        "ready": False,
        "restartCount": 0,
        "started": False,
        "image": image,
        "imageID": "",
        "state": {"waiting": {"reason": reason, "message": message}},
        "lastState": {},
    }


def model_pod(**kw: Any) -> dict[str, Any]:
    """The model server's pod as the manifests make it: ports and probes included, its
    containers started when the pod did."""
    pod = k.pod(tolerations=[k.GPU_TOLERATION], **kw)
    for status in pod["status"].get("containerStatuses", []):
        if "running" in status["state"]:
            status["state"]["running"]["startedAt"] = k.ts(kw.get("age_minutes", 120) - 1)
    vllm = pod["spec"]["containers"][0]
    vllm["ports"] = [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for kind, period, threshold in (
        ("startup", 10, 300),
        ("readiness", 10, 3),
        ("liveness", 20, 3),
    ):
        vllm[f"{kind}Probe"] = {
            "httpGet": {"path": "/health", "port": "http", "scheme": "HTTP"},
            "periodSeconds": period,
            "failureThreshold": threshold,
        }
    return pod


def cluster(
    pods: list[dict[str, Any]], *, events=(), configmap: dict[str, str] | None = None, **kw: Any
) -> k.InMemoryCluster:
    objects = k.real_cluster()
    objects["pods"] = [*pods, *(p for p in objects["pods"] if p["metadata"]["namespace"] != k.NS)]
    objects["events"] = [*objects["events"], *events]
    if configmap is not None:
        objects["configmaps"] = [
            k.configmap("kube-root-ca.crt", 10000),
            k.configmap("vllm-config-b6t4m9447h", 120, **configmap),
        ]
    return k.InMemoryCluster(objects, **kw)


def crashing(code: int, text: str, reason: str = "Error", **configmap: str) -> k.InMemoryCluster:
    status = k.crashlooping("vllm", code)
    status["lastState"]["terminated"]["reason"] = reason
    pod = model_pod(phase="Running", ready=False, age_minutes=20, statuses=[status])
    return cluster([pod], configmap=configmap, logs={(POD, "vllm", True): text})


# ---- the kubelet's words ----
# pkg/kubelet/images/image_manager.go: the waiting message in back-off, and the Failed event with
# the runtime's error; containerd's resolver says "<ref>: not found" with gRPC code NotFound (as
# in `kubectl describe` output quoted in kubernetes/kubernetes#126166-style reports; the
# containerd text: remotes/docker/resolver.go).
BACKOFF = 'Back-off pulling image "vllm/vllm-openai:v0.32.1"'
TAG_NOT_FOUND = (
    'Failed to pull image "vllm/vllm-openai:v0.32.1": rpc error: code = NotFound desc = failed to '
    'pull and unpack image "docker.io/vllm/vllm-openai:v0.32.1": failed to resolve reference '
    '"docker.io/vllm/vllm-openai:v0.32.1": docker.io/vllm/vllm-openai:v0.32.1: not found'
)
PRIVATE = "registry.example.com/ml/vllm-openai:v0.32.0"
# containerd's resolver on a registry that wants credentials ("unexpected status code
# [manifests <tag>]: 401 Unauthorized", as crictl and the kubelet print it).
UNAUTHORIZED = (
    f'rpc error: code = Unknown desc = failed to pull and unpack image "{PRIVATE}": failed to '
    f'resolve reference "{PRIVATE}": unexpected status code [manifests v0.32.0]: 401 Unauthorized'
)
# pkg/kubelet/kubelet_pods.go makeEnvironmentVariables.
MISSING_KEY = "couldn't find key llm_model in ConfigMap archon-system/vllm-config-b6t4m9447h"
# The kubelet's secret manager: the API's NotFound for resource "secret".
MISSING_SECRET = 'secret "vllm-api-key" not found'
# pkg/kubelet/images/image_manager.go, pull policy Never.
NEVER_PULL = 'Container image "ghcr.io/archon-platform/archon:0.1.0" is not present with pull policy of Never'
# The nvidia-container-runtime hook failing inside runc (NVIDIA/nvidia-container-toolkit issues,
# e.g. #154: "nvidia-container-cli: initialization error: nvml error: driver not loaded").
NVIDIA_HOOK = (
    "failed to create containerd task: failed to create shim task: OCI runtime create failed: runc "
    "create failed: unable to start container process: error during container init: error running "
    "hook #0: error running hook: exit status 1, stdout: , stderr: Auto-detected mode as 'legacy'\n"
    "nvidia-container-cli: initialization error: nvml error: driver not loaded: unknown"
)
# pkg/kubelet/eviction/helpers.go: nodeLowMessageFmt, thresholdMetMessageFmt, containerMessageFmt.
EVICTED = (
    "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi, available: 8Gi. "
    "Container vllm was using 41Gi, request is 0, has larger consumption of ephemeral-storage. "
)
# pkg/kubelet/prober/prober.go: "<Kind> probe failed: <output>" (event Unhealthy).
PROBE_8080 = 'Startup probe failed: Get "http://10.42.0.31:8080/health": dial tcp 10.42.0.31:8080: connect: connection refused'
PROBE_8000 = 'Startup probe failed: Get "http://10.42.0.31:8000/health": dial tcp 10.42.0.31:8000: connect: connection refused'
# pkg/scheduler: the unreachable taint, printed with its empty value.
SCHEDULER_LOST = (
    "0/3 nodes are available: 1 node(s) had untolerated taint {node.kubernetes.io/unreachable: }, "
    "2 Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 Preemption is not "
    "helpful for scheduling."
)


def pull_failure(image_status: dict[str, Any], event: str) -> k.InMemoryCluster:
    pod = model_pod(phase="Pending", ready=False, age_minutes=12, statuses=[image_status])
    pod["spec"]["containers"][0]["image"] = image_status["image"]
    return cluster(
        [pod],
        events=[
            k.event("Pod", POD, "Failed", event, count=4),
            k.event("Pod", POD, "Failed", "Error: ErrImagePull", count=4),
            k.event("Pod", POD, "BackOff", BACKOFF, kind="Normal", count=9),
        ],
    )


def lost_node(node: dict[str, Any], minutes_ago: float) -> dict[str, Any]:
    """What pkg/controller/nodelifecycle writes when the kubelet stops posting status."""
    node = copy.deepcopy(node)
    since = k.ts(minutes_ago)
    node["status"]["conditions"] = [
        {
            "type": "Ready",
            "status": "Unknown",
            "reason": "NodeStatusUnknown",
            "message": "Kubelet stopped posting node status.",
            "lastHeartbeatTime": k.ts(minutes_ago + 0.7),
            "lastTransitionTime": since,
        }
    ]
    node["spec"]["taints"] = [
        *node["spec"].get("taints", []),
        {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule", "timeAdded": since},
        {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute", "timeAdded": since},
    ]
    return node


def gpu_node_lost() -> k.InMemoryCluster:
    """The GPU node went away 12 minutes ago: the server that ran for 5 days is Terminating
    (evicted after its 300 s toleration, never confirmed), its replacement Pending."""
    objects = k.real_cluster()
    objects["nodes"] = [lost_node(objects["nodes"][0], 12), *objects["nodes"][1:]]
    old = model_pod(age_minutes=7200)
    old["metadata"]["deletionTimestamp"] = k.ts(7)
    old["metadata"]["deletionGracePeriodSeconds"] = 60
    ready = next(c for c in old["status"]["conditions"] if c["type"] == "Ready")
    ready.update(status="False", lastTransitionTime=k.ts(12))
    old["status"]["containerStatuses"][0]["state"]["running"]["startedAt"] = k.ts(7200)
    new = model_pod(
        name=NEW_POD,
        phase="Pending",
        scheduled=False,
        schedule_message=SCHEDULER_LOST,
        age_minutes=7,
    )
    objects["pods"] = [old, new, *objects["pods"][1:]]
    # The DaemonSets count their pods on the lost node as not ready.
    for ds in objects["daemonsets"]:
        status = ds["status"]
        if ds["metadata"]["namespace"] == "gpu-operator" and status["desiredNumberScheduled"] == 1:
            status["numberReady"] = status["numberAvailable"] = 0
    return k.InMemoryCluster(objects)


def gpu_fell_off_the_bus() -> k.InMemoryCluster:
    """Xid 79: the node stays Ready, the device plugin withdraws the GPU (allocatable 0 of 1),
    the server that ran for days crash-loops on a GPU that is gone."""
    objects = k.real_cluster()
    node = objects["nodes"][0]
    node["status"]["allocatable"]["nvidia.com/gpu"] = "0"
    status = k.crashlooping("vllm", 1, restarts=3)
    pod = model_pod(phase="Running", ready=False, age_minutes=4300, statuses=[status])
    plugin = k.pod(
        "nvidia-device-plugin-daemonset-7xk2p",
        namespace="gpu-operator",
        labels={"app": "nvidia-device-plugin-daemonset"},
        gpu=False,
        age_minutes=9000,
        init_statuses=[],
        statuses=[k.running("nvidia-device-plugin")],
    )
    plugin["spec"]["containers"][0]["name"] = "nvidia-device-plugin"
    objects["pods"] = [pod, plugin, *objects["pods"][1:]]
    return k.InMemoryCluster(
        objects,
        logs={
            ("nvidia-device-plugin-daemonset-7xk2p", "nvidia-device-plugin", False): log(
                "device-plugin-xid79.log"
            )
        },
    )


VOLUME_STATS = {
    'kubelet_volume_stats_used_bytes{namespace="archon-system",persistentvolumeclaim="model-cache"}': [
        {
            "metric": {"namespace": "archon-system", "persistentvolumeclaim": "model-cache"},
            "value": [0, "53471051776"],
        }
    ],
    'kubelet_volume_stats_capacity_bytes{namespace="archon-system",persistentvolumeclaim="model-cache"}': [
        {
            "metric": {"namespace": "archon-system", "persistentvolumeclaim": "model-cache"},
            "value": [0, "53687091200"],
        }
    ],
}


def disk_full_with_stats() -> k.InMemoryCluster:
    status = k.crashlooping("vllm", 1)
    pod = model_pod(phase="Running", ready=False, age_minutes=25, statuses=[status])
    return cluster(
        [pod], logs={(POD, "vllm", True): log("disk-full-hf.log")}, prometheus=VOLUME_STATS
    )


# The kubelet's Summary API (k8s.io/kubelet pkg/apis/stats/v1alpha1 Summary/PodStats/VolumeStats,
# the JSON `kubectl get --raw /api/v1/nodes/NODE/proxy/stats/summary` prints), cut to one pod.
NODE_SUMMARY = {
    "node": {"nodeName": "gpu-node-1", "startTime": "2026-11-19T08:00:00Z"},
    "pods": [
        {
            "podRef": {"name": POD, "namespace": k.NS, "uid": f"uid-{POD}"},
            "startTime": k.ts(25),
            "volume": [
                {
                    "time": k.ts(0.2),
                    "availableBytes": 216006656,
                    "capacityBytes": 53687091200,
                    "usedBytes": 53471084544,
                    "inodesFree": 3276500,
                    "inodes": 3276800,
                    "inodesUsed": 300,
                    "name": "model-cache",
                    "pvcRef": {"name": "model-cache", "namespace": k.NS},
                },
                {
                    "time": k.ts(0.2),
                    "availableBytes": 4294901760,
                    "capacityBytes": 4294967296,
                    "usedBytes": 65536,
                    "name": "tmp",
                },
            ],
        }
    ],
}


def disk_full_kubelet_summary() -> k.InMemoryCluster:
    status = k.crashlooping("vllm", 1)
    pod = model_pod(phase="Running", ready=False, age_minutes=25, statuses=[status])
    return cluster(
        [pod],
        logs={(POD, "vllm", True): log("disk-full-hf.log")},
        node_stats={"gpu-node-1": NODE_SUMMARY},
    )


def evicted(replacement_ready: bool = False) -> k.InMemoryCluster:
    """Evicted for disk: the Failed pod stays listed; its replacement loads (or serves)."""
    pod = model_pod(phase="Failed", ready=False, age_minutes=300, statuses=[])
    pod["status"].update(reason="Evicted", message=EVICTED)
    replacement = model_pod(
        name=NEW_POD, age_minutes=20 if replacement_ready else 3, ready=replacement_ready
    )
    return cluster([pod, replacement])


# pkg/kubelet/prober/prober.go (HTTP probe: "HTTP probe failed with statuscode: %d"); vLLM's
# vllm/v1/engine/exceptions.py EngineDeadError.
READINESS_503 = "Readiness probe failed: HTTP probe failed with statuscode: 503"
ENGINE_DEAD = (
    "ERROR 11-26 11:39:40 [async_llm.py:480] AsyncLLM output_handler failed.\n"
    "vllm.v1.engine.exceptions.EngineDeadError: EngineCore encountered an issue. See stack trace (above) for the root cause.\n"
)


def not_ready_after_serving() -> k.InMemoryCluster:
    """Served for two days; readiness has failed for 20 minutes (the engine died)."""
    pod = model_pod(phase="Running", ready=False, age_minutes=3000)
    ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
    ready["lastTransitionTime"] = k.ts(20)
    return cluster(
        [pod],
        events=[k.event("Pod", POD, "Unhealthy", READINESS_503, count=120)],
        logs={(POD, "vllm", False): ENGINE_DEAD},
    )


# pkg/kubelet/kuberuntime: the Killing event when a probe gives up on a container.
PROBE_KILL = "Container vllm failed startup probe, will be restarted"
SLOW_PULL = "downloading Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4: 71.3% (7.12 GB/9.98 GB) 2.4 MB/s ETA 19m52s\n"


def killed_by_startup_probe() -> k.InMemoryCluster:
    status = k.crashlooping("vllm", 137, restarts=2)
    pod = model_pod(phase="Running", ready=False, age_minutes=110, statuses=[status])
    return cluster(
        [pod],
        events=[
            k.event("Pod", POD, "Unhealthy", PROBE_8000, count=300),
            k.event("Pod", POD, "Killing", PROBE_KILL, kind="Normal", count=2),
        ],
        logs={(POD, "vllm", True): SLOW_PULL},
    )


def probe_on_wrong_port() -> k.InMemoryCluster:
    pod = model_pod(phase="Running", ready=False, age_minutes=6)
    pod["spec"]["containers"][0]["startupProbe"]["httpGet"]["port"] = 8080
    return cluster([pod], events=[k.event("Pod", POD, "Unhealthy", PROBE_8080, count=31)])


def rolling_update() -> k.InMemoryCluster:
    """A fork with RollingUpdate on two GPUs: the old pod serves, the new one loads (its
    startup probe fails, as it must, until vLLM listens)."""
    old = model_pod(age_minutes=2000)
    new = model_pod(
        name=NEW_POD, phase="Running", ready=False, age_minutes=4, node_name="gpu-node-2"
    )
    new["status"]["containerStatuses"][0]["started"] = False
    return cluster(
        [old, new],
        events=[k.event("Pod", NEW_POD, "Unhealthy", PROBE_8000, count=18)],
        logs={
            (
                NEW_POD,
                "vllm",
                False,
            ): "downloading Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4: 40.2% (4.01 GB/9.98 GB) 48.0 MB/s ETA 2m04s\n"
        },
    )


def other_apps_failing() -> k.InMemoryCluster:
    """Failing pods that are not the model server: another team's notebook that cannot pull,
    the agent crash-looping next to it, an evicted batch job."""
    notebook = k.pod(
        "jupyter-0",
        namespace="ml",
        labels={"app": "notebook"},
        ready=False,
        phase="Pending",
        statuses=[
            waiting(
                "notebook",
                "ImagePullBackOff",
                'Back-off pulling image "jupyter/scipy-notebook:2026-13-01"',
            )
        ],
    )
    agent = k.pod(
        "archon-agent-5c9d7b8f6d-m2p4x",
        labels={"app.kubernetes.io/name": "archon-agent"},
        gpu=False,
        ready=False,
        statuses=[k.crashlooping("agent", 1)],
    )
    job = k.pod(
        "etl-29384756-abcde",
        namespace="batch",
        labels={"job-name": "etl-29384756"},
        gpu=False,
        phase="Failed",
        ready=False,
        statuses=[],
    )
    job["status"].update(reason="Evicted", message=EVICTED)
    return cluster(
        [model_pod(age_minutes=600), notebook, agent, job],
        logs={("archon-agent-5c9d7b8f6d-m2p4x", "agent", True): "Traceback...\nKeyError: 'x'\n"},
    )


ARCHON_GATED = (
    "archon: error: llm_model 'meta-llama/Llama-3.1-8B-Instruct': a gated repository (HTTP 401 "
    "GatedRepo); accept its conditions on the hub, then set HF_TOKEN (the hf-token Secret)\n"
)
ARCHON_DISK = (
    "archon: error: llm_model 'Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4': needs 9.98 GB more but "
    "/models/hub has 2.10 GB free; give the model cache (PVC model-cache) more room or delete old "
    "models in it\n"
)

CASES: dict[str, tuple[Callable[[], k.InMemoryCluster], list[tuple[str, str, str]]]] = {
    "image-tag-not-found": (
        lambda: pull_failure(
            waiting("vllm", "ImagePullBackOff", BACKOFF, "vllm/vllm-openai:v0.32.1"), TAG_NOT_FOUND
        ),
        [
            (
                "containers",
                "ImagePullBackOff: no such image or tag",
                "now 'vllm/vllm-openai:v0.32.1'",
            )
        ],
    ),
    "image-private-registry": (
        lambda: pull_failure(
            waiting("vllm", "ErrImagePull", UNAUTHORIZED, PRIVATE),
            f'Failed to pull image "{PRIVATE}": {UNAUTHORIZED}',
        ),
        [("containers", "ErrImagePull: the registry refused the pull", f"registry of {PRIVATE}")],
    ),
    "image-never-pull": (
        lambda: cluster(
            [
                model_pod(
                    phase="Pending",
                    ready=False,
                    age_minutes=3,
                    init_statuses=[
                        waiting(
                            "preflight",
                            "ErrImageNeverPull",
                            NEVER_PULL,
                            "ghcr.io/archon-platform/archon:0.1.0",
                        )
                    ],
                    statuses=[waiting("vllm", "PodInitializing", "")],
                )
            ]
        ),
        [("containers", "ErrImageNeverPull", "imagePullPolicy: IfNotPresent")],
    ),
    "configmap-key-missing": (
        lambda: cluster(
            [
                model_pod(
                    phase="Pending",
                    ready=False,
                    age_minutes=3,
                    statuses=[waiting("vllm", "CreateContainerConfigError", MISSING_KEY)],
                )
            ]
        ),
        [
            (
                "containers",
                "key llm_model missing in ConfigMap vllm-config-b6t4m9447h",
                "manifests/model-server/configmap.yaml",
            )
        ],
    ),
    "secret-missing": (
        lambda: cluster(
            [
                model_pod(
                    phase="Pending",
                    ready=False,
                    age_minutes=3,
                    statuses=[waiting("vllm", "CreateContainerConfigError", MISSING_SECRET)],
                )
            ]
        ),
        [
            (
                "containers",
                "secret vllm-api-key not found",
                "kubectl create secret generic vllm-api-key",
            )
        ],
    ),
    "nvidia-runtime-broken": (
        lambda: cluster(
            [
                model_pod(
                    phase="Running",
                    ready=False,
                    age_minutes=3,
                    statuses=[waiting("vllm", "RunContainerError", NVIDIA_HOOK)],
                )
            ]
        ),
        [("containers", "NVIDIA container runtime failed on gpu-node-1", "nvidia-smi")],
    ),
    "evicted-disk-pressure": (
        evicted,
        [("containers", "Pod evicted (ephemeral-storage)", "crictl rmi --prune")],
    ),
    "probe-wrong-port": (
        probe_on_wrong_port,
        [
            (
                "containers",
                "startupProbe of vllm targets port 8080",
                "startupProbe.httpGet.port to http",
            )
        ],
    ),
    "oomkilled": (
        lambda: crashing(
            137,
            "INFO 11-26 11:52:10 [default_loader.py:262] Loading weights took 41.20 seconds\n",
            reason="OOMKilled",
        ),
        [
            (
                "crashloop",
                "OOMKilled",
                "limits.memory (32Gi; request 16Gi) - host memory, not the GPU's",
            )
        ],
    ),
    "vllm-max-model-len": (
        lambda: crashing(1, log("vllm-max-model-len.log"), max_model_len="65536"),
        [
            (
                "crashloop",
                "max_model_len above the model's context",
                "set max_model_len to 32768 or less (now 65536)",
            )
        ],
    ),
    "vllm-quantization": (
        lambda: crashing(1, log("vllm-quantization-mismatch.log"), quantization="awq"),
        [
            (
                "crashloop",
                "quantization does not match the checkpoint",
                "set quantization to gptq (now awq)",
            )
        ],
    ),
    "vllm-tensor-parallel": (
        lambda: crashing(1, log("vllm-world-size.log"), tensor_parallel_size="2"),
        [
            (
                "crashloop",
                "tensor_parallel_size larger than the GPUs",
                "set tensor_parallel_size to 1 (now 2)",
            )
        ],
    ),
    "hub-gated-no-access": (
        lambda: crashing(1, log("hub-gated-403.log"), llm_model="meta-llama/Meta-Llama-3-8B"),
        [
            (
                "crashloop",
                "gated model",
                "request it on https://huggingface.co/meta-llama/Meta-Llama-3-8B",
            )
        ],
    ),
    "hub-gated-no-token": (
        lambda: crashing(1, log("hub-gated-401.log"), llm_model="black-forest-labs/FLUX.1-dev"),
        [("crashloop", "gated model", "create the Secret hf-token (key token)")],
    ),
    "hub-gated-archon": (
        lambda: crashing(4, ARCHON_GATED, llm_model="meta-llama/Llama-3.1-8B-Instruct"),
        [("crashloop", "gated model", "create the Secret hf-token (key token)")],
    ),
    "disk-full-volume-stats": (
        disk_full_with_stats,
        [
            (
                "crashloop",
                "model cache full",
                "the PVC model-cache holds 49.8 of 50.0 GiB (100%, kubelet_volume_stats from Prometheus)",
            )
        ],
    ),
    "disk-full-kubelet-summary": (
        disk_full_kubelet_summary,
        [
            (
                "crashloop",
                "model cache full",
                "the PVC model-cache holds 49.8 of 50.0 GiB (100%, the kubelet's stats/summary on gpu-node-1)",
            )
        ],
    ),
    "disk-full-archon": (
        lambda: crashing(8, ARCHON_DISK),
        [
            (
                "crashloop",
                "model cache full",
                "the PVC model-cache is 50Gi; the download needed 9.98 GB more, /models/hub had 2.10 GB free",
            )
        ],
    ),
    "gpu-node-lost": (
        gpu_node_lost,
        [("gpu-node", "GPU node gpu-node-1 is lost (NotReady)", "kubectl cordon gpu-node-1")],
    ),
    "gpu-fell-off-the-bus": (
        gpu_fell_off_the_bus,
        [("gpu-node", "GPU on node gpu-node-1 is unhealthy", "Xid 79")],
    ),
    "not-ready-after-serving": (
        not_ready_after_serving,
        [
            (
                "not-ready",
                f"{POD} served, and is not ready since",
                "kubectl delete pod -n archon-system",
            )
        ],
    ),
    "killed-by-startup-probe": (
        killed_by_startup_probe,
        [("crashloop", "killed by a failing probe", "raise startupProbe.failureThreshold")],
    ),
    # ---- nothing of ours is wrong ----
    "evicted-long-ago": (lambda: evicted(replacement_ready=True), []),
    "rolling-update": (rolling_update, []),
    "other-apps-failing": (other_apps_failing, []),
}


def _run(
    tmp_path: Path, build: Callable[[], k.InMemoryCluster], name: str
) -> tuple[int, list[dict[str, Any]]]:
    dump = tmp_path / name
    diagnose(
        Scope(
            RecordingCluster(
                build(), dump, namespace=k.NS, selector="app=vllm", configmap="vllm-config"
            ),
            k.NS,
            "app=vllm",
            "vllm-config",
        )
    )
    result = run_cli("doctor", "--from", str(dump), "--json")
    return result.returncode, json.loads(result.stdout)


@pytest.mark.parametrize("case", list(CASES))
def test_dump_names_the_cause_and_the_object_to_fix(tmp_path: Path, case: str) -> None:
    build, expected = CASES[case]
    code, findings = _run(tmp_path, build, case)
    got = [(f["check"], f["title"], f["fix"]) for f in findings]
    assert code == (1 if expected else 0), got
    assert len(got) == len(expected), got
    for (check, title, fix_part), (g_check, g_title, g_fix) in zip(expected, got, strict=True):
        assert g_check == check, got
        assert title in g_title, g_title
        assert fix_part in g_fix, g_fix
    for f in findings:
        assert all(f["evidence"]), f


def _evidence(case: str) -> str:
    (finding,) = diagnose(Scope(CASES[case][0](), k.NS, "app=vllm", "vllm-config"))
    return "\n".join(finding.evidence)


def test_evidence_quotes_the_cluster() -> None:
    assert "docker.io/vllm/vllm-openai:v0.32.1: not found" in _evidence("image-tag-not-found")
    assert "Kubelet stopped posting node status." in _evidence("gpu-node-lost")
    lost = _evidence("gpu-node-lost")
    assert f"pod {POD} on gpu-node-1: Terminating since" in lost
    assert f"pod {NEW_POD}: Pending, waiting for a GPU" in lost
    bus = _evidence("gpu-fell-off-the-bus")
    assert "nvidia.com/gpu allocatable 0 of capacity 1" in bus
    assert "XidCriticalError: Xid=79" in bus
    assert "OOMKilled (exit code 137" in _evidence("oomkilled")
    assert "User-specified max_model_len (65536)" in _evidence("vllm-max-model-len")
    assert "not in the authorized list" in _evidence("hub-gated-no-access")
    assert "PVC model-cache: 49.8 GiB used of 50.0 GiB" in _evidence("disk-full-volume-stats")
    assert PROBE_8080 in _evidence("probe-wrong-port")


def _live(tmp_path: Path, cluster: k.InMemoryCluster) -> tuple[int, list[dict[str, Any]]]:
    api = k.FakeAPIServer(cluster)
    try:
        result = run_cli(
            "doctor", "--json", env={"KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig"))}
        )
    finally:
        api.stop()
    return result.returncode, json.loads(result.stdout or "[]")


@pytest.mark.parametrize(
    "case",
    [
        "image-private-registry",
        "gpu-node-lost",
        "vllm-max-model-len",
        "oomkilled",
        "other-apps-failing",
        "disk-full-kubelet-summary",
    ],
)
def test_live_path_through_the_kubernetes_client(tmp_path: Path, case: str) -> None:
    """Cases whose verdict does not hang on the pods' age: a live read takes the real clock."""
    build, expected = CASES[case]
    code, findings = _live(tmp_path, build())
    assert code == (1 if expected else 0), findings
    assert [(f["check"], expected[i][1] in f["title"]) for i, f in enumerate(findings)] == [
        (c, True) for c, _, _ in expected
    ]


CUDA_OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.02 GiB. GPU 0 has a total "
    "capacity of 15.57 GiB of which 412.06 MiB is free. Including non-PyTorch memory, this process "
    "has 15.16 GiB memory in use. Of the allocated memory 14.21 GiB is allocated by PyTorch, and "
    "512.33 MiB is reserved by PyTorch but unallocated.\n"
)


def in_namespace(obj: dict[str, Any], namespace: str) -> dict[str, Any]:
    obj["metadata"]["namespace"] = namespace
    return obj


def one_server_per_gpu() -> k.InMemoryCluster:
    """The guide's scaling: a copy of manifests/model-server/ per GPU, one namespace each. One
    serves, one crash-loops on CUDA OOM with its own ConfigMap values, one cannot pull."""
    objects = k.real_cluster()
    objects["nodes"] = [
        *objects["nodes"],
        k.node("gpu-node-2", taints=[k.GPU_TAINT]),
        k.node("gpu-node-3", taints=[k.GPU_TAINT]),
    ]
    serving = model_pod(name="vllm-7c4d9f8b6-a1b2c", namespace="archon-gpu-0", age_minutes=3000)
    oom = k.crashlooping("vllm", 1)
    crashing_pod = model_pod(
        name="vllm-5f6e7d8c9-d3e4f",
        namespace="archon-gpu-1",
        phase="Running",
        ready=False,
        age_minutes=20,
        statuses=[oom],
        node_name="gpu-node-2",
    )
    pulling = model_pod(
        name="vllm-8a9b0c1d2-g5h6i",
        namespace="archon-gpu-2",
        phase="Pending",
        ready=False,
        age_minutes=12,
        node_name="gpu-node-3",
        statuses=[waiting("vllm", "ImagePullBackOff", BACKOFF, "vllm/vllm-openai:v0.32.1")],
    )
    pulling["spec"]["containers"][0]["image"] = "vllm/vllm-openai:v0.32.1"
    objects["pods"] = [serving, crashing_pod, pulling, *objects["pods"][1:]]
    objects["configmaps"] = [
        in_namespace(k.configmap(), "archon-gpu-0"),
        in_namespace(
            k.configmap(gpu_memory_utilization="0.95", max_model_len="16384"), "archon-gpu-1"
        ),
        in_namespace(k.configmap(), "archon-gpu-2"),
    ]
    objects["persistentvolumeclaims"] = [
        in_namespace(k.pvc(), ns) for ns in ("archon-gpu-0", "archon-gpu-1", "archon-gpu-2")
    ]
    objects["events"] = [
        k.event(
            "Pod",
            "vllm-8a9b0c1d2-g5h6i",
            "Failed",
            TAG_NOT_FOUND,
            count=4,
            namespace="archon-gpu-2",
        )
    ]
    return k.InMemoryCluster(objects, logs={("vllm-5f6e7d8c9-d3e4f", "vllm", True): CUDA_OOM})


def test_each_model_server_is_diagnosed_on_its_own(tmp_path: Path) -> None:
    """--namespace '*': every namespace with model-server pods, each with its own ConfigMap;
    the dump replays the same."""
    dump = tmp_path / "all"
    diagnose(
        Scope(
            RecordingCluster(
                one_server_per_gpu(),
                dump,
                namespace="*",
                selector="app=vllm",
                configmap="vllm-config",
            ),
            "*",
            "app=vllm",
            "vllm-config",
        )
    )
    result = run_cli("doctor", "--from", str(dump), "--json")
    findings = json.loads(result.stdout)
    assert result.returncode == 1
    got = [(f["namespace"], f["title"]) for f in findings]
    assert got == [
        ("archon-gpu-1", "archon-gpu-1: CrashLoopBackOff: CUDA out of memory"),
        ("archon-gpu-2", "archon-gpu-2: ImagePullBackOff: no such image or tag"),
    ], got
    # archon-gpu-1's own values (0.95, 16384), not another namespace's ConfigMap.
    assert "gpu_memory_utilization to 0.90 (now 0.95)" in findings[0]["fix"]
    assert "max_model_len to 8192 (now 16384)" in findings[0]["fix"]

    api = k.FakeAPIServer(one_server_per_gpu())
    try:
        live = run_cli(
            "doctor",
            "--namespace",
            "*",
            "--json",
            env={"KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig"))},
        )
    finally:
        api.stop()
    assert json.loads(live.stdout) == findings


def test_a_list_of_namespaces_and_an_empty_cluster(tmp_path: Path) -> None:
    only = diagnose(
        Scope(one_server_per_gpu(), "archon-gpu-0,archon-gpu-2", "app=vllm", "vllm-config")
    )
    assert [f.title for f in only] == ["archon-gpu-2: ImagePullBackOff: no such image or tag"]
    objects = k.real_cluster()
    objects["pods"] = objects["pods"][1:]
    (none,) = diagnose(Scope(k.InMemoryCluster(objects), "*", "app=vllm", "vllm-config"))
    assert (none.severity, none.title) == (
        "warning",
        "No model server found: no pod matches app=vllm in any namespace",
    )


# The Kubernetes docs' "default deny all egress traffic" policy (concepts/services-networking/
# network-policies, "Default policies"), and the DNS exception teams add next to it.
DEFAULT_DENY_EGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "default-deny-egress", "namespace": k.NS, "creationTimestamp": k.ts(900)},
    "spec": {"podSelector": {}, "policyTypes": ["Egress"]},
}
ALLOW_DNS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-dns", "namespace": k.NS, "creationTimestamp": k.ts(900)},
    "spec": {
        "podSelector": {},
        "policyTypes": ["Egress"],
        "egress": [
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                        }
                    }
                ],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
            }
        ],
    },
}
# What manifests/model-server/vllm-start.py prints when the hub cannot be reached (exit 7).
ARCHON_UNREACHABLE = (
    "archon: error: llm_model 'Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4': the hub at "
    "https://huggingface.co is unreachable or the transfer kept failing (ConnectTimeout: timed "
    "out); check the network, HF_ENDPOINT or a proxy\n"
)


def the_shipped_policy() -> dict[str, Any]:
    import yaml

    policy = yaml.safe_load(
        (
            Path(__file__).resolve().parents[2] / "manifests/model-server/networkpolicy.yaml"
        ).read_text()
    )
    policy["metadata"].update(namespace=k.NS, creationTimestamp=k.ts(900))
    return policy


def egress_cut(*policies: dict[str, Any]) -> k.InMemoryCluster:
    build = crashing(7, ARCHON_UNREACHABLE)
    build.objects["networkpolicies"] = list(policies)
    return build


@pytest.mark.parametrize(
    ("policies", "title"),
    [
        ((DEFAULT_DENY_EGRESS, ALLOW_DNS), "model download blocked by a NetworkPolicy"),
        ((DEFAULT_DENY_EGRESS,), "model download blocked by a NetworkPolicy"),
        # The manifests' own policy next to a default deny: HTTPS and DNS are allowed; the
        # cause is elsewhere (a proxy, the hub itself).
        ((DEFAULT_DENY_EGRESS, "shipped"), "model download failed"),
    ],
)
def test_a_network_policy_cutting_the_hub_is_named(
    tmp_path: Path, policies: tuple, title: str
) -> None:
    objects = [the_shipped_policy() if p == "shipped" else p for p in policies]
    code, findings = _run(tmp_path, lambda: egress_cut(*objects), "egress")
    assert code == 1
    (finding,) = findings
    assert finding["title"] == f"CrashLoopBackOff: {title}"
    evidence = "\n".join(finding["evidence"])
    if "blocked" in title:
        assert "allow no egress to TCP 443 outside the cluster" in evidence
        assert ("allow(s) no DNS" in evidence) == (ALLOW_DNS not in policies)
        assert "TCP 443" in finding["fix"]


def test_live_network_policies_through_the_kubernetes_client(tmp_path: Path) -> None:
    code, findings = _live(tmp_path, egress_cut(DEFAULT_DENY_EGRESS, ALLOW_DNS))
    assert code == 1
    assert [f["title"] for f in findings] == [
        "CrashLoopBackOff: model download blocked by a NetworkPolicy"
    ]


def _vllm_start() -> Any:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "manifests/model-server/vllm-start.py"
    spec = importlib.util.spec_from_file_location("vllm_start", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("status", "headers", "token", "title", "fix"),
    [
        (401, {"x-error-code": "GatedRepo"}, False, "gated model", "create the Secret hf-token"),
        (403, {"x-error-code": "GatedRepo"}, True, "gated model", "request it on"),
        (
            401,
            {"x-error-message": "Invalid credentials in Authorization header"},
            True,
            "rejected the token",
            "invalid or revoked",
        ),
        (401, {"x-error-code": "RepoNotFound"}, False, "invalid model name", "if it is private"),
        (404, {"x-error-code": "RepoNotFound"}, True, "invalid model name", "Correct llm_model"),
        (403, {}, True, "refused access with this token", "permissions"),
    ],
)
def test_the_entry_points_own_lines_map_to_the_same_causes(
    status, headers, token, title, fix
) -> None:
    """vllm-start.py's "archon: error:" lines (its real code, run here) and the causes doctor
    names: a change to either side shows up here."""
    from archon.ops.doctor import causes

    failure = _vllm_start()._refused("meta-llama/Llama-3.1-8B-Instruct", status, headers, token)
    line = f"archon: error: {failure}\n"
    cause = causes.hub(line, {"llm_model": "meta-llama/Llama-3.1-8B-Instruct"})
    assert cause is not None, line
    assert title in cause.title and fix in cause.fix, (line, cause)
