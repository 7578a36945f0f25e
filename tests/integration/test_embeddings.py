"""``/v1/embeddings`` on a real `archon serve`, through the real openai SDK: the bundled MiniLM by
name (the knowledge base's own vectors), the served GGUF's own embeddings (llama-cpp-python's
``Llama.embed`` as the oracle), OpenAI's refusals, and a knowledge base that embeds through the
server's URL finding what an in-process one finds."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from tests.support.servers import MODEL, Server, run_cli, start_server

MINILM = "all-MiniLM-L6-v2"
TEXTS = ["A cat sits on the mat.", "A kitten sleeps on a rug.", "Interest rates rose again."]


def sdk(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def post(server: Server, **body: object) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/embeddings", json=body, timeout=120)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A model server whose GGUF embeds with mean pooling (SmolLM2 declares none)."""
    srv = start_server(
        tmp_path_factory.mktemp("pooled"), "--llm-pooling", "mean", "--embedding-model", "none"
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


# ---- the bundled MiniLM, served by name ----


def test_models_lists_the_embedding_model_after_the_chat_model(server: Server) -> None:
    cards = httpx.get(f"{server.url}/v1/models", timeout=10).json()["data"]
    assert [c["id"] for c in cards] == [MODEL, MINILM]
    assert cards[1]["type"] == "embeddings" and cards[1]["max_model_len"] == 256
    assert {"object", "created", "owned_by"} <= set(cards[1])


def test_minilm_through_the_sdk_float_and_base64(server: Server) -> None:
    client = sdk(server)
    # The SDK asks for base64 unless told otherwise, and decodes it.
    default = client.embeddings.create(model=MINILM, input=TEXTS)
    floats = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
    assert default.model == floats.model == MINILM
    assert [d.index for d in default.data] == [0, 1, 2]
    a = np.array([d.embedding for d in default.data])
    b = np.array([d.embedding for d in floats.data])
    assert a.shape == (3, 384)
    assert np.allclose(a, b, atol=1e-7)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert a[0] @ a[1] > a[0] @ a[2]  # the kitten is nearer the cat than interest rates
    # [CLS] and [SEP] count, as vLLM counts them.
    assert default.usage.prompt_tokens == default.usage.total_tokens == 9 + 9 + 7
    raw = post(server, model=MINILM, input="hello", encoding_format="base64").json()
    vector = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    assert vector.shape == (384,)


def test_minilm_vectors_are_the_knowledge_bases(server: Server) -> None:
    from archon.kb.embeddings import SentenceTransformerEmbedder

    local = SentenceTransformerEmbedder()  # the KB's fp32 vectors
    served = sdk(server).embeddings.create(model=MINILM, input=TEXTS).data
    for text, item in zip(TEXTS, served, strict=True):
        assert float(np.dot(local.embed_query(text), item.embedding)) > 0.999
    # Token ids (with [CLS] and [SEP]) give the text's vector.
    ids = local.loaded().tokenizer(TEXTS[0])["input_ids"]
    by_ids = sdk(server).embeddings.create(model=MINILM, input=[ids]).data[0].embedding
    assert float(np.dot(by_ids, served[0].embedding)) > 0.9999


# ---- the GGUF's own embeddings ----


def test_the_chat_model_without_pooling_is_refused_as_llama_server_does(server: Server) -> None:
    response = post(server, model=MODEL, input="hello")
    assert response.status_code == 400
    error = response.json()["error"]
    assert "Pooling type 'none' is not OAI compatible" in error["message"]
    assert "llm_pooling" in error["message"] and error["param"] == "model"


def test_gguf_embeddings_match_llama_cpp_python(pooled: Server, bundled_model_path: Path) -> None:
    import llama_cpp

    served = sdk(pooled).embeddings.create(model=MODEL, input=TEXTS)
    vectors = np.array([d.embedding for d in served.data])
    assert vectors.shape == (3, 576)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)  # L2, as llama-server

    oracle = llama_cpp.Llama(
        str(bundled_model_path),
        embedding=True,
        pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
        n_ctx=512,
        n_batch=512,
        n_ubatch=512,
        n_threads=2,
        verbose=False,
    )
    expected = np.array([oracle.embed(t, normalize=True) for t in TEXTS])
    assert np.all(np.sum(vectors * expected, axis=1) > 1 - 1e-4)
    ids = [oracle.tokenize(t.encode()) for t in TEXTS]
    assert served.usage.prompt_tokens == sum(len(i) for i in ids)

    # Deterministic, one at a time or in a batch, from text or from its token ids.
    again = sdk(pooled).embeddings.create(model=MODEL, input=TEXTS[1]).data[0].embedding
    assert np.allclose(again, vectors[1], atol=1e-6)
    by_ids = sdk(pooled).embeddings.create(model=MODEL, input=ids[2]).data[0].embedding
    assert np.allclose(by_ids, vectors[2], atol=1e-6)


def test_embeddings_leave_generation_alone(pooled: Server) -> None:
    """The embedding context is the model's second one: chat streams on while it embeds, and
    neither changes the other's results."""
    import concurrent.futures

    client = sdk(pooled)
    ask = [{"role": "user", "content": "Name three colours."}]
    before = client.embeddings.create(model=MODEL, input=TEXTS).data

    def chat() -> str:
        stream = client.chat.completions.create(
            model=MODEL,
            messages=ask,  # type: ignore[arg-type]
            max_tokens=16,
            temperature=0,
            stream=True,
        )
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        chats = [pool.submit(chat) for _ in range(2)]
        embeds = [
            pool.submit(lambda: client.embeddings.create(model=MODEL, input=TEXTS).data)
            for _ in range(2)
        ]
        texts = [f.result(timeout=300) for f in chats]
        vectors = [f.result(timeout=300) for f in embeds]
    assert all(texts)  # batch composition may move a greedy token: only that both answered
    for data in vectors:
        for a, b in zip(data, before, strict=True):
            assert np.allclose(a.embedding, b.embedding, atol=1e-6)


def test_gguf_input_over_its_window_is_refused(pooled: Server) -> None:
    response = post(pooled, model=MODEL, input="word " * 600)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "input" and "512 tokens per input" in error["message"]
    assert post(pooled, model=MINILM, input="x").json()["error"]["code"] == "model_not_found"


# ---- what OpenAI refuses ----


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        ({"input": []}, "input", "must not be empty"),
        ({"input": ""}, "input", "empty string"),
        ({"input": ["a", ""]}, "input", "'input[1]' is an empty string"),
        ({"input": ["x"] * 2049}, "input", "at most 2048"),
        ({"input": "word " * 300}, "input", "maximum for all-MiniLM-L6-v2 is 256 tokens"),
        ({"input": [[1, 2], [10**9]]}, "input", "outside all-MiniLM-L6-v2's vocabulary"),
        ({"input": ["a", 1]}, "input", None),
        ({"input": "a", "dimensions": 128}, "dimensions", "cannot shorten"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format", None),
        ({"input": "a", "truncate": True}, "truncate", None),
    ],
)
def test_bad_requests_are_400_naming_the_field(
    server: Server, body: dict, param: str, says: str | None
) -> None:
    response = post(server, model=MINILM, **body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    if says:
        assert says in error["message"]


def test_dimensions_equal_to_the_models_and_user_are_accepted(server: Server) -> None:
    result = sdk(server).embeddings.create(model=MINILM, input="a", dimensions=384, user="u-1")
    assert len(result.data[0].embedding) == 384


def test_an_unknown_model_is_404_model_not_found(server: Server) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        sdk(server).embeddings.create(model="text-embedding-3-small", input="a")
    assert err.value.body["code"] == "model_not_found"  # type: ignore[index]
    assert MINILM in err.value.body["message"]  # type: ignore[index]


def test_an_embedding_model_that_does_not_exist_is_a_startup_error(tmp_path: Path) -> None:
    result = run_cli("serve", "--embedding-model", "no-such-model", "--port", "1")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("archon: error: embedding_model")


# ---- the knowledge base embedding through the URL ----


def test_knowledge_base_through_the_url_finds_what_in_process_finds(
    server: Server, tmp_path: Path
) -> None:
    from archon.kb.service import KnowledgeBase
    from archon.kb.settings import KnowledgeBaseSettings
    from tests.integration.test_kb import make_repo, sources_file

    sources = sources_file(
        tmp_path, make_repo(tmp_path, subset=["docs/storage.md", "docs/federation.md"])
    )
    local = KnowledgeBase(
        KnowledgeBaseSettings(
            sources=sources, data_dir=tmp_path / "local", embedding_backend="torch"
        )
    )
    remote = KnowledgeBase(
        KnowledgeBaseSettings(
            sources=sources,
            data_dir=tmp_path / "remote",
            embedding_url=f"{server.url}/v1",
            embedding_model=MINILM,
        )
    )
    try:
        assert remote.embedder.name == local.embedder.name == MINILM  # one kind of store
        local.sync()
        remote.sync()
        for question in (
            "How long does Prometheus keep data on disk?",
            "How do I scrape another Prometheus server's series?",
            "What is the WAL?",
        ):
            ours = remote.query(question, top_k=5, mode="dense")
            theirs = local.query(question, top_k=5, mode="dense")
            assert [c["id"] for c in ours] == [c["id"] for c in theirs]
            assert np.allclose([c["score"] for c in ours], [c["score"] for c in theirs], atol=1e-3)
            hybrid = [c["id"] for c in remote.query(question, top_k=5)]
            assert hybrid == [c["id"] for c in local.query(question, top_k=5)]
    finally:
        local.close()
        remote.close()


def test_a_wrong_embedding_url_names_the_setting(tmp_path: Path) -> None:
    from archon.errors import ConfigError
    from archon.kb.embeddings_remote import OpenAIEmbedder
    from archon.readiness import free_port

    with pytest.raises(ConfigError, match=r"embedding_url http://127.0.0.1:\d+: cannot connect"):
        OpenAIEmbedder(f"http://127.0.0.1:{free_port()}/v1", MINILM, attempts=2, backoff=0.01)


def test_a_model_the_url_does_not_serve_names_embedding_model(server: Server) -> None:
    from archon.errors import ConfigError
    from archon.kb.embeddings_remote import OpenAIEmbedder

    with pytest.raises(ConfigError, match="embedding_model 'bge-small' is not served"):
        OpenAIEmbedder(f"{server.url}/v1", "bge-small")


# ---- the GPU path: vLLM serving an embedding model ----


def test_the_embeddings_overlay_deploys_vllm_pooling_in_its_own_namespace() -> None:
    from archon.modelserver.launch import build_vllm_launch
    from archon.modelserver.settings import load_model_server_settings
    from tests.integration.test_manifests import ROOT, find, kustomize, validate, vllm_config

    docs = kustomize(ROOT / "manifests/overlays/embeddings")
    for doc in docs:
        validate(doc)
    assert find(docs, "Namespace")["metadata"]["name"] == "archon-embeddings"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "archon-embeddings"
    }
    assert not [d for d in docs if d["kind"] == "Ingress"]  # inside the cluster only
    # The pod reads the ConfigMap the overlay generates, and the launcher makes it vLLM's
    # pooling runner under the name the knowledge base sends.
    data = vllm_config(docs)["data"]
    settings = load_model_server_settings(overrides={**data, "engine": "vllm"})
    args = build_vllm_launch(settings).args
    assert "--runner" in args and args[args.index("--runner") + 1] == "pooling"
    assert args[args.index("--served-model-name") + 1] == MINILM
    # The knowledge base may reach a model server's port (embedding_url).
    kb = kustomize(ROOT / "manifests/knowledge-base")
    egress = find(kb, "NetworkPolicy", "archon-knowledge-base")["spec"]["egress"]
    assert any(p["port"] == 8000 for rule in egress for p in rule["ports"])
