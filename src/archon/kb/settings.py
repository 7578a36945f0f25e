"""Settings of `archon kb serve` and `archon kb sync` (`ARCHON_KB_*`), read by archon.settings'
one loader: flags > environment > defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from archon.settings import load_settings, secret_from

# How the local embedding model runs (archon.kb.embeddings.resolve_backend picks for "auto").
EmbeddingBackend = Literal["auto", "torch", "torch-bf16", "onnx", "onnx-int8"]


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
        None,
        description="Base URL of an OpenAI-compatible /v1/embeddings (e.g. the model server's "
        "http://host:8000/v1) that embeds instead of the local model; embedding_model names "
        "the model there.",
    )
    embedding_api_key: SecretStr | None = Field(
        None, description="Bearer token for embedding_url, if it wants one."
    )
    embedding_backend: EmbeddingBackend = Field(
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
    chunk_max_tokens: int = Field(
        200,
        ge=64,
        le=8192,
        description="A chunk's text stops at this many word pieces: with its path and heading "
        "trail it fits MiniLM's 256-piece window, so it is embedded whole as one vector "
        "(docs/benchmarks.md: 800 tokens embedded as a mean of windows ranked worse).",
    )
    chunk_min_tokens: int = Field(
        100, ge=0, le=8192, description="A smaller section merges with the next."
    )
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
    service_token: SecretStr | None = Field(
        None,
        description="When set, /query, /sources and /sync answer only requests with "
        "'Authorization: Bearer <token>' (the agent's kb_token); others get 401. /health, "
        "/ready and /metrics stay open.",
    )
    service_token_file: Path | None = Field(
        None, description="A file holding service_token (a mounted Secret); read at start."
    )

    def token(self) -> str | None:
        """The service token, from service_token or service_token_file; None: open."""
        return secret_from(
            self.service_token, self.service_token_file, "service_token", "ARCHON_KB_SERVICE_TOKEN"
        )

    @property
    def store_location(self) -> str:
        return self.qdrant or str(self.data_dir / "qdrant")


def load_kb_settings(overrides: dict[str, Any] | None = None) -> KnowledgeBaseSettings:
    return load_settings(KnowledgeBaseSettings, overrides)
