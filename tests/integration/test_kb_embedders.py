"""The ONNX Runtime and bf16 backends of the local embedder against sentence-transformers fp32
(the reference), on real documentation text: same windows, same token counts, near-identical
vectors; the export is made once and reused; a store keeps one kind of vector (``auto`` keeps to
the store's); a model it cannot run is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from archon.errors import ConfigError
from archon.kb.embeddings import SentenceTransformerEmbedder, bundled_model_path
from archon.kb.onnx_embedder import OnnxEmbedder
from archon.kb.service import KnowledgeBase
from archon.kb.settings import KnowledgeBaseSettings

CORPORA = Path(__file__).resolve().parents[2].parent / "shared" / "corpora"
MODEL = Path(bundled_model_path("all-MiniLM-L6-v2"))
pytestmark = pytest.mark.skipif(not CORPORA.is_dir(), reason="../shared/corpora is missing")


@pytest.fixture(scope="module")
def texts() -> list[str]:
    files = sorted((CORPORA / "prometheus" / "docs" / "querying").glob("*.md"))
    # Short and long (several windows) pieces of real docs.
    return [f.read_text()[:n] for f, n in zip(files, [200, 1500, 4000, 9000, 600], strict=False)]


@pytest.fixture(scope="module")
def reference() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder()


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.mark.parametrize(("precision", "least"), [("fp32", 0.9999), ("int8", 0.97)])
def test_vectors_match_sentence_transformers(
    texts: list[str], reference: SentenceTransformerEmbedder, cache: Path, precision, least
) -> None:
    onnx = OnnxEmbedder("all-MiniLM-L6-v2", MODEL, cache, precision=precision)
    assert (onnx.dim, onnx.window) == (reference.dim, reference.window)
    assert [onnx.windows(t) for t in texts] == [reference.windows(t) for t in texts]
    assert max(len(reference.windows(t)) for t in texts) > 1, "a long text must span windows"
    assert [onnx.count_tokens(t) for t in texts] == [reference.count_tokens(t) for t in texts]
    docs = (onnx.embed_documents(texts) * reference.embed_documents(texts)).sum(axis=1)
    query = "how do I compute the per-second rate of a counter?"
    assert docs.min() >= least
    assert float(onnx.embed_query(query) @ reference.embed_query(query)) >= least
    # Unrelated texts stay apart: the vectors carry meaning, not just a shared direction.
    vectors = onnx.embed_documents(texts)
    assert float((vectors @ vectors.T)[np.triu_indices(len(texts), 1)].min()) < least - 0.1


def test_bf16_vectors_are_fp32_vectors(
    texts: list[str], reference: SentenceTransformerEmbedder
) -> None:
    """Why torch-bf16 shares fp32's name and store: autocast keeps the layer norms in fp32, so
    the pooled vectors agree to a cosine of 0.9999 (int8's are 0.97-0.99)."""
    bf16 = SentenceTransformerEmbedder(bf16=True)
    assert bf16.name == reference.name
    docs = bf16.embed_documents(texts)
    assert float((docs * reference.embed_documents(texts)).sum(axis=1).min()) >= 0.9999
    query = "how do I compute the per-second rate of a counter?"
    assert float(bf16.embed_query(query) @ reference.embed_query(query)) >= 0.9999
    assert float((docs @ docs.T)[np.triu_indices(len(texts), 1)].min()) < 0.9


def test_export_is_made_once_and_reused(cache: Path) -> None:
    OnnxEmbedder("all-MiniLM-L6-v2", MODEL, cache, precision="int8").embed_query("first")
    graphs = sorted(cache.rglob("*.onnx"))
    assert [g.name for g in graphs] == ["model-fp32.onnx", "model-int8.onnx"]
    stamps = [g.stat().st_mtime_ns for g in graphs]
    OnnxEmbedder("all-MiniLM-L6-v2", MODEL, cache, precision="int8").embed_query("second")
    assert [g.stat().st_mtime_ns for g in graphs] == stamps
    assert not list(cache.rglob("*.tmp"))


def test_a_store_keeps_one_kind_of_vector(tmp_path: Path) -> None:
    sources = tmp_path / "sources.yaml"
    sources.write_text(json.dumps({"sources": []}))
    int8 = KnowledgeBaseSettings(
        sources=sources, data_dir=tmp_path / "kb", embedding_backend="onnx-int8"
    )
    KnowledgeBase(int8).close()
    with pytest.raises(ConfigError, match=r"--reindex") as raised:
        KnowledgeBase(int8.model_copy(update={"embedding_backend": "torch"}))
    assert "all-MiniLM-L6-v2@onnx-int8" in str(raised.value)
    # fp32 ONNX writes torch's vectors: the two share a store.
    fp32 = int8.model_copy(update={"data_dir": tmp_path / "kb2", "embedding_backend": "onnx"})
    KnowledgeBase(fp32).close()
    KnowledgeBase(fp32.model_copy(update={"embedding_backend": "torch"})).close()
    KnowledgeBase(fp32.model_copy(update={"embedding_backend": "torch-bf16"})).close()
    # auto keeps to what each store holds, on any CPU.
    for data_dir, name in ((tmp_path / "kb", "@onnx-int8"), (tmp_path / "kb2", "")):
        kb = KnowledgeBase(
            int8.model_copy(update={"data_dir": data_dir, "embedding_backend": "auto"})
        )
        assert kb.embedder.name == "all-MiniLM-L6-v2" + name
        kb.close()


def test_a_model_it_cannot_run_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "cls-pooled"
    shutil.copytree(MODEL, model)
    pooling = model / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="embedding_backend=torch"):
        OnnxEmbedder("cls-pooled", model, tmp_path / "cache")


def test_an_unknown_backend_names_the_setting(tmp_path: Path, monkeypatch) -> None:
    from archon.kb.settings import load_kb_settings

    monkeypatch.setenv("ARCHON_KB_EMBEDDING_BACKEND", "tensorrt")
    with pytest.raises(ConfigError, match="embedding_backend"):
        load_kb_settings()
