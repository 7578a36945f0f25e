"""/v1/embeddings' request rules and encoding, and the knowledge base's remote embedder's
retries and errors, without a model (the real models: tests/integration/test_embeddings.py)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from typing import Any

import httpx
import numpy as np
import pytest

from archon.errors import ConfigError, InvalidRequestError, ModelNotFoundError
from archon.kb.embeddings_remote import EmbeddingEndpointError, OpenAIEmbedder, base_url_of
from archon.modelserver import embeddings_sentence
from archon.modelserver.embeddings import (
    MAX_INPUTS,
    EmbeddingRequest,
    EmbeddingService,
    encode_vector,
    inputs_of,
)


def request(**fields: Any) -> EmbeddingRequest:
    return EmbeddingRequest.model_validate({"model": "m", **fields})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("one text", ["one text"]),
        (["a", "b"], ["a", "b"]),
        ([1, 2, 3], [[1, 2, 3]]),  # one input as token ids
        ([[1, 2], [3]], [[1, 2], [3]]),
    ],
)
def test_every_input_shape_of_the_spec(value: Any, expected: list[Any]) -> None:
    assert inputs_of(request(input=value)) == expected


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ([], "must not be empty"),
        ("", "'input' is an empty string"),
        (["a", ""], "'input[1]' is an empty string"),
        ([[1], []], "'input[1]' is an empty token list"),
        (["x"] * (MAX_INPUTS + 1), f"at most {MAX_INPUTS}"),
    ],
)
def test_inputs_openai_refuses_are_refused_naming_input(value: Any, says: str) -> None:
    with pytest.raises(InvalidRequestError, match=says.replace("[", r"\[")) as err:
        inputs_of(request(input=value))
    assert err.value.param == "input"


def test_base64_is_little_endian_float32() -> None:
    vector = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    encoded = encode_vector(vector, "base64")
    assert isinstance(encoded, str)
    assert np.frombuffer(base64.b64decode(encoded), dtype="<f4").tolist() == [0.5, -1.25, 3.0]
    assert encode_vector(vector, "float") == [0.5, -1.25, 3.0]


class FakeModel:
    """Three-dimensional vectors that count characters: enough to test the service's rules."""

    name = "fake-embed"

    def embed(self, inputs: Sequence[str | list[int]]) -> tuple[np.ndarray, int]:
        vectors = np.array([[len(x), 1.0, 0.0] for x in inputs], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), len(inputs)

    def dimension(self) -> int | None:
        return 3

    def card(self) -> dict[str, Any]:
        return {"type": "embeddings"}

    def close(self) -> None:
        pass


def test_the_response_has_openais_shape() -> None:
    service = EmbeddingService([FakeModel()])
    body = asyncio.run(service.create(request(model="fake-embed", input=["ab", "c"])))
    assert body["object"] == "list" and body["model"] == "fake-embed"
    assert [d["index"] for d in body["data"]] == [0, 1]
    assert all(d["object"] == "embedding" and len(d["embedding"]) == 3 for d in body["data"])
    assert body["usage"] == {"prompt_tokens": 2, "total_tokens": 2}


def test_dimensions_only_as_the_model_makes_them() -> None:
    service = EmbeddingService([FakeModel()])
    same = asyncio.run(service.create(request(model="fake-embed", input="x", dimensions=3)))
    assert len(same["data"][0]["embedding"]) == 3
    with pytest.raises(InvalidRequestError, match="cannot shorten") as err:
        asyncio.run(service.create(request(model="fake-embed", input="x", dimensions=2)))
    assert err.value.param == "dimensions"


def test_an_unknown_model_is_404_listing_the_embedding_models() -> None:
    with pytest.raises(ModelNotFoundError, match="'fake-embed'") as err:
        EmbeddingService([FakeModel()]).find("text-embedding-3-small")
    assert err.value.param == "model"


def test_embedding_model_setting() -> None:
    assert embeddings_sentence.resolve("none") is None
    assert embeddings_sentence.resolve("auto") == "all-MiniLM-L6-v2"  # the kb extra is here
    with pytest.raises(ConfigError, match="embedding_model 'no-such-model'"):
        embeddings_sentence.resolve("no-such-model")


# ---- the knowledge base's remote embedder ----


def vectors_response(request: httpx.Request) -> httpx.Response:
    texts = json.loads(request.content)["input"]
    data = [{"object": "embedding", "index": i, "embedding": [1.0, 2.0]} for i in range(len(texts))]
    return httpx.Response(200, json={"object": "list", "data": data, "model": "m"})


def remote(handler: Any, sleeps: list[float] | None = None, model: str = "m") -> OpenAIEmbedder:
    return OpenAIEmbedder(
        "http://embed.test/v1",
        model,
        attempts=3,
        sleep=(sleeps if sleeps is not None else []).append,
        transport=httpx.MockTransport(handler),
    )


def test_the_base_url_may_end_in_v1() -> None:
    assert base_url_of("http://h:8000/v1/") == base_url_of("http://h:8000") == "http://h:8000"


def test_5xx_and_connection_errors_are_retried_with_backoff() -> None:
    calls: list[str] = []
    sleeps: list[float] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "m", "max_model_len": 512}]})
        calls.append(request.url.path)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused")
        if len(calls) == 2:
            return httpx.Response(503, json={"error": {"message": "loading"}})
        return vectors_response(request)

    embedder = remote(flaky, sleeps)
    assert embedder.dim == 2
    assert calls == ["/v1/embeddings"] * 3
    assert sleeps == [0.5, 1.0]
    # No local tokenizer for "m": windows in characters that fit its 512-token context.
    assert max(len(w) for w in embedder.windows("x" * 5000)) == 1024
    assert np.allclose(np.linalg.norm(embedder.embed_documents(["a", "b"]), axis=1), 1.0)


def test_an_endpoint_that_stays_down_names_embedding_url() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(EmbeddingEndpointError, match=r"embedding_url http://embed.test: cannot"):
        remote(down)


@pytest.mark.parametrize(
    ("status", "body", "says"),
    [
        (404, {"error": {"message": "no model", "code": "model_not_found"}}, "embedding_model"),
        (404, {"detail": "Not Found"}, "no /v1/embeddings there"),
        (401, {"error": {"message": "bad key"}}, "ARCHON_KB_EMBEDDING_API_KEY"),
    ],
)
def test_a_refusal_fails_at_once_naming_the_setting(status: int, body: dict, says: str) -> None:
    calls = []

    def refuse(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/models":
            return httpx.Response(404)
        calls.append(1)
        return httpx.Response(status, json=body)

    with pytest.raises(ConfigError, match=says):
        remote(refuse)
    assert len(calls) == 1


def test_empty_texts_are_sent_as_a_blank() -> None:
    """OpenAI refuses an empty string; an empty chunk must still embed."""
    sent: list[list[str]] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["input"])
        return vectors_response(request)

    remote(record).embed_documents([""])
    assert sent[-1] == [" "]


def test_minilm_windows_are_the_local_models() -> None:
    """For the bundled MiniLM the remote embedder cuts and counts with MiniLM's own word pieces,
    as the local embedder does, so both store the same vectors."""
    from archon.kb.embeddings import SentenceTransformerEmbedder

    embedder = remote(vectors_response, model="all-MiniLM-L6-v2")
    local = SentenceTransformerEmbedder()
    text = " ".join(f"token{i}" for i in range(700))
    assert embedder.window == local.window == 256
    assert embedder.windows(text) == local.windows(text)
    assert embedder.count_tokens(text) == local.count_tokens(text)
