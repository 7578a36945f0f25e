# ruff: noqa: E501  (real vLLM, CUDA and scheduler messages are long lines; kept verbatim)
"""`archon doctor` on dumps of clusters in each trouble the operations guide describes, and on a
healthy one; plus the live path through the kubernetes client against a fake API server."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from archon.ops.doctor import Scope, diagnose
from archon.ops.doctor.source import RecordingCluster
from tests.support import k8s_objects as k
from tests.support.servers import run_cli

POD = "vllm-6d5f8b7c9d-x2k4q"

FAST_METRICS = """# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{le="1.0",model_name="qwen"} 90.0
vllm:e2e_request_latency_seconds_bucket{le="5.0",model_name="qwen"} 100.0
vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="qwen"} 100.0
vllm:e2e_request_latency_seconds_count{model_name="qwen"} 100.0
vllm:e2e_request_latency_seconds_sum{model_name="qwen"} 60.0
"""

SLOW_METRICS = """# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{engine="0",le="10.0",model_name="qwen"} 10.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="30.0",model_name="qwen"} 40.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="60.0",model_name="qwen"} 100.0
vllm:e2e_request_latency_seconds_bucket{engine="0",le="+Inf",model_name="qwen"} 100.0
vllm:e2e_request_latency_seconds_count{engine="0",model_name="qwen"} 100.0
vllm:e2e_request_latency_seconds_sum{engine="0",model_name="qwen"} 3900.0
# TYPE vllm:request_prompt_tokens histogram
vllm:request_prompt_tokens_bucket{engine="0",le="1024.0",model_name="qwen"} 20.0
vllm:request_prompt_tokens_bucket{engine="0",le="4096.0",model_name="qwen"} 40.0
vllm:request_prompt_tokens_bucket{engine="0",le="8192.0",model_name="qwen"} 100.0
vllm:request_prompt_tokens_bucket{engine="0",le="+Inf",model_name="qwen"} 100.0
vllm:request_prompt_tokens_count{engine="0",model_name="qwen"} 100.0
# TYPE vllm:request_params_max_tokens histogram
vllm:request_params_max_tokens_bucket{engine="0",le="512.0",model_name="qwen"} 95.0
vllm:request_params_max_tokens_bucket{engine="0",le="2048.0",model_name="qwen"} 100.0
vllm:request_params_max_tokens_bucket{engine="0",le="+Inf",model_name="qwen"} 100.0
vllm:request_params_max_tokens_count{engine="0",model_name="qwen"} 100.0
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="qwen"} 520000.0
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{engine="0",model_name="qwen"} 31000.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="qwen"} 0.0
"""

# Real error texts, as vLLM and the CUDA allocator print them.
CUDA_OOM_LOG = """INFO 11-26 11:52:10 [gpu_model_runner.py:2347] Model loading took 9.3 GiB and 41.2 seconds
ERROR 11-26 11:52:31 [core.py:708] EngineCore failed to start.
Traceback (most recent call last):
  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/engine/core.py", line 699, in run_engine_core
torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 1.02 GiB. GPU 0 has a total capacity of 15.57 GiB of which 412.06 MiB is free. Including non-PyTorch memory, this process has 15.16 GiB memory in use. Of the allocated memory 14.21 GiB is allocated by PyTorch, and 512.33 MiB is reserved by PyTorch but unallocated.
"""
KV_LOG = """INFO 11-26 11:52:40 [kv_cache_utils.py:829] GPU KV cache size: 20,112 tokens
ERROR 11-26 11:52:40 [core.py:708] EngineCore failed to start.
ValueError: The model's max seq len (32768) is larger than the maximum number of tokens that can be stored in KV cache (20112). Try increasing `gpu_memory_utilization` or decreasing `max_model_len` when initializing the engine.
"""
BAD_MODEL_LOG = """Traceback (most recent call last):
huggingface_hub.errors.RepositoryNotFoundError: 401 Client Error. (Request ID: Root=1-6745a1b2-3c4d5e6f7a8b9c0d1e2f3a4b;7c8d9e0f)

Repository Not Found for url: https://huggingface.co/api/models/Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int5/revision/main.
Please make sure you specified the correct `repo_id` and `repo_type`.
If you are trying to access a private or gated repo, make sure you are authenticated.
"""
# What the vllm container's entry point (manifests/model-server/vllm-start.py) prints.
DOWNLOAD_LOG = """downloading Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4: 12.4% (1.24 GB/9.98 GB) 21.0 MB/s ETA 6m56s
download interrupted (ConnectError); resuming (attempt 3/3)
archon: error: llm_model 'Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4': the hub at https://huggingface.co is unreachable or the transfer kept failing (ConnectError: [Errno -3] Temporary failure in name resolution); check the network, HF_ENDPOINT or a proxy
"""
ODD_LOG = """INFO 11-26 11:52:10 Starting vLLM API server
RuntimeError: NCCL error in: /workspace/csrc/nccl_utils.cpp:67, unhandled system error
"""
PULL_PROGRESS_LOG = """downloading Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4@main (0a1b2c3d4e5f60718293a4b5c6d7e8f901234567): 9 files, 9.98 GB
downloading Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4: 31.0% (3.09 GB/9.98 GB) 2.1 MB/s ETA 54m40s
downloading Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4: 61.2% (6.11 GB/9.98 GB) 2.0 MB/s ETA 32m15s
"""
SCHEDULER_GPU = (
    "0/3 nodes are available: 1 Insufficient nvidia.com/gpu, 2 node(s) didn't match Pod's node "
    "affinity/selector. preemption: 0/3 nodes are available: 1 No preemption victims found for "
    "incoming pod, 2 Preemption is not helpful for scheduling."
)
# Kubernetes >= 1.26 words a taint the pod does not tolerate as "untolerated taint".
SCHEDULER_TAINT = (
    "0/3 nodes are available: 1 node(s) had untolerated taint {nvidia.com/gpu: present}, 2 "
    "Insufficient nvidia.com/gpu. preemption: 0/3 nodes are available: 3 Preemption is not "
    "helpful for scheduling."
)
SCHEDULER_MEMORY = (
    "0/2 nodes are available: 2 Insufficient memory. preemption: 0/2 nodes are available: 2 No "
    "preemption victims found for incoming pod."
)
SCHEDULER_PVC = (
    "0/3 nodes are available: pod has unbound immediate PersistentVolumeClaims. preemption: 0/3 "
    "nodes are available: 3 Preemption is not helpful for scheduling."
)


def cluster(objects: dict, **kw) -> k.InMemoryCluster:
    merged = {
        **k.healthy_platform(),
        "configmaps": [k.configmap()],
        "persistentvolumeclaims": [k.pvc()],
        **objects,
    }
    return k.InMemoryCluster(merged, **kw)


def crashloop(container: str, code: int, log: str, **cm: str) -> k.InMemoryCluster:
    if container == "vllm":
        kwargs = {"statuses": [k.crashlooping("vllm", code)]}
    else:
        kwargs = {
            "init_statuses": [k.crashlooping(container, code)],
            "statuses": [
                {
                    **k.running("vllm", ready=False),
                    "state": {"waiting": {"reason": "PodInitializing"}},
                    "started": False,
                }
            ],
        }
    pod = k.pod(
        phase="Running" if container == "vllm" else "Pending", ready=False, age_minutes=20, **kwargs
    )
    return cluster(
        {"pods": [pod], "configmaps": [k.configmap(**cm)]}, logs={(POD, container, True): log}
    )


CASES: dict[str, tuple[Callable[[], k.InMemoryCluster], list[tuple[str, str, str]]]] = {
    "healthy": (
        lambda: cluster({"pods": [k.pod()]}, metrics={POD: FAST_METRICS}),
        [],
    ),
    "prerequisites-missing": (
        lambda: k.InMemoryCluster(
            {
                "nodes": [k.node("cpu-node-1", gpus=0)],
                "pods": [k.pod(ready=True)],
            }
        ),
        [
            ("prerequisites", "RuntimeClass nvidia not found", "kind: RuntimeClass"),
            ("prerequisites", "device plugin is not deployed", "helm install"),
            ("prerequisites", "No node has allocatable nvidia.com/gpu", "device plugin"),
            ("prerequisites", "No default StorageClass", "Install a provisioner"),
            ("prerequisites", "ArgoCD is not installed", "argocd"),
            ("prerequisites", "No nginx ingress controller", "ingress-nginx"),
        ],
    ),
    "pending-gpu-held": (
        lambda: cluster(
            {
                "pods": [
                    k.pod(phase="Pending", scheduled=False, schedule_message=SCHEDULER_GPU),
                    k.pod("jupyter-0", namespace="ml", labels={"app": "notebook"}),
                ]
            }
        ),
        [("pending", "Insufficient nvidia.com/gpu", "ml/jupyter-0 on gpu-node-1 holds 1 GPU")],
    ),
    "pending-runtimeclass": (
        lambda: cluster(
            {
                "runtimeclasses": [],
                "pods": [],
                "events": [
                    k.event(
                        "ReplicaSet",
                        "vllm-6d5f8b7c9d",
                        "FailedCreate",
                        'Error creating: pods "vllm-6d5f8b7c9d-" is forbidden: pod rejected: RuntimeClass '
                        '"nvidia" not found',
                        count=14,
                    )
                ],
            }
        ),
        [
            ("prerequisites", "RuntimeClass nvidia not found", "kind: RuntimeClass"),
            ("pending", "RuntimeClass not found", "kubectl get runtimeclass nvidia"),
        ],
    ),
    "pending-memory": (
        lambda: cluster(
            {
                "nodes": [k.node("gpu-node-1", memory="15803356Ki")],
                "pods": [
                    k.pod(
                        phase="Pending",
                        scheduled=False,
                        schedule_message=SCHEDULER_MEMORY,
                        memory="24Gi",
                    )
                ],
            }
        ),
        [("pending", "Insufficient memory", "resources.requests.memory")],
    ),
    "pending-pvc": (
        lambda: cluster(
            {
                "storageclasses": [],
                "persistentvolumeclaims": [k.pvc("Pending")],
                "pods": [k.pod(phase="Pending", scheduled=False, schedule_message=SCHEDULER_PVC)],
                "events": [
                    k.event(
                        "PersistentVolumeClaim",
                        "model-cache",
                        "FailedBinding",
                        "no persistent volumes available for this claim and no storage "
                        "class is set",
                        kind="Normal",
                    )
                ],
            }
        ),
        [
            ("prerequisites", "No default StorageClass", "Install a provisioner"),
            ("pending", "PVC is not bound", "StorageClass"),
        ],
    ),
    "crashloop-cuda-oom": (
        lambda: crashloop(
            "vllm", 1, CUDA_OOM_LOG, gpu_memory_utilization="0.95", max_model_len="16384"
        ),
        [
            (
                "crashloop",
                "CUDA out of memory",
                "gpu_memory_utilization to 0.90 (now 0.95); or set max_model_len to 8192",
            )
        ],
    ),
    "crashloop-kv-cache": (
        lambda: crashloop("vllm", 1, KV_LOG, max_model_len="32768"),
        [("crashloop", "CUDA out of memory", "set max_model_len to 19456")],
    ),
    "crashloop-invalid-model": (
        lambda: crashloop(
            "vllm", 1, BAD_MODEL_LOG, llm_model="Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int5"
        ),
        [("crashloop", "invalid model name", "Qwen2.5-Coder-14B-Instruct-GPTQ-Int5")],
    ),
    "crashloop-download": (
        lambda: crashloop("vllm", 7, DOWNLOAD_LOG),
        [("crashloop", "model download failed", "egress")],
    ),
    "crashloop-unknown": (
        lambda: crashloop("vllm", 1, ODD_LOG),
        [("crashloop", "unrecognised cause", "--previous")],
    ),
    "slow-first-download": (
        lambda: cluster(
            {
                "pods": [
                    # The download runs in the vllm container: Running, not ready.
                    k.pod(ready=False, age_minutes=50)
                ]
            },
            logs={(POD, "vllm", False): PULL_PROGRESS_LOG},
        ),
        [("slow-loading", "First download of the model still running", "15-30 min")],
    ),
    "slow-loading-cached": (
        lambda: cluster(
            {"pods": [k.pod(ready=False, age_minutes=40)]},
            logs={
                (POD, "vllm", False): "llm_model Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4 is "
                "already available at /models/hub/...\n"
                "starting vLLM: python3 -m vllm.entrypoints.openai.api_server --config "
                "/run/archon/vllm.yaml\n"
                "INFO [default_loader.py:262] Loading weights took 1310.4 s\n",
            },
        ),
        [("slow-loading", "Model cached, vLLM still loading", "faster StorageClass")],
    ),
    # ---- clusters shaped as real ones are: nothing wrong, nothing reported ----
    "healthy-real-cluster": (
        lambda: k.InMemoryCluster(k.real_cluster(), metrics={POD: FAST_METRICS}),
        [],
    ),
    "device-plugin-not-ready": (
        lambda: k.InMemoryCluster(
            {
                **k.real_cluster(),
                "daemonsets": [
                    *(
                        d
                        for d in k.gpu_operator_daemonsets()
                        if d["metadata"]["name"] != "nvidia-device-plugin-daemonset"
                    ),
                    k.daemonset("nvidia-device-plugin-daemonset", "gpu-operator", ready=0),
                ],
            },
            metrics={POD: FAST_METRICS},
        ),
        [("prerequisites", "device plugin is not running on every node", "describe ds")],
    ),
    # A namespace-scoped user: cluster-wide reads are refused, which is no evidence of absence.
    "rbac-limited": (
        lambda: k.InMemoryCluster(
            k.real_cluster(),
            metrics={POD: FAST_METRICS},
            forbidden={
                (kind, None)
                for kind in (
                    "nodes",
                    "runtimeclasses",
                    "daemonsets",
                    "deployments",
                    "ingressclasses",
                    "storageclasses",
                    "pods",
                )
            },
            user="alice@example.com",
        ),
        [
            ("access", f"cannot read {kind} (cluster-wide): forbidden", f"list {kind}")
            for kind in (
                "runtimeclasses",
                "daemonsets",
                "nodes",
                "storageclasses",
                "deployments",
                "ingressclasses",
            )
        ],
    ),
    # The pod is Pending for want of a GPU now; the RuntimeClass events predate it.
    "pending-gpu-held-old-events": (
        lambda: k.InMemoryCluster(
            {
                **k.real_cluster(
                    k.pod(
                        phase="Pending",
                        scheduled=False,
                        schedule_message=SCHEDULER_GPU,
                        age_minutes=15,
                        tolerations=[k.GPU_TOLERATION],
                    )
                ),
                "pods": [
                    k.pod(
                        phase="Pending",
                        scheduled=False,
                        schedule_message=SCHEDULER_GPU,
                        age_minutes=15,
                        tolerations=[k.GPU_TOLERATION],
                    ),
                    k.pod("jupyter-0", namespace="ml", labels={"app": "notebook"}),
                ],
            }
        ),
        [("pending", "Insufficient nvidia.com/gpu", "ml/jupyter-0 on gpu-node-1 holds 1 GPU")],
    ),
    # A pod created before the RuntimeClass: the rejections are newer than every pod.
    "pending-runtimeclass-new-events": (
        lambda: k.InMemoryCluster(
            {
                **k.real_cluster(),
                "runtimeclasses": [],
                "pods": [],
                "events": [
                    k.event(
                        "ReplicaSet",
                        "vllm-6d5f8b7c9d",
                        "FailedCreate",
                        'Error creating: pods "vllm-6d5f8b7c9d-" is forbidden: pod rejected: '
                        'RuntimeClass "nvidia" not found',
                        minutes_ago=1,
                        count=14,
                    )
                ],
            }
        ),
        [
            ("prerequisites", "RuntimeClass nvidia not found", "kind: RuntimeClass"),
            ("pending", "Pods cannot be created: RuntimeClass not found", "runtimeclass nvidia"),
        ],
    ),
    # The GPU node carries the GPU Operator's taint and the pod (a fork) lost its toleration:
    # the scheduler also says "Insufficient nvidia.com/gpu" for the CPU nodes.
    "pending-gpu-node-tainted": (
        lambda: k.InMemoryCluster(
            {
                **k.real_cluster(),
                "pods": [
                    k.pod(
                        phase="Pending",
                        scheduled=False,
                        schedule_message=SCHEDULER_TAINT,
                        age_minutes=15,
                    )
                ],
            }
        ),
        [("pending", "the GPU node is tainted", "key: nvidia.com/gpu")],
    ),
    # `kubectl apply -k` left the ConfigMap of the previous values behind; the advice must quote
    # the one the pod reads.
    "crashloop-cuda-oom-old-configmap": (
        lambda: k.InMemoryCluster(
            {
                **k.real_cluster(
                    k.pod(
                        phase="Running",
                        ready=False,
                        age_minutes=20,
                        statuses=[k.crashlooping("vllm", 1)],
                        tolerations=[k.GPU_TOLERATION],
                    )
                ),
                "configmaps": [
                    k.configmap(
                        "vllm-config-7k2m9c4f8d",
                        300,
                        gpu_memory_utilization="0.95",
                        max_model_len="32768",
                    ),
                    k.configmap(gpu_memory_utilization="0.85", max_model_len="16384"),
                ],
            },
            logs={(POD, "vllm", True): CUDA_OOM_LOG},
        ),
        [
            (
                "crashloop",
                "CUDA out of memory",
                "gpu_memory_utilization to 0.80 (now 0.85); or set max_model_len to 8192 "
                "(now 16384)",
            )
        ],
    ),
    "high-latency": (
        lambda: cluster(
            {"pods": [k.pod()]},
            metrics={POD: SLOW_METRICS},
            prometheus={
                "max by (gpu, Hostname) (DCGM_FI_DEV_GPU_TEMP)": [
                    {"metric": {"gpu": "0", "Hostname": "gpu-node-1"}, "value": [0, "88"]}
                ]
            },
        ),
        [
            ("latency", "High inference latency", "shorten prompts"),
        ],
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_dump_is_diagnosed_to_the_right_cause_and_fix(tmp_path: Path, case: str) -> None:
    build, expected = CASES[case]
    dump = tmp_path / case
    # Write the dump as `archon doctor --dump` does, then diagnose it with the CLI alone.
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
    findings = json.loads(result.stdout)
    assert result.returncode == (1 if expected else 0), result.stderr
    got = [(f["check"], f["title"], f["fix"]) for f in findings]
    assert len(got) == len(expected), got
    for (check, title, fix_part), (g_check, g_title, g_fix) in zip(expected, got, strict=True):
        assert g_check == check
        assert title in g_title, g_title
        assert fix_part in g_fix, g_fix
    for f in findings:
        assert f["evidence"], f


def test_latency_finding_explains_with_the_traffic(tmp_path: Path) -> None:
    build, _ = CASES["high-latency"]
    (finding,) = diagnose(Scope(build(), k.NS, "app=vllm", "vllm-config"))
    text = " ".join(finding.evidence)
    assert "p95 request latency 57.5 s" in text
    assert "60% of prompts are over 4096 tokens" in text
    assert "GPU 0 on gpu-node-1 at 88°C" in text
    assert "cooling" in finding.fix


def test_table_output_and_exit_code(tmp_path: Path) -> None:
    dump = tmp_path / "d"
    diagnose(
        Scope(
            RecordingCluster(CASES["crashloop-kv-cache"][0](), dump, namespace=k.NS),
            k.NS,
            "app=vllm",
            "vllm-config",
        )
    )
    result = run_cli("doctor", "--from", str(dump), env={"COLUMNS": "200"})
    assert result.returncode == 1
    assert "CUDA out of memory" in result.stdout and "19456" in result.stdout


def test_live_cluster_through_the_kubernetes_client(tmp_path: Path) -> None:
    """The kubernetes client against an API server; --dump saves what it read; --from replays."""
    api = k.FakeAPIServer(CASES["crashloop-cuda-oom"][0]())
    try:
        kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
        live = run_cli(
            "doctor",
            "--json",
            "--dump",
            str(tmp_path / "dump"),
            env={"KUBECONFIG": str(kubeconfig)},
        )
    finally:
        api.stop()
    assert live.returncode == 1, live.stderr
    findings = json.loads(live.stdout)
    assert [f["title"] for f in findings] == ["CrashLoopBackOff: CUDA out of memory"]
    replay = run_cli("doctor", "--from", str(tmp_path / "dump"), "--json")
    assert json.loads(replay.stdout) == findings
    logs = list((tmp_path / "dump" / "logs").iterdir())
    assert any("CUDA out of memory" in p.read_text() for p in logs)


def test_no_cluster_is_a_clear_error(tmp_path: Path) -> None:
    result = run_cli("doctor", env={"KUBECONFIG": str(tmp_path / "none")})
    assert result.returncode == 2
    assert "--from DIR" in result.stderr


def _live(tmp_path: Path, cluster: k.InMemoryCluster) -> tuple[int, list[dict]]:
    api = k.FakeAPIServer(cluster)
    try:
        result = run_cli(
            "doctor", "--json", env={"KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig"))}
        )
    finally:
        api.stop()
    return result.returncode, json.loads(result.stdout or "[]")


def test_live_healthy_real_cluster_exits_0(tmp_path: Path) -> None:
    code, findings = _live(tmp_path, CASES["healthy-real-cluster"][0]())
    assert (code, findings) == (0, [])


def test_live_rbac_refusals_are_reported_as_such_not_as_absence(tmp_path: Path) -> None:
    """The API server's 403 through the kubernetes client: 'cannot read', never 'missing'."""
    code, findings = _live(tmp_path, CASES["rbac-limited"][0]())
    assert code == 1
    assert {f["check"] for f in findings} == {"access"}
    runtimeclasses = next(f for f in findings if "runtimeclasses" in f["title"])
    assert runtimeclasses["evidence"] == [
        'runtimeclasses.node.k8s.io is forbidden: User "alice@example.com" cannot list resource '
        '"runtimeclasses" in API group "node.k8s.io" at the cluster scope'
    ]
    assert "RuntimeClass nvidia" in runtimeclasses["fix"]
