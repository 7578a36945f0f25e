"""A sentence-transformers embedding model served by name (``embedding_model``): by default the
bundled all-MiniLM-L6-v2, loaded by the knowledge base's own code, so a knowledge base that
embeds through this server stores the vectors it would have computed itself (fp32).

Unlike the knowledge base, which reads a long text whole in overlapping windows, one input here
is one pass of the model: an input longer than its window (256 word pieces for MiniLM) is
refused, as OpenAI and vLLM refuse one, rather than silently cut.

torch and sentence-transformers are imported on the first request, never at startup.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from archon.errors import ConfigError, InvalidRequestError
from archon.modelserver.embeddings import check_lengths, normalise

log = logging.getLogger("archon.modelserver")

DEFAULT = "all-MiniLM-L6-v2"
BATCH = 32


def resolve(setting: str) -> str | None:
    """The model that ``embedding_model`` names, or None for none. ``auto``: the bundled
    all-MiniLM-L6-v2 when its package and sentence-transformers are installed (the ``kb``
    extra), else none; ``none``: none. A name that is neither bundled nor a directory is a
    ConfigError naming the setting."""
    from archon.kb.embeddings import BUNDLED

    value = setting.strip()
    if value.lower() == "none":
        return None
    if value.lower() == "auto":
        wanted = (BUNDLED[DEFAULT], "sentence_transformers")
        return DEFAULT if all(importlib.util.find_spec(m) for m in wanted) else None
    if value not in BUNDLED and not Path(value).is_dir():
        raise ConfigError(
            f"embedding_model {value!r}: not a bundled embedding model ({', '.join(BUNDLED)}) "
            "nor a sentence-transformers directory; or set it to none"
        )
    if importlib.util.find_spec("sentence_transformers") is None:
        raise ConfigError(
            f"embedding_model {value!r} needs sentence-transformers: pip install 'archon[kb]', "
            "or set embedding_model=none"
        )
    return value


def served_name(reference: str) -> str:
    """The name clients send: a bundled model's own, else its directory's name."""
    return reference if "/" not in reference else Path(reference).name


class SentenceEmbeddings:
    """``EmbeddingModel`` for a sentence-transformers model (see the module docstring)."""

    def __init__(self, reference: str, name: str | None = None):
        from archon.kb.embeddings import SentenceTransformerEmbedder

        # Reads the dimension and window from the model's files; loads torch only on first use.
        self._inner = SentenceTransformerEmbedder(reference)
        self.name = name or served_name(reference)
        self._lock = threading.Lock()

    def dimension(self) -> int | None:
        return self._inner.dim

    def close(self) -> None:
        pass  # torch frees the model with the process

    def card(self) -> dict[str, Any]:
        # LM Studio's field for the kind of model: clients and the agent can tell it from chat.
        return {"type": "embeddings", "max_model_len": self._inner.window}

    def embed(self, inputs: Sequence[str | list[int]]) -> tuple[np.ndarray, int]:
        with self._lock:
            model = self._inner.loaded()
            tokenizer = model.tokenizer
            ids = [
                tokenizer(x, add_special_tokens=True)["input_ids"] if isinstance(x, str) else x
                for x in inputs
            ]
            vocab = len(tokenizer)
            for i, tokens in enumerate(ids):
                if any(t < 0 or t >= vocab for t in tokens):
                    raise InvalidRequestError(
                        f"input[{i}] has a token id outside {self.name}'s vocabulary "
                        f"(0..{vocab - 1})",
                        param="input",
                    )
            check_lengths([len(t) for t in ids], self._inner.window, self.name)
            vectors = _forward(model, ids, tokenizer.pad_token_id or 0, self._inner.dim)
        return normalise(vectors), sum(len(t) for t in ids)


def _forward(model: Any, ids: list[list[int]], pad: int, dim: int) -> np.ndarray:
    """The pooled vectors of token-id lists (each already with its special tokens), in batches
    of similar lengths: a batch pads to its longest member."""
    import torch

    out = np.zeros((len(ids), dim), dtype=np.float32)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    for start in range(0, len(order), BATCH):
        rows = order[start : start + BATCH]
        width = max(len(ids[i]) for i in rows)
        tokens = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, i in enumerate(rows):
            tokens[r, : len(ids[i])] = torch.tensor(ids[i], dtype=torch.long)
            mask[r, : len(ids[i])] = 1
        features = {
            "input_ids": tokens,
            "attention_mask": mask,
            "token_type_ids": torch.zeros_like(tokens),
        }
        with torch.inference_mode():
            pooled = model(features)["sentence_embedding"]
        out[rows] = pooled.float().numpy()
    return out
