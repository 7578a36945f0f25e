"""Knowledge that stays with its team (issue 26), end to end: a real knowledge base over real
docs of ../shared/corpora with a service token and grouped sources, a real agent with a YAML
keys file of grouped keys, the bundled model behind it, the `openai` SDK and httpx as clients.

Two teams whose docs answer the same questions: team-a reads the Prometheus querying docs,
team-b the Python client's instrumenting docs; both read two Tekton pages (no groups). Each
key's answers, sources, lead quote, stream and Responses output come only from what it may
read; random keys and questions (some copied word for word from a document the key may not
read) never bring back a disallowed chunk's id, path, source name or text; the knowledge base
answers 401 without the token; usage, metrics and the audit log are per key and group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from archon.agent.auth import hash_key
from archon.kb.store import chunk_id
from tests.support.servers import Server, free_port
from tests.support.stack import _spawn, running_agent, wait_for

# Syncing the three sources takes minutes on a busy two-core machine.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]

CORPORA = Path(__file__).resolve().parents[3] / "shared" / "corpora"
TOKEN = "kb-service-token-0123456789abcdef"
SOURCES: dict[str, dict[str, Any]] = {
    "alpha-promql": {
        "path": CORPORA / "prometheus",
        "include": ["docs/querying/*.md"],
        "groups": ["team-a"],
    },
    "beta-pyclient": {
        "path": CORPORA / "client_python",
        "include": ["docs/content/instrumenting/*.md"],
        "groups": ["team-b"],
    },
    "shared-tekton": {
        "path": CORPORA / "tekton-pipeline",
        "include": ["docs/metrics.md", "docs/labels.md"],
    },
}
KEYS: dict[str, list[str] | None] = {
    "alice": ["team-a"],
    "bob": ["team-b"],
    "carol": ["team-a", "team-b"],
    "dave": [],  # a key of no group: the shared sources only
    "ops": None,  # admin, no group
}
READS = {
    "alice": {"alpha-promql", "shared-tekton"},
    "bob": {"beta-pyclient", "shared-tekton"},
    "carol": {"alpha-promql", "beta-pyclient", "shared-tekton"},
    "dave": {"shared-tekton"},
    "ops": {"shared-tekton"},
}
# Questions both teams' docs answer.
OVERLAPPING = [
    "How do I compute quantiles from histogram buckets?",
    "What is the difference between a counter and a gauge metric?",
    "How do I add labels to a metric and select series by label?",
    "How do I observe request durations with a histogram or a summary?",
]
RUN = 8  # words in a row that count as a quote of a document (archon.agent.rag.QUOTE_WORDS)
_WORD = re.compile(r"\w+")


def secret(name: str) -> str:
    return f"sk-{name}-access-0123456789"


def files_of(name: str) -> list[Path]:
    spec = SOURCES[name]
    root = Path(spec["path"])
    return sorted(p for pattern in spec["include"] for p in root.glob(pattern))


def relative(name: str, path: Path) -> str:
    return str(path.relative_to(Path(SOURCES[name]["path"])))


def runs(text: str) -> set[tuple[str, ...]]:
    words = _WORD.findall(text.lower())
    return {tuple(words[i : i + RUN]) for i in range(len(words) - RUN + 1)}


class Corpus:
    """What may not leak, per source: chunk ids, paths, and runs of words only it holds."""

    def __init__(self) -> None:
        self.text = {n: {relative(n, p): p.read_text() for p in files_of(n)} for n in SOURCES}
        self.runs = {
            n: set().union(*(runs(t) for t in files.values())) for n, files in self.text.items()
        }
        self.ids = {
            n: {chunk_id(n, path, i) for path in files for i in range(400)}
            for n, files in self.text.items()
        }

    def forbidden_runs(self, key: str) -> set[tuple[str, ...]]:
        allowed = set().union(*(self.runs[n] for n in READS[key]))
        return set().union(*(self.runs[n] for n in SOURCES if n not in READS[key])) - allowed

    def leaks(self, key: str, body: str, asked: str = "") -> list[str]:
        """What ``body`` holds of the sources ``key`` may not read (the question's own words
        aside: the model may repeat what it was asked)."""
        found = []
        for name in SOURCES:
            if name in READS[key]:
                continue
            if name in body:
                found.append(f"source name {name}")
            found += [
                f"path {p}" for p in self.text[name] if f"{name}:{p}" in body or f'"{p}"' in body
            ]
            found += [f"chunk id {i}" for i in self.ids[name] if i in body]
        text_runs = runs(body) - runs(asked)
        found += [" ".join(r) for r in list(text_runs & self.forbidden_runs(key))[:3]]
        return found


CORPUS = Corpus()


def sources_file(tmp: Path) -> Path:
    entries = []
    for name, spec in SOURCES.items():
        entry = {"name": name, "path": str(spec["path"]), "include": spec["include"]}
        if "groups" in spec:
            entry["groups"] = spec["groups"]
        entries.append(entry)
    path = tmp / "sources.yaml"
    path.write_text(yaml.safe_dump({"sources": entries}))
    return path


def keys_file(tmp: Path) -> Path:
    entries = []
    for name, groups in KEYS.items():
        entry: dict[str, Any] = {"name": name, "key": hash_key(secret(name))}
        if groups is None:
            entry["admin"] = True
        elif groups:
            entry["groups"] = groups
        entries.append(entry)
    path = tmp / "api-keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}))
    return path


def authed(token: str = TOKEN) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("access-kb")
    port = free_port()
    token_file = tmp / "kb-token"
    token_file.write_text(TOKEN + "\n")
    server = _spawn(
        tmp,
        "kb",
        ["kb", "serve", "--sources", str(sources_file(tmp)), "--port", str(port)],
        {
            "ARCHON_KB_DATA_DIR": str(tmp / "data"),
            "ARCHON_KB_SYNC_INTERVAL": "3600",
            "ARCHON_KB_SERVICE_TOKEN_FILE": str(token_file),
        },
        port,
    )

    def synced(url: str) -> bool:
        resp = httpx.get(url + "/sync", headers=authed(), timeout=5)
        return resp.status_code == 200 and not resp.json()["running"] and resp.json()["last"]

    try:
        wait_for(server, synced, timeout=900, what="synced")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, server: Server, kb: Server) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("access-agent")
    env = {
        "ARCHON_AGENT_API_KEYS_FILE": str(keys_file(tmp)),
        "ARCHON_AGENT_KB_TOKEN": TOKEN,
        "ARCHON_AGENT_MAX_CONTEXT_CHARS": "1200",  # a short prompt: prefill is the slow part
        "ARCHON_AGENT_MIN_RELEVANCE": "0",  # every retrieved source is shown: more to check
    }
    with running_agent(tmp, [server.url], kb.url, env) as agent:
        yield agent


def sdk(agent: Server, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=agent.url + "/v1", api_key=secret(key), max_retries=0, timeout=300
    )


def chat(agent: Server, key: str, question: str, **kw: Any) -> tuple[dict[str, Any], str]:
    """A whole answer as JSON, and its raw body."""
    resp = httpx.post(
        agent.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret(key)}"},
        json={"messages": [{"role": "user", "content": question}], "max_tokens": 8, **kw},
        timeout=300,
    )
    assert resp.status_code == 200, resp.text
    return resp.json(), resp.text


def kb_query(kb: Server, query: str, groups: list[str] | None, **kw: Any) -> httpx.Response:
    body: dict[str, Any] = {"query": query, "top_k": 10, **kw}
    if groups is not None:
        body["groups"] = groups
    return httpx.post(kb.url + "/query", json=body, headers=authed(), timeout=60)


# -- the knowledge base ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/query", {"query": "histogram buckets"}),
        ("GET", "/sources", None),
        ("POST", "/sync", None),
        ("GET", "/sync", None),
    ],
)
def test_knowledge_base_wants_its_token(kb: Server, method: str, path: str, body: Any) -> None:
    for headers in ({}, authed("wrong-token"), {"authorization": TOKEN}):
        resp = httpx.request(method, kb.url + path, json=body, headers=headers, timeout=30)
        assert resp.status_code == 401, (headers, resp.text)
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] in ("missing_service_token", "invalid_service_token")
        for name in SOURCES:
            assert name not in resp.text
    for open_path in ("/health", "/ready"):
        assert httpx.get(kb.url + open_path, timeout=10).status_code == 200


def test_knowledge_base_searches_only_what_the_groups_read(kb: Server) -> None:
    for key, groups in KEYS.items():
        for question in OVERLAPPING:
            resp = kb_query(kb, question, groups if groups is not None else [])
            assert resp.status_code == 200, resp.text
            sources = {c["source"] for c in resp.json()["chunks"]}
            assert sources <= READS[key], (key, question, sources)
    # Without groups, the service's own query (the token holder's) reads every source.
    everything = {c["source"] for q in OVERLAPPING for c in kb_query(kb, q, None).json()["chunks"]}
    assert everything == set(SOURCES)
    # A request's own filter only narrows: naming a source the groups cannot read finds nothing.
    resp = kb_query(kb, OVERLAPPING[0], ["team-a"], filters={"source": "beta-pyclient"})
    assert resp.json()["chunks"] == []
    both = kb_query(
        kb, OVERLAPPING[0], ["team-a"], filters={"source": ["alpha-promql", "beta-pyclient"]}
    )
    assert {c["source"] for c in both.json()["chunks"]} == {"alpha-promql"}


def test_sources_lists_only_what_the_caller_reads(kb: Server) -> None:
    def names(header: str | None) -> set[str]:
        headers = authed() | ({"x-archon-groups": header} if header is not None else {})
        resp = httpx.get(kb.url + "/sources", headers=headers, timeout=10)
        assert resp.status_code == 200
        return {s["name"] for s in resp.json()["sources"]}

    assert names(None) == set(SOURCES)
    assert names("team-a") == READS["alice"]
    assert names("team-b") == READS["bob"]
    assert names("team-a,team-b") == READS["carol"]
    assert names("") == READS["dave"]


# -- the agent ---------------------------------------------------------------------------------


def test_each_team_gets_answers_from_its_own_docs(agent: Server) -> None:
    seen: dict[str, set[str]] = {k: set() for k in ("alice", "bob", "carol")}
    for question in OVERLAPPING[:3]:
        for key in seen:
            answer, raw = chat(agent, key, question)
            sources = {s["source"] for s in answer.get("sources") or []}
            assert sources <= READS[key], (key, question, sources)
            assert not CORPUS.leaks(key, raw, question), (key, question, CORPUS.leaks(key, raw))
            seen[key] |= sources
    assert "alpha-promql" in seen["alice"]
    assert "beta-pyclient" in seen["bob"]
    assert {"alpha-promql", "beta-pyclient"} <= seen["carol"]  # a key of both groups gets both


def test_streams_and_responses_keep_to_the_key(agent: Server) -> None:
    question = OVERLAPPING[0]
    for key in ("alice", "bob", "dave"):
        resp = httpx.post(
            agent.url + "/v1/chat/completions",
            headers={"authorization": f"Bearer {secret(key)}"},
            json={
                "messages": [{"role": "user", "content": question}],
                "max_tokens": 8,
                "stream": True,
            },
            timeout=300,
        )
        assert resp.status_code == 200
        assert "data: [DONE]" in resp.text
        assert not CORPUS.leaks(key, resp.text, question), CORPUS.leaks(key, resp.text, question)
        streamed = [
            json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")
        ]
        sources = {s["source"] for e in streamed for s in e.get("sources") or []}
        assert sources <= READS[key]
        response = sdk(agent, key).responses.create(
            model=sdk(agent, key).models.list().data[0].id, input=question, max_output_tokens=8
        )
        body = response.model_dump_json()
        assert not CORPUS.leaks(key, body, question), CORPUS.leaks(key, body, question)


def _copied(draw: Any, key: str) -> str:
    """A question copied word for word from a document ``key`` may not read (or, for a key
    that reads everything grouped, from any grouped document)."""
    names = [n for n in SOURCES if n not in READS[key]] or ["alpha-promql"]
    name = draw(st.sampled_from(names))
    path = draw(st.sampled_from(sorted(CORPUS.text[name])))
    words = CORPUS.text[name][path].split()
    start = draw(st.integers(0, max(0, len(words) - 30)))
    length = draw(st.integers(4, 30))
    return " ".join(words[start : start + length])


@st.composite
def attempts(draw: Any) -> tuple[str, str, dict[str, Any]]:
    key = draw(st.sampled_from(sorted(KEYS)))
    copied = draw(st.booleans())
    question = _copied(draw, key) if copied else draw(st.sampled_from(OVERLAPPING))
    options: dict[str, Any] = {}
    if draw(st.booleans()):
        options["filters"] = {"source": draw(st.sampled_from([*SOURCES, list(SOURCES)]))}
    if draw(st.booleans()):
        options["top_k"] = draw(st.integers(1, 12))
    return key, question, options


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(attempt=attempts(), mode=st.sampled_from(["hybrid", "bm25", "dense"]))
def test_property_knowledge_base_never_returns_a_disallowed_chunk(
    kb: Server, attempt: tuple[str, str, dict[str, Any]], mode: str
) -> None:
    key, question, options = attempt
    groups = KEYS[key] if KEYS[key] is not None else []
    resp = kb_query(kb, question, groups, mode=mode, **options)
    assert resp.status_code == 200, resp.text
    assert {c["source"] for c in resp.json()["chunks"]} <= READS[key]
    assert not CORPUS.leaks(key, resp.text, question), CORPUS.leaks(key, resp.text, question)


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(attempt=attempts(), stream=st.booleans())
def test_property_agent_never_answers_from_a_disallowed_source(
    agent: Server, attempt: tuple[str, str, dict[str, Any]], stream: bool
) -> None:
    key, question, options = attempt
    resp = httpx.post(
        agent.url + "/v1/chat/completions",
        headers={"authorization": f"Bearer {secret(key)}"},
        json={
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 8,
            "stream": stream,
            **({"archon": options} if options else {}),
        },
        timeout=300,
    )
    assert resp.status_code == 200, resp.text
    assert not CORPUS.leaks(key, resp.text, question), CORPUS.leaks(key, resp.text, question)


def test_usage_metrics_and_audit_per_group(agent: Server) -> None:
    chat(agent, "alice", OVERLAPPING[1])
    chat(agent, "bob", OVERLAPPING[1])
    usage = httpx.get(
        agent.url + "/v1/usage", headers={"authorization": f"Bearer {secret('ops')}"}, timeout=30
    ).json()
    groups = {g["group"]: g for g in usage["groups"]}
    assert set(groups) == {"team-a", "team-b"}
    assert groups["team-a"]["keys"] == ["alice", "carol"]
    assert groups["team-a"]["today"]["requests"] >= 1
    assert groups["team-b"]["today"]["total_tokens"] > 0
    by_key = {e["key"]: e for e in usage["data"]}
    assert by_key["carol"]["groups"] == ["team-a", "team-b"]
    # A key that is not admin sees its own key and groups only.
    mine = httpx.get(
        agent.url + "/v1/usage", headers={"authorization": f"Bearer {secret('alice')}"}, timeout=30
    ).json()
    assert [g["group"] for g in mine["groups"]] == ["team-a"]
    assert mine["groups"][0]["keys"] == ["alice"]
    metrics = httpx.get(agent.url + "/metrics", timeout=10).text
    assert re.search(r'archon_agent_group_requests_total\{code="200",group="team-a"', metrics)
    assert re.search(r'archon_agent_group_tokens_total\{group="team-b",kind="prompt"', metrics)
    # One audit line per answered request: who, which groups, which sources; never text.
    log = agent.log()
    audit = [
        json.loads(line.split("archon.audit: ", 1)[1])
        for line in log.splitlines()
        if "archon.audit: " in line
    ]
    assert audit, "no audit line"
    for line in audit:
        assert set(line) == {"event", "time", "route", "key", "groups", "status", "rag", "sources"}
        if line["key"] in READS:
            assert {s["source"] for s in line["sources"]} <= READS[line["key"]]
    assert any(line["key"] == "carol" and line["groups"] == ["team-a", "team-b"] for line in audit)
    every_run = set().union(*CORPUS.runs.values())
    assert not runs(log) & every_run, "document text in the agent's log"
