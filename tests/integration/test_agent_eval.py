"""`archon agent eval` end to end: the real model server (bundled SmolLM2), a real knowledge
base over two of Archon's own docs, the agent, and the command asking through it over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from archon.agent.answer_eval import Question, contains, is_refusal, run
from tests.support.servers import Server, free_port, run_cli
from tests.support.stack import running_agent, start_kb

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUESTIONS = [
    {
        "id": "sync",
        "question": "How do I sync the knowledge base?",
        "facts": [["archon kb sync"], ["/sync"]],
        "cite": ["archon:docs/knowledge-base.md"],
        "answerable": True,
        "split": "tune",
    },
    {
        "id": "none",
        "question": "How do I back up a PostgreSQL database with pg_dump?",
        "facts": [],
        "cite": [],
        "answerable": False,
        "split": "test",
    },
]


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("eval-kb")
    sources = tmp / "sources.yaml"
    sources.write_text(
        "sources:\n"
        "  - name: archon\n"
        f"    path: {ROOT}\n"
        '    include: ["docs/knowledge-base.md", "docs/api.md"]\n'
    )
    kb = start_kb(tmp, sources)
    try:
        yield kb
    finally:
        kb.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, server: Server, kb: Server) -> Iterator[Server]:
    # Short answers and context keep two questions quick on two shared cores.
    env = {
        "ARCHON_AGENT_MAX_CONTEXT_CHARS": "2000",
        "ARCHON_AGENT_GENERATION": '{"default": {"max_tokens": 48}, "models": {}}',
    }
    with running_agent(tmp_path_factory.mktemp("eval"), [server.url], kb.url, env) as agent:
        yield agent


def test_eval_asks_through_the_agent_and_scores_each_split(agent: Server, tmp_path: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    out = tmp_path / "out.json"
    done = run_cli(
        "agent",
        "eval",
        str(answers),
        "--agent",
        agent.url,
        "--json",
        str(out),
        "--concurrency",
        "2",
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    table = done.stdout.splitlines()
    assert table[0].startswith("split") and "cite-prec" in table[0]
    assert [row.split()[0] for row in table[1:]] == ["tune", "test", "all"]
    assert "sync " in done.stderr and "tokens" in done.stderr  # a line per question

    result = json.loads(out.read_text())
    assert [a["id"] for a in result["answers"]] == ["sync", "none"]  # in order, though concurrent
    by_id = {a["id"]: a for a in result["answers"]}
    sync, none = by_id["sync"], by_id["none"]
    for a in (sync, none):
        assert a["error"] is None
        assert a["text"].strip()
        assert 1 <= a["completion_tokens"] <= 48  # the agent's default from the setting
        assert a["ttft"] is not None and 0 < a["ttft"] <= a["seconds"]
    # The sources came back over the stream and name source:path.
    assert sync["sources"] and all(s.startswith("archon:docs/") for s in sync["sources"])
    assert sync["retrieved_hit"] is ("archon:docs/knowledge-base.md" in sync["sources"])
    assert set(sync["cited"]) <= set(sync["sources"])
    # The scores are the library's, computed on what the agent really answered.
    assert sync["essential"] == contains(sync["text"], ["archon kb sync"])
    assert none["refused"] == is_refusal(none["text"])
    tune = next(s for s in result["scores"] if s["split"] == "tune")
    assert tune["answerable"] == 1 and tune["fact_recall"] == float(sync["essential"])
    test = next(s for s in result["scores"] if s["split"] == "test")
    assert test["answerable"] == 0 and test["refusal_rate"] == float(none["refused"])


def test_eval_against_no_agent_fails_with_one_line(tmp_path: Path) -> None:
    answers = tmp_path / "answers.jsonl"
    answers.write_text(json.dumps(QUESTIONS[0]) + "\n")
    url = f"http://127.0.0.1:{free_port()}"
    done = run_cli("agent", "eval", str(answers), "--agent", url, "--quiet")
    assert done.returncode == 1
    assert done.stderr.startswith(f"archon: error: no question got an answer from {url}")
    bad = run_cli("agent", "eval", str(answers), "--split", "nope")
    assert bad.returncode == 2
    assert "holds no question of split 'nope'" in bad.stderr
    worse = run_cli("agent", "eval", str(answers), "--set", "temperature")
    assert worse.returncode == 2 and "expected NAME=VALUE" in worse.stderr


def test_the_lead_quote_answers_the_make_run_question_and_is_counted(
    tmp_path: Path, server: Server, kb: Server
) -> None:
    """The question a newcomer asks first: the answer starts with the docs' `archon kb sync`,
    cites docs/knowledge-base.md, and its length counts the quote (usage counts the model's)."""
    env = {
        "ARCHON_AGENT_MAX_CONTEXT_CHARS": "2000",
        "ARCHON_AGENT_GENERATION": '{"default": {"max_tokens": 16, "lead_quote": true}}',
    }

    def count(text: str) -> int:
        resp = httpx.post(server.url + "/tokenize", json={"prompt": text}, timeout=30)
        resp.raise_for_status()
        return int(resp.json()["count"])

    sync = Question(**QUESTIONS[0])
    with running_agent(tmp_path, [server.url], kb.url, env) as led:
        [answer] = run(led.url, [sync], count_tokens=count)
    assert answer.error is None
    head = answer.text.split("\n\n", 1)[0]
    assert head.startswith("From [") and "docs/knowledge-base.md, line " in head
    assert "archon kb sync" in "\n".join(answer.text.splitlines()[:6])  # in the first lines
    assert answer.essential
    assert "archon:docs/knowledge-base.md" in answer.cited
    assert answer.completion_tokens is not None and answer.completion_tokens <= 16
    assert answer.answer_tokens is not None and answer.answer_tokens > answer.completion_tokens
