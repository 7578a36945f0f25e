"""Runbook "Pod in CrashLoopBackOff": read the previous container's log and name the cause."""

from __future__ import annotations

import math
import re

from archon.errors import (
    DiskFullError,
    GPUCountError,
    InsufficientVRAMError,
    ModelReferenceError,
    NetworkError,
)
from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import Scope, container_statuses, name

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
    for pod in scope.pods():
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
            exit_code = status.get("lastState", {}).get("terminated", {}).get("exitCode")
            if settings is None:
                settings = scope.settings(pod)
            found.append(
                classify(
                    name(pod), container, exit_code, log, settings, status.get("restartCount", 0)
                )
            )
    return found


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
) -> Finding:
    where = f"{pod} container {container} (exit code {exit_code}, {restarts} restarts)"
    last = _tail(log, 1)
    oom = CUDA_OOM.search(log)
    if oom or exit_code == InsufficientVRAMError.exit_code:
        return _cuda_oom(where, log, settings, oom.group(0) if oom else last[0] if last else "")
    for pattern, code, cause, fix in LOGGED:
        if pattern.search(log) or exit_code == code:
            line = next((x for x in _tail(log, 40) if pattern.search(x)), last[0] if last else "")
            return _finding(cause, fix(settings), [where, line])
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
