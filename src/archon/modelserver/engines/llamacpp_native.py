"""The llama.cpp objects one engine owns: model, context, batch and vocabulary, with the text
side that needs only them (chat template, tokenize, detokenize).

``llama_cpp`` is imported here, when a model is loaded, never at module import.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archon.errors import InvalidRequestError, ModelLoadError
from archon.modelserver.chat_template import ChatTemplate
from archon.modelserver.engines.llamacpp_backends import load_cpu_backend
from archon.modelserver.engines.llamacpp_sampling import Vocabulary
from archon.modelserver.settings import CpuRepack

log = logging.getLogger("archon.modelserver")

UNK_KEY = "tokenizer.ggml.unknown_token_id"  # llama.cpp's vocabulary API has no getter for it


def tokenize_text(ll: Any, vocab: Any, text: str, *, add_special: bool, special: bool) -> list[int]:
    """llama.cpp's tokenizer on ``text`` (``ll``: llama_cpp's low-level module); ``special``:
    special-token text such as ``<|im_start|>`` is read as those tokens. A buffer too small
    for the tokens is retried once at the size llama.cpp asks for."""
    data = text.encode("utf-8")
    capacity = len(data) + 8
    buf = (ll.llama_token * capacity)()
    n = ll.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, special)
    if n < 0:
        capacity = -n
        buf = (ll.llama_token * capacity)()
        n = ll.llama_tokenize(vocab, data, len(data), buf, capacity, add_special, special)
    return [int(t) for t in buf[:n]]


@dataclass
class NativeModel:
    ll: Any  # the llama_cpp module
    model: Any
    vocab: Any
    n_vocab: int
    ctx: Any
    mem: Any
    batch: Any
    max_model_len: int  # per sequence, as the context gave it
    vocabulary: Vocabulary
    template: ChatTemplate | None
    bos: int
    template_source: str | None = None

    def apply_chat_template(
        self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True
    ) -> str:
        if self.template is None:
            raise InvalidRequestError(
                "This model has no chat template; use /v1/completions with a plain prompt",
                param="messages",
            )
        return self.template.render(messages, add_generation_prompt=add_generation_prompt)

    def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        tokens = tokenize_text(self.ll, self.vocab, text, add_special=add_special, special=True)
        # Chat templates often write the BOS token themselves; do not feed it twice.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == self.bos:
            tokens = tokens[1:]
        return tokens

    def token_bytes(self, token: int) -> bytes:
        """A token's bytes, special tokens included; safe from any thread."""
        return self.vocabulary.token_bytes(token, special=True, any_thread=True)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.token_bytes(t) for t in tokens).decode("utf-8", "replace")

    def tokenizer_info(self) -> dict[str, Any]:
        """The tokenizer's settings as a Hugging Face ``tokenizer_config.json`` has them (what
        vLLM's ``/tokenizer_info`` returns), from the GGUF's own tokenizer metadata."""
        ll, vocab = self.ll, self.vocab

        def special(token: int) -> str | None:
            if token < 0 or token >= self.n_vocab:  # LLAMA_TOKEN_NULL: the model has none
                return None
            return self.token_bytes(token).decode("utf-8", "replace")

        info: dict[str, Any] = {
            "tokenizer_class": "LlamaCppTokenizer",
            "tokenizer_model": self.metadata("tokenizer.ggml.model"),
            "bos_token": special(ll.llama_vocab_bos(vocab)),
            "eos_token": special(ll.llama_vocab_eos(vocab)),
            "pad_token": special(ll.llama_vocab_pad(vocab)),
            "unk_token": special(int(unk) if (unk := self.metadata(UNK_KEY)) else -1),
            "add_bos_token": bool(ll.llama_vocab_get_add_bos(vocab)),
            "add_eos_token": bool(ll.llama_vocab_get_add_eos(vocab)),
            "model_max_length": self.max_model_len,
            "vocab_size": self.n_vocab,
        }
        if self.template_source:
            info["chat_template"] = self.template_source
        return info

    def metadata(self, key: str) -> str | None:
        """A GGUF metadata value as text, or None when the model file has no such key."""
        size = 256
        while True:
            buf = ctypes.create_string_buffer(size)
            n = self.ll.llama_model_meta_val_str(self.model, key.encode(), buf, size)
            if n < 0:
                return None
            if n < size:
                return buf.value.decode("utf-8", "replace")
            size = n + 1

    def free(self) -> None:
        self.ll.llama_batch_free(self.batch)
        self.ll.llama_free(self.ctx)
        self.ll.llama_model_free(self.model)


def use_repack(setting: CpuRepack, system_info: bytes) -> bool:
    """Whether llama.cpp may repack the weights into its extra buffer types (AMX, CPU_REPACK).
    ``auto`` says no to a build with AMX: its matrix kernels hit a general protection fault on
    the first prompt on virtualised Sapphire/Granite Rapids (ggml-org/llama.cpp#20824,
    ollama/ollama#17249; seen here on a KVM Xeon, every request a crash)."""
    if setting != "auto":
        return setting == "on"
    return b"AMX_INT8 = 1" not in system_info


def load(
    model_path: Path,
    *,
    max_model_len: int | None,
    slots: int,
    threads: int,
    batch_size: int,
    cpu_repack: CpuRepack = "auto",
) -> NativeModel:
    """Load a GGUF on the CPU with a context of ``slots`` sequences of ``max_model_len`` tokens;
    a ModelLoadError names the setting to change when llama.cpp refuses."""
    import llama_cpp
    import llama_cpp._logger as llama_logger

    llama_logger.set_verbose(False)
    load_cpu_backend()  # the image's CPU variants (GGML_BACKEND_DL); see llamacpp_backends
    llama_cpp.llama_backend_init()

    model_params = llama_cpp.llama_model_default_params()
    model_params.n_gpu_layers = 0
    system_info = llama_cpp.llama_print_system_info()
    model_params.use_extra_bufts = use_repack(cpu_repack, system_info)
    if cpu_repack == "auto" and not model_params.use_extra_bufts:
        log.warning(
            "llama.cpp was built with AMX, whose kernels crash on many virtual machines: "
            "weight repacking is off (set cpu_repack=on to use AMX on bare metal)"
        )
    model = llama_cpp.llama_model_load_from_file(str(model_path).encode(), model_params)
    if not model:
        raise ModelLoadError(f"llm_model: llama.cpp could not load {model_path}")
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    train_ctx = llama_cpp.llama_model_n_ctx_train(model)
    if max_model_len is None:
        max_model_len = min(train_ctx, 4096)
    elif max_model_len > train_ctx:
        llama_cpp.llama_model_free(model)
        raise ModelLoadError(
            f"max_model_len {max_model_len} is larger than the model's context length "
            f"{train_ctx}; lower max_model_len"
        )
    max_parallel = llama_cpp.llama_max_parallel_sequences()
    if slots > max_parallel:
        llama_cpp.llama_model_free(model)
        raise ModelLoadError(f"parallel {slots} is above llama.cpp's limit of {max_parallel}")

    ctx_params = llama_cpp.llama_context_default_params()
    ctx_params.n_ctx = max_model_len * slots
    ctx_params.n_batch = batch_size
    ctx_params.n_ubatch = min(batch_size, 512)
    ctx_params.n_seq_max = slots
    ctx_params.n_threads = threads
    ctx_params.n_threads_batch = threads
    # One KV stream per sequence: attention cost does not grow with the other slots.
    ctx_params.kv_unified = False
    ctx = llama_cpp.llama_init_from_model(model, ctx_params)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise ModelLoadError(
            f"llama.cpp could not create a context of {max_model_len} x {slots} tokens; "
            "lower max_model_len or parallel"
        )
    vocabulary = Vocabulary(llama_cpp, vocab, n_vocab)

    def token_text(token: int) -> str:
        return vocabulary.token_bytes(token, special=True).decode("utf-8", "replace")

    template_src = llama_cpp.llama_model_chat_template(model, None)
    template = (
        ChatTemplate(
            template_src.decode("utf-8", "replace"),
            bos_token=token_text(llama_cpp.llama_vocab_bos(vocab)),
            eos_token=token_text(llama_cpp.llama_vocab_eos(vocab)),
        )
        if template_src
        else None
    )
    return NativeModel(
        ll=llama_cpp,
        model=model,
        vocab=vocab,
        n_vocab=n_vocab,
        ctx=ctx,
        mem=llama_cpp.llama_get_memory(ctx),
        batch=llama_cpp.llama_batch_init(batch_size, 0, 1),
        max_model_len=min(max_model_len, llama_cpp.llama_n_ctx_seq(ctx)),
        vocabulary=vocabulary,
        template=template,
        bos=llama_cpp.llama_vocab_bos(vocab),
        template_source=template_src.decode("utf-8", "replace") if template_src else None,
    )
