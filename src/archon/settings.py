"""Settings of each service: one pydantic-settings model, env prefix ``ARCHON_``.

The model server can also read a Kubernetes ConfigMap YAML whose ``data`` uses the keys of the
``vllm-config`` ConfigMap, so one ConfigMap drives the CPU and the GPU engine alike.
Precedence, highest first: command-line flags, ``ARCHON_*`` environment, ConfigMap, defaults.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from archon.agent.discovery import DnsTarget
from archon.agent.generation import GenerationSettings, parse_generation
from archon.errors import ConfigError
from archon.modelserver import quantization

# vLLM's --quantization choices that a vllm-config ConfigMap may name; "none" means no flag.
QUANTIZATION_METHODS = frozenset(quantization.METHODS)

DEFAULT_MODEL = "smollm2-135m-instruct"

S = TypeVar("S", bound=BaseSettings)


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
    "engine": "engine",
    "vllm_extra_args": "vllm_extra_args",
}


def read_configmap(path: Path) -> dict[str, Any]:
    """Read a ConfigMap's ``data`` (or a kustomize ConfigMapGenerator's ``literals``)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMapGenerator":
        # manifests/model-server/configmap.yaml: `literals: [key=value, ...]`
        literals = doc.get("literals") or []
        if not all(isinstance(item, str) and "=" in item for item in literals):
            raise ConfigError(f"--config {path}: literals must be 'key=value' strings")
        doc = {"data": dict(item.split("=", 1) for item in literals)}
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ConfigError(f"--config {path}: expected a ConfigMap with a 'data' mapping")
    values: dict[str, Any] = {}
    for key, value in doc["data"].items():
        if key not in CONFIGMAP_KEYS:
            allowed = ", ".join(CONFIGMAP_KEYS)
            raise ConfigError(f"--config {path}: unknown key data.{key}; known keys: {allowed}")
        values[CONFIGMAP_KEYS[key]] = value
    return values


def _explain(exc: ValidationError, source: str) -> str:
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "?"
    where = f"ARCHON_{field.upper()}" + (f" or data.{field} in {source}" if source else "")
    if err["type"] == "extra_forbidden":
        return f"unknown setting {field!r}"
    return f"invalid setting {field} ({where}): {err['msg']}, got {err.get('input')!r}"


def load_model_server_settings(
    config_path: Path | None = None, overrides: dict[str, Any] | None = None
) -> ModelServerSettings:
    """Build settings from flags > env > ConfigMap > defaults; raise ConfigError on bad values."""
    file_values = read_configmap(config_path) if config_path else {}
    source = str(config_path) if config_path else ""
    try:
        from_env = ModelServerSettings()
        env_values = from_env.model_dump(include=from_env.model_fields_set)
        merged = {**file_values, **env_values, **(overrides or {})}
        return ModelServerSettings(**merged)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None


class KnowledgeBaseSettings(BaseSettings):
    """Settings of `archon kb serve` and `archon kb sync`."""

    model_config = SettingsConfigDict(env_prefix="ARCHON_KB_", extra="forbid")

    sources: Path = Field(Path("sources.yaml"), description="The sources file (YAML).")
    data_dir: Path = Field(Path(".archon/kb"), description="Sync state, Git cache, local store.")
    qdrant: str | None = Field(
        None, description="Qdrant URL (server mode); default: embedded at data_dir/qdrant."
    )
    collection: str = "archon-docs"
    embedding_model: str = "all-MiniLM-L6-v2"
    embedding_url: str | None = Field(
        None, description="OpenAI-compatible /v1/embeddings base URL instead of the local model."
    )
    embedding_backend: Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"] = Field(
        "auto",
        description="How the local model runs. auto: torch-bf16 on a CPU with bfloat16 "
        "hardware (AMX or AVX-512 BF16), else onnx-int8; a store of int8 vectors stays int8. "
        "torch-bf16: sentence-transformers with bf16 matrix products, fp32's vectors at 2.4x "
        "onnx-int8's speed where the CPU has bf16 (emulated, slow, where it has not); onnx-int8: "
        "ONNX Runtime, int8 weights (1.4x fp32); onnx: ONNX Runtime fp32; torch: "
        "sentence-transformers fp32. A store keeps one kind of vector: changing between "
        "onnx-int8 and the others needs `kb sync --reindex` (docs/benchmarks.md).",
    )
    host: str = "127.0.0.1"
    port: int = Field(8100, ge=0, le=65535)
    sync_interval: float = Field(
        0.0, ge=0.0, description="Seconds between scheduled syncs in `kb serve`; 0 = none."
    )
    default_top_k: int = Field(5, ge=1, le=50)
    serve_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="CPU threads for embedding in `kb serve` (1 keeps query latency flat; its "
        "syncs then leave the other cores to queries). `kb sync` uses all cores.",
    )
    chunk_max_tokens: int = Field(800, ge=64, le=8192)
    chunk_min_tokens: int = Field(400, ge=0, le=8192)
    rerank_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-style rerank endpoint (vLLM, llama-server "
        "--reranking) that reorders the fused candidates; off when unset.",
    )
    rerank_model: str = Field("", description="The model name sent to the rerank endpoint.")
    rerank_timeout: float = Field(
        2.0, gt=0, description="Seconds to wait for the reranker before keeping the fused order."
    )
    rerank_candidates: int = Field(
        20, ge=1, le=200, description="How many fused candidates the reranker scores."
    )
    chunk_context: bool = Field(
        True,
        description="Index each chunk with its repo and path words besides its heading trail "
        "(tuning half: hybrid nDCG@10 0.831 -> 0.840). Changing it, or the chunk sizes, "
        "re-chunks every file at the next sync.",
    )
    rrf_k: int = Field(
        60, ge=1, le=1000, description="Reciprocal-rank fusion's k: higher flattens the ranks."
    )
    dense_weight: float = Field(
        0.5, ge=0.0, le=1.0, description="The dense retriever's share in fusion (BM25: the rest)."
    )
    fusion_candidates: int = Field(
        4, ge=1, le=50, description="Each retriever contributes top_k times this many chunks."
    )
    document_weight: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Share of a file's other candidates' scores added to each of its chunks.",
    )
    max_request_bytes: int = Field(64 * 1024, ge=1024)

    @property
    def store_location(self) -> str:
        return self.qdrant or str(self.data_dir / "qdrant")


def _load(model: type[S], prefix: str, overrides: dict[str, Any] | None) -> S:
    """Settings from flags (``overrides``; None = not given) > environment > defaults."""
    try:
        return model(**{k: v for k, v in (overrides or {}).items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = str(err["loc"][0]) if err["loc"] else "?"
        raise ConfigError(
            f"invalid setting {field} ({prefix}{field.upper()}): {err['msg']}, "
            f"got {err.get('input')!r}"
        ) from None


def load_kb_settings(overrides: dict[str, Any] | None = None) -> KnowledgeBaseSettings:
    return _load(KnowledgeBaseSettings, "ARCHON_KB_", overrides)


def _split_list(value: Any) -> Any:
    """Accept a list or a comma/space-separated string (env vars, ConfigMap values)."""
    if isinstance(value, str):
        return [item for item in re.split(r"[,\s]+", value.strip()) if item]
    return value


class AgentSettings(BaseSettings):
    """Settings of ``archon agent``, the RAG gateway in front of the model servers."""

    model_config = SettingsConfigDict(env_prefix="ARCHON_AGENT_", extra="forbid")

    upstreams: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://127.0.0.1:8000"],
        description="Model-server base URLs (archon serve or vLLM), comma-separated.",
    )
    kb_url: str | None = Field(
        "http://127.0.0.1:8100",
        description="Knowledge-base base URL; empty turns retrieval off.",
    )
    kb_timeout: float = Field(
        2.0, gt=0, le=60, description="Seconds to wait for the knowledge base before degrading."
    )
    top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved per question.")
    max_context_chars: int = Field(
        6000,
        ge=200,
        description="Characters of retrieved context put in the prompt (about 4 per token).",
    )
    history_turns: int = Field(
        1, ge=0, le=10, description="Earlier user turns added to the retrieval query."
    )
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="API keys (or sha256:<hex> digests), comma-separated."
    )
    api_keys_file: Path | None = Field(
        None, description="File of API keys or sha256:<hex> digests, one per line."
    )
    upstream_api_key: SecretStr | None = Field(
        None, description="Bearer key the agent sends to the model servers (vLLM --api-key)."
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    health_interval: float = Field(
        5.0, gt=0, le=300, description="Seconds between upstream health checks."
    )
    connect_timeout: float = Field(
        3.0, gt=0, le=60, description="Seconds to connect to an upstream before trying another."
    )
    request_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds an upstream may take to answer (or between stream chunks).",
    )
    affinity: bool = Field(
        True, description="Send a conversation to the same upstream (prefix-cache reuse)."
    )
    max_request_bytes: int = Field(1024 * 1024, ge=1024)
    redis_url: SecretStr | None = Field(
        None,
        description="Redis for per-key limits and usage shared by every agent replica "
        "(redis://host:6379/0, rediss:// for TLS); none: counted in this process.",
    )
    limits_fail_closed: bool = Field(
        False,
        description="When Redis is unreachable, refuse metered keys' requests with 503 instead "
        "of answering them without limits.",
    )
    routing: Literal["signals", "least-in-flight", "round-robin"] = Field(
        "signals",
        description="How an upstream is chosen: signals (the model servers' queue and KV-cache "
        "use from /metrics, and the agent's in-flight count), least-in-flight, round-robin.",
    )
    upstream_concurrency: int = Field(
        0,
        ge=0,
        le=100_000,
        description="Requests the agent has open to one upstream before the next ones wait in "
        "its priority queue; 0: no agent queue (the model servers queue).",
    )
    queue_size: int = Field(
        100, ge=1, le=100_000, description="Requests that may wait, all priority classes."
    )
    queue_timeout_interactive: float = Field(
        30.0, gt=0, le=3600, description="Seconds an interactive request may wait in the queue."
    )
    queue_timeout_batch: float = Field(
        60.0, gt=0, le=3600, description="Seconds a batch request may wait in the queue."
    )
    default_priority: Literal["interactive", "batch"] = Field(
        "interactive",
        description="Priority class of requests whose key names none (auth off, plain keys).",
    )
    generation: Annotated[GenerationSettings, NoDecode] = Field(
        default_factory=GenerationSettings,
        description="Sampling and answer length for chat requests that leave them out, as YAML "
        "or JSON: {default: {...}, models: {<glob>: {...}}} (docs/agent.md#generation-defaults).",
    )

    @field_validator("upstreams", "api_keys", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("generation", mode="before")
    @classmethod
    def _generation(cls, value: Any) -> Any:
        return parse_generation(value)

    @field_validator("upstreams")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("give at least one model-server URL")
        for url in value:
            if url.startswith("dns+"):
                DnsTarget.parse(url)  # its ValueError names the entry
            elif not re.match(r"^https?://[^/\s]+", url):
                raise ValueError(f"{url!r} is not an http(s):// or dns+http(s):// URL")
        return [url.rstrip("/") for url in value]

    @field_validator("kb_url")
    @classmethod
    def _kb_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError(f"{value!r} is not an http(s):// URL")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not re.match(r"^(redis|rediss|unix)://", value.get_secret_value()):
            raise ValueError("expected a redis://, rediss:// or unix:// URL")
        return value


def load_agent_settings(overrides: dict[str, Any] | None = None) -> AgentSettings:
    return _load(AgentSettings, "ARCHON_AGENT_", overrides)
