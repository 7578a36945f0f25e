"""The GPU path's speculative decoding: ConfigMap keys -> `--speculative-config` (vLLM's ngram
method) in the launch and in the `--config` file the preflight writes, read by the real vLLM
argument parser of .venv-vllm (the version the manifests pin) into its SpeculativeConfig."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from archon.modelserver.launch import build_vllm_launch
from archon.modelserver.settings import load_model_server_settings

ROOT = Path(__file__).resolve().parents[2]
VLLM_PYTHON = ROOT / ".venv-vllm" / "bin" / "python"

CONFIGMAP = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: vllm-config
data:
  llm_model: Qwen/Qwen2.5-0.5B-Instruct
  engine: vllm
  speculative: "true"
  speculative_tokens: "5"
  speculative_ngram_max: "4"
  speculative_ngram_min: "2"
"""

EXPECTED = {
    "method": "ngram",
    "num_speculative_tokens": 5,
    "prompt_lookup_max": 4,
    "prompt_lookup_min": 2,
}


def _launch_args(tmp_path: Path, extra: dict[str, str] | None = None) -> list[str]:
    path = tmp_path / "configmap.yaml"
    path.write_text(CONFIGMAP)
    return build_vllm_launch(load_model_server_settings(path, extra)).args


def test_configmap_keys_become_speculative_config(tmp_path: Path) -> None:
    args = _launch_args(tmp_path)
    assert json.loads(args[args.index("--speculative-config") + 1]) == EXPECTED
    off = build_vllm_launch(load_model_server_settings(None, {"llm_model": "x"})).args
    assert "--speculative-config" not in off  # off unless asked for


def test_speculative_config_in_extra_args_wins(tmp_path: Path) -> None:
    own = """--speculative-config '{"method":"ngram","num_speculative_tokens":2}'"""
    args = _launch_args(tmp_path, {"vllm_extra_args": own})
    assert args.count("--speculative-config") == 1
    assert json.loads(args[args.index("--speculative-config") + 1])["num_speculative_tokens"] == 2


def test_ngram_min_above_max_is_refused(tmp_path: Path) -> None:
    from archon.errors import ConfigError

    with pytest.raises(ConfigError, match="speculative_ngram_min"):
        load_model_server_settings(None, {"speculative_ngram_min": 4, "speculative_ngram_max": 2})


@pytest.mark.skipif(
    not VLLM_PYTHON.exists(), reason="no .venv-vllm: run scripts/setup-vllm-venv.sh"
)
def test_real_vllm_reads_it_from_argv_and_from_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "configmap.yaml"
    path.write_text(CONFIGMAP)
    launch = build_vllm_launch(load_model_server_settings(path))
    config = tmp_path / "vllm-config.yaml"
    config.write_text(launch.config_yaml())  # what --write-vllm-config writes
    probe = f"""
import dataclasses, json
from vllm.config import SpeculativeConfig
from vllm.engine.arg_utils import EngineArgs
from vllm.entrypoints.launchers.cli_args import make_arg_parser
from vllm.utils.argparse_utils import FlexibleArgumentParser
def spec(argv):
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    return EngineArgs.from_cli_args(args).speculative_config
fields = {{f.name for f in dataclasses.fields(SpeculativeConfig)}}
print(json.dumps([spec({launch.args!r}), spec(["--config", {str(config)!r}]), sorted(fields)]))
"""
    result = subprocess.run(
        [str(VLLM_PYTHON), "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    from_argv, from_file, fields = json.loads(result.stdout.strip().splitlines()[-1])
    assert from_argv == from_file == EXPECTED
    assert set(EXPECTED) <= set(fields)  # every key is a SpeculativeConfig field at this pin
