from __future__ import annotations

from pathlib import Path

import pytest

from archon.errors import ConfigError
from archon.modelserver.settings import (
    ModelServerSettings,
    load_model_server_settings,
    read_configmap,
)


def write_cm(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "cm.yaml"
    path.write_text(body)
    return path


def test_flags_override_env_override_configmap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cm = write_cm(tmp_path, 'data:\n  max_model_len: "1024"\n  parallel: "3"\n  port: "9000"\n')
    monkeypatch.setenv("ARCHON_PARALLEL", "5")
    s = load_model_server_settings(cm, {"port": 9100})
    assert (s.max_model_len, s.parallel, s.port) == (1024, 5, 9100)


def test_vllm_config_keys_are_read_and_typed(tmp_path: Path) -> None:
    cm = write_cm(
        tmp_path,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: vllm-config}\ndata:\n"
        '  llm_model: "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4"\n'
        '  gpu_memory_utilization: "0.90"\n'
        '  max_model_len: "8192"\n'
        '  tensor_parallel_size: "1"\n'
        '  quantization: "GPTQ"\n',
    )
    s = load_model_server_settings(cm)
    assert s.llm_model == "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int4"
    assert s.gpu_memory_utilization == 0.9
    assert s.max_model_len == 8192
    assert s.quantization == "gptq"


@pytest.mark.parametrize("value", ["", "null", "None", "none"])
def test_quantization_none_spellings(value: str) -> None:
    assert ModelServerSettings(quantization=value).quantization == "none"


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ('  gpu_memory_utilization: "0"\n', "gpu_memory_utilization"),
        ('  gpu_memory_utilization: "1.01"\n', "gpu_memory_utilization"),
        ('  tensor_parallel_size: "-1"\n', "tensor_parallel_size"),
        ('  quantization: "int3"\n', "unknown quantization 'int3'"),
        ('  max_model_len: "8"\n', "max_model_len"),
        ('  llm_model: "  "\n', "llm_model"),
        ('  port: "70000"\n', "port"),
        ('  cpu_repack: "maybe"\n', "cpu_repack"),
    ],
)
def test_bad_values_name_the_setting_and_where_to_set_it(
    tmp_path: Path, data: str, needle: str
) -> None:
    cm = write_cm(tmp_path, "data:\n" + data)
    with pytest.raises(ConfigError) as info:
        load_model_server_settings(cm)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert "ARCHON_" in message and "cm.yaml" in message


def test_unknown_configmap_key_lists_the_known_ones(tmp_path: Path) -> None:
    cm = write_cm(tmp_path, 'data:\n  llm_modle: "x"\n')
    with pytest.raises(ConfigError, match=r"unknown key data\.llm_modle; known keys: llm_model"):
        read_configmap(cm)


@pytest.mark.parametrize(
    ("body", "needle"),
    [("data: [1, 2]\n", "expected a ConfigMap"), ("data: {\n", "not valid YAML"), ("", "expected")],
)
def test_malformed_configmap_files(tmp_path: Path, body: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        read_configmap(write_cm(tmp_path, body))


def test_missing_configmap_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        read_configmap(tmp_path / "nope.yaml")


def test_cpu_repack_from_the_configmap_and_the_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cm = write_cm(tmp_path, 'data:\n  cpu_repack: "on"\n')
    assert load_model_server_settings(cm).cpu_repack == "on"
    monkeypatch.setenv("ARCHON_CPU_REPACK", "off")
    assert load_model_server_settings(cm).cpu_repack == "off"
    assert load_model_server_settings().cpu_repack == "off"
    monkeypatch.delenv("ARCHON_CPU_REPACK")
    assert load_model_server_settings().cpu_repack == "auto"
