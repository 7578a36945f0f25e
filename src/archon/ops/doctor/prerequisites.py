"""The operations guide's prerequisites: RuntimeClass, device plugin, GPUs, a default
StorageClass, ArgoCD, ingress. A read that RBAC refuses is reported as such, never as absent."""

from __future__ import annotations

from typing import Any

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.nodes import lost_gpu_nodes
from archon.ops.doctor.scope import Scope, gpu_capacity, gpus_of, name

RUNTIMECLASS_YAML = (
    "kubectl apply -f - <<EOF\napiVersion: node.k8s.io/v1\nkind: RuntimeClass\n"
    "metadata:\n  name: nvidia\nhandler: nvidia\nEOF"
)
DEFAULT_CLASS = (
    "storageclass.kubernetes.io/is-default-class",
    "storageclass.beta.kubernetes.io/is-default-class",
)


def check(scope: Scope) -> list[Finding]:
    found: list[Finding] = []
    found += _runtimeclass(scope)
    found += _device_plugin(scope)
    found += _gpus(scope)
    found += _storageclass(scope)
    deployments = scope.read("deployments", purpose="ArgoCD and the nginx ingress controller")
    if deployments is not None and not any(name(d) == "argocd-server" for d in deployments):
        found.append(
            Finding(
                "prerequisites",
                "warning",
                "ArgoCD is not installed",
                "kubectl create namespace argocd && kubectl apply -n argocd -f "
                "https://raw.githubusercontent.com/argoproj/argo-cd/stable/manifests/install.yaml "
                "(or deploy without GitOps: kubectl apply -k manifests/model-server/)",
                ["no Deployment argocd-server in any namespace"],
            )
        )
    found += _ingress(scope, deployments)
    return found


def _runtimeclass(scope: Scope) -> list[Finding]:
    classes = scope.read("runtimeclasses", purpose="RuntimeClass nvidia")
    if classes is None or "nvidia" in [name(rc) for rc in classes]:
        return []
    return [
        Finding(
            "prerequisites",
            "error",
            "RuntimeClass nvidia not found",
            "Install the NVIDIA GPU Operator (it creates the RuntimeClass), or create it:\n"
            + RUNTIMECLASS_YAML,
            [f"RuntimeClasses in the cluster: {', '.join(map(name, classes)) or 'none'}"],
            "docs/runbooks/ArchonModelServerPending.md",
        )
    ]


def _device_plugin(scope: Scope) -> list[Finding]:
    daemonsets = scope.read("daemonsets", purpose="the NVIDIA device plugin")
    if daemonsets is None:
        return []
    plugins = [d for d in daemonsets if "nvidia-device-plugin" in name(d)]
    if not plugins:
        return [
            Finding(
                "prerequisites",
                "error",
                "NVIDIA device plugin is not deployed",
                "Install the NVIDIA GPU Operator, or the device plugin alone: "
                "helm install nvdp nvdp/nvidia-device-plugin -n nvidia-device-plugin "
                "--create-namespace",
                ["no DaemonSet named *nvidia-device-plugin* in any namespace"],
            )
        ]

    def counts(ds: dict[str, Any]) -> tuple[int, int]:
        status = ds.get("status", {})
        return status.get("numberReady", 0), status.get("desiredNumberScheduled", 0)

    # A DaemonSet that wants no pod is not failing: the GPU Operator's and the device-plugin
    # chart's nvidia-device-plugin-mps-control-daemon schedules 0 pods unless MPS is enabled.
    active = [d for d in plugins if counts(d)[1] > 0]
    evidence = [
        f"{d['metadata']['namespace']}/{name(d)}: {counts(d)[0]} ready of {counts(d)[1]} scheduled"
        for d in plugins
    ]
    if not active:
        return [
            Finding(
                "prerequisites",
                "error",
                "NVIDIA device plugin runs on no node",
                "Its DaemonSets schedule no pod: no node is labelled as a GPU node. With the GPU "
                "Operator, check node feature discovery (kubectl get nodes -L "
                "nvidia.com/gpu.present) and the driver on the GPU node.",
                evidence,
            )
        ]
    found = []
    # A lost node takes its plugin pod with it: the gpu-node check reports the node.
    lost = len(lost_gpu_nodes(scope))
    for ds in active:
        ready, desired = counts(ds)
        if ready + lost < desired:
            ns = ds["metadata"]["namespace"]
            found.append(
                Finding(
                    "prerequisites",
                    "error",
                    "NVIDIA device plugin is not running on every node",
                    f"kubectl -n {ns} describe ds/{name(ds)}; kubectl -n {ns} logs ds/{name(ds)}",
                    [f"{ns}/{name(ds)}: {ready} ready of {desired} scheduled"],
                )
            )
    return found


def _gpus(scope: Scope) -> list[Finding]:
    nodes = scope.read("nodes", purpose="allocatable GPUs")
    if nodes is None:
        return []
    gpus = {name(n): gpus_of(n) for n in nodes}
    if any(gpus.values()) or any(gpu_capacity(n) for n in nodes):
        return []  # GPUs there, or withdrawn as unhealthy (the gpu-node check's finding)
    return [
        Finding(
            "prerequisites",
            "error",
            "No node has allocatable nvidia.com/gpu",
            "Check the device plugin's logs on the GPU node and that the node has the NVIDIA "
            "driver: kubectl describe node <gpu-node> | grep -A5 Allocatable",
            [f"{n}: nvidia.com/gpu={g}" for n, g in gpus.items()] or ["no nodes listed"],
        )
    ]


def _storageclass(scope: Scope) -> list[Finding]:
    """The model-cache PVC names no class: it binds only through a default StorageClass."""
    classes = scope.read("storageclasses", purpose="a default StorageClass")
    if classes is None:
        return []
    defaults = [
        name(sc)
        for sc in classes
        if any(sc["metadata"].get("annotations", {}).get(a) == "true" for a in DEFAULT_CLASS)
    ]
    if defaults:
        return []
    claims = scope.read("persistentvolumeclaims", scope.namespace, purpose="the model-cache PVC")
    if (
        claims is not None
        and claims
        and all(pvc.get("status", {}).get("phase") == "Bound" for pvc in claims)
    ):
        return []  # bound already (an explicit class, or a default that was removed since)
    names = ", ".join(map(name, classes)) or "none"
    fix = (
        "Mark one as the default: kubectl patch storageclass <name> -p "
        '\'{"metadata": {"annotations": {"storageclass.kubernetes.io/is-default-class": '
        '"true"}}}\', or set storageClassName in manifests/model-server/pvc.yaml'
        if classes
        else "Install a provisioner (local-path-provisioner on one node, or your cloud's CSI "
        "driver) and mark its StorageClass as the default"
    )
    return [
        Finding(
            "prerequisites",
            "error" if claims else "warning",
            "No default StorageClass",
            fix,
            [f"StorageClasses: {names}; none is annotated {DEFAULT_CLASS[0]}=true"],
        )
    ]


def _ingress(scope: Scope, deployments: list[dict[str, Any]] | None) -> list[Finding]:
    classes = scope.read("ingressclasses", purpose="the nginx ingress controller")
    if classes is None and deployments is None:
        return []
    controllers = [ic.get("spec", {}).get("controller", "") for ic in classes or []]
    if "k8s.io/ingress-nginx" in controllers or any(
        "ingress-nginx-controller" in name(d) for d in deployments or []
    ):
        return []
    if classes is None or deployments is None:
        return []  # one of the two signs is unknown: say nothing rather than guess
    return [
        Finding(
            "prerequisites",
            "warning",
            "No nginx ingress controller",
            "helm install ingress-nginx ingress-nginx/ingress-nginx -n ingress-nginx "
            "--create-namespace (the Ingress archon.home.local needs it; port-forward works "
            "without)",
            [f"IngressClass controllers: {', '.join(controllers) or 'none'}"],
        )
    ]
