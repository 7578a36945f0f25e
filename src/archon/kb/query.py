"""The body of the knowledge base's `POST /query`, shared by the service and its clients
(the agent validates its per-request filters with the same model)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


class Filters(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str | list[str] | None = None
    path_prefix: str | None = None


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    query: str = Field(min_length=1, max_length=4000)
    top_k: int | None = Field(None, ge=1, le=50)
    filters: Filters = Field(default_factory=Filters)
    mode: Literal["hybrid", "dense", "bm25"] = "hybrid"
    fusion: Literal["rrf", "weighted"] = "rrf"
    dense_weight: float | None = Field(None, ge=0.0, le=1.0)  # None: the dense_weight setting
    score_threshold: float | None = None
    # The caller's groups (archon.kb.access): only sources readable by one of them are searched.
    # None: the service's own query, every source. The agent always sends its key's.
    groups: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]] | None = (
        Field(None, max_length=256)
    )
