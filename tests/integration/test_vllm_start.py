"""The vllm container's entry point, as kustomize builds it: the script from the vllm-start
ConfigMap, run with the container's command, arguments and environment against the stand-in hub,
with a stand-in `python3` on PATH where vLLM would be exec'd.

What the operations guide promises: `kubectl logs -l app=vllm -f` shows the download's progress
(the vllm container logs it), and `--previous` after a failed pull shows the reason.

Each run goes twice: under Archon's Python and under .venv-vllm's (`make vllm-venv`: vLLM 0.32.0
and the huggingface_hub it brings, the packages of the pinned vllm/vllm-openai image), so the
download and the exec meet the library versions they will meet in the pod.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from archon.ops.doctor.loading import PROGRESS
from tests.integration.test_manifests import ROOT, find, kustomize, vllm_config
from tests.support import fake_hub

REPO = "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4"
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"
CI = os.environ.get("CI", "").lower() not in ("", "0", "false")
# Larger than huggingface_hub's 10 MB read chunk, so bytes reach the disk while it downloads.
WEIGHTS = os.urandom(24 * 1024 * 1024)
STUB = """#!/bin/sh
# Stands in for the image's python3 running vLLM: shows what it was exec'd with.
echo "STUB-EXEC $*"
echo "STUB-ENV HF_HUB_OFFLINE=$HF_HUB_OFFLINE"
"""


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    docs = kustomize(ROOT / "manifests/model-server")
    pod = find(docs, "Deployment", "vllm")["spec"]["template"]["spec"]
    (vllm,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in vllm["volumeMounts"] if "configMap" in volumes[m["name"]]]
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    script_cm = configmaps[volumes[mount["name"]]["configMap"]["name"]]
    return {
        "pod": pod,
        "vllm": vllm,
        "mount": mount,
        "script_cm": script_cm,
        "config": vllm_config(docs),
    }


def test_the_container_runs_the_mounted_script_then_vllm(built: dict[str, Any]) -> None:
    vllm, mount, pod = built["vllm"], built["mount"], built["pod"]
    assert mount["readOnly"] is True
    assert built["script_cm"]["metadata"]["name"].startswith("vllm-start-")  # hashed: edits roll
    (filename,) = built["script_cm"]["data"]
    assert vllm["command"] == ["python3", f"{mount['mountPath']}/{filename}"]
    assert vllm["args"][0] == "--"
    assert vllm["args"][1:4] == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    env = {e["name"]: e for e in vllm["env"]}
    assert env["ARCHON_LLM_MODEL"]["valueFrom"]["configMapKeyRef"] == {
        "name": built["config"]["metadata"]["name"],
        "key": "llm_model",
    }
    assert env["HF_HOME"]["value"] == "/models"
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "HF_HUB_OFFLINE" not in env  # the script needs the hub; it sets it for vLLM
    mounts = {m["name"]: m["mountPath"] for m in vllm["volumeMounts"]}
    assert mounts["model-cache"] == "/models"
    # No init container downloads: the preflight only sizes, and leaves a failure where the
    # script reads it.
    (preflight,) = pod["initContainers"]
    assert "--no-pull" in preflight["args"]
    (failure_file,) = [
        a.split("=", 1)[1] for a in preflight["args"] if a.startswith("--failure-file=")
    ]
    assert f'"{failure_file}"' in built["script_cm"]["data"][filename]
    # Standard library and huggingface_hub only: the vLLM image has no Archon.
    imports = re.findall(r"^\s*(?:from|import) (\w+)", built["script_cm"]["data"][filename], re.M)
    assert "archon" not in imports
    assert set(imports) - set(sys.stdlib_module_names) == {"huggingface_hub"}


@pytest.fixture(params=["archon", "vllm"])
def python(request: pytest.FixtureRequest) -> str:
    """The interpreter that runs the script: Archon's, or the vLLM venv's."""
    if request.param == "archon":
        return sys.executable
    if not VLLM_PYTHON.exists():
        reason = f"{VLLM_PYTHON} is missing: `make vllm-venv` makes it"
        if CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return str(VLLM_PYTHON)


def _hub(**kwargs: Any) -> fake_hub.FakeHub:
    files = fake_hub.load_tree(fake_hub.MODEL_FACTS)
    files[f"{REPO}/model.safetensors"] = fake_hub.HubFile(WEIGHTS)
    return fake_hub.FakeHub(files, **kwargs).start()


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def run_start(
    built: dict[str, Any], tmp_path: Path, endpoint: str, python: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """The container's command line and environment, with the cache and /run/archon in tmp,
    run by ``python``."""
    vllm, mount = built["vllm"], built["mount"]
    scripts = tmp_path / "opt-archon"
    scripts.mkdir(exist_ok=True)
    for name, text in built["script_cm"]["data"].items():
        (scripts / name).write_text(text)
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    (stubs / "python3").write_text(STUB)
    (stubs / "python3").chmod(0o755)
    (tmp_path / "run-archon").mkdir(exist_ok=True)
    pod_env: dict[str, str] = {}
    for item in vllm["env"]:
        if "value" in item:
            pod_env[item["name"]] = item["value"]
        elif "configMapKeyRef" in item["valueFrom"]:
            pod_env[item["name"]] = built["config"]["data"][
                item["valueFrom"]["configMapKeyRef"]["key"]
            ]
    pod_env["HF_HOME"] = str(tmp_path / "models")
    pod_env["HOME"] = str(tmp_path)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ARCHON_", "HF_"))}
    command = [python, vllm["command"][1].replace(mount["mountPath"], str(scripts))]
    return subprocess.run(
        [*command, *vllm["args"]],
        capture_output=True,
        text=True,
        timeout=120,
        env={
            **base,
            **pod_env,
            "PATH": f"{stubs}:{base.get('PATH', '')}",
            "HF_ENDPOINT": endpoint,
            "ARCHON_DOWNLOAD_LOG_INTERVAL": "0.2",
            "ARCHON_PREFLIGHT_FAILED": str(tmp_path / "run-archon" / "preflight-failed.json"),
            **env,
        },
    )


def test_first_start_logs_progress_then_execs_vllm_and_a_restart_needs_no_hub(
    built: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python: str
) -> None:
    hub = _hub(bytes_per_s=8e6)
    try:
        result = run_start(built, tmp_path, hub.url, python)
    finally:
        hub.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    progress = PROGRESS.findall(out)  # what doctor and a log reader look for
    assert len(progress) >= 3, out
    assert progress[-1].startswith(f"downloading {REPO}: 100.0%"), out
    percents = [float(re.search(r": ([\d.]+)%", p)[1]) for p in progress]
    assert percents == sorted(percents)
    assert any(0 < p < 100 for p in percents), out  # bytes counted while a file downloads
    assert "\r" not in out + result.stderr and "it/s" not in out + result.stderr  # no tqdm bars
    # vLLM exec'd in its place with the manifest's arguments, offline.
    assert f"STUB-EXEC {' '.join(built['vllm']['args'][2:])}" in out
    assert "STUB-ENV HF_HUB_OFFLINE=1" in out
    snapshot = tmp_path / "models/hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert (snapshot / fake_hub.COMMIT / "model.safetensors").read_bytes() == WEIGHTS
    # The cache is complete as Archon's own puller marks it: the preflight sizes from it, and
    # vLLM's HF_HUB_OFFLINE lookup of refs/main finds the snapshot.
    from archon.modelserver import models

    monkeypatch.setenv("HF_HOME", str(tmp_path / "models"))
    assert models.cached_repo(models.HubRepo(REPO, "main")) == snapshot / fake_hub.COMMIT

    # A restart (the hub now unreachable) starts vLLM at once from the cache.
    again = run_start(built, tmp_path, _closed_port_url(), python)
    assert again.returncode == 0, again.stderr
    assert f"llm_model {REPO} is already available" in again.stdout
    assert not PROGRESS.findall(again.stdout)
    assert "STUB-EXEC" in again.stdout


def test_a_dropped_connection_is_retried(
    built: dict[str, Any], tmp_path: Path, python: str
) -> None:
    """The transfer breaks once: the download goes on (huggingface_hub < 1, as in the vLLM
    image, resumes the .incomplete blob with a Range request; newer releases may restart the
    file) and vLLM starts."""
    hub = _hub(drop_after=1024 * 1024)
    try:
        result = run_start(built, tmp_path, hub.url, python)
    finally:
        hub.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(hub.ranges) >= 3, hub.ranges  # config.json, the broken transfer, its retry
    snapshot = tmp_path / "models/hub" / f"models--{REPO.replace('/', '--')}" / "snapshots"
    assert (snapshot / fake_hub.COMMIT / "model.safetensors").read_bytes() == WEIGHTS
    assert "STUB-EXEC" in result.stdout


@pytest.mark.parametrize(
    ("case", "code", "words"),
    [
        ("typo, no token", 4, ["not found on the hub (HTTP 401 RepoNotFound", "check the"]),
        ("typo, token", 4, ["not found on the hub (HTTP 404 RepoNotFound"]),
        ("gated, no token", 4, ["a gated repository (HTTP 401 GatedRepo", "set HF_TOKEN"]),
        ("gated, token", 4, ["a gated repository (HTTP 403 GatedRepo", "token of that account"]),
        ("network", 7, ["is unreachable", "HF_ENDPOINT"]),
        ("disk full", 8, ["free", "model-cache"]),
        ("preflight: does not fit", 5, ["needs 14.2 GiB per GPU"]),
    ],
)
def test_a_failed_start_ends_with_its_reason_and_exit_code(
    built: dict[str, Any], tmp_path: Path, case: str, code: int, words: list[str], python: str
) -> None:
    """What `kubectl logs -l app=vllm --previous` shows after each kind of failed start."""
    hub = _hub()
    env: dict[str, str] = {}
    endpoint = hub.url
    if case.startswith("typo"):
        env["ARCHON_LLM_MODEL"] = "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int5"
    if case.startswith("gated"):
        hub.gated.add(REPO)
    if case.endswith(", token"):
        env["HF_TOKEN"] = "hf_test"
    if case == "network":
        endpoint = _closed_port_url()
    if case == "disk full":
        hub.claimed_sizes[f"{REPO}/model.safetensors"] = 10**18
    if case.startswith("preflight"):
        endpoint = _closed_port_url()  # decided before any download
        (tmp_path / "run-archon").mkdir()
        (tmp_path / "run-archon" / "preflight-failed.json").write_text(
            '{"exit_code": 5, "message": "llm_model \'Qwen/...\' needs 14.2 GiB per GPU"}'
        )
    try:
        result = run_start(built, tmp_path, endpoint, python, **env)
    finally:
        hub.stop()
    assert result.returncode == code, result.stdout + result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("archon: error: "), result.stderr
    for word in words:
        assert word in last, last
    assert "Traceback" not in result.stderr
    assert "STUB-EXEC" not in result.stdout
