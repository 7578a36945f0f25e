"""Starting the server: configuration sources, model resolution, hub downloads, readiness."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.support import fake_hub
from tests.support.servers import free_port, port_open, run_cli, start_server

REPO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_bad_model_path_exits_before_binding(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli("serve", "--port", str(port), "--llm-model", "/nowhere/model.gguf")
    assert result.returncode == 4
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "llm_model '/nowhere/model.gguf'" in lines[0]
    assert "Traceback" not in result.stderr
    assert not port_open(port)


def test_typo_in_bundled_name_exits_with_clear_line() -> None:
    result = run_cli("serve", "--port", str(free_port()), "--llm-model", "smollm2-135m-instrct")
    assert result.returncode == 4
    assert "llm_model 'smollm2-135m-instrct'" in result.stderr
    assert "smollm2-135m-instruct" in result.stderr  # names what does exist


def test_not_a_gguf_file_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "model.gguf"
    fake.write_text("<html>not a model</html>")
    result = run_cli("serve", "--port", str(free_port()), "--llm-model", str(fake))
    assert result.returncode == 4
    assert "is not a GGUF file" in result.stderr


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"gpu_memory_utilization": "1.5"}, "gpu_memory_utilization"),
        ({"tensor_parallel_size": "0"}, "tensor_parallel_size"),
        ({"quantization": "int3"}, "quantization"),
        ({"max_model_len": "lots"}, "max_model_len"),
        ({"llm_modle": "x"}, "data.llm_modle"),
    ],
)
def test_bad_configmap_values_name_the_setting(tmp_path: Path, data, needle) -> None:
    cm = tmp_path / "cm.yaml"
    lines = "\n".join(f'  {k}: "{v}"' for k, v in data.items())
    cm.write_text(
        f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vllm-config\ndata:\n{lines}\n"
    )
    port = free_port()
    result = run_cli("serve", "--port", str(port), "--config", str(cm))
    assert result.returncode == 2, result.stderr
    assert needle in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not port_open(port)


def test_bad_env_value_names_the_variable() -> None:
    result = run_cli("serve", "--port", str(free_port()), env={"ARCHON_PARALLEL": "0"})
    assert result.returncode == 2
    assert "ARCHON_PARALLEL" in result.stderr


def test_configmap_drives_the_server(tmp_path: Path, bundled_model_path: Path) -> None:
    cm = tmp_path / "vllm-config.yaml"
    cm.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vllm-config\n"
        "  namespace: archon-system\ndata:\n"
        f'  llm_model: "{bundled_model_path}"\n'
        '  gpu_memory_utilization: "0.85"\n'
        '  max_model_len: "1024"\n'
        '  tensor_parallel_size: "1"\n'
        '  quantization: "awq"\n'
        '  served_model_name: "team-model"\n'
    )
    srv = start_server(tmp_path, "--config", str(cm))
    try:
        srv.wait_ready()
        card = httpx.get(f"{srv.url}/v1/models").json()["data"][0]
        assert card["id"] == "team-model"
        assert card["max_model_len"] == 1024
        reply = httpx.post(
            f"{srv.url}/v1/completions",
            json={"model": "team-model", "prompt": "Hello", "max_tokens": 3},
            timeout=30,
        )
        assert reply.status_code == 200
        too_long = httpx.post(
            f"{srv.url}/v1/completions",
            json={"model": "team-model", "prompt": "Hello", "max_tokens": 1100},
        )
        assert too_long.status_code == 400
        log = srv.log()
        for key in ("gpu_memory_utilization=0.85", "tensor_parallel_size=1", "quantization=awq"):
            assert f"{key} is validated but ignored by the CPU engine" in log
    finally:
        srv.stop()


@pytest.fixture
def hub(bundled_model_path: Path):
    hub = fake_hub.FakeHub({f"test-org/smol/{REPO_FILE}": fake_hub.load(bundled_model_path)})
    hub.start()
    yield hub
    hub.stop()


def test_hub_download_reports_progress_then_serves(tmp_path: Path, hub) -> None:
    hub.bytes_per_s = 40e6  # ~2.5 s for the 98 MB file: long enough to watch
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    srv = start_server(
        tmp_path,
        "--llm-model",
        f"test-org/smol:{REPO_FILE}",
        env={**env, "ARCHON_DOWNLOAD_LOG_INTERVAL": "0.5"},
    )
    try:
        srv.wait_listening()
        seen = []
        chat_while_loading = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            r = httpx.get(f"{srv.url}/health")
            seen.append((r.status_code, r.json()))
            if r.status_code == 200:
                break
            if chat_while_loading is None and r.json().get("phase") == "downloading":
                chat_while_loading = httpx.post(
                    f"{srv.url}/v1/completions",
                    json={"model": f"test-org/smol:{REPO_FILE}", "prompt": "a"},
                )
            time.sleep(0.1)
        assert seen[-1][0] == 200
        loading = [body for status, body in seen if status == 503]
        assert loading and all(b["status"] == "loading" for b in loading)
        progress = [
            b["progress"] for b in loading if b.get("phase") == "downloading" and "progress" in b
        ]
        assert progress and 0 < min(progress) < 1
        assert progress == sorted(progress)
        assert chat_while_loading is not None and chat_while_loading.status_code == 503
        assert chat_while_loading.json()["error"]["code"] == "model_loading"
        log = srv.log()
        assert "MB/s" in log and "ETA" in log and "%" in log
        # The file sits in the Hugging Face cache layout, linked from the snapshot.
        snapshot = (
            tmp_path / "hf/hub/models--test-org--smol/snapshots" / fake_hub.COMMIT / REPO_FILE
        )
        assert snapshot.is_symlink() and snapshot.resolve().stat().st_size > 90_000_000
        reply = httpx.post(
            f"{srv.url}/v1/completions",
            json={"model": f"test-org/smol:{REPO_FILE}", "prompt": "Hi", "max_tokens": 2},
            timeout=30,
        )
        assert reply.status_code == 200
    finally:
        srv.stop()
    # A second start finds the file in the cache and needs no hub at all.
    hub.stop()
    again = start_server(tmp_path, "--llm-model", f"test-org/smol:{REPO_FILE}", env=env)
    try:
        again.wait_ready()
    finally:
        again.stop()


def test_hub_download_resumes_partial_file(
    tmp_path: Path, hub, bundled_model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from archon.modelserver.models import resolve

    hf_home = tmp_path / "hf"
    blob_dir = hf_home / "hub/models--test-org--smol/blobs"
    blob_dir.mkdir(parents=True)
    entry = hub.files[f"test-org/smol/{REPO_FILE}"]
    # A previous run stopped after 30 MB.
    (blob_dir / f"{entry.sha256}.incomplete").write_bytes(entry.data[:30_000_000])
    # And this run's connection breaks once more after another 20 MB.
    hub.drop_after = 20_000_000
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    model = resolve(f"test-org/smol:{REPO_FILE}")
    assert model.download is not None
    fractions: list[float] = []
    model.download.fetch(on_progress=lambda p: fractions.append(p.fraction or 0), log_interval=0.1)
    path = model.path
    assert hub.ranges[0] == "bytes=30000000-"
    # The second request picks up where the broken one stopped writing (within its last chunk).
    second = int(hub.ranges[1].removeprefix("bytes=").rstrip("-"))
    assert 48_000_000 < second <= 50_000_000
    assert path.read_bytes() == bundled_model_path.read_bytes()
    assert fractions[-1] == 1.0
    assert not (blob_dir / f"{entry.sha256}.incomplete").exists()


def test_hub_file_not_found_exits_before_binding(tmp_path: Path, hub) -> None:
    port = free_port()
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    result = run_cli(
        "serve", "--port", str(port), "--llm-model", "test-org/smol:missing.gguf", env=env
    )
    assert result.returncode == 4
    assert "llm_model 'test-org/smol:missing.gguf'" in result.stderr
    assert "not found on the hub" in result.stderr
    assert not port_open(port)


def test_unreachable_hub_is_a_clear_error(tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf")}
    result = run_cli("serve", "--port", str(free_port()), "--llm-model", "org/repo:m.gguf", env=env)
    assert result.returncode == 7
    assert "unreachable" in result.stderr and "HF_ENDPOINT" in result.stderr


def test_repo_without_file_says_what_to_write() -> None:
    result = run_cli(
        "serve", "--port", str(free_port()), "--llm-model", "Qwen/Qwen2.5-0.5B-Instruct"
    )
    assert result.returncode == 4
    assert "Qwen/Qwen2.5-0.5B-Instruct:FILE.gguf" in result.stderr


def test_max_model_len_beyond_model_exits_after_load(tmp_path: Path) -> None:
    port = free_port()
    result = run_cli("serve", "--port", str(port), "--max-model-len", "999999", timeout=120)
    assert result.returncode == 3
    assert "max_model_len 999999 is larger than the model's context length" in result.stderr
    assert "Traceback" not in result.stderr
