"""The GPU path without a GPU: config check, model pull, preflight and the vLLM command line
(the sizing arithmetic itself: tests/unit/test_sizing.py)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from archon.errors import DiskFullError
from tests.support import fake_hub
from tests.support.servers import free_port, run_cli

QWEN14_GPTQ = "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4"
QWEN14 = "Qwen/Qwen2.5-Coder-14B-Instruct"
QWEN7_GPTQ = "Qwen/Qwen2.5-Coder-7B-Instruct-GPTQ-Int4"
LLAMA8 = "meta-llama/Llama-3.1-8B-Instruct"


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[fake_hub.FakeHub]:
    files = fake_hub.load_tree(fake_hub.MODEL_FACTS)
    # A small model repository to pull: weights, tokenizer, and files a pull must skip.
    weights = os.urandom(6_000_000)
    files.update(
        {
            "acme/tiny-llm/config.json": fake_hub.HubFile(b'{"model_type": "llama"}'),
            "acme/tiny-llm/model.safetensors": fake_hub.HubFile(weights),
            "acme/tiny-llm/tokenizer.json": fake_hub.HubFile(b"{}"),
            "acme/tiny-llm/original/consolidated.pth": fake_hub.HubFile(b"x" * 1000),
            "acme/tiny-llm/tiny.Q4_K_M.gguf": fake_hub.HubFile(b"GGUF" + b"\0" * 1000),
        }
    )
    server = fake_hub.FakeHub(files).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    yield server
    server.stop()


def configmap(tmp_path: Path, **data: str) -> Path:
    path = tmp_path / "vllm-config.yaml"
    lines = "\n".join(f'  {k}: "{v}"' for k, v in data.items())
    path.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: vllm-config\n"
        f"  namespace: archon-system\ndata:\n{lines}\n"
    )
    return path


# ---- config check on real model configs ----


@pytest.mark.parametrize(
    ("model", "util", "max_len", "memory", "fits"),
    [
        (QWEN14_GPTQ, "0.90", "8192", "16GiB", True),  # the operations guide's default
        (QWEN14, "0.90", "8192", "16GiB", False),  # the same model unquantised
        (QWEN7_GPTQ, "0.90", "8192", "16GiB", True),
        (LLAMA8, "0.90", "8192", "24GiB", True),
    ],
)
def test_config_check_on_real_models(
    tmp_path: Path, hub, model: str, util: str, max_len: str, memory: str, fits: bool
) -> None:
    cm = configmap(
        tmp_path,
        llm_model=model,
        gpu_memory_utilization=util,
        max_model_len=max_len,
        tensor_parallel_size="1",
        quantization="none",
    )
    result = run_cli(
        "config",
        "check",
        "--gpu-memory",
        memory,
        str(cm),
        env={"HF_ENDPOINT": hub.url, "COLUMNS": "200"},
    )
    assert result.returncode == (0 if fits else 5), result.stdout + result.stderr
    assert "weights" in result.stdout and "KV cache for max_model_len" in result.stdout
    if fits:
        assert "fits: room for" in result.stdout
    else:
        assert "does not fit" in result.stdout
        assert "quantized variant" in result.stdout
        assert "spread it over 4 GPUs" in result.stdout


def test_config_check_without_gpu_or_flag_says_what_to_pass(tmp_path: Path, hub) -> None:
    cm = configmap(tmp_path, llm_model=QWEN7_GPTQ)
    result = run_cli("config", "check", str(cm), env={"HF_ENDPOINT": hub.url})
    assert result.returncode == 2
    assert "--gpu-memory" in result.stderr


def test_config_check_unknown_model_is_exit_4(tmp_path: Path, hub) -> None:
    cm = configmap(tmp_path, llm_model="Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int5")
    result = run_cli(
        "config", "check", "--gpu-memory", "16GiB", str(cm), env={"HF_ENDPOINT": hub.url}
    )
    assert result.returncode == 4
    assert "Qwen2.5-Coder-14B-Instruct-GPTQ-Int5" in result.stderr


# ---- archon model pull ----


def test_model_pull_downloads_what_vllm_needs_and_returns_at_once_when_cached(
    tmp_path: Path, hub
) -> None:
    env = {
        "HF_ENDPOINT": hub.url,
        "HF_HOME": str(tmp_path / "hf"),
        "ARCHON_DOWNLOAD_LOG_INTERVAL": "0.2",
    }
    hub.bytes_per_s = 10e6  # ~0.6 s: several progress lines
    result = run_cli("model", "pull", "acme/tiny-llm", env=env)
    assert result.returncode == 0, result.stderr
    snapshot = Path(result.stdout.strip())
    assert snapshot == tmp_path / "hf/hub/models--acme--tiny-llm/snapshots" / fake_hub.COMMIT
    names = sorted(p.name for p in snapshot.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json"]
    assert (snapshot / "model.safetensors").read_bytes() == hub.files[
        "acme/tiny-llm/model.safetensors"
    ].data
    lines = [line for line in result.stderr.splitlines() if "downloading acme/tiny-llm" in line]
    assert lines and re.search(r"\d+\.\d% \(.+\) [\d.]+ MB/s ETA", lines[0])
    assert "100.0%" in lines[-1]
    # Cached: no hub needed at all.
    hub.stop()
    again = run_cli("model", "pull", "acme/tiny-llm", env=env, timeout=20)
    assert again.returncode == 0, again.stderr
    assert "already available" in again.stderr


def test_model_pull_resumes_after_a_broken_connection(tmp_path: Path, hub) -> None:
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf")}
    hub.drop_after = 2_500_000
    result = run_cli("model", "pull", "acme/tiny-llm", env=env)
    assert result.returncode == 0, result.stderr
    assert "download interrupted" in result.stderr
    resumed = [r for r in hub.ranges if r]
    assert resumed and 2_000_000 <= int(resumed[0].split("=")[1].rstrip("-")) <= 2_500_000
    snapshot = Path(result.stdout.strip())
    assert (snapshot / "model.safetensors").read_bytes() == hub.files[
        "acme/tiny-llm/model.safetensors"
    ].data


def test_offline_mode_with_an_empty_cache_is_a_clear_error(tmp_path: Path, hub) -> None:
    result = run_cli(
        "model",
        "pull",
        "acme/tiny-llm",
        env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 4
    assert "HF_HUB_OFFLINE" in result.stderr
    assert not hub.ranges  # nothing was fetched


@pytest.mark.parametrize(
    ("reference", "env_endpoint", "code", "needle"),
    [
        ("acme/no-such-model", None, 4, "not found on the hub"),
        ("acme", None, 4, "not a hub repository id"),
        ("acme/tiny-llm", "unreachable", 7, "unreachable"),
    ],
)
def test_model_pull_exit_codes(
    tmp_path: Path, hub, reference: str, env_endpoint: str | None, code: int, needle: str
) -> None:
    endpoint = f"http://127.0.0.1:{free_port()}" if env_endpoint else hub.url
    result = run_cli(
        "model", "pull", reference, env={"HF_ENDPOINT": endpoint, "HF_HOME": str(tmp_path / "hf")}
    )
    assert result.returncode == code, result.stderr
    assert needle in result.stderr
    assert "Traceback" not in result.stderr


def test_model_pull_refuses_when_the_disk_is_too_small(
    tmp_path: Path, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from archon.modelserver import models

    real = shutil.disk_usage

    def tiny(path):  # the cache volume has 1 MB free
        usage = real(path)
        return type(usage)(usage.total, usage.total - 1_000_000, 1_000_000)

    monkeypatch.setattr("archon.modelserver.hub.shutil.disk_usage", tiny)
    with pytest.raises(DiskFullError) as info:
        models.pull("acme/tiny-llm")
    assert info.value.exit_code == 8
    assert "free" in str(info.value)
    assert not list((tmp_path / "hf").rglob("*.incomplete"))


# ---- archon serve --engine vllm ----


def test_dry_run_builds_the_vllm_command_from_the_configmap(tmp_path: Path) -> None:
    cm = configmap(
        tmp_path,
        llm_model=QWEN14_GPTQ,
        gpu_memory_utilization="0.90",
        max_model_len="8192",
        tensor_parallel_size="1",
        quantization="gptq_marlin",
        served_model_name="coder",
    )
    result = run_cli(
        "serve", "--engine", "vllm", "--config", str(cm), "--host", "0.0.0.0", "--dry-run"
    )
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert argv[3:] == [
        "--model",
        QWEN14_GPTQ,
        "--served-model-name",
        "coder",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
        "--gpu-memory-utilization",
        "0.9",
        "--tensor-parallel-size",
        "1",
        "--max-model-len",
        "8192",
        "--quantization",
        "gptq_marlin",
    ]


def test_dry_run_leaves_out_quantization_none_and_hides_the_api_key(tmp_path: Path) -> None:
    cm = configmap(
        tmp_path,
        llm_model=QWEN7_GPTQ,
        quantization="none",
        vllm_extra_args="--enable-prefix-caching --max-num-seqs 64",
    )
    result = run_cli(
        "serve",
        "--engine",
        "vllm",
        "--config",
        str(cm),
        "--dry-run",
        env={"ARCHON_API_KEY": "s3cret"},
    )
    assert result.returncode == 0, result.stderr
    assert "--quantization" not in result.stdout
    assert "s3cret" not in result.stdout and "VLLM_API_KEY=***" in result.stdout
    assert result.stdout.strip().endswith("--enable-prefix-caching --max-num-seqs 64")


def preflight(tmp_path: Path, cm: Path, out: Path, hub) -> subprocess.CompletedProcess:
    """`archon serve --engine vllm`'s pull, sizing and preflight against a 16 GiB GPU, writing
    the vLLM config to ``out`` when it passes."""
    return run_cli(
        "serve",
        "--engine",
        "vllm",
        "--config",
        str(cm),
        "--write-vllm-config",
        str(out),
        env={"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf"), "ARCHON_GPU_MEMORY": "16GiB"},
    )


def test_vram_preflight_stops_a_model_that_cannot_fit(tmp_path: Path, hub) -> None:
    cm = configmap(tmp_path, llm_model=QWEN14, gpu_memory_utilization="0.90", max_model_len="8192")
    # Only config.json is on the stand-in hub for this model: pull it, then size it.
    result = preflight(tmp_path, cm, tmp_path / "vllm.yaml", hub)
    assert result.returncode == 5, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "gpu_memory_utilization 0.9 x 16.00 GiB" in line and "quantized variant" in line
    assert not (tmp_path / "vllm.yaml").exists()


def test_preflight_passes_and_writes_vllm_config(tmp_path: Path, hub) -> None:
    cm = configmap(
        tmp_path,
        llm_model=QWEN14_GPTQ,
        gpu_memory_utilization="0.90",
        max_model_len="8192",
        quantization="none",
    )
    out = tmp_path / "run" / "vllm.yaml"
    result = preflight(tmp_path, cm, out, hub)
    assert result.returncode == 0, result.stderr
    assert "VRAM check passed" in result.stderr
    import yaml

    assert yaml.safe_load(out.read_text()) == {
        "model": QWEN14_GPTQ,
        "served-model-name": QWEN14_GPTQ,
        "host": "127.0.0.1",
        "port": "8000",
        "gpu-memory-utilization": "0.9",
        "tensor-parallel-size": "1",
        "max-model-len": "8192",
    }


def test_missing_vllm_is_exit_9(tmp_path: Path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    result = run_cli(
        "serve",
        "--engine",
        "vllm",
        "--llm-model",
        str(model_dir),
    )
    assert result.returncode == 9, result.stderr
    assert "vLLM is not installed" in result.stderr
