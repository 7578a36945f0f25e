"""Runbook "Slow Model Loading": a pod not ready 30 minutes after it was created."""

from __future__ import annotations

import re
from typing import Any

from archon.ops.doctor import egress
from archon.ops.doctor.containers import PULL, START
from archon.ops.doctor.findings import Finding
from archon.ops.doctor.nodes import lost_gpu_nodes
from archon.ops.doctor.scope import (
    Scope,
    age_seconds,
    container_statuses,
    is_ready,
    is_terminating,
    name,
    was_ready_before,
)

RUNBOOK = "docs/runbooks/ArchonModelLoadingSlow.md"
SLOW_AFTER_S = 30 * 60
PROGRESS = re.compile(r"downloading .*?: [\d.]+% .*")
EXPLAINED_ELSEWHERE = ("CrashLoopBackOff", *PULL, *START)


def check(scope: Scope) -> list[Finding]:
    found = []
    now = scope.source.now()
    lost = lost_gpu_nodes(scope)
    for pod in scope.pods():
        age = age_seconds(pod, now)
        if (
            is_ready(pod)
            or age < SLOW_AFTER_S
            or pod.get("status", {}).get("phase") not in ("Pending", "Running")
        ):
            continue
        if any(
            s.get("state", {}).get("waiting", {}).get("reason") in EXPLAINED_ELSEWHERE
            for _, s in container_statuses(pod)
        ):
            continue  # the crash-loop or containers check explains this pod
        if is_terminating(pod) or was_ready_before(pod) or pod["spec"].get("nodeName") in lost:
            continue  # it loaded and served; now it is going, or its node is (gpu-node check)
        if any(
            c.get("type") == "PodScheduled" and c.get("status") == "False"
            for c in pod.get("status", {}).get("conditions", [])
        ):
            continue  # not scheduled: the pending check explains this pod
        evidence = [f"pod {name(pod)} created {age / 60:.0f} min ago, not ready"]
        unbound = _unbound_claims(scope, pod)
        if unbound:
            found.append(
                Finding(
                    "slow-loading",
                    "error",
                    "Model loading stalled: the model-cache PVC is not bound",
                    "Give the cluster a default StorageClass or set storageClassName in "
                    "manifests/model-server/pvc.yaml (kubectl get storageclass)",
                    evidence + unbound,
                    RUNBOOK,
                )
            )
            continue
        found.append(_progress(scope, pod, evidence))
    return found


def _unbound_claims(scope: Scope, pod: dict[str, Any]) -> list[str]:
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in pod.get("spec", {}).get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    return [
        f"PVC {name(pvc)} is {pvc.get('status', {}).get('phase', '?')}"
        for pvc in scope.read(
            "persistentvolumeclaims", scope.namespace, purpose="the model-cache PVC"
        )
        or []
        if name(pvc) in claims and pvc.get("status", {}).get("phase") != "Bound"
    ]


def _downloading(downloader: str, status: dict[str, Any] | None, log: str) -> bool:
    if status is None or "running" not in status.get("state", {}):
        return False
    if downloader == "model-pull":  # an older bundle: the init container only downloads
        return True
    # The vllm container downloads (vllm-start.py), then logs "starting vLLM" and execs it.
    last = next((x for x in reversed(log.strip().splitlines()) if x.strip()), "")
    return "starting vLLM" not in log and (
        not last or bool(PROGRESS.search(last)) or last.startswith("downloading ")
    )


def _progress(scope: Scope, pod: dict[str, Any], evidence: list[str]) -> Finding:
    statuses = dict((s["name"], s) for _, s in container_statuses(pod))
    init_names = {c.get("name") for c in pod.get("spec", {}).get("initContainers", [])}
    downloader = "model-pull" if "model-pull" in init_names else "vllm"
    log = scope.source.log(scope.namespace, name(pod), downloader, previous=False) or ""
    lines = PROGRESS.findall(log)
    if _downloading(downloader, statuses.get(downloader), log):
        if lines:
            return Finding(
                "slow-loading",
                "warning",
                "First download of the model still running",
                "Expected for a first download (15-30 min for ~10 GB). If the speed is low, "
                "check the node's network; the download resumes if the pod restarts.",
                [*evidence, f"{downloader}: {lines[-1]}"],
                RUNBOOK,
            )
        cut = egress.blocked(scope, pod)
        if cut:
            return Finding(
                "slow-loading",
                "error",
                "Model download blocked by a NetworkPolicy",
                egress.FIX,
                [*evidence, *cut, *[x for x in log.strip().splitlines()[-2:] if x]],
                RUNBOOK,
            )
        return Finding(
            "slow-loading",
            "error",
            "Model download shows no progress",
            f"{downloader} has logged no progress line (it logs one every <=10 s): check "
            "egress to the hub, DNS and proxies; kubectl logs -l app=vllm shows where it stands.",
            [*evidence, *[x for x in log.strip().splitlines()[-3:] if x]],
            RUNBOOK,
        )
    cached = "already available" in log
    vllm_log = (
        log
        if downloader == "vllm"
        else scope.source.log(scope.namespace, name(pod), "vllm", previous=False) or ""
    )
    tail = [x for x in vllm_log.strip().splitlines() if x][-3:]
    return Finding(
        "slow-loading",
        "warning",
        "Model cached, vLLM still loading" if cached else "Model downloaded, vLLM still loading",
        "Loading from a slow volume (network storage) takes long: use a faster StorageClass for "
        "model-cache. The vllm container's log shows the loading step.",
        [
            *evidence,
            "download: "
            + (
                "model was already in the cache (not a first download)"
                if cached
                else "first download finished"
            ),
            *[f"vllm: {x}" for x in tail],
        ],
        RUNBOOK,
    )
