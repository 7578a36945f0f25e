"""The operations guide's prerequisites: RuntimeClass, device plugin, GPUs, ArgoCD, ingress."""

from __future__ import annotations

from archon.ops.doctor.findings import Finding
from archon.ops.doctor.scope import Scope, name

RUNTIMECLASS_YAML = (
    "kubectl apply -f - <<EOF\napiVersion: node.k8s.io/v1\nkind: RuntimeClass\n"
    "metadata:\n  name: nvidia\nhandler: nvidia\nEOF"
)


def check(scope: Scope) -> list[Finding]:
    src = scope.source
    found: list[Finding] = []
    runtimeclasses = [name(rc) for rc in src.list("runtimeclasses")]
    if "nvidia" not in runtimeclasses:
        found.append(
            Finding(
                "prerequisites",
                "error",
                "RuntimeClass nvidia not found",
                "Install the NVIDIA GPU Operator (it creates the RuntimeClass), or create it:\n"
                + RUNTIMECLASS_YAML,
                [f"RuntimeClasses in the cluster: {', '.join(runtimeclasses) or 'none'}"],
                "docs/runbooks/ArchonModelServerPending.md",
            )
        )
    plugins = [d for d in src.list("daemonsets") if "nvidia-device-plugin" in name(d)]
    if not plugins:
        found.append(
            Finding(
                "prerequisites",
                "error",
                "NVIDIA device plugin is not deployed",
                "Install the NVIDIA GPU Operator, or the device plugin alone: "
                "helm install nvdp nvdp/nvidia-device-plugin -n nvidia-device-plugin "
                "--create-namespace",
                ["no DaemonSet named *nvidia-device-plugin* in any namespace"],
            )
        )
    else:
        for ds in plugins:
            status = ds.get("status", {})
            if status.get("numberReady", 0) < max(status.get("desiredNumberScheduled", 0), 1):
                ns = ds["metadata"]["namespace"]
                found.append(
                    Finding(
                        "prerequisites",
                        "error",
                        "NVIDIA device plugin is not running on every node",
                        f"kubectl -n {ns} describe ds/{name(ds)}; "
                        f"kubectl -n {ns} logs ds/{name(ds)}",
                        [
                            f"{ns}/{name(ds)}: {status.get('numberReady', 0)} ready of "
                            f"{status.get('desiredNumberScheduled', 0)} scheduled"
                        ],
                    )
                )
    gpus = {
        name(n): int(n.get("status", {}).get("allocatable", {}).get("nvidia.com/gpu", "0"))
        for n in src.list("nodes")
    }
    if not any(gpus.values()):
        found.append(
            Finding(
                "prerequisites",
                "error",
                "No node has allocatable nvidia.com/gpu",
                "Check the device plugin's logs on the GPU node and that the node has the NVIDIA "
                "driver: kubectl describe node <gpu-node> | grep -A5 Allocatable",
                [f"{n}: nvidia.com/gpu={g}" for n, g in gpus.items()] or ["no nodes listed"],
            )
        )
    deployments = src.list("deployments")
    if not any(name(d) == "argocd-server" for d in deployments):
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
    controllers = [ic.get("spec", {}).get("controller", "") for ic in src.list("ingressclasses")]
    if "k8s.io/ingress-nginx" not in controllers and not any(
        "ingress-nginx-controller" in name(d) for d in deployments
    ):
        found.append(
            Finding(
                "prerequisites",
                "warning",
                "No nginx ingress controller",
                "helm install ingress-nginx ingress-nginx/ingress-nginx -n ingress-nginx "
                "--create-namespace (the Ingress archon.home.local needs it; port-forward works "
                "without)",
                [f"IngressClass controllers: {', '.join(controllers) or 'none'}"],
            )
        )
    return found
