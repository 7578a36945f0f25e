"""Runbook "Pod in CrashLoopBackOff": read the previous container's log and name the cause."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable
from typing import Any

from archon.errors import (
    DiskFullError,
    GPUCountError,
    InsufficientVRAMError,
    ModelReferenceError,
    NetworkError,
)
from archon.modelserver.settings import parse_bytes
from archon.ops.doctor import causes, egress
from archon.ops.doctor.findings import Finding
from archon.ops.doctor.nodes import lost_gpu_nodes
from archon.ops.doctor.scope import EPOCH, Scope, container_statuses, event_time, name
from archon.ops.doctor.volumes import model_cache_usage

RUNBOOK = "docs/runbooks/ArchonModelServerCrashLooping.md"
CUDA_OOM = re.compile(
    r"CUDA out of memory|OutOfMemoryError|No available memory for the cache blocks|"
    r"larger than the maximum number of tokens that can be stored in KV cache|"
    r"Free memory on device .* is less than desired GPU memory utilization"
)
DOWNLOAD = re.compile(
    r"Max retries exceeded|Temporary failure in name resolution|ConnectionError|"
    r"ReadTimeoutError|Connection reset by peer|LocalEntryNotFoundError|"
    r"couldn't connect to 'https://huggingface.co'|is unreachable"
)
BAD_MODEL = re.compile(
    r"RepositoryNotFoundError|Repository Not Found|404 Client Error|not a valid model identifier|"
    r"not found on the hub|GatedRepoError|401 Client Error|does not appear to have a file named"
)
# Archon's own init containers say what is wrong with their exit code.
ARCHON_EXITS = {
    ModelReferenceError.exit_code: "invalid model name",
    InsufficientVRAMError.exit_code: "model does not fit the GPU",
    GPUCountError.exit_code: "tensor_parallel_size larger than the GPUs",
    NetworkError.exit_code: "model download failed",
    DiskFullError.exit_code: "model cache full",
}


def check(scope: Scope) -> list[Finding]:
    found = []
    lost = lost_gpu_nodes(scope)
    for pod in scope.pods():
        if pod.get("spec", {}).get("nodeName") in lost:
            continue  # its GPU or node is gone: the gpu-node check says so, with this pod
        settings: dict[str, str] | None = None
        for _, status in container_statuses(pod):
            waiting = status.get("state", {}).get("waiting", {})
            if waiting.get("reason") != "CrashLoopBackOff":
                continue
            container = status["name"]
            log = (
                scope.source.log(scope.namespace, name(pod), container, previous=True)
                or scope.source.log(scope.namespace, name(pod), container, previous=False)
                or ""
            )
            last = status.get("lastState", {}).get("terminated", {})
            if settings is None:
                settings = scope.settings(pod)
            found.append(
                classify(
                    name(pod),
                    container,
                    last.get("exitCode"),
                    log,
                    settings,
                    status.get("restartCount", 0),
                    reason=last.get("reason"),
                    memory=_memory(pod, container),
                    usage=functools.partial(model_cache_usage, scope, pod),
                    network=functools.partial(egress.blocked, scope, pod),
                    probe_kills=_probe_kills(scope, name(pod), container),
                )
            )
    return found


def _memory(pod: dict[str, Any], container: str) -> tuple[str, str]:
    """The container's memory (request, limit) as the pod spec says them."""
    spec = pod.get("spec", {})
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if c.get("name") == container:
            resources = c.get("resources", {})
            return (
                str(resources.get("requests", {}).get("memory", "?")),
                str(resources.get("limits", {}).get("memory", "none")),
            )
    return "?", "none"


def _probe_kills(scope: Scope, pod: str, container: str) -> list[str]:
    """The kubelet's "failed <probe> probe, will be restarted" and the probe's own failure
    (k8s.io/kubernetes pkg/kubelet/prober, kuberuntime: events Unhealthy and Killing)."""
    events = scope.events_about(pod)
    kills = [
        e.get("message", "")
        for e in events
        if e.get("reason") == "Killing" and f"Container {container} failed" in e.get("message", "")
    ]
    if not kills:
        return []
    failures = [
        e.get("message", "")
        for e in sorted(events, key=lambda e: event_time(e) or EPOCH)
        if e.get("reason") == "Unhealthy"
    ]
    return [kills[-1], *failures[-1:]]


def _tail(log: str, n: int = 8) -> list[str]:
    return [line for line in log.strip().splitlines() if line.strip()][-n:]


def _finding(cause: str, fix: str, evidence: list[str]) -> Finding:
    return Finding("crashloop", "error", f"CrashLoopBackOff: {cause}", fix, evidence, RUNBOOK)


def _bad_model_fix(settings: dict[str, str]) -> str:
    return (
        f"Correct llm_model in manifests/model-server/configmap.yaml (now "
        f"{settings.get('llm_model', '?')!r}); check the name on the hub. For a gated model "
        "create the Secret hf-token with your token."
    )


def _download_fix(_settings: dict[str, str]) -> str:
    return (
        "The pod cannot reach the hub: check egress (NetworkPolicy allows 443), DNS, a "
        "proxy (HTTPS_PROXY), or point HF_ENDPOINT at a mirror. The download resumes where "
        "it stopped once the network works."
    )


# Causes told by a log line or by Archon's exit code, first match wins: (log pattern, exit
# code, cause, its fix from the settings). CUDA out of memory, which reads numbers from the
# log, goes before them.
LOGGED = (
    (BAD_MODEL, ModelReferenceError.exit_code, "invalid model name", _bad_model_fix),
    (DOWNLOAD, NetworkError.exit_code, "model download failed", _download_fix),
)


def classify(
    pod: str,
    container: str,
    exit_code: int | None,
    log: str,
    settings: dict[str, str],
    restarts: int = 0,
    *,
    reason: str | None = None,
    memory: tuple[str, str] = ("?", "none"),
    usage: Callable[[], tuple[list[str], str]] | None = None,
    network: Callable[[], list[str]] | None = None,
    probe_kills: list[str] | None = None,
) -> Finding:
    where = f"{pod} container {container} (exit code {exit_code}, {restarts} restarts)"
    last = _tail(log, 1)
    if reason == "OOMKilled":
        return _oom_killed(where, container, memory)
    cause = (
        causes.vllm_config(log, settings)
        or causes.hub(log, settings)
        or causes.disk_full(
            log, usage or (lambda: ([], "")), certain=exit_code == DiskFullError.exit_code
        )
    )
    if cause is not None:
        return _finding(cause.title, cause.fix, [where, *cause.evidence])
    oom = CUDA_OOM.search(log)
    if oom or exit_code == InsufficientVRAMError.exit_code:
        return _cuda_oom(where, log, settings, oom.group(0) if oom else last[0] if last else "")
    for pattern, code, cause_text, fix in LOGGED:
        if pattern.search(log) or exit_code == code:
            line = next((x for x in _tail(log, 40) if pattern.search(x)), last[0] if last else "")
            cut = network() if network is not None and pattern is DOWNLOAD else []
            if cut:
                return _finding(
                    "model download blocked by a NetworkPolicy", egress.FIX, [where, line, *cut]
                )
            return _finding(cause_text, fix(settings), [where, line])
    if probe_kills:
        return _finding(
            "killed by a failing probe",
            f"The kubelet restarts {container} because a probe fails (its last output above). "
            "If the port or path is wrong, fix the probe in manifests/model-server/"
            "deployment.yaml (vLLM serves GET /health on containerPort 8000, named http); if "
            "the download or loading takes longer than the startup probe allows "
            "(failureThreshold x periodSeconds), raise startupProbe.failureThreshold.",
            [where, *probe_kills, *last],
        )
    if exit_code in ARCHON_EXITS:
        return _finding(
            ARCHON_EXITS[exit_code],
            "Follow the last log line: it names the setting to change.",
            [where, *last],
        )
    return _finding(
        "unrecognised cause",
        f"Read the log: kubectl logs -n <namespace> {pod} -c {container} --previous",
        [where, *_tail(log)],
    )


def _oom_killed(where: str, container: str, memory: tuple[str, str]) -> Finding:
    request, limit = memory
    try:
        bigger = f"{parse_bytes(limit) * 3 // 2 / 2**30:.0f}Gi"
    except ValueError:
        bigger = "a larger value"
    return Finding(
        "crashloop",
        "error",
        "OOMKilled: the container hit its memory limit",
        f"The kernel killed {container} at resources.limits.memory ({limit}; request {request}) "
        "- host memory, not the GPU's. Raise limits.memory of the "
        f"{container} container in manifests/model-server/deployment.yaml, e.g. to {bigger}, "
        "on a node that has it allocatable; vLLM holds weights in host memory while loading, "
        "plus its CPU swap space.",
        [where, "lastState.terminated.reason: OOMKilled (exit code 137 = SIGKILL)"],
        "docs/runbooks/ArchonModelServerOOMKilled.md",
    )


def _cuda_oom(where: str, log: str, settings: dict[str, str], line: str) -> Finding:
    util = float(settings.get("gpu_memory_utilization") or 0.9)
    max_len = int(settings.get("max_model_len") or 0) or None
    evidence = [where, line.strip()]
    fixes: list[str] = []
    kv = re.search(
        r"max seq len \((\d+)\) is larger than the maximum number of tokens that can be "
        r"stored in KV cache \((\d+)\)",
        log,
    )
    free = re.search(
        r"Free memory on device \(([\d.]+)/([\d.]+) GiB\) on startup is less than "
        r"desired GPU memory utilization \(([\d.]+)",
        log,
    )
    if kv:
        fits = int(kv.group(2))
        proposal = fits // 1024 * 1024 or fits
        fixes.append(f"set max_model_len to {proposal} (the KV cache holds {fits} tokens)")
    elif free:
        share = float(free.group(1)) / float(free.group(2))
        fixes.append(
            f"set gpu_memory_utilization to {math.floor(share * 100 - 2) / 100:.2f} (only "
            f"{free.group(1)} of {free.group(2)} GiB were free: another process uses the GPU)"
        )
    else:
        lower_util = max(round(util - 0.05, 2), 0.5)
        fixes.append(f"set gpu_memory_utilization to {lower_util:.2f} (now {util:.2f})")
        if max_len:
            fixes.append(f"set max_model_len to {max(max_len // 2, 1024)} (now {max_len})")
        else:
            fixes.append("set max_model_len, e.g. 8192 (now the model's full context)")
    return _finding(
        "CUDA out of memory",
        "In manifests/model-server/configmap.yaml: " + "; or ".join(fixes) + ". Or use a "
        "quantized model. `archon config check --gpu-memory <size> configmap.yaml` checks a "
        "change before you push it.",
        evidence,
    )
