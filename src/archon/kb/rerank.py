"""An optional second stage: a cross-encoder behind an OpenAI-style rerank endpoint reorders the
fused candidates. vLLM (`/v1/rerank`, any `--runner pooling` cross-encoder) and llama-server
(`--reranking`, `/v1/rerank`) speak the same Jina/Cohere shape:

    POST /v1/rerank {"model", "query", "documents": [...], "top_n"}
    -> {"results": [{"index": i, "relevance_score": s}, ...]}

Retrieval never depends on it: on a timeout or any failure the fused order stands, and the
outcome is counted, so a slow or absent reranker costs at most ``rerank_timeout``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import httpx

log = logging.getLogger("archon.kb.rerank")

Outcome = str  # "used", "timeout" or "failed"


class Reranker:
    def __init__(
        self,
        url: str,
        model: str,
        *,
        timeout: float = 2.0,
        api_key: str | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
    ):
        self.url = url.rstrip("/")
        self.model = model
        self.on_outcome = on_outcome
        self._client = httpx.Client(
            timeout=timeout,
            headers={"authorization": f"Bearer {api_key}"} if api_key else {},
        )

    def _outcome(self, outcome: Outcome, detail: str = "") -> None:
        if outcome != "used":
            log.warning("rerank at %s %s (%s): keeping the fused order", self.url, outcome, detail)
        if self.on_outcome is not None:
            self.on_outcome(outcome)

    def scores(self, query: str, documents: list[str]) -> list[float] | None:
        """One relevance score per document, or None when the reranker could not answer."""
        body: dict[str, Any] = {"model": self.model, "query": query, "documents": documents}
        body["top_n"] = len(documents)
        try:
            response = self._client.post(self.url + "/v1/rerank", json=body)
            response.raise_for_status()
            results = response.json()["results"]
            scores = [float("-inf")] * len(documents)
            for result in results:
                scores[int(result["index"])] = float(result["relevance_score"])
        except httpx.TimeoutException:
            self._outcome("timeout", f"no answer within rerank_timeout ({self._timeout()}s)")
            return None
        except (httpx.HTTPError, ValueError, KeyError, TypeError, IndexError) as exc:
            self._outcome("failed", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return None
        self._outcome("used")
        return scores

    def _timeout(self) -> float | None:
        return self._client.timeout.read

    def close(self) -> None:
        self._client.close()
