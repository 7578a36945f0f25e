"""``POST /v1/embeddings``: OpenAI's request and response, and the models that answer it.

Two kinds of model serve it (docs/api.md):
- the served GGUF itself, under the chat model's name, through a llama.cpp context of its own
  with embeddings on (``embeddings_gguf``);
- a small sentence-transformers model served by its own name, by default the bundled
  all-MiniLM-L6-v2 that the knowledge base embeds with (``embeddings_sentence``).

Each model loads on its first request and runs in a worker thread behind its own lock, so it
never touches the generation engine's context or batching.

Refusals follow OpenAI's spec (CreateEmbeddingRequest) and vLLM: an empty input, an empty
string, more than 2048 inputs, an input over the model's window or 300,000 tokens in all is a 400
naming ``input``; ``dimensions`` other than the model's own is a 400 naming ``dimensions``
(neither model was trained to be shortened: vLLM refuses it the same way for such models).
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict

from archon.errors import ConfigError, InvalidRequestError, ModelNotFoundError

if TYPE_CHECKING:
    from archon.modelserver.settings import ModelServerSettings

log = logging.getLogger("archon.modelserver")

# OpenAI's limits (CreateEmbeddingRequest): inputs per request, tokens per request.
MAX_INPUTS = 2048
MAX_REQUEST_TOKENS = 300_000


class EmbeddingRequest(BaseModel):
    """OpenAI's CreateEmbeddingRequest; a field outside it is refused, as OpenAI refuses it."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None  # accepted and ignored (only OpenAI's abuse monitoring reads it)


class EmbeddingModel(Protocol):
    """One model that embeds; thread-safe, loaded on first use."""

    name: str

    def embed(self, inputs: Sequence[str | list[int]]) -> tuple[np.ndarray, int]:
        """Unit vectors, one per input, and the prompt tokens read; InvalidRequestError for an
        input the model cannot read (too long, unknown token ids)."""
        ...

    def dimension(self) -> int | None:
        """The vector size when known without loading the model, else None."""
        ...

    def card(self) -> dict[str, Any]:
        """Its entry's own fields in /v1/models (beyond id, object, created, owned_by)."""
        ...

    def close(self) -> None: ...


def inputs_of(req: EmbeddingRequest) -> list[str | list[int]]:
    """The request's inputs as a list: each a text or a list of token ids; refuses the
    shapes OpenAI refuses (empty input, an empty string or token list, too many inputs)."""
    raw = req.input
    items: list[str | list[int]]
    if isinstance(raw, str):
        items = [raw]
    elif raw and all(isinstance(v, int) for v in raw):
        items = [list(raw)]  # type: ignore[arg-type]  # one list of token ids
    else:
        items = list(raw)  # type: ignore[arg-type]
    if not items:
        raise InvalidRequestError("'input' must not be empty", param="input")
    if len(items) > MAX_INPUTS:
        raise InvalidRequestError(
            f"'input' has {len(items)} items; at most {MAX_INPUTS} per request", param="input"
        )
    for i, item in enumerate(items):
        if len(item) == 0:
            what = "an empty string" if isinstance(item, str) else "an empty token list"
            where = f"'input[{i}]'" if not isinstance(raw, str) else "'input'"
            raise InvalidRequestError(f"{where} is {what}; embed some text", param="input")
    return items


def check_lengths(counts: list[int], window: int, name: str) -> None:
    """OpenAI's per-input and per-request token limits, with the window of ``name``."""
    for i, count in enumerate(counts):
        if count > window:
            raise InvalidRequestError(
                f"input[{i}] has {count} tokens; the maximum for {name} is {window} tokens per "
                "input. Split the text or shorten it.",
                param="input",
            )
    if sum(counts) > MAX_REQUEST_TOKENS:
        raise InvalidRequestError(
            f"the inputs have {sum(counts)} tokens in all; at most {MAX_REQUEST_TOKENS} per "
            "request",
            param="input",
        )


def encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    """float: a JSON list; base64: the little-endian float32 bytes (OpenAI's and vLLM's)."""
    as_f32 = np.ascontiguousarray(vector, dtype="<f4")
    if encoding == "base64":
        return base64.b64encode(as_f32.tobytes()).decode("ascii")
    return as_f32.tolist()  # type: ignore[no-any-return]


class EmbeddingService:
    """The models that answer /v1/embeddings, by the name a request gives in ``model``."""

    def __init__(self, models: list[EmbeddingModel]):
        self.models = {m.name: m for m in models}

    def names(self) -> list[str]:
        return list(self.models)

    def cards(self, exclude: str) -> list[dict[str, Any]]:
        """/v1/models entries of the models not already listed (the chat model is)."""
        return [
            {"id": name, "object": "model", "owned_by": "archon", **model.card()}
            for name, model in self.models.items()
            if name != exclude
        ]

    def close(self) -> None:
        for model in self.models.values():
            model.close()

    def find(self, name: str) -> EmbeddingModel:
        model = self.models.get(name)
        if model is None:
            served = ", ".join(f"'{n}'" for n in self.models) or "none"
            raise ModelNotFoundError(
                f"The model '{name}' does not exist; the embedding models here: {served}",
                param="model",
            )
        return model

    async def create(self, req: EmbeddingRequest) -> dict[str, Any]:
        model = self.find(req.model)
        items = inputs_of(req)
        if req.dimensions is not None:
            known = model.dimension()
            if req.dimensions < 1:
                raise InvalidRequestError("'dimensions' must be at least 1", param="dimensions")
            if known is not None and req.dimensions != known:
                raise _dimensions_refused(req.model, known)
        # The model's own thread: a forward pass of seconds must not stall the event loop.
        vectors, tokens = await asyncio.to_thread(model.embed, items)
        if req.dimensions is not None and req.dimensions != vectors.shape[1]:
            raise _dimensions_refused(req.model, vectors.shape[1])
        return {
            "object": "list",
            "data": [
                {
                    "object": "embedding",
                    "index": i,
                    "embedding": encode_vector(vector, req.encoding_format),
                }
                for i, vector in enumerate(vectors)
            ],
            "model": req.model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }


def _dimensions_refused(name: str, size: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"Model '{name}' makes vectors of {size} dimensions and cannot shorten them (it was not "
        f"trained for it, as text-embedding-3 models were); leave out 'dimensions' or send "
        f"{size}",
        param="dimensions",
    )


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to unit length (L2), as llama-server and sentence-transformers do."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    scaled: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return scaled


def build_service(
    settings: ModelServerSettings,
    gguf_path: Path,
    served_name: str,
    *,
    guard: Callable[[], object],
) -> EmbeddingService:
    """The embedding models of a model server: the GGUF under ``served_name`` (``guard``
    raises while it is not loaded yet) and ``embedding_model``'s, if any. A bad
    ``embedding_model`` is a ConfigError here, before the server binds its port."""
    from archon.modelserver import embeddings_sentence
    from archon.modelserver.embeddings_gguf import GgufEmbeddings

    models: list[EmbeddingModel] = [
        GgufEmbeddings(
            served_name,
            gguf_path,
            pooling=settings.llm_pooling,
            max_model_len=settings.max_model_len,
            threads=settings.effective_threads,
            cpu_repack=settings.cpu_repack,
            guard=guard,
        )
    ]
    reference = embeddings_sentence.resolve(settings.embedding_model)
    if reference is not None:
        sentence = embeddings_sentence.SentenceEmbeddings(reference)
        if sentence.name == served_name:
            raise ConfigError(
                f"embedding_model {reference!r} is served as {sentence.name!r}, the chat "
                "model's name too; rename one (served_model_name)"
            )
        models.append(sentence)
    return EmbeddingService(models)
