"""Containers the kubelet cannot start, and pods it gave up on: image pulls, a missing
ConfigMap key or Secret, a runtime refusal, an eviction, a probe pointed at the wrong port.

The waiting reasons and messages are the kubelet's own (k8s.io/kubernetes
pkg/kubelet/images/image_manager.go: ErrImagePull with the runtime's error, ImagePullBackOff
"Back-off pulling image \"...\"", ErrImageNeverPull "Container image \"...\" is not present with
pull policy of Never", InvalidImageName; pkg/kubelet/kubelet_pods.go: CreateContainerConfigError
"couldn't find key K in ConfigMap NS/NAME", "secret \"NAME\" not found"; kuberuntime:
CreateContainerError, RunContainerError; eviction manager: status.reason Evicted, "The node was
low on resource: ephemeral-storage."). Why an image pull failed is in the kubelet's Failed event,
"Failed to pull image \"...\": <containerd's error>".
"""

from __future__ import annotations

import re
from typing import Any

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import (
    EPOCH,
    Scope,
    container_statuses,
    event_time,
    is_ready,
    name,
)

RUNBOOK = "docs/runbooks/ArchonModelServerImagePull.md"
PENDING_RUNBOOK = "docs/runbooks/ArchonModelServerPending.md"
DEPLOYMENT = "manifests/model-server/deployment.yaml"
PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
START = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")

# containerd's words for why a pull failed (remotes/docker resolver and authorizer).
NOT_FOUND = re.compile(r"code = NotFound|: not found$|manifest unknown|not found: manifest")
DENIED = re.compile(
    r"401 Unauthorized|403 Forbidden|pull access denied|insufficient_scope|"
    r"authorization failed|failed to authorize|no basic auth credentials|denied: "
)
UNREACHABLE = re.compile(
    r"i/o timeout|connection refused|connection reset by peer|no such host|"
    r"TLS handshake timeout|DeadlineExceeded|server misbehaving|network is unreachable"
)


def check(scope: Scope) -> list[Finding]:
    found: list[Finding] = []
    pods = scope.pods()
    for pod in pods:
        if pod.get("status", {}).get("reason") == "Evicted":
            if not _replaced(pod, pods):
                found.append(_evicted(scope, pod))
            continue
        for _, status in container_statuses(pod):
            waiting = status.get("state", {}).get("waiting", {})
            reason = waiting.get("reason", "")
            if reason in PULL:
                found.append(_pull(scope, pod, status["name"], reason, waiting))
            elif reason in START:
                found.append(_start(scope, pod, status["name"], reason, waiting))
        found += _probe_ports(scope, pod)
    return found


def _replaced(pod: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """A ready pod of the same template serves: the eviction is history (the Failed pod stays
    listed until someone deletes it)."""
    template = pod["metadata"].get("labels", {}).get("pod-template-hash")
    return template is not None and any(
        p["metadata"].get("labels", {}).get("pod-template-hash") == template and is_ready(p)
        for p in pods
    )


def _spec(pod: dict[str, Any], container: str) -> dict[str, Any]:
    spec = pod.get("spec", {})
    return next(
        (
            c
            for c in [*spec.get("initContainers", []), *spec.get("containers", [])]
            if c.get("name") == container
        ),
        {},
    )


def _pull(
    scope: Scope, pod: dict[str, Any], container: str, reason: str, waiting: dict[str, Any]
) -> Finding:
    image = _spec(pod, container).get("image", "?")
    evidence = [f"pod {name(pod)} container {container}: {reason}: {waiting.get('message', '')}"]
    failed = [
        e.get("message", "")
        for e in sorted(scope.events_about(name(pod)), key=lambda e: event_time(e) or EPOCH)
        if e.get("reason") == "Failed" and "Failed to pull image" in e.get("message", "")
    ]
    why = failed[-1] if failed else waiting.get("message", "")
    if failed:
        evidence.append(f"event Failed: {why}")
    secrets = [s.get("name") for s in pod.get("spec", {}).get("imagePullSecrets", []) or []]
    where = f"the {container} container's image in {DEPLOYMENT}"
    if reason == "ErrImageNeverPull":
        cause = "image not on the node and imagePullPolicy is Never"
        fix = (
            f"Load {image} into the node's runtime (k3s: k3s ctr images import; kind: kind "
            f"load docker-image), or set imagePullPolicy: IfNotPresent for {where}"
        )
    elif reason == "InvalidImageName":
        cause = "invalid image name"
        fix = f"Correct {where} (now {image!r}): registry/repository:tag"
    elif DENIED.search(why):
        cause = "the registry refused the pull (private image, no or wrong pull secret)"
        fix = (
            f"Give the pod a pull secret for the registry of {image}: kubectl create secret "
            "docker-registry regcred -n " + scope.namespace + " --docker-server=<registry> "
            "--docker-username=... --docker-password=..., and add imagePullSecrets: "
            f"[{{name: regcred}}] to the pod spec in {DEPLOYMENT}"
            + (f" (now: {', '.join(map(str, secrets))}: check its credentials)" if secrets else "")
        )
    elif NOT_FOUND.search(why):
        cause = "no such image or tag"
        fix = (
            f"Correct {where} (now {image!r}): the registry has no such tag; the manifests pin "
            "vllm/vllm-openai:v0.32.0 and ghcr.io/archon-platform/archon:<version>"
        )
    elif UNREACHABLE.search(why):
        cause = "the registry is unreachable from the node"
        fix = (
            f"The node cannot reach the registry of {image}: check the node's DNS, egress "
            "firewall or proxy (containerd's proxy settings), or mirror the image into a "
            "registry the node reaches"
        )
    else:
        cause = "the image cannot be pulled"
        fix = f"Read the Failed event above; check {where} (now {image!r}) and pull secrets"
    return Finding("containers", "error", f"{reason}: {cause}", fix, evidence, RUNBOOK)


KEY = re.compile(r"couldn't find key (\S+) in (ConfigMap|Secret) (\S+)/(\S+)")
MISSING = re.compile(r'(configmap|secret)s? "([^"]+)" not found')


def _start(
    scope: Scope, pod: dict[str, Any], container: str, reason: str, waiting: dict[str, Any]
) -> Finding:
    message = waiting.get("message", "")
    evidence = [f"pod {name(pod)} container {container}: {reason}: {message}"]
    if m := KEY.search(message):
        key, kind, obj = m.group(1), m.group(2), m.group(4)
        where = (
            "manifests/model-server/configmap.yaml (the ConfigMap vllm-config)"
            if kind == "ConfigMap"
            else f"the Secret {obj}"
        )
        title = f"{reason}: key {key} missing in {kind} {obj}"
        fix = f"Add the key {key} to {where}" + (
            f": kubectl create secret generic {obj} -n {scope.namespace} "
            f"--from-literal={key}=... --dry-run=client -o yaml | kubectl apply -f -"
            if kind == "Secret"
            else ", or drop the reference to it from the pod spec"
        )
    elif m := MISSING.search(message):
        kind, obj = m.group(1), m.group(2)
        title = f"{reason}: {kind} {obj} not found"
        fix = f"Create the {kind} {obj} in namespace {scope.namespace}" + (
            " (kubectl apply -k manifests/model-server/ creates vllm-config with its hash)"
            if kind == "configmap"
            else f": kubectl create secret generic {obj} -n {scope.namespace} "
            "--from-literal=...; or mark its secretKeyRef optional: true"
        )
    elif "nvidia-container-cli" in message:
        node = pod.get("spec", {}).get("nodeName", "?")
        title = f"{reason}: the NVIDIA container runtime failed on {node}"
        fix = (
            f"The GPU driver or container toolkit on {node} is broken: run nvidia-smi on the "
            "host; with the GPU Operator check its nvidia-driver-daemonset and "
            f"nvidia-container-toolkit-daemonset pods on {node} (kubectl get pods -n "
            f"gpu-operator -o wide --field-selector spec.nodeName={node})"
        )
    elif "runAsNonRoot" in message:
        title = f"{reason}: image would run as root"
        fix = (
            f"Keep securityContext.runAsUser (10001) in {DEPLOYMENT}: the pod sets "
            "runAsNonRoot and the image's user is root"
        )
    else:
        title = f"{reason}: the container runtime refused the container"
        fix = (
            "Read the runtime's message above (a missing executable, a volume mount, the nvidia "
            f"runtime): kubectl describe pod -n {scope.namespace} {name(pod)}"
        )
    return Finding("containers", "error", title, fix, evidence, PENDING_RUNBOOK)


def _evicted(scope: Scope, pod: dict[str, Any]) -> Finding:
    message = pod.get("status", {}).get("message", "")
    resource = re.search(r"low on resource: ([\w-]+)", message)
    evidence = [f"pod {name(pod)}: Evicted: {message}"]
    if resource and resource.group(1) == "ephemeral-storage":
        fix = (
            f"The node {pod['spec'].get('nodeName', '?')} ran low on disk (DiskPressure): free "
            "its disk (unused images: crictl rmi --prune), and keep the model on the PVC "
            "model-cache, not in the container's filesystem (HF_HOME=/models); the emptyDir "
            f"volumes tmp and shm have sizeLimits in {DEPLOYMENT}"
        )
    elif resource and resource.group(1) == "memory":
        fix = (
            "The node ran low on memory: raise resources.requests.memory of the vllm container "
            f"in {DEPLOYMENT} to what it uses (Guaranteed pods are evicted last), or move other "
            "workloads off the GPU node"
        )
    else:
        fix = (
            f"Read the eviction message above; kubectl describe node {pod['spec'].get('nodeName')}"
        )
    return Finding(
        "containers",
        "error",
        f"Pod evicted ({resource.group(1) if resource else 'node pressure'})",
        fix + f". Then delete the Failed pod: kubectl delete pod -n {scope.namespace} {name(pod)}",
        evidence,
        PENDING_RUNBOOK,
    )


def _probe_ports(scope: Scope, pod: dict[str, Any]) -> list[Finding]:
    """A probe whose port the container does not declare: it can never succeed."""
    found = []
    containers = pod.get("spec", {}).get("containers", [])
    for c in containers:
        ports = c.get("ports", []) or []
        # Containers of a pod share its network: a numeric port of another one answers too.
        numbers = [p.get("containerPort") for x in containers for p in x.get("ports", []) or []]
        names = [p.get("name") for p in ports if p.get("name")]
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(kind) or {}
            handler = "httpGet" if "httpGet" in probe else "tcpSocket"
            port = (probe.get(handler) or {}).get("port")
            if port is None or not ports or port in numbers or port in names:
                continue
            target = names[0] if names else ports[0].get("containerPort")
            declared = ", ".join(f"{p.get('name', '')} {p.get('containerPort')}" for p in ports)
            failures = [
                e.get("message", "")
                for e in scope.events_about(name(pod))
                if e.get("reason") == "Unhealthy"
            ]
            found.append(
                Finding(
                    "containers",
                    "error",
                    f"{kind} of {c['name']} targets port {port}, which it does not serve",
                    f"Set {kind}.{handler}.port to {target} in "
                    f"{DEPLOYMENT} (the container's ports: {declared})",
                    [
                        f"pod {name(pod)}: {kind} on port {port}; ports declared: {declared}",
                        *failures[-1:],
                    ],
                    "docs/runbooks/ArchonModelServerCrashLooping.md",
                )
            )
    return found
