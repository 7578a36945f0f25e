"""The knowledge base's embedder over an OpenAI-compatible ``/v1/embeddings`` endpoint
(``embedding_url``): Archon's model server, vLLM with ``--runner pooling``, any such service,
so a cluster can embed on a GPU.

A text is read whole in windows, as the local model reads it. For a model whose tokenizer ships
with Archon (all-MiniLM-L6-v2) the windows are cut at the same word pieces as the local model
cuts them and chunk sizes are counted in the same tokens, so the store holds the very vectors an
in-process sync writes (fp32) and one store can switch between the two. For another model the
windows are cut by characters, small enough for its context (``max_model_len`` in its
/v1/models entry, when the server lists one).

Requests are batched, and retried with exponential backoff on connection errors and 5xx (a
model server that is starting or restarting); a wrong URL, key or model name fails at once with
the setting to fix.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from archon.errors import ConfigError, ServiceUnavailableError
from archon.kb.embeddings import BUNDLED, bundled_model_path, embed_windowed, split_windows

log = logging.getLogger("archon.kb")

BATCH = 64  # texts per request
DEFAULT_WINDOW_CHARS = 2000
CHARS_PER_TOKEN = 2  # conservative (code, non-English): a window must not exceed the context


class EmbeddingEndpointError(ServiceUnavailableError, ConfigError):
    """The embedding endpoint failed. A 503 to a /query client; one line naming the setting to
    the CLI and the loader, which catch ConfigError."""

    code = "embedding_unavailable"


def base_url_of(url: str) -> str:
    """The server's root: both ``http://host:8000`` and the OpenAI SDK's
    ``http://host:8000/v1`` name the same endpoint."""
    url = url.rstrip("/")
    return url.removesuffix("/v1")


class OpenAIEmbedder:
    """The Embedder protocol over ``POST {embedding_url}/v1/embeddings``."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        attempts: int = 5,
        backoff: float = 0.5,
        window_chars: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ):
        self.name = model
        self._url = base_url_of(base_url)
        self._client = httpx.Client(
            base_url=self._url,
            timeout=timeout,
            headers={"authorization": f"Bearer {api_key}"} if api_key else {},
            transport=transport,
        )
        self._attempts = max(1, attempts)
        self._backoff = backoff
        self._sleep = sleep
        self._tokenizer, self.window = _bundled_tokenizer(model)
        self._window_chars = window_chars or self._chars_for_context()
        self.dim = len(self._request(["dimension probe"])[0])

    # ---- the endpoint ----

    def _request(self, texts: list[str]) -> list[list[float]]:
        # OpenAI refuses an empty string; a blank reads the same to a model (only its special
        # tokens), so an empty chunk embeds as it does locally.
        body = {"model": self.name, "input": [t or " " for t in texts]}
        response = self._post(body)
        data = sorted(response.json()["data"], key=lambda d: d["index"])
        if len(data) != len(texts):
            raise EmbeddingEndpointError(
                f"embedding_url {self._url}: {len(data)} vectors for {len(texts)} inputs"
            )
        return [d["embedding"] for d in data]

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        failure = ""
        for attempt in range(self._attempts):
            if attempt:
                self._sleep(min(self._backoff * 2 ** (attempt - 1), 8.0))
            try:
                response = self._client.post("/v1/embeddings", json=body)
            except httpx.TransportError as exc:
                failure = f"cannot connect ({exc or type(exc).__name__})"
                continue
            if response.status_code >= 500:
                failure = f"{response.status_code} {_message(response)}"
                continue
            if response.status_code >= 400:
                raise self._refused(response)
            return response
        raise EmbeddingEndpointError(
            f"embedding_url {self._url}: {failure}, {self._attempts} attempts; check the URL "
            "and that the embedding server is up"
        )

    def _refused(self, response: httpx.Response) -> ConfigError:
        status, message = response.status_code, _message(response)
        if status == 404 and _code(response) == "model_not_found":
            return ConfigError(
                f"embedding_model {self.name!r} is not served at embedding_url {self._url}: "
                f"{message}"
            )
        if status == 404:
            return ConfigError(
                f"embedding_url {self._url}: no /v1/embeddings there (404); give the server's "
                "base URL, e.g. http://model-server:8000/v1"
            )
        if status in (401, 403):
            return ConfigError(
                f"embedding_url {self._url} refused the key ({status} {message}); set "
                "ARCHON_KB_EMBEDDING_API_KEY"
            )
        return ConfigError(f"embedding_url {self._url}: {status} {message}")

    def _chars_for_context(self) -> int:
        """Window size in characters for a model without a local tokenizer."""
        if self._tokenizer is not None:
            return DEFAULT_WINDOW_CHARS
        try:
            cards = self._client.get("/v1/models").json().get("data") or []
            card = next(c for c in cards if c.get("id") == self.name)
            return min(DEFAULT_WINDOW_CHARS, int(card["max_model_len"]) * CHARS_PER_TOKEN)
        except (httpx.HTTPError, ValueError, StopIteration, KeyError, TypeError, AttributeError):
            return DEFAULT_WINDOW_CHARS

    # ---- the Embedder protocol ----

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        from archon.kb.chunking import approx_tokens

        return approx_tokens(text)

    def windows(self, text: str) -> list[str]:
        if self._tokenizer is not None and self.window is not None:
            offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
            return split_windows(text, offsets, self.window)
        size = self._window_chars
        return [text[start : start + size] for start in range(0, max(len(text), 1), size)]

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return embed_windowed(texts, self.windows, self._encode_pieces, self.dim)

    def _encode_pieces(self, pieces: list[str]) -> np.ndarray:
        vectors = [
            v for at in range(0, len(pieces), BATCH) for v in self._request(pieces[at : at + BATCH])
        ]
        return _normalise(np.array(vectors, dtype=np.float32))

    def embed_query(self, text: str) -> np.ndarray:
        # A query longer than the model's window is cut, as the local model cuts it.
        return _normalise(np.array(self._request(self.windows(text)[:1]), dtype=np.float32))[0]

    def close(self) -> None:
        self._client.close()


def _bundled_tokenizer(model: str) -> tuple[Any, int | None]:
    """The word-piece tokenizer and window of a model Archon ships, else (None, None)."""
    if model not in BUNDLED:
        return None, None
    try:
        path = Path(bundled_model_path(model))
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        window = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
    except (ConfigError, ImportError, OSError, ValueError, KeyError):
        return None, None
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return tokenizer, int(window)


def _message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


def _code(response: httpx.Response) -> str | None:
    try:
        code = response.json()["error"].get("code")
        return str(code) if code is not None else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
