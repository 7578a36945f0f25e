"""Settings of `archon agent` (`ARCHON_AGENT_*`), the RAG gateway in front of the model servers."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from archon.agent.discovery import DnsTarget
from archon.agent.generation import GenerationSettings, parse_generation
from archon.settings import load_settings, secret_from, split_list


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
    kb_token: SecretStr | None = Field(
        None,
        description="The knowledge base's service token (its service_token), sent with every "
        "query; with the key's groups, so the knowledge base searches only what the key reads.",
    )
    kb_token_file: Path | None = Field(
        None, description="A file holding kb_token (a mounted Secret); read at start."
    )
    top_k: int = Field(4, ge=1, le=50, description="Chunks retrieved per question.")
    max_context_chars: int = Field(
        3000,
        ge=200,
        description="Characters of retrieved context put in the prompt (about 4 per token). "
        "3000 suits the bundled 135M model (fact recall 13% at 3000 vs 0% at 6000 on the "
        "tuning half, docs/benchmarks.md); raise it for a bigger model.",
    )
    history_turns: int = Field(
        1, ge=0, le=10, description="Earlier user turns added to the retrieval query."
    )
    min_relevance: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description="The share of the question's words the best retrieved passage must hold "
        "(at least two of a question of three or more, all of a shorter one; greeting words "
        "do not count; archon.agent.rag.relevance) "
        "for the retrieved context to be used: below it the model answers without excerpts, "
        "nothing is quoted, sources is empty, x-archon-rag is none. Chosen on the judged "
        "sets (docs/benchmarks.md, Relevance). 0: use whatever was retrieved.",
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
        return split_list(value)

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

    def kb_service_token(self) -> str | None:
        """kb_token, or the content of kb_token_file; None: send none."""
        return secret_from(self.kb_token, self.kb_token_file, "kb_token", "ARCHON_AGENT_KB_TOKEN")


def load_agent_settings(overrides: dict[str, Any] | None = None) -> AgentSettings:
    return load_settings(AgentSettings, overrides)
