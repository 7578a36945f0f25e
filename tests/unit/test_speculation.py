"""Prompt-lookup speculation's pure parts: the n-gram drafter, the adaptive pause, and the
acceptance rule, whose output distribution is checked statistically on a 4-token vocabulary
with a fake logits source (the engine's real-model tests are in
tests/integration/test_engine_speculation.py)."""

from __future__ import annotations

import numpy as np
import pytest

from archon.modelserver.engines.base import SpecDecodeStats
from archon.modelserver.engines.llamacpp_speculation import (
    NgramDrafter,
    SpeculationConfig,
    verify,
)


def test_drafts_what_followed_the_latest_earlier_occurrence() -> None:
    drafter = NgramDrafter(SpeculationConfig(tokens=3, ngram_max=2, ngram_min=1), [])
    for token in [1, 2, 3, 4, 5, 9, 1, 2, 7, 8, 6, 1, 2]:
        drafter.append(token)
    # "1 2" last ended at index 7 (followed by 7 8 6), not at index 1 (followed by 3 4 5).
    assert drafter.draft(limit=10) == [7, 8, 6]
    assert drafter.draft(limit=2) == [7, 8]
    assert drafter.draft(limit=0) == []


def test_longest_ngram_wins_and_nothing_is_drafted_without_a_match() -> None:
    drafter = NgramDrafter(SpeculationConfig(tokens=2, ngram_max=3, ngram_min=2), [5, 6, 7, 8])
    assert drafter.draft(limit=4) == []  # "7 8" never occurred before
    for token in [1, 6, 7, 9, 5, 6, 7]:
        drafter.append(token)
    # "5 6 7" (n=3) ended at index 2 -> 8 ...; "6 7" (n=2) last ended at index 6 -> 9 5.
    assert drafter.draft(limit=4) == [8, 1]


def test_low_acceptance_pauses_drafting_and_the_pause_grows() -> None:
    drafter = NgramDrafter(SpeculationConfig(tokens=2, ngram_max=1, ngram_min=1), [1, 2, 1])
    assert drafter.draft(limit=4) == [2, 1]

    def reject_until_paused() -> int:
        for _ in range(20):
            drafter.verdict(drafted=2, accepted=0)
            if not drafter.draft(limit=4):
                break
        paused = 0
        while not drafter.draft(limit=4):
            drafter.append(1)
            paused += 1
        return paused

    first = reject_until_paused()
    assert first >= 8
    assert reject_until_paused() > first


def test_verify_stops_at_the_first_difference_and_keeps_that_token() -> None:
    sampled = iter([10, 11, 99, 12])
    tokens, accepted = verify([10, 11, 12], lambda i: next(sampled))
    assert (tokens, accepted) == ([10, 11, 99], 2)
    tokens, accepted = verify([10, 11], lambda i: [10, 11, 42][i])
    assert (tokens, accepted) == ([10, 11, 42], 2)  # every draft token held: one bonus token
    finished = verify([10, 11, 12], lambda i: 10 if i == 0 else None)
    assert finished == ([10], 1)  # the sequence ended on an accepted token


def test_stats_count_as_vllm_does() -> None:
    stats = SpecDecodeStats(accepted_per_position=[0, 0, 0])
    stats.record(drafted=3, accepted=2)
    stats.record(drafted=2, accepted=0)
    assert (stats.drafts, stats.draft_tokens, stats.accepted_tokens) == (2, 5, 2)
    assert stats.accepted_per_position == [1, 1, 0]


def test_config_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError):
        SpeculationConfig(tokens=2, ngram_max=1, ngram_min=2)


# A fake model over a 4-token vocabulary: the next token's distribution depends on the last
# token only. Tokens are drawn with a seeded generator, as the engine's seeded sampler does.
P = np.array(
    [
        [0.50, 0.30, 0.15, 0.05],
        [0.10, 0.20, 0.60, 0.10],
        [0.25, 0.25, 0.25, 0.25],
        [0.70, 0.10, 0.10, 0.10],
    ]
)


def _generate(rng: np.random.Generator, start: int, length: int, draft: list[int] | None) -> list:
    """``length`` tokens after ``start``; with a draft, by verify() in steps of 1 + len(draft)."""
    out: list[int] = []
    last = start
    while len(out) < length:
        if draft is None:
            last = int(rng.choice(4, p=P[last]))
            out.append(last)
            continue

        def sample(i: int, last: int = last, draft: list[int] = draft) -> int:
            # Position i's distribution follows the draft's first i tokens, as a batch gives.
            prev = last if i == 0 else draft[i - 1]
            return int(rng.choice(4, p=P[prev]))

        tokens, _ = verify(draft, sample)
        out += tokens
        last = tokens[-1]
    return out[:length]


def test_acceptance_rule_keeps_the_output_distribution() -> None:
    """Chi-square of speculative outputs against the model's own pairs distribution, and the
    rule itself: draft d accepted with probability p(d); after a rejection the token follows p
    with d removed and renormalised."""
    rng = np.random.default_rng(1234)
    runs = 6000
    pairs = np.zeros((4, 4))
    first_two_expected = np.zeros((4, 4))
    for a in range(4):
        for b in range(4):
            first_two_expected[a, b] = P[3, a] * P[a, b]
    rejected_after_d = np.zeros(4)
    accepted_first = 0
    for _ in range(runs):
        out = _generate(rng, 3, 2, draft=[0, 0])
        pairs[out[0], out[1]] += 1
        if out[0] == 0:
            accepted_first += 1
        else:
            rejected_after_d[out[0]] += 1
    expected = first_two_expected.flatten() * runs
    chi2 = float((((pairs.flatten() - expected) ** 2) / expected).sum())
    assert chi2 < 37.7, chi2  # 15 degrees of freedom, p = 0.001
    # p(d) = P[3, 0] = 0.7 is the acceptance rate of the first draft token.
    assert abs(accepted_first / runs - 0.7) < 4 * np.sqrt(0.7 * 0.3 / runs)
    # Rejected: p with d removed and renormalised, here 1/3 each for tokens 1, 2, 3.
    share = rejected_after_d[1:] / rejected_after_d[1:].sum()
    assert np.allclose(share, [1 / 3] * 3, atol=0.04)


def test_seeded_output_is_the_same_with_and_without_drafts() -> None:
    """Each output token costs one draw, so the same seed gives the same tokens."""
    plain = _generate(np.random.default_rng(7), 0, 200, draft=None)
    drafted = _generate(np.random.default_rng(7), 0, 200, draft=[0, 1, 2])
    assert plain == drafted


def test_the_settings_reach_the_cpu_engines_config() -> None:
    """The ConfigMap keys as the CPU engine gets them (archon.modelserver.runtime), off by
    default."""
    from archon.modelserver.runtime import speculation_config
    from archon.modelserver.settings import load_model_server_settings

    assert speculation_config(load_model_server_settings(None, {})) is None
    settings = load_model_server_settings(
        None,
        {
            "speculative": True,
            "speculative_tokens": 6,
            "speculative_ngram_max": 4,
            "speculative_ngram_min": 1,
        },
    )
    assert speculation_config(settings) == SpeculationConfig(tokens=6, ngram_max=4, ngram_min=1)
