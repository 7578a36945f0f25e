"""The agent's prompt building, options and keys (pure functions, no servers)."""

from __future__ import annotations

import pytest

from archon.agent.answer_eval import is_refusal
from archon.agent.auth import KeyRing, hash_key
from archon.agent.rag import (
    PREAMBLE,
    REFUSAL,
    RULES,
    SNIPPET_CHARS,
    ArchonOptions,
    augment,
    conversation_key,
    echo_stops,
    lead_passage,
    lead_quote,
    mark_cited,
    quotable,
    relevance,
    retrieval_query,
    without_lead_quote,
)
from archon.errors import AuthenticationError, ConfigError, InvalidRequestError


def chunk(n: int, text: str = "Some text about PromQL selectors. " * 5) -> dict:
    return {
        "id": f"c{n}",
        "score": 1.0 / n,
        "text": text,
        "heading_path": ["Querying basics", f"Part {n}"],
        "source": "prometheus",
        "path": f"docs/querying/f{n}.md",
        "start_line": n,
        "end_line": n + 10,
        "url": f"https://example.test/f{n}.md#L{n}",
        "commit": "abc",
    }


def test_excerpts_go_in_the_last_user_turn_with_numbered_blocks() -> None:
    messages = [
        {"role": "user", "content": "How do I install it?"},
        {"role": "assistant", "content": "With helm."},
        {"role": "user", "content": "How do I select series?"},
    ]
    augmented, sources = augment(messages, [chunk(1), chunk(2)], max_chars=6000)
    assert [m["role"] for m in augmented] == ["system", "user", "assistant", "user"]
    assert augmented[0]["content"] == PREAMBLE
    assert augmented[1:3] == messages[:2]  # earlier turns as they were
    last = augmented[-1]["content"]
    assert "[1] prometheus: docs/querying/f1.md — Querying basics \u203a Part 1" in last
    assert "[2] prometheus: docs/querying/f2.md" in last
    assert [s["index"] for s in sources] == [1, 2]
    assert sources[0]["url"] == "https://example.test/f1.md#L1"
    assert messages[-1] == {"role": "user", "content": "How do I select series?"}  # not mutated


def test_the_rules_come_after_the_excerpts_then_the_question() -> None:
    augmented, _ = augment([{"role": "user", "content": "q"}], [chunk(1), chunk(2)], 6000)
    last = augmented[-1]["content"]
    assert last.startswith("Documentation excerpts:")
    assert last.index("[1] prometheus") < last.index("[2] prometheus") < last.index(RULES)
    assert last.endswith(RULES + "\n\nQuestion: q")
    assert REFUSAL in RULES and "[1]" in RULES and "backticks" in RULES
    assert is_refusal(REFUSAL)  # what the model is told to say counts as a refusal


def test_an_existing_system_message_is_extended_not_duplicated() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "q"},
    ]
    augmented, _ = augment(messages, [chunk(1)], max_chars=6000)
    assert [m["role"] for m in augmented] == ["system", "user"]
    assert augmented[0]["content"] == "You are terse.\n\n" + PREAMBLE


def test_every_chunk_gets_a_share_of_the_budget_around_its_best_passage() -> None:
    filler = "\n\n".join(f"Paragraph {i} of filler words here." for i in range(60))  # 2.2k
    texts = [filler + f"\n\nThe answer {n} is `archon kb sync`.\n\n" + filler for n in (1, 2, 3)]
    augmented, sources = augment(
        [{"role": "user", "content": "How do I sync?"}],
        [chunk(n, t) for n, t in zip((1, 2, 3), texts, strict=True)],
        3000,
        query="How do I sync?",
    )
    assert len(sources) == 3  # before, the first two long chunks filled it
    prompt = augmented[-1]["content"]
    assert len(prompt) < 3000 + len(RULES) + 200
    for n in (1, 2, 3):
        assert f"The answer {n} is `archon kb sync`." in prompt  # each window holds its match
    assert sources[0]["_excerpt"] in texts[0] and len(sources[0]["_excerpt"]) < len(texts[0])
    assert sources[0]["snippet"].startswith("Paragraph")  # of the window, not the chunk start
    assert "The answer 1 is" in sources[0]["_excerpt"]
    # The excerpt's first file line: the chunk's start_line plus the lines skipped.
    line = sources[0]["_excerpt_line"]
    assert texts[0].splitlines()[line - 1] == sources[0]["_excerpt"].splitlines()[0]


def test_a_share_too_small_to_help_is_left_out() -> None:
    long = "word " * 400
    _, sources = augment(
        [{"role": "user", "content": "q"}], [chunk(i, long) for i in range(1, 9)], 1200
    )
    assert len(sources) == 4  # 8 shares of 150 chars would be slivers: the first 4 get 300


def test_no_chunks_leaves_the_messages_alone() -> None:
    messages = [{"role": "user", "content": "q"}]
    assert augment(messages, [], 6000) == (messages, [])


def test_retrieval_query_uses_the_last_user_turns() -> None:
    messages = [
        {"role": "user", "content": "How do I install Argo CD?"},
        {"role": "assistant", "content": "Use the manifests."},
        {"role": "user", "content": [{"type": "text", "text": "and upgrade it?"}]},
    ]
    assert (
        retrieval_query(messages, history_turns=1) == "How do I install Argo CD?\nand upgrade it?"
    )
    assert retrieval_query(messages, history_turns=0) == "and upgrade it?"
    assert retrieval_query([{"role": "system", "content": "x"}], 1) == ""


def test_conversation_key_is_stable_across_turns() -> None:
    first = [{"role": "user", "content": "hello"}]
    later = [*first, {"role": "assistant", "content": "hi"}, {"role": "user", "content": "more"}]
    assert conversation_key("m", first) == conversation_key("m", later)
    assert conversation_key("m", [{"role": "user", "content": "other"}]) != conversation_key(
        "m", first
    )


def test_citations_are_marked() -> None:
    sources = [{"index": 1}, {"index": 2}]
    assert [s["cited"] for s in mark_cited(sources, "See [2].")] == [False, True]
    sources = [{"index": 1}, {"index": 2}, {"index": 3}]
    assert [s["cited"] for s in mark_cited(sources, "See [1, 3].")] == [True, False, True]


def test_a_quote_of_an_excerpt_marks_it_cited() -> None:
    chunks = [
        chunk(1, "Run `archon kb sync` to index every source once, then start the service."),
        chunk(2, "The agent listens on port 8080 and forwards chats to the model servers."),
    ]
    _, sources = augment([{"role": "user", "content": "q"}], chunks, 6000)

    def cited(answer: str) -> list[bool]:
        marked = mark_cited(sources, answer)
        assert all("_excerpt" not in s for s in marked)  # the prompt's text stays inside
        return [s["cited"] for s in marked]

    assert cited("Use `archon kb sync`.") == [True, False]  # a command copied from [1]
    assert cited("Use `archon kb reindex`.") == [False, False]  # in no excerpt
    assert cited("Try `on`.") == [False, False]  # too short to tell
    assert cited("It listens on port 8080 and forwards chats to the model.") == [False, True]
    assert cited("It listens on port 8080 and forwards requests.") == [False, False]  # 7 words
    assert cited("See [1]; `archon kb sync`") == [True, False]
    assert "_excerpt" in sources[0]  # kept for marking, until the answer is done


def test_sources_carry_a_short_snippet() -> None:
    _, sources = augment([{"role": "user", "content": "q"}], [chunk(1, "Short\n\n  text.")], 6000)
    assert sources[0]["snippet"] == "Short text."
    _, sources = augment([{"role": "user", "content": "q"}], [chunk(1, "## Off\n\nSet x.")], 6000)
    assert sources[0]["snippet"] == "Set x."  # the heading trail shows the headings
    setext = "Sync options\n============\n\n    archon kb sync\n\nSet x."  # CommonMark's reading
    _, sources = augment([{"role": "user", "content": "q"}], [chunk(1, setext)], 6000)
    assert sources[0]["snippet"] == "archon kb sync Set x."
    code = "Run:\n\n```bash\narchon kb sync\n```"
    _, sources = augment([{"role": "user", "content": "q"}], [chunk(1, code)], 6000)
    assert sources[0]["snippet"] == "Run: archon kb sync"  # no fence marks in a flat snippet
    _, sources = augment([{"role": "user", "content": "q"}], [chunk(1, "Some  text. " * 40)], 6000)
    snippet = sources[0]["snippet"]
    assert snippet.startswith("Some text. Some text.") and snippet.endswith(" …")
    assert len(snippet) <= SNIPPET_CHARS + 2 and "  " not in snippet


def test_archon_options_reject_unknown_keys_with_the_param() -> None:
    assert ArchonOptions.parse({"rag": False, "top_k": 3}).top_k == 3
    with pytest.raises(InvalidRequestError) as err:
        ArchonOptions.parse({"rga": False})
    assert err.value.param == "archon.rga"
    with pytest.raises(InvalidRequestError) as err:
        ArchonOptions.parse({"top_k": 0})
    assert err.value.param == "archon.top_k"
    with pytest.raises(InvalidRequestError):
        ArchonOptions.parse({"filters": {"sauce": "x"}})
    with pytest.raises(InvalidRequestError):
        ArchonOptions.parse("rag")


def test_keys_plain_or_digested(tmp_path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"# team keys\n{hash_key('alpha')}  alice\nbeta\n\n")
    ring = KeyRing.load(["gamma"], keys_file)
    for key in ("alpha", "beta", "gamma"):
        ring.check(f"Bearer {key}")
    with pytest.raises(AuthenticationError) as err:
        ring.check("Bearer delta")
    assert err.value.code == "invalid_api_key"
    with pytest.raises(AuthenticationError) as err:
        ring.check(None)
    assert err.value.code == "missing_api_key"
    with pytest.raises(AuthenticationError):
        ring.check("Basic YWxwaGE=")
    assert hash_key("alpha").encode() not in b"".join(ring.digests)
    KeyRing.load([], None).check(None)  # no keys: open


def test_a_bad_keys_file_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="ARCHON_AGENT_API_KEYS_FILE"):
        KeyRing.load([], tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no key"):
        KeyRing.load([], empty)


def test_the_lead_quote_is_the_best_passage_with_its_file_and_line() -> None:
    text = (
        "## Sync\n\nThe service syncs every hour.\n\nTo sync now, run:\n\n"
        "```bash\narchon kb sync --server http://localhost:8100\n```\n"
    )
    chunks = [chunk(1), {**chunk(2, text), "path": "docs/knowledge-base.md", "start_line": 40}]
    _, sources = augment([{"role": "user", "content": "q"}], chunks, 6000, "q")
    lead = lead_quote("How do I sync the knowledge base now?", sources)
    assert lead == (
        "From [2] docs/knowledge-base.md, line 44:\n\n"
        "To sync now, run:\n\n```bash\narchon kb sync --server http://localhost:8100\n```\n\n"
    )
    assert text.splitlines()[44 - 40] == "To sync now, run:"  # line 44 of the file
    # The quote names its source, so that source is marked cited.
    assert [s["cited"] for s in mark_cited(sources, lead + "Run it.")] == [False, True]
    assert lead_quote("zebra crossings", sources) is None


def test_earlier_answers_reach_the_model_without_their_lead_quote_header() -> None:
    """The header's number named that turn's excerpts; shown it, SmolLM2 began the next answer
    with a made-up "From [3] docs/archangel-doctor.md" (seen on the chat page)."""
    text = "## Sync\n\nTo sync now, run:\n\n```bash\narchon kb sync\n```\n"
    chunks = [{**chunk(1, text), "path": "docs/knowledge-base.md", "start_line": 40}]
    _, sources = augment([{"role": "user", "content": "q"}], chunks, 6000, "q")
    lead = lead_quote("How do I sync the knowledge base now?", sources)
    assert lead is not None and lead.startswith("From [1] docs/knowledge-base.md, line 42:")
    earlier = {"role": "assistant", "content": lead + "Run it."}
    messages = [
        {"role": "user", "content": "How do I sync the knowledge base now?"},
        earlier,
        {"role": "user", "content": "And how often does it sync?"},
    ]
    augmented, _ = augment(messages, [chunk(2)], 6000, "sync")
    assert augmented[2]["content"] == lead.split(":\n\n", 1)[1] + "Run it."
    assert not augmented[2]["content"].startswith("From [")
    assert messages[1] is earlier and earlier["content"].startswith("From [1]")  # not mutated
    # Only the agent's own header, and only at the start.
    for kept in ("From the docs: run it.", "Run it. From [1] x.md:\n\ny", "From [a] x:\n\ny"):
        assert without_lead_quote(kept) == kept


def test_echo_stops_end_an_answer_that_copies_an_excerpt_header() -> None:
    chunks = [chunk(1), {**chunk(2), "source": "archon"}, chunk(3)]
    messages, sources = augment([{"role": "user", "content": "q"}], chunks, 6000)
    stops = echo_stops(sources)
    assert stops == ["] prometheus: ", "] archon: ", "] Prometheus: ", "] Archon: "]
    # Each is what the prompt's own excerpt headers hold, so an echo of one ends the answer.
    prompt = messages[-1]["content"]
    assert all(stop in prompt for stop in stops[:2])
    many = [{**chunk(n), "source": f"s{n}"} for n in range(1, 7)]
    _, sources = augment([{"role": "user", "content": "q"}], many, 6000)
    assert len(echo_stops(sources)) == 4  # OpenAI takes four stop sequences at most


def test_relevance_is_the_share_of_the_questions_words_the_best_passage_holds() -> None:
    text = "A readiness probe tells the kubelet when a pod can accept traffic.\n\nSay so."
    _, sources = augment([{"role": "user", "content": "q"}], [chunk(1, text)], 6000)

    def of(question: str) -> float:
        return relevance(question, lead_passage(question, sources))

    # readiness, probe(s), pod, traffic of readiness, probes, pod, get(s), traffic, decide
    assert of("How do readiness probes decide when a pod gets traffic?") == 4 / 6
    assert of("Does a readiness probe see pod traffic?") == 4 / 5
    assert of("Readiness probe?") == 1.0  # a short question: every word held
    assert of("What does a readiness gate do?") == 0.0  # short, and "gate" is not held
    assert of("Say hi.") == 0.0  # "say" alone is held: not about this passage
    assert of("Do kettles steep traffic?") == 0.0  # one word held of three
    assert of("What is the capital of France?") == 0.0  # no passage shares a word
    assert of("Thanks!") == 0.0
    assert relevance("", None) == 0.0
    # A quote needs more: three words held, or three in five of a short question.
    best = lead_passage("Does a readiness probe see pod traffic?", sources)
    assert quotable("Does a readiness probe see pod traffic?", best)
    assert not quotable("Would a readiness dashboard update weekly?", best)  # 1 of 4
    assert not quotable("Readiness for traffic upgrades, rollouts, canaries?", best)  # 2 of 5
    assert quotable("Readiness probe?", best)  # short: every word held
    assert not quotable("Say hi.", best)


def test_min_relevance_is_read_from_the_environment_and_checked(monkeypatch) -> None:
    from archon.agent.settings import load_agent_settings

    assert load_agent_settings().min_relevance == 0.25
    monkeypatch.setenv("ARCHON_AGENT_MIN_RELEVANCE", "0")  # 0: whatever was retrieved is used
    assert load_agent_settings().min_relevance == 0.0
    monkeypatch.setenv("ARCHON_AGENT_MIN_RELEVANCE", "1.5")
    with pytest.raises(ConfigError) as err:
        load_agent_settings()
    assert "min_relevance (ARCHON_AGENT_MIN_RELEVANCE)" in str(err.value)
    assert "\n" not in str(err.value)
