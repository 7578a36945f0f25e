"""One request's token sampling over llama.cpp's native samplers.

The chain follows llama-server's order (logit bias, penalties, top-k, top-p, min-p, temperature,
then a seeded draw, or greedy at temperature 0), so the same request gives the same tokens on both.
Like llama-server, the penalties see the prompt's last tokens too. Without a grammar, sampling
is llama.cpp's own ``llama_sampler_sample``. A grammar is applied by rejection: the chain
samples freely, and only when the token breaks the grammar is the draw repeated with the grammar
masking the vocabulary (most tokens of a JSON answer need no mask).

A token is accepted by the grammar only after the grammar has allowed it: llama.cpp aborts the
process on a token its grammar cannot take.
"""

from __future__ import annotations

import ctypes
import math
import random
from typing import Any

import numpy as np

from archon.errors import InternalError, InvalidRequestError
from archon.modelserver.engines.base import SamplingParams, TokenLogprob, TopLogprob

# As llama-server's --repeat-last-n default: the penalties look at the last 64 tokens.
PENALTY_LAST_N = 64

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class Vocabulary:
    """Buffers shared by every sampler of one engine (all used from the engine thread)."""

    def __init__(self, ll: Any, vocab: Any, n_vocab: int):
        assert ctypes.sizeof(ll.llama_token_data) == _TOKEN_DATA.itemsize
        self.ll = ll
        self.vocab = vocab
        self.n_vocab = n_vocab
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._cur = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._cur_ptr = ctypes.cast(self._cur.ctypes.data, ll.llama_token_data_p)
        self._one = ll.llama_token_data(0, 1.0, 0.0)
        self._piece_buf = ctypes.create_string_buffer(256)

    def token_bytes(self, token: int, *, special: bool = False, any_thread: bool = False) -> bytes:
        """The bytes a token stands for (special tokens as empty, unless ``special``).

        The engine thread reuses one buffer; ``any_thread`` uses a buffer of the call's own.
        """
        buf = ctypes.create_string_buffer(64) if any_thread else self._piece_buf
        n = self.ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            if not any_thread:
                self._piece_buf = buf
            n = self.ll.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
        return buf.raw[:n]

    def logits(self, ctx: Any, index: int) -> np.ndarray:
        ptr = self.ll.llama_get_logits_ith(ctx, index)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))

    def candidates(self, logits: np.ndarray) -> Any:
        """A fresh llama_token_data_array over every token, as llama_sampler_sample builds it."""
        cur = self._cur
        cur["id"] = self._ids
        cur["logit"] = logits
        cur["p"] = 0.0
        return self.ll.llama_token_data_array(self._cur_ptr, self.n_vocab, -1, False)

    def selected(self, array: Any) -> int:
        if not 0 <= array.selected < array.size:
            raise InternalError("the sampler chain selected no token")
        return int(self._cur["id"][array.selected])

    def allows(self, grammar: Any, token: int) -> bool:
        one = self._one
        one.id, one.logit, one.p = token, 1.0, 0.0
        single = self.ll.llama_token_data_array(ctypes.pointer(one), 1, -1, False)
        self.ll.llama_sampler_apply(grammar, ctypes.byref(single))
        return not math.isinf(one.logit)

    def grammar(self, grammar: str) -> Any:
        """A grammar sampler, or a 400 when llama.cpp cannot parse the grammar."""
        sampler = self.ll.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        if not sampler:
            raise InvalidRequestError(
                "The output constraint could not be compiled to a llama.cpp grammar",
                param="response_format",
            )
        return sampler

    def check_grammar(self, grammar: str) -> None:
        self.ll.llama_sampler_free(self.grammar(grammar))


class Sampler:
    """The native chain, optional grammar and logprob settings of one sequence."""

    def __init__(self, vocab: Vocabulary, params: SamplingParams, seed_offset: int = 0):
        self.v = vocab
        self.params = params
        ll = vocab.ll
        self.chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        self.grammar = None
        try:
            self._build(params, seed_offset)
        except BaseException:
            self.free()
            raise

    def _build(self, p: SamplingParams, seed_offset: int) -> None:
        ll, chain = self.v.ll, self.chain
        if p.logit_bias:
            biases = (ll.llama_logit_bias * len(p.logit_bias))(*p.logit_bias)
            ll.llama_sampler_chain_add(
                chain, ll.llama_sampler_init_logit_bias(self.v.n_vocab, len(p.logit_bias), biases)
            )
        if p.repetition_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            ll.llama_sampler_chain_add(
                chain,
                ll.llama_sampler_init_penalties(
                    self.v.n_vocab,
                    PENALTY_LAST_N,
                    p.repetition_penalty,
                    p.frequency_penalty,
                    p.presence_penalty,
                ),
            )
        if p.temperature <= 0.0:
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        else:
            if p.top_k > 0:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_k(p.top_k))
            if p.top_p < 1.0:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_top_p(p.top_p, 1))
            if p.min_p > 0.0:
                ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_min_p(p.min_p, 1))
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_temp(p.temperature))
            seed = p.seed + seed_offset if p.seed is not None else random.getrandbits(32)
            ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        if p.grammar is not None:
            self.grammar = ll.llama_sampler_init_grammar(self.v.vocab, p.grammar.encode(), b"root")
            if not self.grammar:
                raise InvalidRequestError(
                    "The output constraint could not be compiled to a llama.cpp grammar",
                    param="response_format",
                )

    def accept_prompt(self, tokens: list[int]) -> None:
        """Let the penalties see the prompt's tail, as llama-server does."""
        p = self.params
        if p.repetition_penalty == 1.0 and not p.frequency_penalty and not p.presence_penalty:
            return
        for token in tokens[-PENALTY_LAST_N:]:
            self.v.ll.llama_sampler_accept(self.chain, token)

    def sample(self, ctx: Any, index: int) -> tuple[int, TokenLogprob | None]:
        v, ll = self.v, self.v.ll
        logprob = None
        if self.params.logprobs is not None:  # of the logits before the chain runs
            logprob = _logprob_of(v, v.logits(ctx, index), self.params.logprobs)
        if self.grammar is None:
            # The common case stays in C: llama_sampler_sample builds the candidates, applies
            # the chain and accepts the token (sampling leaves the context's logits as they are).
            token = ll.llama_sampler_sample(self.chain, ctx, index)
            return token, (logprob(token) if logprob is not None else None)
        logits = v.logits(ctx, index)
        array = v.candidates(logits)
        ll.llama_sampler_apply(self.chain, ctypes.byref(array))
        token = v.selected(array)
        if not v.allows(self.grammar, token):
            array = v.candidates(logits)
            ll.llama_sampler_apply(self.grammar, ctypes.byref(array))
            ll.llama_sampler_apply(self.chain, ctypes.byref(array))
            token = v.selected(array)
            if not v.allows(self.grammar, token):
                raise InvalidRequestError(
                    "No token can continue the required output format under these sampling "
                    "settings (a logit_bias or penalty excludes every allowed token)",
                    param="logit_bias" if self.params.logit_bias else "response_format",
                )
        ll.llama_sampler_accept(self.chain, token)
        ll.llama_sampler_accept(self.grammar, token)
        return token, (logprob(token) if logprob is not None else None)

    def free(self) -> None:
        ll = self.v.ll
        if self.chain:
            ll.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar:
            ll.llama_sampler_free(self.grammar)
            self.grammar = None


def prompt_token_logprob(v: Vocabulary, ctx: Any, index: int, token: int, top: int) -> TokenLogprob:
    """A prompt token's entry, from the logits the batch computed at position ``index`` (the
    token before it): the same raw-logit log-softmax and top-k as a sampled token's."""
    entry = _logprob_of(v, v.logits(ctx, index), top)
    assert entry is not None
    result: TokenLogprob = entry(token)
    return result


def _logprob_of(v: Vocabulary, logits: np.ndarray, top: int | None) -> Any:
    """A function giving the sampled token's logprob entry, or None when none were asked for.

    Log-probabilities are of the model's own distribution (raw logits, before penalties,
    bias and temperature), as vLLM returns them by default.
    """
    if top is None:
        return None
    x = logits.astype(np.float64)
    m = float(x.max())
    lse = m + math.log(float(np.exp(x - m).sum()))
    if top > 0:
        best = np.argpartition(-x, top)[:top] if top < len(x) else np.arange(len(x))
        best = best[np.argsort(-x[best], kind="stable")]
        alternatives = tuple(
            TopLogprob(int(t), v.token_bytes(int(t), special=True), float(x[t] - lse)) for t in best
        )
    else:
        alternatives = ()

    def entry(token: int) -> TokenLogprob:
        return TokenLogprob(
            token, v.token_bytes(token, special=True), float(x[token] - lse), alternatives
        )

    return entry
