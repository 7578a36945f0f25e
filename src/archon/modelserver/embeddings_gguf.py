"""The served GGUF's own embeddings, through a llama.cpp context of their own.

The pooling is the model's: the GGUF's ``<arch>.pooling_type`` (llama.cpp's
``llama_pooling_type``: mean, cls, last, rank or none), unless ``llm_pooling`` names one. A model
that declares none, as chat models do (the bundled SmolLM2 among them), gets one vector per
token from llama.cpp, which is no answer to /v1/embeddings: llama-server refuses such a request
("Pooling type 'none' is not OAI compatible") and so does this server, saying which setting to
change. Vectors are L2-normalised, as llama-server's /v1/embeddings returns them.

The context is separate from the generation engine's (which keeps its slots, KV cache and batch
untouched), holds one sequence of up to ``window`` tokens, and runs behind a lock in the
request's worker thread; ``llama_decode`` releases the GIL.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from archon.errors import InvalidRequestError, ModelLoadError
from archon.modelserver.embeddings import check_lengths, normalise
from archon.modelserver.engines.llamacpp_native import tokenize_text
from archon.modelserver.settings import CpuRepack, Pooling

log = logging.getLogger("archon.modelserver")

# llama.cpp's enum llama_pooling_type.
POOLING_CODES = {"model": -1, "none": 0, "mean": 1, "cls": 2, "last": 3}
POOLING_NAMES = {-1: "unspecified", 0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}

# One input's tokens are decoded in one micro-batch (a pooled vector must see its whole
# sequence), and every token is an output, so memory grows fast with the window: SmolLM2-135M's
# embedding context takes ~200 MB at 512 tokens, ~870 MB at 2048. 512 is llama-server's limit
# too (its default --ubatch-size).
MAX_WINDOW = 512


class GgufEmbeddings:
    """``EmbeddingModel`` for the served GGUF (see the module docstring)."""

    def __init__(
        self,
        name: str,
        model_path: Path,
        *,
        pooling: Pooling = "model",
        max_model_len: int | None = None,
        threads: int = 1,
        cpu_repack: CpuRepack = "auto",
        guard: Callable[[], object] = lambda: None,
    ):
        self.name = name
        self._guard = guard
        self._path = model_path
        self._pooling = pooling
        self._max_model_len = max_model_len
        self._threads = threads
        self._cpu_repack = cpu_repack
        self._lock = threading.Lock()
        self._native: _Native | None = None

    def dimension(self) -> int | None:
        return self._native.n_embd if self._native is not None else None

    def card(self) -> dict[str, Any]:
        return {}

    def embed(self, inputs: Sequence[str | list[int]]) -> tuple[np.ndarray, int]:
        self._guard()  # 503 while the GGUF downloads or loads: its file may not be there yet
        with self._lock:
            native = self._load()
            if native.pooling in (0, 4):
                raise InvalidRequestError(
                    f"Pooling type '{POOLING_NAMES[native.pooling]}' is not OAI compatible: "
                    f"{self.name} declares no pooling of its tokens into one vector (a chat "
                    "model). Set llm_pooling=mean (or last, cls) on the model server to embed "
                    "with it, or use its embedding model",
                    param="model",
                )
            tokens = [native.tokenize(x) if isinstance(x, str) else x for x in inputs]
            for i, ids in enumerate(tokens):
                if any(t < 0 or t >= native.n_vocab for t in ids):
                    raise InvalidRequestError(
                        f"input[{i}] has a token id outside {self.name}'s vocabulary "
                        f"(0..{native.n_vocab - 1})",
                        param="input",
                    )
            check_lengths([len(t) for t in tokens], native.window, self.name)
            vectors = np.stack([native.embed(ids) for ids in tokens])
        return normalise(vectors), sum(len(t) for t in tokens)

    def _load(self) -> _Native:
        if self._native is None:
            self._native = _Native.load(
                self._path,
                pooling=self._pooling,
                max_model_len=self._max_model_len,
                threads=self._threads,
                cpu_repack=self._cpu_repack,
            )
            log.info(
                "embeddings of %s: pooling %s, %d dimensions, up to %d tokens per input",
                self.name,
                POOLING_NAMES.get(self._native.pooling, self._native.pooling),
                self._native.n_embd,
                self._native.window,
            )
        return self._native

    def close(self) -> None:
        with self._lock:
            if self._native is not None:
                self._native.free()
                self._native = None


class _Native:
    """The llama.cpp model, embedding context and batch (``llama_cpp`` imported on load)."""

    def __init__(self, ll: Any, model: Any, ctx: Any, window: int):
        self.ll = ll
        self.model = model
        self.ctx = ctx
        self.window = window
        self.vocab = ll.llama_model_get_vocab(model)
        self.n_vocab = int(ll.llama_vocab_n_tokens(self.vocab))
        self.n_embd = int(ll.llama_model_n_embd(model))
        self.pooling = int(ll.llama_pooling_type(ctx))
        self.memory = ll.llama_get_memory(ctx)
        self.batch = ll.llama_batch_init(window, 0, 1)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        pooling: Pooling,
        max_model_len: int | None,
        threads: int,
        cpu_repack: CpuRepack,
    ) -> _Native:
        import llama_cpp

        from archon.modelserver.engines.llamacpp_backends import load_cpu_backend
        from archon.modelserver.engines.llamacpp_native import use_repack

        load_cpu_backend()  # the image's CPU variants (GGML_BACKEND_DL); see llamacpp_backends
        llama_cpp.llama_backend_init()
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = 0
        params.use_extra_bufts = use_repack(cpu_repack, llama_cpp.llama_print_system_info())
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(f"llm_model: llama.cpp could not load {path} for embeddings")
        window = min(llama_cpp.llama_model_n_ctx_train(model), max_model_len or MAX_WINDOW)
        window = min(window, MAX_WINDOW)
        ctx_params = llama_cpp.llama_context_default_params()
        ctx_params.n_ctx = window
        ctx_params.n_batch = window
        ctx_params.n_ubatch = window
        ctx_params.n_seq_max = 1
        ctx_params.n_threads = threads
        ctx_params.n_threads_batch = threads
        ctx_params.embeddings = True
        ctx_params.pooling_type = POOLING_CODES[pooling]
        # Attention in fp32: llama.cpp's CPU flash attention rounds Q to fp16, which moves a
        # pooled vector by up to 4e-4 in cosine (llama-cpp-python's default is off too).
        ctx_params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = llama_cpp.llama_init_from_model(model, ctx_params)
        if not ctx:
            llama_cpp.llama_model_free(model)
            raise ModelLoadError(f"llama.cpp could not create an embedding context for {path}")
        return cls(llama_cpp, model, ctx, window)

    def tokenize(self, text: str) -> list[int]:
        """As llama-server and llama-cpp-python's ``embed`` tokenize: the model's special tokens
        added (BOS, or BERT's CLS/SEP), the text itself read as text."""
        return tokenize_text(self.ll, self.vocab, text, add_special=True, special=False)

    def embed(self, tokens: list[int]) -> np.ndarray:
        """One sequence's pooled vector (not yet normalised)."""
        ll, batch = self.ll, self.batch
        if self.memory:
            ll.llama_memory_clear(self.memory, True)
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True  # pooling reads every token's output
        status = ll.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode failed for an embedding ({status})")
        pointer = ll.llama_get_embeddings_seq(self.ctx, 0)
        if not pointer:
            raise RuntimeError("llama.cpp returned no pooled embedding")
        array = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float * self.n_embd)).contents
        return np.array(array, dtype=np.float32)

    def free(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)
