"""Prompt-lookup (n-gram) speculative decoding for the CPU engine: no draft model.

A sequence's next tokens are guessed from its own text: find the most recent earlier place
where its last ``n`` tokens occurred (prompt or output; the longest ``n`` from ``ngram_max``
down to ``ngram_min`` that matches) and draft the ``k`` tokens that followed there. An answer
that quotes its context (a RAG answer copying a command or a sentence of an excerpt) is
guessed right for whole runs of tokens.

The engine puts the draft into the batch it already decodes, after the sequence's pending
token, so one ``llama_decode`` gives the logits of every draft position; the other sequences
keep decoding in the same batch. Verification then samples position by position with the
sequence's own sampler chain, exactly as without speculation, and stops at the first sampled
token that differs from the draft (that token is kept: it is the next pending token). What the
draft wrote into the KV cache past that point is removed.

The acceptance rule. Sampling each position with the sequence's own chain and comparing is the
speculative-sampling rule (Leviathan et al. 2023; Chen et al. 2023) with a deterministic draft,
q = one-hot(d): draft token d is accepted with probability p(d) (min(1, p(d)/q(d)) with
q(d) = 1), and on rejection the token is distributed as p with d removed and renormalised
(norm(max(0, p - q))). So the output distribution is the model's own, at any temperature, and
since each emitted token costs the sampler exactly one draw (its seeded RNG, its penalty
window and its grammar advance as without speculation) a seeded request gives the same text
with speculation on and off, given the same logits. The logits are not always the same:
llama.cpp's CPU kernels pick their path by the batch's shape, so a position verified in a
batch of several rows can get logits slightly different from the same position decoded alone
(benchmarks/spec_bound.py), and greedy output can part from the output without speculation at
a near-tie. That, and the cost of a verification batch on a CPU (about linear in its rows for
a small model: the same benchmark), is why speculation is off by default.

Adaptive: a sequence whose drafts are mostly rejected stops drafting for a while (the pause
doubles each time the acceptance stays low), so text that quotes nothing costs little.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# Acceptance (accepted / drafted, smoothed over recent drafts) below which a sequence pauses
# drafting; a wrong draft costs its tokens' share of a batch, a right one saves a whole step.
MIN_ACCEPTANCE = 0.3
SMOOTHING = 0.3  # weight of the newest draft in the running acceptance
FIRST_PAUSE = 8  # tokens without drafts after the first low-acceptance verdict
MAX_PAUSE = 128


@dataclass(frozen=True)
class SpeculationConfig:
    """``tokens``: draft length k; ``ngram_max``/``ngram_min``: the lookup n-gram sizes tried,
    longest first (vLLM's ``prompt_lookup_max``/``prompt_lookup_min``)."""

    tokens: int = 4
    ngram_max: int = 3
    ngram_min: int = 2

    def __post_init__(self) -> None:
        if self.tokens < 1 or not 1 <= self.ngram_min <= self.ngram_max:
            raise ValueError(f"bad speculation settings: {self}")


class NgramDrafter:
    """One sequence's token history with an index of where each n-gram last ended, and the
    adaptive pause. ``append`` and ``draft`` are O(ngram sizes), whatever the history's length."""

    def __init__(self, config: SpeculationConfig, tokens: list[int]):
        self.config = config
        self.tokens: list[int] = []
        sizes = range(config.ngram_min, config.ngram_max + 1)
        # n -> {the n tokens: the index of the last token of their latest occurrence}
        self._last_end: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in sizes}
        # n -> the latest earlier end of the n-gram that ends the history now (-1: none)
        self._match: dict[int, int] = dict.fromkeys(sizes, -1)
        self.acceptance = 1.0
        self._pause = 0
        self._next_pause = FIRST_PAUSE
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        tokens = self.tokens
        tokens.append(token)
        end = len(tokens) - 1
        if self._pause:
            self._pause -= 1
        for n, table in self._last_end.items():
            if end + 1 < n:
                continue
            key = tuple(tokens[end + 1 - n :])
            self._match[n] = table.get(key, -1)
            table[key] = end

    def draft(self, limit: int) -> list[int]:
        """Up to ``min(k, limit)`` tokens that followed the latest earlier occurrence of the
        history's last n-gram; none while paused or when nothing matches."""
        k = min(self.config.tokens, limit)
        if k <= 0 or self._pause:
            return []
        for n in range(self.config.ngram_max, self.config.ngram_min - 1, -1):
            end = self._match.get(n, -1)
            if end >= 0:
                return self.tokens[end + 1 : end + 1 + k]
        return []

    def verdict(self, drafted: int, accepted: int) -> None:
        """Fold one verification into the running acceptance; pause drafting when it is low."""
        rate = accepted / drafted
        self.acceptance = (1 - SMOOTHING) * self.acceptance + SMOOTHING * rate
        if self.acceptance < MIN_ACCEPTANCE:
            self._pause = self._next_pause
            self._next_pause = min(2 * self._next_pause, MAX_PAUSE)
            self.acceptance = MIN_ACCEPTANCE + (1 - MIN_ACCEPTANCE) / 2  # a fresh start
        elif rate >= 0.5:
            self._next_pause = FIRST_PAUSE


def verify(draft: list[int], sample: Callable[[int], int | None]) -> tuple[list[int], int]:
    """Sample positions 0..len(draft) in order (position i's logits follow draft[:i]) until a
    sampled token differs from the draft or ``sample`` returns None (the sequence finished).

    Returns the tokens sampled (each one is output) and how many draft tokens were accepted.
    """
    sampled: list[int] = []
    for i in range(len(draft) + 1):
        token = sample(i)
        if token is None:
            break
        sampled.append(token)
        if i == len(draft) or token != draft[i]:
            break
    n = 0  # accepted: the draft's prefix that the sampled tokens equal
    while n < len(draft) and n < len(sampled) and sampled[n] == draft[n]:
        n += 1
    return sampled, n
