"""A mean-pooled sentence-transformers encoder run by ONNX Runtime, optionally int8.

Why: the CPU spends a full sync embedding. The same MiniLM graph in ONNX Runtime is ~1.4x
torch's speed with identical vectors (cosine 1.0000), and with its MatMul weights quantised to
int8 per channel ~2.3x, at cosine 0.994 to the fp32 vectors (measured on tekton's docs; the
benchmark in docs/benchmarks.md compares retrieval quality). The graph is exported once from the
model's own weights with torch (no hub, no extra exporter package) and cached beside the data.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from archon.errors import ConfigError
from archon.kb.embeddings import embed_windowed, split_windows

Precision = Literal["fp32", "int8"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _fingerprint(model_dir: Path) -> str:
    """Changes when the weights or the config change, so a stale export is never reused."""
    digest = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "pytorch_model.bin"):
        path = model_dir / name
        if path.is_file():
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:16]


def _check_mean_pooled(model_dir: Path) -> None:
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        pooling = json.loads((model_dir / modules[1]["path"] / "config.json").read_text())
    except (OSError, ValueError, KeyError, IndexError):
        kinds, pooling = [], {}
    if (
        kinds[:2] != ["Transformer", "Pooling"]
        or set(kinds)
        - {
            "Transformer",
            "Pooling",
            "Normalize",
        }
        or not pooling.get("pooling_mode_mean_tokens")
    ):
        raise ConfigError(
            f"embedding_backend onnx: {model_dir} is not a plain mean-pooled encoder; "
            "set embedding_backend=torch for this model"
        )


def export(model_dir: Path, cache: Path, precision: Precision) -> Path:
    """The model's ONNX graph (int8: MatMul weights quantised per channel), exported once."""
    target = cache / f"{model_dir.name}-{_fingerprint(model_dir)}" / f"model-{precision}.onnx"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fp32 = target.parent / "model-fp32.onnx"
    if not fp32.is_file():
        import torch
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        model = AutoModel.from_pretrained(str(model_dir)).eval()

        class Encoder(torch.nn.Module):
            # Keyword arguments: BERT's forward takes more positional ones than the export passes.
            def __init__(self, inner: Any):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                return self.inner(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    token_type_ids=token_type_ids,
                ).last_hidden_state

        sample = torch.ones((2, 8), dtype=torch.long)
        partial = fp32.with_suffix(f".{os.getpid()}.tmp")
        with warnings.catch_warnings():
            # The exporter's notes on its own deprecation and on index ops BERT does not use.
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Encoder(model),
                (sample, sample, torch.zeros_like(sample)),
                str(partial),
                input_names=list(INPUTS),
                output_names=["last_hidden_state"],
                dynamic_axes={
                    name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")
                },
                opset_version=17,
                dynamo=False,
            )
        partial.replace(fp32)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        partial = target.with_suffix(f".{os.getpid()}.tmp")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the quantiser warns on the root logger about pre-processing
        try:
            quantize_dynamic(
                str(fp32),
                str(partial),
                weight_type=QuantType.QInt8,
                per_channel=True,
                op_types_to_quantize=["MatMul"],
            )
        finally:
            root.setLevel(level)
        partial.replace(target)
    return target


class OnnxEmbedder:
    """The Embedder protocol over ONNX Runtime and the model's fast tokenizer."""

    def __init__(
        self,
        name: str,
        model_dir: Path,
        cache: Path,
        *,
        precision: Precision = "int8",
        batch_size: int = 32,
        threads: int | None = None,
    ):
        from tokenizers import Tokenizer

        _check_mean_pooled(model_dir)
        # The vectors of an int8 graph differ slightly from fp32's: a store keeps one kind.
        self.name = name if precision == "fp32" else f"{name}@onnx-int8"
        self._model_dir = model_dir
        self._cache = cache
        self._precision: Precision = precision
        self._batch_size = batch_size
        self._threads = threads or os.cpu_count() or 1
        self._session: Any = None
        self._lock = threading.Lock()
        config = json.loads((model_dir / "sentence_bert_config.json").read_text())
        self.window = int(config["max_seq_length"])
        pooling_dir = json.loads((model_dir / "modules.json").read_text())[1]["path"]
        pooling = json.loads((model_dir / pooling_dir / "config.json").read_text())
        self.dim = int(pooling["word_embedding_dimension"])
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        tokenizer.no_padding()  # the shipped tokenizer.json pads to 128: batches pad themselves
        tokenizer.no_truncation()
        self._tokenizer = tokenizer

    def set_threads(self, threads: int) -> None:
        with self._lock:
            self._threads = threads
            self._session = None  # intra-op threads are fixed per session

    def _run(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = self._threads
                options.inter_op_num_threads = 1
                path = export(self._model_dir, self._cache, self._precision)
                self._session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
            session = self._session
        feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = session.run(None, feed)[0]
        summed = (hidden * mask[..., None]).sum(axis=1)
        pooled = summed / np.maximum(mask.sum(axis=1, keepdims=True), 1)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)

    def count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def windows(self, text: str) -> list[str]:
        offsets = self._tokenizer.encode(text, add_special_tokens=False).offsets
        return split_windows(text, offsets, self.window)

    def _encode(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Similar lengths together: a batch pads to its longest member.
        order = np.argsort([len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), self._batch_size):
            rows = order[start : start + self._batch_size]
            width = min(max(len(encodings[i].ids) for i in rows), self.window)
            ids = np.zeros((len(rows), width), dtype=np.int64)
            mask = np.zeros_like(ids)
            for r, i in enumerate(rows):
                tokens = encodings[i].ids[:width]
                if len(encodings[i].ids) > width:
                    tokens = tokens[:-1] + encodings[i].ids[-1:]  # keep [SEP] when cut
                ids[r, : len(tokens)] = tokens
                mask[r, : len(tokens)] = 1
            out[rows] = self._run(ids, mask)
        return out

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        return embed_windowed(texts, self.windows, self._encode, self.dim)

    def embed_query(self, text: str) -> np.ndarray:
        return self._encode([text])[0]
