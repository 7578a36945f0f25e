"""Settings of `archon serve` (`ARCHON_*`), and the ConfigMap keys it reads.

The model server can also read a Kubernetes ConfigMap YAML whose ``data`` uses the keys of the
``vllm-config`` ConfigMap, so one ConfigMap drives the CPU and the GPU engine alike.
Precedence, highest first: command-line flags, ``ARCHON_*`` environment, ConfigMap, defaults.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from archon.modelserver import quantization
from archon.settings import load_settings
from archon.settings import read_configmap as read_configmap_with

CpuRepack = Literal["auto", "on", "off"]  # see engines/llamacpp_native.use_repack
# How the served GGUF's token vectors become one embedding (llama.cpp's llama_pooling_type);
# "model": as the GGUF declares (modelserver/embeddings_gguf.py).
Pooling = Literal["model", "none", "mean", "cls", "last"]

# vLLM's --quantization choices that a vllm-config ConfigMap may name; "none" means no flag.
QUANTIZATION_METHODS = frozenset(quantization.METHODS)

DEFAULT_MODEL = "smollm2-135m-instruct"


class ModelServerSettings(BaseSettings):
    """Settings of ``archon serve``."""

    model_config = SettingsConfigDict(env_prefix="ARCHON_", extra="forbid")

    llm_model: str = Field(
        DEFAULT_MODEL,
        description="Bundled model name, path to a .gguf file, or 'org/repo:file.gguf' on the hub.",
    )
    served_model_name: str | None = Field(
        None, description="Name clients use in 'model'; defaults to a name derived from llm_model."
    )
    engine: Literal["llamacpp", "vllm"] = Field(
        "llamacpp", description="llamacpp (CPU, embedded) or vllm (GPU: preflight, then exec)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_model_len: int | None = Field(
        None, ge=16, description="Context per sequence (prompt + output); default min(model, 4096)."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    quantization: str = "none"
    parallel: int = Field(4, ge=1, le=256, description="Sequences decoded together (slots).")
    threads: int | None = Field(None, ge=1, le=1024, description="CPU threads; default all cores.")
    batch_size: int = Field(
        256, ge=16, le=8192, description="Tokens per decode step; bounds a prefill chunk."
    )
    max_waiting: int = Field(
        512, ge=0, description="Requests allowed to wait for a slot before 503; 0 = no limit."
    )
    cpu_repack: CpuRepack = Field(
        "auto",
        description="llama.cpp's repacked weight layouts (its AMX and CPU_REPACK buffers). auto: "
        "off when the llama.cpp build uses AMX, whose kernels crash on the first prompt on "
        "virtualised Sapphire/Granite Rapids (ggml-org/llama.cpp#20824), else on.",
    )
    speculative: bool = Field(
        False,
        description="Prompt-lookup (n-gram) speculative decoding: drafts the next tokens from "
        "text already in the prompt or output and verifies them in one batch, no draft model. "
        "CPU engine: Archon's own; vllm: vLLM's ngram method (--speculative-config).",
    )
    speculative_tokens: int = Field(
        4,
        ge=1,
        le=16,
        description="Draft length: tokens guessed per step (vLLM's num_speculative_tokens).",
    )
    speculative_ngram_max: int = Field(
        3, ge=1, le=16, description="Longest n-gram looked up (vLLM's prompt_lookup_max)."
    )
    speculative_ngram_min: int = Field(
        2, ge=1, le=16, description="Shortest n-gram looked up (vLLM's prompt_lookup_min)."
    )
    max_request_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    download_log_interval: float = Field(5.0, gt=0.0, le=10.0)
    api_key: SecretStr | None = Field(
        None, description="vLLM engine: clients must send it as a Bearer token."
    )
    vllm_python: str | None = Field(
        None, description="Python interpreter that has vLLM installed; default: this one."
    )
    vllm_extra_args: str = Field("", description="More vLLM flags, shell-quoted.")
    gpu_memory: str | None = Field(
        None, description="Total GPU memory for preflight when NVML cannot tell, e.g. 16GiB."
    )
    embedding_model: str = Field(
        "auto",
        description="The embedding model served by name on /v1/embeddings besides the GGUF: "
        "all-MiniLM-L6-v2 (bundled) or a sentence-transformers directory; auto: the bundled "
        "MiniLM when the kb extra is installed; none: only the GGUF's own embeddings.",
    )
    llm_pooling: Pooling = Field(
        "model",
        description="Pooling of the GGUF's own embeddings: model (as the GGUF declares; a chat "
        "model declares none and its embeddings are refused, as llama-server does), mean, "
        "cls, last, or none.",
    )

    @field_validator("quantization", mode="before")
    @classmethod
    def _quantization(cls, value: Any) -> str:
        text = "none" if value is None else str(value).strip().lower()
        if text in ("", "null"):
            text = "none"
        if text not in QUANTIZATION_METHODS:
            allowed = ", ".join(sorted(QUANTIZATION_METHODS))
            raise ValueError(f"unknown quantization {value!r}; one of: {allowed}")
        return text

    @field_validator("llm_model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("gpu_memory")
    @classmethod
    def _gpu_memory(cls, value: str | None) -> str | None:
        if value is not None:
            parse_bytes(value)
        return value

    @field_validator("vllm_extra_args")
    @classmethod
    def _extra_args(cls, value: str) -> str:
        shlex.split(value)  # raises ValueError on unbalanced quotes
        return value

    @model_validator(mode="after")
    def _ngram_sizes(self) -> ModelServerSettings:
        if self.speculative_ngram_min > self.speculative_ngram_max:
            raise ValueError(
                f"speculative_ngram_min ({self.speculative_ngram_min}) is above "
                f"speculative_ngram_max ({self.speculative_ngram_max})"
            )
        return self

    def vllm_speculative_config(self) -> dict[str, Any] | None:
        """vLLM's --speculative-config for these settings (its ngram method), or None."""
        if not self.speculative:
            return None
        return {
            "method": "ngram",
            "num_speculative_tokens": self.speculative_tokens,
            "prompt_lookup_max": self.speculative_ngram_max,
            "prompt_lookup_min": self.speculative_ngram_min,
        }

    @property
    def effective_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


# GPU memory is sold and reported in binary units even when written "GB": 1 GB here = 2**30.
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str) -> int:
    """'16GiB', '24GB', '16Gi', '512MiB', '1e9' -> bytes (K/M/G/T are powers of 1024)."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]i?)?b?\s*", text.lower())
    if not match:
        raise ValueError(f"not a size: {text!r} (write e.g. 16GiB or 24GB)")
    return int(float(match[1]) * _UNITS[(match[2] or "").rstrip("i")])


# ConfigMap keys -> settings fields. The first five are the vllm-config keys.
CONFIGMAP_KEYS = {
    "llm_model": "llm_model",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "max_model_len": "max_model_len",
    "tensor_parallel_size": "tensor_parallel_size",
    "quantization": "quantization",
    "served_model_name": "served_model_name",
    "host": "host",
    "port": "port",
    "parallel": "parallel",
    "threads": "threads",
    "batch_size": "batch_size",
    "cpu_repack": "cpu_repack",
    "engine": "engine",
    "vllm_extra_args": "vllm_extra_args",
    "embedding_model": "embedding_model",
    "llm_pooling": "llm_pooling",
    "speculative": "speculative",
    "speculative_tokens": "speculative_tokens",
    "speculative_ngram_max": "speculative_ngram_max",
    "speculative_ngram_min": "speculative_ngram_min",
}


def read_configmap(path: Path) -> dict[str, Any]:
    """The model server's values in a ConfigMap file (``CONFIGMAP_KEYS``)."""
    return read_configmap_with(path, CONFIGMAP_KEYS)


def load_model_server_settings(
    config_path: Path | None = None, overrides: dict[str, Any] | None = None
) -> ModelServerSettings:
    """Build settings from flags > env > ConfigMap > defaults; raise ConfigError on bad values."""
    return load_settings(
        ModelServerSettings, overrides, configmap=config_path, configmap_keys=CONFIGMAP_KEYS
    )
