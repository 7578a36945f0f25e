"""The `archon` image, run the way the manifests run it: each container's command, args, env and
envFrom, read-only root filesystem, UID/GID, dropped capabilities, no privilege escalation and
memory limit come from the kustomize-rendered Deployment; an emptyDir or PVC becomes a tmpfs,
a ConfigMap volume a read-only bind mount of its rendered data.

Needs the image in podman's local storage: `make image` builds it (scripts/build-image.sh) and
runs this file. Without podman or without the image, the tests skip and say why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.test_manifests import find, kustomize
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("ARCHON_IMAGE", "ghcr.io/archon-platform/archon:0.1.0")


# How to start a container here: podman's defaults, else runc with lower explicit rlimits (a
# sandboxed VM without CAP_SYS_RESOURCE and with hybrid cgroups refuses the defaults; the same
# probe as scripts/build-image.sh).
WAYS = [
    ([], []),
    (["--runtime", "runc"], ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]),
]


def _engine() -> tuple[list[str], list[str], str | None]:
    if shutil.which("podman") is None:
        return [], [], "podman is not installed (apt-get install podman)"
    probe = subprocess.run(["podman", "image", "exists", IMAGE], capture_output=True, text=True)
    if probe.returncode != 0:
        return (
            [],
            [],
            f"image {IMAGE} not in podman's storage: `make image` builds it and runs this",
        )
    errors = []
    for flags, run_flags in WAYS:
        started = subprocess.run(
            ["podman", *flags, "run", "--rm", *run_flags, "--entrypoint", "true", IMAGE],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if started.returncode == 0:
            return flags, run_flags, None
        errors.append(started.stderr.strip().splitlines()[-1:])
    return [], [], f"podman cannot start a container here: {errors}"


PODMAN, RUN_FLAGS, UNAVAILABLE = _engine()
pytestmark = pytest.mark.skipif(UNAVAILABLE is not None, reason=str(UNAVAILABLE))


def _memory(limit: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    return limit[:-2] + units[limit[-2:]] if limit[-2:] in units else limit


def podman_args(
    docs: list[dict[str, Any]], deployment: str, tmp: Path, secrets: dict[str, Path] | None = None
) -> tuple[list[str], int]:
    """`podman run` arguments equivalent to the Deployment's first container; and its port."""
    pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    args = ["--rm", "-d", "--user", f"{pod_sc['runAsUser']}:{pod_sc.get('runAsGroup', 0)}"]
    if sc.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if limit := container.get("resources", {}).get("limits", {}).get("memory"):
        args += ["--memory", _memory(limit)]
    for source in container.get("envFrom", []):
        data = configmaps[source["configMapRef"]["name"]]["data"]
        args += [f"--env={source.get('prefix', '')}{k}={v}" for k, v in data.items()]
    args += [f"--env={e['name']}={e['value']}" for e in container.get("env", []) if "value" in e]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume or "persistentVolumeClaim" in volume:
            # fsGroup makes a pod's volumes writable by its group: mode 1777 stands in for it.
            args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
        elif "configMap" in volume:
            folder = tmp / mount["name"]
            folder.mkdir()
            for key, value in configmaps[volume["configMap"]["name"]]["data"].items():
                (folder / key).write_text(value)
            args += ["-v", f"{folder}:{mount['mountPath']}:ro,z"]
        elif "secret" in volume:
            assert secrets and mount["name"] in secrets, f"the test must provide {mount['name']}"
            args += ["-v", f"{secrets[mount['name']]}:{mount['mountPath']}:ro,z"]
        else:
            raise AssertionError(f"volume kind not handled: {volume}")
    port = container["ports"][0]["containerPort"]
    host_port = free_port()
    args += ["-p", f"127.0.0.1:{host_port}:{port}", "--entrypoint", container["command"][0]]
    return [*args, IMAGE, *container["command"][1:], *container.get("args", [])], host_port


class Container:
    def __init__(self, args: list[str]):
        result = subprocess.run(
            ["podman", *PODMAN, "run", *RUN_FLAGS, *args], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        self.id = result.stdout.strip()

    def logs(self) -> str:
        result = subprocess.run(["podman", "logs", self.id], capture_output=True, text=True)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = subprocess.run(
            ["podman", "inspect", "-f", "{{.State.Running}}", self.id],
            capture_output=True,
            text=True,
        )
        return state.stdout.strip() == "true"

    def wait_for(self, url: str, timeout: float = 180) -> httpx.Response:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                response = httpx.get(url, timeout=3)
                if response.status_code == 200:
                    return response
            except httpx.HTTPError:
                pass
            assert self.running(), f"container exited:\n{self.logs()}"
            time.sleep(0.5)
        raise AssertionError(f"{url} not 200 in {timeout}s:\n{self.logs()}")

    def stop(self) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "2", self.id], capture_output=True)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Any]:
    started: list[Container] = []

    def start(args: list[str]) -> Container:
        started.append(Container(args))
        return started[-1]

    yield start
    for container in started:
        container.stop()


def test_the_cpu_model_server_serves_health_and_a_chat_completion(tmp_path: Path, run) -> None:
    args, port = podman_args(kustomize(ROOT / "manifests/overlays/cpu"), "vllm", tmp_path)
    assert "--read-only" in args and "ALL" in args
    server = run(args)
    health = server.wait_for(f"http://127.0.0.1:{port}/health")
    assert health.json()["status"] == "ok"
    reply = httpx.post(
        f"http://127.0.0.1:{port}/v1/chat/completions",
        json={
            "model": "smollm2-135m-instruct",
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
        },
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0
    uid = subprocess.run(
        ["podman", "exec", server.id, "id", "-u"], capture_output=True, text=True
    ).stdout.strip()
    assert uid == "10001"


def test_the_agent_starts(tmp_path: Path, run) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "api-keys").write_text("sha256:" + "0" * 64 + " test\n")
    docs = kustomize(ROOT / "manifests/agent")
    args, port = podman_args(docs, "archon-agent", tmp_path, secrets={"api-keys": keys})
    agent = run(args)
    agent.wait_for(f"http://127.0.0.1:{port}/health", timeout=90)
    # Without its model servers (cluster DNS names) it answers with the OpenAI-shaped 401/503.
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 401


def test_the_knowledge_base_starts(tmp_path: Path, run) -> None:
    docs = kustomize(ROOT / "manifests/knowledge-base")
    args, port = podman_args(docs, "archon-knowledge-base", tmp_path)
    kb = run(args)
    kb.wait_for(f"http://127.0.0.1:{port}/health", timeout=180)
