"""What an echoed excerpt header leaves before the agent's stop sequence: held back in a
stream until the next delta shows what it was, dropped when the answer stopped there."""

from __future__ import annotations

from typing import Any

from archon.agent.relay import hold_echo_starts, trim_echo_start


def deltas(*parts: tuple[str, str | None]) -> str:
    held: dict[Any, str] = {}
    out = []
    for content, finish in parts:
        choices = [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
        hold_echo_starts(choices, held)
        out.append(choices[0]["delta"]["content"])
    return "".join(out)


def test_a_citation_split_across_deltas_comes_through_whole() -> None:
    assert deltas(("Run it [", None), ("1] now.", None), ("", "stop")) == "Run it [1] now."
    assert deltas(("See [2", None), ("].", "length")) == "See [2]."


def test_the_start_of_an_echoed_header_is_dropped_at_the_stop() -> None:
    # "[5] archon: docs/..." ended by the stop "] archon: ": the model server sent "[5".
    assert deltas(("Use the command.\n\n[", None), ("5", None), ("", "stop")) == (
        "Use the command.\n\n"
    )
    assert (
        deltas(
            ("[5", "stop"),
        )
        == ""
    )
    # Cut by the length limit instead, the text is the model's: kept.
    assert deltas(("Try [", None), ("3", "length")) == "Try [3"


def test_a_whole_answer_loses_the_same_remnant() -> None:
    assert trim_echo_start("Run `archon kb sync`.\n\n[5") == "Run `archon kb sync`.\n\n"
    assert trim_echo_start("Run it [1].") == "Run it [1]."
