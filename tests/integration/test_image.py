"""The `archon` image, run the way the manifests run it: each container's command, args, env and
envFrom, read-only root filesystem, UID/GID, dropped capabilities, no privilege escalation and
memory limit come from the kustomize-rendered Deployment; an emptyDir or PVC becomes a tmpfs,
a ConfigMap volume a read-only bind mount of its rendered data. The three parts share one
network namespace, as the containers of one pod would, so the agent reaches the model server
and the knowledge base on 127.0.0.1 at their Deployments' ports.

Needs the images in podman's local storage: `make test` and `make image` build them first
(scripts/build-image.sh). Without podman or an image the tests skip and say why, except under
CI=true, where they fail: the image every Deployment runs is proven on every landing.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.test_manifests import find, kustomize
from tests.support import fake_hub
from tests.support.servers import free_port

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("ARCHON_IMAGE", "ghcr.io/archon-platform/archon:0.1.0")
PARTS = ("agent", "kb", "modelserver")
CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
API_KEY = "sk-image-test"
KB_TOKEN = "kb-image-test-token"

# How to start a container here: podman's defaults, else runc with lower explicit rlimits (a
# sandboxed VM without CAP_SYS_RESOURCE and with hybrid cgroups refuses the defaults; the same
# probe as scripts/build-image.sh).
WAYS = [
    ([], []),
    (["--runtime", "runc"], ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]),
]


def part_image(part: str) -> str:
    return f"ghcr.io/archon-platform/archon-{part}:0.1.0"


@functools.cache
def _engine(image: str) -> tuple[list[str], list[str], str | None]:
    if shutil.which("podman") is None:
        return [], [], "podman is not installed (`make image` installs it)"
    probe = subprocess.run(["podman", "image", "exists", image], capture_output=True, text=True)
    if probe.returncode != 0:
        return [], [], f"image {image} not in podman's storage: `make image` builds it"
    errors = []
    for flags, run_flags in WAYS:
        started = subprocess.run(
            ["podman", *flags, "run", "--rm", *run_flags, "--entrypoint", "true", image],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if started.returncode == 0:
            return flags, run_flags, None
        errors.append(started.stderr.strip().splitlines()[-1:])
    return [], [], f"podman cannot start a container here: {errors}"


def engine(image: str) -> tuple[list[str], list[str]]:
    """podman's global and `run` flags for ``image``; skips the test without it (fails in CI)."""
    flags, run_flags, unavailable = _engine(image)
    if unavailable is not None:
        if CI:
            pytest.fail(f"{unavailable} (CI=true: `make test` builds the images first)")
        pytest.skip(unavailable)
    return flags, run_flags


def _memory(limit: str) -> str:
    units = {"Ki": "k", "Mi": "m", "Gi": "g"}
    return limit[:-2] + units[limit[-2:]] if limit[-2:] in units else limit


def podman_args(
    docs: list[dict[str, Any]],
    deployment: str,
    tmp: Path,
    *,
    image: str = IMAGE,
    init: str | None = None,
    secrets: dict[str, Path] | None = None,
    mounts: dict[str, Path] | None = None,
    configmaps: dict[str, dict[str, str]] | None = None,
    env: dict[str, str] | None = None,
    network: str | None = None,
    publish: tuple[int, ...] = (),
) -> tuple[list[str], dict[int, int]]:
    """`podman run` arguments equivalent to the Deployment's container (or its init container
    ``init``), and the host port of each container port in ``publish``.

    ``secrets``/``mounts``: host folders for the Secret volumes / for volumes mounted from the
    host instead of a tmpfs, by volume name; ``configmaps``: data replacing a ConfigMap's, by
    its name before kustomize's hash; ``env``: variables set after the Deployment's;
    ``network``: `container:<id>` to join another container's network namespace (a pod's)."""
    pod = find(docs, "Deployment", deployment)["spec"]["template"]["spec"]
    if init is None:
        (container,) = pod["containers"]
    else:
        (container,) = [c for c in pod["initContainers"] if c["name"] == init]
    rendered = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for name, data in (configmaps or {}).items():
        (full,) = [n for n in rendered if n.rsplit("-", 1)[0] == name]
        rendered[full] = {**rendered[full], "data": data}
    pod_sc, sc = pod.get("securityContext", {}), container.get("securityContext", {})
    # --no-healthcheck: the Dockerfile's HEALTHCHECK is for docker; Kubernetes ignores it.
    args = ["--rm", "-d", "--no-healthcheck"]
    args += ["--user", f"{pod_sc['runAsUser']}:{pod_sc.get('runAsGroup', 0)}"]
    if sc.get("readOnlyRootFilesystem"):
        # podman's --read-only also mounts tmpfs on /tmp, /var/tmp and /run; Kubernetes does not.
        args += ["--read-only", "--read-only-tmpfs=false"]
    for cap in sc.get("capabilities", {}).get("drop", []):
        args += ["--cap-drop", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if limit := container.get("resources", {}).get("limits", {}).get("memory"):
        args += ["--memory", _memory(limit)]
    for source in container.get("envFrom", []):
        data = rendered[source["configMapRef"]["name"]]["data"]
        args += [f"--env={source.get('prefix', '')}{k}={v}" for k, v in data.items()]
    for item in container.get("env", []):
        if "value" in item:
            args.append(f"--env={item['name']}={item['value']}")
        elif ref := item["valueFrom"].get("configMapKeyRef"):
            args.append(f"--env={item['name']}={rendered[ref['name']]['data'][ref['key']]}")
    args += [f"--env={k}={v}" for k, v in (env or {}).items()]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume, ro = volumes[mount["name"]], ":ro" if mount.get("readOnly") else ""
        if mounts and mount["name"] in mounts:
            args += ["-v", f"{mounts[mount['name']]}:{mount['mountPath']}{ro or ':rw'},z"]
        elif "emptyDir" in volume or "persistentVolumeClaim" in volume:
            # fsGroup makes a pod's volumes writable by its group: mode 1777 stands in for it.
            args += ["--tmpfs", f"{mount['mountPath']}:rw,mode=1777"]
        elif "configMap" in volume:
            folder = tmp / mount["name"]
            folder.mkdir()
            for key, value in rendered[volume["configMap"]["name"]]["data"].items():
                (folder / key).write_text(value)
            # A volume mounted inside this one needs its mount point here (the kubelet makes it).
            for other in container.get("volumeMounts", []):
                inner = Path(other["mountPath"])
                if inner.is_relative_to(mount["mountPath"]) and inner != Path(mount["mountPath"]):
                    (folder / inner.relative_to(mount["mountPath"])).mkdir(parents=True)
            args += ["-v", f"{folder}:{mount['mountPath']}:ro,z"]
        elif "secret" in volume:
            assert secrets and mount["name"] in secrets, f"the test must provide {mount['name']}"
            args += ["-v", f"{secrets[mount['name']]}:{mount['mountPath']}:ro,z"]
        else:
            raise AssertionError(f"volume kind not handled: {volume}")
    ports = {port: free_port() for port in publish}
    args += [f"-p127.0.0.1:{host}:{port}" for port, host in ports.items()]
    if network:
        args.append(f"--network={network}")
    command = container.get("command", [])  # none: the image's ENTRYPOINT, as Kubernetes runs it
    if command:
        args += ["--entrypoint", command[0]]
    return [*args, image, *command[1:], *container.get("args", [])], ports


class Container:
    def __init__(self, args: list[str], image: str):
        flags, run_flags = engine(image)
        result = subprocess.run(
            ["podman", *flags, "run", *run_flags, *args], capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        self.id = result.stdout.strip()

    def logs(self) -> str:
        result = subprocess.run(["podman", "logs", self.id], capture_output=True, text=True)
        return result.stdout + result.stderr

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["podman", "exec", self.id, *command], capture_output=True, text=True, timeout=60
        )

    def running(self) -> bool:
        state = subprocess.run(
            ["podman", "inspect", "-f", "{{.State.Running}}", self.id],
            capture_output=True,
            text=True,
        )
        return state.stdout.strip() == "true"

    def wait_for(self, url: str, timeout: float = 240) -> httpx.Response:
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
def run() -> Iterator[Any]:
    started: list[Container] = []

    def start(args: list[str], image: str = IMAGE) -> Container:
        started.append(Container(args, image))
        return started[-1]

    yield start
    for container in reversed(started):  # the network's owner last
        container.stop()


def one_shot(image: str, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """A command in the image as a locked-down pod runs one: read-only root, UID 10001, no
    capabilities."""
    flags, run_flags = engine(image)
    locked = ["--no-healthcheck", "--read-only", "--read-only-tmpfs=false", "--user", "10001:10001"]
    locked += ["--cap-drop", "ALL", "--security-opt", "no-new-privileges"]
    return subprocess.run(
        ["podman", *flags, "run", "--rm", *run_flags, *locked, *args],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


# --- the CPU variant llama.cpp picks ------------------------------------------------------------

# ggml's x86 CPU variants (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS) and the score each
# feature adds (ggml-cpu/arch/x86/cpu-feats.cpp): ggml loads the highest-scoring variant whose
# features the CPU has. Features as /proc/cpuinfo names them.
SCORE = {
    "FMA": (1, ["fma"]),
    "F16C": (1 << 1, ["f16c"]),
    "SSE42": (1 << 2, ["sse4_2"]),
    "BMI2": (1 << 3, ["bmi2"]),
    "AVX": (1 << 4, ["avx"]),
    "AVX2": (1 << 5, ["avx2"]),
    "AVX_VNNI": (1 << 6, ["avx_vnni"]),
    "AVX512": (1 << 7, ["avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"]),
    "AVX512_VBMI": (1 << 8, ["avx512vbmi"]),
    "AVX512_BF16": (1 << 9, ["avx512_bf16"]),
    "AVX512_VNNI": (1 << 10, ["avx512_vnni"]),
    "AMX_INT8": (1 << 11, ["amx_int8"]),
    "AMX_TILE": (0, ["amx_tile"]),
}
BASE_FEATURES = ["SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2"]
VARIANTS = {
    "x64": [],
    "sse42": ["SSE42"],
    "sandybridge": ["SSE42", "AVX"],
    "ivybridge": ["SSE42", "AVX", "F16C"],
    "piledriver": ["SSE42", "AVX", "F16C", "FMA"],
    "haswell": BASE_FEATURES,
    "skylakex": [*BASE_FEATURES, "AVX512"],
    "cannonlake": [*BASE_FEATURES, "AVX512", "AVX512_VBMI"],
    "cascadelake": [*BASE_FEATURES, "AVX512", "AVX512_VNNI"],
    "icelake": [*BASE_FEATURES, "AVX512", "AVX512_VBMI", "AVX512_VNNI"],
    "cooperlake": [*BASE_FEATURES, "AVX512", "AVX512_VNNI", "AVX512_BF16"],
    "zen4": [*BASE_FEATURES, "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"],
    "alderlake": [*BASE_FEATURES, "AVX_VNNI"],
    "sapphirerapids": [
        *BASE_FEATURES,
        *["AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"],
    ],
}


def best_variant(cpu_flags: set[str]) -> str:
    def score(features: list[str]) -> int:
        if not all(set(SCORE[f][1]) <= cpu_flags for f in features):
            return 0
        return 1 + sum(SCORE[f][0] for f in features)

    return max(VARIANTS, key=lambda name: score(VARIANTS[name]))


def test_best_variant_follows_ggml_scores() -> None:
    zen4 = {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni", "avx512_bf16"}
    zen4 |= {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw", "avx512vbmi"}
    assert best_variant(zen4 | {"avx512_vnni"}) == "zen4"
    assert best_variant({"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"}) == "haswell"
    assert best_variant({"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2", "avx_vnni"}) == "alderlake"
    assert best_variant({"sse4_2"}) == "sse42"
    assert best_variant(set()) == "x64"


def host_cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise AssertionError("no flags line in /proc/cpuinfo")


# --- the stack, as its Deployments run it ---------------------------------------------------------

KB_DOC = """# Zebra routing

The zebra router sends each request to the model server with the shortest queue.
It checks every upstream's health each ten seconds.
"""  # written for this test
SOURCES = "sources:\n  - name: notes\n    path: /srv/docs\n"


def start_stack(
    tmp_path: Path, run: Any, images: dict[str, str]
) -> tuple[dict[str, Container], dict[str, int]]:
    """The model server (the CPU overlay), the knowledge base (reading one local folder instead
    of its Git source, which this machine cannot reach) and the agent (its upstream and
    knowledge base on 127.0.0.1), in one network namespace."""
    cpu = kustomize(ROOT / "manifests/overlays/cpu")
    kb_docs = kustomize(ROOT / "manifests/knowledge-base")
    agent_docs = kustomize(ROOT / "manifests/agent")
    docs = tmp_path / "notes"
    (docs / "docs").mkdir(parents=True)
    (docs / "docs" / "zebra.md").write_text(KB_DOC)  # docs/**/*.md: a source's default include
    for path in (docs, docs / "docs", docs / "docs" / "zebra.md"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    keys = tmp_path / "keys"
    keys.mkdir()
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    (keys / "api-keys").write_text(f"sha256:{digest} image-test\n")
    token = tmp_path / "kb-token"
    token.mkdir()
    (token / "token").write_text(KB_TOKEN + "\n")
    for path in (keys, token, keys / "api-keys", token / "token"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # read by UID 10001
    for folder in (tmp_path / "server", tmp_path / "kb", tmp_path / "agent"):
        folder.mkdir()

    args, ports = podman_args(
        cpu,
        "vllm",
        tmp_path / "server",
        image=images["modelserver"],
        env={"ARCHON_THREADS": "2"},
        publish=(8000, 8100, 8080),
    )
    server = run(args, images["modelserver"])
    joined = f"container:{server.id}"
    args, _ = podman_args(
        kb_docs,
        "archon-knowledge-base",
        tmp_path / "kb",
        image=images["kb"],
        secrets={"service-token": token},
        configmaps={"kb-sources": {"sources.yaml": SOURCES}},
        network=joined,
    )
    args[args.index("--entrypoint") : args.index("--entrypoint")] = ["-v", f"{docs}:/srv/docs:ro,z"]
    kb = run(args, images["kb"])
    args, _ = podman_args(
        agent_docs,
        "archon-agent",
        tmp_path / "agent",
        image=images["agent"],
        secrets={"api-keys": keys, "kb-token": token},
        configmaps={
            "agent-config": {
                "upstreams": "http://127.0.0.1:8000",
                "kb_url": "http://127.0.0.1:8100",
                "top_k": "2",
            }
        },
        network=joined,
    )
    agent = run(args, images["agent"])
    return {"server": server, "kb": kb, "agent": agent}, ports


def check_stack(containers: dict[str, Container], ports: dict[int, int]) -> None:
    server, kb, agent = containers["server"], containers["kb"], containers["agent"]
    assert server.wait_for(f"http://127.0.0.1:{ports[8000]}/health").json()["status"] == "ok"
    kb.wait_for(f"http://127.0.0.1:{ports[8100]}/ready", timeout=300)
    agent.wait_for(f"http://127.0.0.1:{ports[8080]}/health", timeout=90)

    found = httpx.post(
        f"http://127.0.0.1:{ports[8100]}/query",
        headers={"Authorization": f"Bearer {KB_TOKEN}"},
        json={"query": "How does the zebra router pick a model server?", "top_k": 1},
        timeout=60,
    )
    assert found.status_code == 200, found.text
    (chunk,) = found.json()["chunks"]
    assert "shortest queue" in chunk["text"] and chunk["source"] == "notes"

    deadline = time.monotonic() + 120
    while True:  # the agent's first health round marks the model server up
        reply = httpx.post(
            f"http://127.0.0.1:{ports[8080]}/v1/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}"},
            json={
                "model": "smollm2-135m-instruct",
                "messages": [{"role": "user", "content": "How does the zebra router work?"}],
                "max_tokens": 8,
            },
            timeout=180,
        )
        if reply.status_code != 503 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert reply.status_code == 200, reply.text + agent.logs()
    body = reply.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] > 0

    for container in (server, kb, agent):
        assert container.exec("id", "-u").stdout.strip() == "10001"
        wrote = container.exec("touch", "/opt/archon/x")
        assert wrote.returncode != 0 and "Read-only file system" in wrote.stderr


@pytest.mark.timeout(900)
def test_the_stack_answers_a_chat_through_the_agent(tmp_path: Path, run) -> None:
    """The one image runs all three parts; llama.cpp picks this CPU's best variant."""
    containers, ports = start_stack(tmp_path, run, dict.fromkeys(PARTS, IMAGE))
    check_stack(containers, ports)
    expected = best_variant(host_cpu_flags())
    log = containers["server"].logs()
    assert f"llama.cpp CPU backend: {expected} " in log, log
    # The knowledge base's Git sources need git in the image.
    assert containers["kb"].exec("git", "--version").returncode == 0


@pytest.mark.timeout(900)
def test_the_part_images_run_the_same_stack(tmp_path: Path, run) -> None:
    """make image-agent / image-kb / image-modelserver: each part from its own image; the
    agent's has no torch, llama.cpp or Qdrant."""
    images = {part: part_image(part) for part in PARTS}
    for image in images.values():
        engine(image)
    containers, ports = start_stack(tmp_path, run, images)
    check_stack(containers, ports)
    for module in ("torch", "llama_cpp", "qdrant_client"):
        missing = containers["agent"].exec("python", "-c", f"import {module}")
        assert "ModuleNotFoundError" in missing.stderr, module


# --- one-shot commands: the Tekton step, the preflight ------------------------------------------


def test_argocd_apply_help_runs_in_the_image() -> None:
    """The Tekton step runs `archon argocd apply` from this image."""
    result = one_shot(IMAGE, "--entrypoint", "archon", IMAGE, "argocd", "apply", "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout and "apply" in result.stdout


def test_the_preflight_writes_the_vllm_config(tmp_path: Path, run) -> None:
    """The GPU Deployment's preflight init container, as it runs (--no-pull, the model cache
    read-only, the vllm-config ConfigMap as its environment), on a cache holding the model's
    config.json; a stand-in GPU size (ARCHON_GPU_MEMORY) replaces the node's."""
    docs = kustomize(ROOT / "manifests/model-server")
    config = next(d for d in docs if d["metadata"]["name"].startswith("vllm-config-"))
    repo = config["data"]["llm_model"]
    # The model in the Hugging Face cache (its stand-in hub has only config.json), as the vllm
    # container's first start leaves it: `archon model pull` marks a complete download.
    hub = fake_hub.FakeHub(fake_hub.load_tree(fake_hub.MODEL_FACTS)).start()
    models, out = tmp_path / "models", tmp_path / "run-archon"
    try:
        pulled = subprocess.run(
            [str(Path(sys.executable).parent / "archon"), "model", "pull", repo],
            capture_output=True,
            text=True,
            env={**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(models)},
            timeout=120,
        )
    finally:
        hub.stop()
    assert pulled.returncode == 0, pulled.stderr
    out.mkdir()
    out.chmod(0o777)
    for path in [models, *models.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    args, _ = podman_args(
        docs,
        "vllm",
        tmp_path,
        init="preflight",
        mounts={"model-cache": models, "run-archon": out},
        env={"ARCHON_GPU_MEMORY": "24GiB"},
    )
    args.remove("-d")
    flags, run_flags = engine(IMAGE)
    result = subprocess.run(
        ["podman", *flags, "run", *run_flags, *args], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    written = yaml.safe_load((out / "vllm.yaml").read_text())
    assert written["model"] == repo
    assert written["served-model-name"] == config["data"]["served_model_name"]
    assert written["max-model-len"] == config["data"]["max_model_len"]
    assert not (out / "preflight-failed.json").exists()
    assert re.search(r"VRAM check passed", result.stderr), result.stderr
