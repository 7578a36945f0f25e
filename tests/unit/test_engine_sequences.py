"""The CPU engine's pure rules: stop strings split across tokens, and which slot a prompt reuses."""

from __future__ import annotations

from archon.modelserver.engines.llamacpp_sequence import (
    Slot,
    choose_slots,
    shared_prefix,
    split_stop,
)


def test_stop_string_split_across_tokens() -> None:
    stops = ("</answer>",)
    text, held, finish = split_stop("The answer </ans", stops)
    assert (text, held, finish) == ("The answer ", "</ans", None)
    text, held, finish = split_stop(held + "wer> trailing", stops)
    assert (text, held, finish) == ("", "", "stop")


def test_the_earliest_of_several_stop_strings_cuts_the_text() -> None:
    assert split_stop("a STOP b END c", ("END", "STOP")) == ("a ", "", "stop")


def test_without_stop_strings_everything_is_sent() -> None:
    assert split_stop("text </ans", ()) == ("text </ans", "", None)


def test_only_a_possible_start_of_a_stop_string_is_held_back() -> None:
    assert split_stop("a <b", ("</answer>",)) == ("a <b", "", None)
    assert split_stop("a <", ("</answer>",)) == ("a ", "<", None)


def test_shared_prefix() -> None:
    assert shared_prefix([1, 2, 3], [1, 2, 3, 4]) == 3
    assert shared_prefix([1, 2, 9, 4], [1, 2, 3, 4]) == 2
    assert shared_prefix([], [1]) == 0
    assert shared_prefix([5], [1]) == 0


def test_the_slot_with_the_longest_cached_prefix_is_chosen_and_keeps_one_token_to_evaluate() -> (
    None
):
    cold = Slot(0, cached=[], last_used=1.0)
    warm = Slot(1, cached=[1, 2, 3, 7], last_used=5.0)
    older = Slot(2, cached=[9], last_used=0.5)
    first, others, keep = choose_slots([cold, warm, older], [1, 2, 3])
    assert first is warm
    assert others == [older, cold]  # the rest, least recently used first
    # The whole prompt is cached, but its last token is evaluated again for the logits.
    assert keep == 2


def test_among_equal_prefixes_the_least_recently_used_slot_is_chosen() -> None:
    recent = Slot(0, cached=[4], last_used=9.0)
    old = Slot(1, cached=[5], last_used=1.0)
    first, _, keep = choose_slots([recent, old], [1, 2])
    assert first is old and keep == 0


def test_a_cache_the_prompt_only_starts_like_is_left_to_its_own_conversation() -> None:
    """Two conversations under one system prompt: the second does not take the first one's
    slot (only the system prompt is shared), so the first one's next turn finds its history."""
    system = list(range(10))
    first_conversation = Slot(0, cached=[*system, *range(100, 190)], last_used=5.0)
    empty = Slot(1, cached=[], last_used=1.0)
    chosen, _, keep = choose_slots([first_conversation, empty], [*system, *range(500, 560)])
    assert chosen is empty and keep == 0

    # No empty slot: the least recently used one, still reusing the shared system prompt.
    other = Slot(2, cached=[*system, *range(300, 340)], last_used=2.0)
    chosen, _, keep = choose_slots([first_conversation, other], [*system, *range(500, 560)])
    assert chosen is other and keep == len(system)

    # The first conversation's next turn continues its cache: that slot, its whole history kept.
    next_turn = [*first_conversation.cached, *range(700, 720)]
    chosen, _, keep = choose_slots([other, first_conversation, empty], next_turn)
    assert chosen is first_conversation and keep == len(first_conversation.cached)
