"""The agent end to end: real model servers (bundled SmolLM2), a real knowledge base over the
Prometheus querying docs, the agent in between, and the `openai` SDK as the client."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from archon.agent.auth import hash_key
from tests.support.fake_upstream import FAKE_MODEL, FakeUpstream
from tests.support.servers import MODEL, Server, start_server
from tests.support.stack import (
    PROMETHEUS_DOCS,
    querying_docs_sources,
    running_agent,
    start_agent,
    start_kb,
    wait_agent_ready,
)

pytestmark = pytest.mark.slow

# Short prompts keep prefill quick on two cores (SmolLM2 still gets three or four chunks).
AGENT_ENV = {"ARCHON_AGENT_MAX_CONTEXT_CHARS": "2500"}
QUESTION = "How does the rate() function compute the per-second average rate of a counter?"


@pytest.fixture(scope="module")
def kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("agent-kb")
    server = start_kb(tmp, querying_docs_sources(tmp))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, server: Server, kb: Server) -> Iterator[Server]:
    with running_agent(tmp_path_factory.mktemp("agent"), [server.url], kb.url, AGENT_ENV) as agent:
        yield agent


def client(agent: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=agent.url + "/v1", api_key=key, max_retries=0, timeout=300)


def ask(content: str = QUESTION) -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def test_answers_carry_sources_from_the_right_files(agent: Server) -> None:
    raw = client(agent).chat.completions.with_raw_response.create(
        model=MODEL, messages=ask(), max_tokens=24
    )
    assert raw.headers["x-archon-rag"] == "used"
    completion = raw.parse()
    assert completion.choices[0].message.content
    sources = completion.model_extra["sources"]
    assert [s["index"] for s in sources] == list(range(1, len(sources) + 1))
    assert "docs/querying/functions.md" in {s["path"] for s in sources}
    for s in sources:
        assert s["source"] == "prometheus"
        assert s["url"] == f"https://docs.example.test/{s['path']}#L{s['start_line']}"
        assert isinstance(s["cited"], bool)


HISTOGRAM_QUESTION = (
    "Explain in detail how the histogram_quantile function interpolates between bucket "
    "boundaries of classic histograms and native histograms, with examples of rate over buckets"
)


@pytest.mark.parametrize(
    ("follow_up", "found"),
    [
        # The joint search ranks functions.md first, where nothing holds the new question
        # (relevance 0, measured): it was answered without the docs ("none").
        ("How do I get the list of label names through the HTTP API?", "docs/querying/api.md"),
        # The joint search's best passage (functions.md) holds 2 of its 7 words, above
        # min_relevance (0.29 against 0.25, measured), so the answer was about histograms;
        # alone, basics.md's label matchers hold 4 of them (0.57).
        (
            "How do I select series whose label matches a regular expression?",
            "docs/querying/basics.md",
        ),
    ],
)
def test_a_new_topic_after_earlier_turns_is_searched_on_its_own(
    agent: Server, follow_up: str, found: str
) -> None:
    """Earlier turns join the search (follow-ups need them), but a long first question pulls
    it to its own topic: the agent also asks with the question alone, and the search whose
    best passage holds more of the question wins."""
    messages = [
        {"role": "user", "content": HISTOGRAM_QUESTION},
        {"role": "assistant", "content": "It interpolates linearly within the bucket."},
        {"role": "user", "content": follow_up},
    ]
    raw = client(agent).chat.completions.with_raw_response.create(
        model=MODEL,
        messages=messages,  # type: ignore[arg-type]
        max_tokens=8,
    )
    assert raw.headers["x-archon-rag"] == "used"
    assert raw.parse().model_extra["sources"][0]["path"] == found


def test_streamed_answer_ends_with_the_sources(agent: Server) -> None:
    stream = client(agent).chat.completions.create(
        model=MODEL, messages=ask(), max_tokens=24, stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    with_sources = [c for c in chunks if (c.model_extra or {}).get("sources")]
    assert with_sources == [chunks[-1]]  # only the last chunk, the one with the finish_reason
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    paths = {s["path"] for s in chunks[-1].model_extra["sources"]}
    assert "docs/querying/functions.md" in paths


LEAD = re.compile(r"From \[(\d+)\] (docs/querying/[\w.-]+\.md), line (\d+):\n\n")


def test_the_bundled_models_answer_starts_with_the_docs_own_passage(agent: Server) -> None:
    completion = client(agent).chat.completions.create(model=MODEL, messages=ask(), max_tokens=8)
    text = completion.choices[0].message.content or ""
    lead = LEAD.match(text)
    assert lead, text[:300]
    n, path, line = int(lead[1]), lead[2], int(lead[3])
    passage = text[lead.end() :].split("\n\n", 1)[0]
    # Verbatim from the file, at the line the answer names (the corpus as it is on disk).
    lines = (PROMETHEUS_DOCS / path).read_text().splitlines()
    assert lines[line - 1] == passage.splitlines()[0]
    assert "rate" in passage.lower()
    sources = completion.model_extra["sources"]
    assert sources[n - 1]["path"] == path and sources[n - 1]["cited"] is True
    # The stream carries the same answer start, in its first content.
    stream = client(agent).chat.completions.create(
        model=MODEL, messages=ask(), max_tokens=8, stream=True
    )
    chunks = list(stream)
    contents = [c.choices[0].delta.content for c in chunks if c.choices]
    first = next(c for c in contents if c)
    assert first.startswith(lead[0] + passage)
    assert chunks[-1].model_extra["sources"][n - 1]["cited"] is True


def test_an_operator_can_turn_the_lead_quote_off(
    tmp_path: Path, server: Server, kb: Server
) -> None:
    env = {**AGENT_ENV, "ARCHON_AGENT_GENERATION": "{default: {lead_quote: false}}"}
    with running_agent(tmp_path, [server.url], kb.url, env) as agent:
        completion = client(agent).chat.completions.create(
            model=MODEL, messages=ask(), max_tokens=8
        )
    assert not LEAD.match(completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.completion_tokens <= 8


def test_stream_with_usage_puts_the_sources_on_the_usage_chunk(agent: Server) -> None:
    stream = client(agent).chat.completions.create(
        model=MODEL,
        messages=ask(),
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert chunks[-1].model_extra["sources"]


def test_per_request_options_through_extra_body(agent: Server) -> None:
    c = client(agent)
    off = c.chat.completions.with_raw_response.create(
        model=MODEL, messages=ask(), max_tokens=4, extra_body={"archon": {"rag": False}}
    )
    assert off.headers["x-archon-rag"] == "off"
    assert "sources" not in (off.parse().model_extra or {})

    one = c.chat.completions.create(
        model=MODEL, messages=ask(), max_tokens=4, extra_body={"archon": {"top_k": 1}}
    )
    assert len(one.model_extra["sources"]) == 1

    nothing = c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=ask(),
        max_tokens=4,
        extra_body={"archon": {"filters": {"source": "no-such-source"}}},
    )
    assert nothing.headers["x-archon-rag"] == "none"
    assert nothing.parse().model_extra["sources"] == []

    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(
            model=MODEL, messages=ask(), extra_body={"archon": {"rag": False, "topk": 2}}
        )
    assert err.value.body["param"] == "archon.topk"
    assert "Unrecognized Archon option" in err.value.body["message"]


def test_bad_requests_get_openai_shaped_4xx(agent: Server) -> None:
    url = agent.url + "/v1/chat/completions"
    cases = [
        (b"{not json", 400, None),
        (b"[]", 400, None),
        (json.dumps({"model": MODEL}).encode(), 400, "messages"),
        (json.dumps({"model": MODEL, "messages": []}).encode(), 400, "messages"),
        (json.dumps({"model": "gpt-9", "messages": ask()}).encode(), 404, "model"),
        (b'{"messages": [' + b'{"role":"user","content":"xx"},' * 40000 + b"]}", 413, None),
        (b"[" * 5000 + b"]" * 5000, 400, None),
        (b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}', 400, None),
        (b'{"model": "m", "messages": [], "temperature": NaN}', 400, None),
        (b'{"model": "m", "messages": [], "temperature": Infinity}', 400, None),
        (b'{"a":' * 100 + b"1" + b"}" * 100, 400, None),
        (json.dumps({"model": MODEL, "messages": ask(), "stream": "yes"}).encode(), 400, "stream"),
    ]
    for body, status, param in cases:
        resp = httpx.post(url, content=body, timeout=60)
        assert resp.status_code == status, (body[:40], resp.text)
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["param"] == param
    # The model server's own validation comes back unchanged.
    resp = httpx.post(url, json={"model": MODEL, "messages": ask(), "max_tokens": -1}, timeout=60)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "max_tokens"


def test_models_and_plain_completions_pass_through(agent: Server) -> None:
    c = client(agent)
    assert c.models.list().data[0].id == MODEL  # an embedding model may follow
    completion = c.completions.create(model=MODEL, prompt="PromQL is", max_tokens=5)
    assert completion.choices[0].text
    chunks = list(c.completions.create(model=MODEL, prompt="PromQL is", max_tokens=5, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices)


def test_metrics_count_outcomes_and_latencies(agent: Server) -> None:
    text = httpx.get(agent.url + "/metrics", timeout=10).text
    for line in (
        'archon_agent_rag_requests_total{outcome="used"}',
        'archon_agent_rag_requests_total{outcome="off"}',
        'archon_agent_request_duration_seconds_count{route="chat"}',
        "archon_agent_time_to_first_token_seconds_count",
        "archon_agent_retrieval_duration_seconds_count",
        'archon_agent_requests_total{code="200",route="chat"}',
        'archon_agent_requests_total{code="404",route="chat"}',
        "archon_agent_upstream_healthy{upstream=",
        "archon_agent_upstream_in_flight{upstream=",
        "archon_agent_knowledge_base_up 1.0",
    ):
        assert line in text, line
    used = next(
        float(x.split()[-1])
        for x in text.splitlines()
        if x.startswith('archon_agent_rag_requests_total{outcome="used"}')
    )
    assert used >= 4


def test_a_client_leaving_frees_the_upstream(agent: Server, server: Server) -> None:
    # ignore_eos: the answer surely outlasts the client (600 tokens, several seconds).
    body = {
        "model": MODEL,
        "messages": ask("Tell a long story."),
        "max_tokens": 600,
        "ignore_eos": True,
    }
    with httpx.stream(
        "POST", agent.url + "/v1/chat/completions", json={**body, "stream": True}, timeout=120
    ) as resp:
        for n, _ in enumerate(resp.iter_lines()):
            if n == 6:
                break  # hang up mid-answer
    # A non-streamed request abandoned while the model is still generating.
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(agent.url + "/v1/chat/completions", json=body, timeout=1.0)

    def idle() -> bool:
        ready = httpx.get(agent.url + "/ready", timeout=5).json()
        running = [
            line
            for line in httpx.get(server.url + "/metrics", timeout=5).text.splitlines()
            if line.startswith("vllm:num_requests_running")
        ]
        return ready["upstreams"][0]["in_flight"] == 0 and running[0].endswith(" 0.0")

    deadline = time.monotonic() + 120
    while not idle():
        assert time.monotonic() < deadline, "the agent or the model server kept working"
        time.sleep(0.2)


PROMQL_TOOL = {
    "type": "function",
    "function": {
        "name": "run_promql",
        "description": "Run a PromQL query against the cluster's Prometheus",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "maxLength": 40}},
            "required": ["query"],
        },
    },
}


def test_tool_round_trip_through_the_agent_keeps_its_sources(agent: Server) -> None:
    sdk = client(agent)
    question = ask("What is the per-second rate of http_requests_total over 5 minutes?")
    # One call per turn: the 135M model otherwise tends to repeat calls until max_tokens.
    kw = {
        "model": MODEL,
        "tools": [PROMQL_TOOL],
        "parallel_tool_calls": False,
        "temperature": 0,
        "max_tokens": 120,
    }
    first = sdk.chat.completions.create(messages=question, tool_choice="required", **kw)
    assert first.choices[0].finish_reason == "tool_calls", first.choices[0].message.content
    call = first.choices[0].message.tool_calls[0]
    assert call.function.name == "run_promql"
    assert isinstance(json.loads(call.function.arguments)["query"], str)
    assert first.model_extra["sources"]  # retrieval ran for the tool-calling turn too
    follow_up = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"value": 12.5}'},
    ]
    stream = sdk.chat.completions.create(messages=follow_up, tool_choice="none", stream=True, **kw)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].model_extra["sources"]


def test_a_named_keys_stream_with_sources_is_metered(tmp_path: Path, kb: Server) -> None:
    """Retrieval and metering together: the sources ride on the finish_reason chunk, the usage
    chunk the agent asked for on the key's behalf is dropped, its tokens are counted."""
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"keys:\n  - name: team\n    key: {hash_key('team-key')}\n")
    fake = FakeUpstream()
    agent = start_agent(
        tmp_path, [fake.url], kb.url, env={**AGENT_ENV, "ARCHON_AGENT_API_KEYS_FILE": str(keys)}
    )
    try:
        wait_agent_ready(agent)
        stream = client(agent, "team-key").chat.completions.create(
            model=FAKE_MODEL, messages=ask(), max_tokens=3, stream=True
        )
        chunks = list(stream)
        assert fake.bodies[-1]["stream_options"] == {"include_usage": True}
        assert all(c.choices for c in chunks)
        assert chunks[-1].choices[0].finish_reason == "length"
        assert chunks[-1].model_extra["sources"]
        metrics = httpx.get(agent.url + "/metrics", timeout=10).text
        line = f'archon_agent_tokens_total{{key="team",kind="completion",model="{FAKE_MODEL}"}} 3.0'
        assert line in metrics
    finally:
        agent.stop()
        fake.stop()


def test_knowledge_base_stopped_means_degraded_answers_not_errors(
    agent: Server, kb: Server
) -> None:
    kb.stop()  # the last test of this module that needs it
    c = client(agent)
    for stream in (False, True, False):
        if stream:
            resp = httpx.post(
                agent.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": ask(), "max_tokens": 4, "stream": True},
                timeout=120,
            )
            assert resp.status_code == 200
            assert resp.headers["x-archon-rag"] == "degraded"
            assert resp.text.rstrip().endswith("data: [DONE]")
            last = json.loads(resp.text.strip().split("\n\n")[-2].removeprefix("data: "))
            assert last["sources"] == []
        else:
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=ask(), max_tokens=4
            )
            assert raw.headers["x-archon-rag"] == "degraded"
            assert raw.parse().choices[0].message.content is not None
    # A follow-up: the joint search and the question's own, both refused, are one degraded.
    follow_up = [*ask(), {"role": "assistant", "content": "It is."}, *ask("And irate()?")]
    raw = c.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=follow_up,  # type: ignore[arg-type]
        max_tokens=4,
    )
    assert raw.headers["x-archon-rag"] == "degraded"
    ready = httpx.get(agent.url + "/ready", timeout=10).json()
    assert ready["status"] == "ready"
    assert ready["knowledge_base"]["status"] == "down"
    metrics = httpx.get(agent.url + "/metrics", timeout=10).text
    assert 'archon_agent_rag_requests_total{outcome="degraded"} 4.0' in metrics
    assert "archon_agent_knowledge_base_up 0.0" in metrics


# -- several model servers ------------------------------------------------------------------


@pytest.fixture()
def two_servers(tmp_path: Path) -> Iterator[list[Server]]:
    servers = [
        start_server(
            tmp_path, "--parallel", "2", "--max-model-len", "1024", env={"ARCHON_THREADS": "1"}
        )
        for _ in range(2)
    ]
    try:
        for s in servers:
            s.wait_ready()
        yield servers
    finally:
        for s in servers:
            s.stop()


def test_requests_keep_succeeding_when_a_model_server_dies(
    tmp_path: Path, two_servers: list[Server]
) -> None:
    agent = start_agent(
        tmp_path,
        [s.url for s in two_servers],
        None,
        # Slow health checks: the dead server must be found by the requests themselves.
        env={"ARCHON_AGENT_HEALTH_INTERVAL": "60"},
    )
    try:
        wait_agent_ready(agent, healthy=2)
        c = client(agent)
        homes = set()
        for _ in range(3):  # one conversation stays on one upstream (affinity)
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=ask("Hi"), max_tokens=2
            )
            homes.add(raw.headers["x-archon-upstream"])
        assert len(homes) == 1
        home = int(homes.pop())
        victim, survivor = two_servers[home - 1], two_servers[2 - home]

        victim.process.send_signal(signal.SIGKILL)  # the conversation's home dies
        victim.process.wait()
        for _ in range(6):
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=ask("Hi"), max_tokens=2
            )
            assert raw.headers["x-archon-upstream"] == str(3 - home)
            assert raw.parse().choices[0].message.content is not None
        metrics = httpx.get(agent.url + "/metrics", timeout=10).text
        dead = victim.url
        assert f'archon_agent_upstream_errors_total{{kind="connect",upstream="{dead}"}} 1.0' in (
            metrics
        )
        assert f'archon_agent_upstream_healthy{{upstream="{dead}"}} 0.0' in metrics

        survivor.stop()  # none left: a clear 503, not a hang or a 500
        resp = httpx.post(
            agent.url + "/v1/chat/completions",
            json={"model": MODEL, "messages": ask("Hi"), "max_tokens": 2},
            timeout=60,
        )
        assert resp.status_code == 503
        error = resp.json()["error"]
        assert error["code"] == "no_healthy_upstream"
        assert two_servers[0].url in error["message"] and two_servers[1].url in error["message"]
        assert httpx.get(agent.url + "/ready", timeout=10).status_code == 503
        assert httpx.get(agent.url + "/health", timeout=10).status_code == 200
    finally:
        agent.stop()


def test_a_model_server_dying_mid_stream_ends_that_stream_with_an_error_event(
    tmp_path: Path, two_servers: list[Server]
) -> None:
    agent = start_agent(tmp_path, [s.url for s in two_servers], None)
    try:
        wait_agent_ready(agent, healthy=2)
        body = {
            "model": MODEL,
            "messages": ask("Write a very long story about a lighthouse keeper."),
            "max_tokens": 900,
            "ignore_eos": True,  # still generating when the server is killed
            "stream": True,
        }
        events: list[str] = []
        with httpx.stream(
            "POST", agent.url + "/v1/chat/completions", json=body, timeout=120
        ) as resp:
            assert resp.status_code == 200, resp.read()
            victim = two_servers[int(resp.headers["x-archon-upstream"]) - 1]
            survivor = next(s for s in two_servers if s is not victim)
            for line in resp.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                if len(events) == 5:
                    victim.process.send_signal(signal.SIGKILL)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "upstream_failed"
        assert "incomplete" in error["message"]
        assert all("error" not in json.loads(e) for e in events[:-2])

        # The others are unaffected, through the SDK too.
        stream = client(agent).chat.completions.create(
            model=MODEL, messages=ask("Hi"), max_tokens=4, stream=True
        )
        assert [c for c in stream if c.choices and c.choices[0].finish_reason]
        metrics = httpx.get(agent.url + "/metrics", timeout=10).text
        assert (
            f'archon_agent_upstream_errors_total{{kind="midstream",upstream="{victim.url}"}} 1.0'
            in metrics
        )
        assert survivor.process.poll() is None
    finally:
        agent.stop()


def test_api_keys_are_required_and_enforced(tmp_path: Path, server: Server) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{hash_key('team-key')}  platform-team\n")
    agent = start_agent(tmp_path, [server.url], None, env={"ARCHON_AGENT_API_KEYS_FILE": str(keys)})
    try:
        wait_agent_ready(agent)
        with pytest.raises(openai.AuthenticationError) as err:
            client(agent, "wrong-key").models.list()
        assert err.value.body["code"] == "invalid_api_key"
        resp = httpx.post(agent.url + "/v1/chat/completions", json={"messages": ask()})
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "missing_api_key"
        assert httpx.post(agent.url + "/v1/completions", json={}).status_code == 401

        good = client(agent, "team-key")
        assert good.models.list().data[0].id == MODEL  # an embedding model may follow
        answer = good.chat.completions.create(model=MODEL, messages=ask("Hi"), max_tokens=2)
        assert answer.choices[0].message.content is not None
        for path in ("/health", "/ready", "/metrics"):
            assert httpx.get(agent.url + path, timeout=10).status_code == 200
        # Neither the key nor its digest is ever printed.
        assert "team-key" not in agent.log()
    finally:
        agent.stop()


def test_a_bad_setting_stops_the_agent_at_startup_with_one_line(tmp_path: Path) -> None:
    from tests.support.servers import run_cli

    result = run_cli("agent", "--upstream", "localhost:8000")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("archon: error: invalid setting upstreams (ARCHON_AGENT_UPSTREAMS)")
    )
    result = run_cli("agent", "--api-keys-file", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "ARCHON_AGENT_API_KEYS_FILE" in result.stderr
    assert "Traceback" not in result.stderr


def test_slow_knowledge_base_degrades_within_the_timeout(tmp_path: Path, server: Server) -> None:
    """A knowledge base that accepts the connection but never answers."""
    import socket

    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(16)
        kb_url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        agent = start_agent(tmp_path, [server.url], kb_url, env={"ARCHON_AGENT_KB_TIMEOUT": "1"})
        try:
            wait_agent_ready(agent)
            # Were the timeout ignored, this would hang until the client's own timeout.
            raw = client(agent).chat.completions.with_raw_response.create(
                model=MODEL, messages=ask("Hi"), max_tokens=2
            )
            assert raw.headers["x-archon-rag"] == "degraded"
        finally:
            agent.stop()


class _Overloaded:
    """A model server that is up but refuses work with 503 (as a full queue does)."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = json.dumps({"object": "list", "data": [{"id": MODEL}]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                body = json.dumps(
                    {
                        "error": {
                            "message": "queue full",
                            "type": "service_unavailable",
                            "param": None,
                            "code": "queue_full",
                        }
                    }
                ).encode()
                self.send_response(503)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


def test_a_503_before_the_first_byte_is_retried_on_another_upstream(
    tmp_path: Path, server: Server
) -> None:
    busy = _Overloaded()
    # Without affinity, idle upstreams take turns: every other request tries the busy one first.
    agent = start_agent(
        tmp_path, [busy.url, server.url], None, env={"ARCHON_AGENT_AFFINITY": "false"}
    )
    try:
        wait_agent_ready(agent, healthy=2)
        c = client(agent)
        for i in range(4):
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL, messages=ask(f"Hi number {i}"), max_tokens=2
            )
            assert raw.headers["x-archon-upstream"] == "2"
        stream = c.chat.completions.create(
            model=MODEL, messages=ask("Hi"), max_tokens=2, stream=True
        )
        assert list(stream)
        metrics = httpx.get(agent.url + "/metrics", timeout=10).text
        retried = next(
            float(line.split()[-1])
            for line in metrics.splitlines()
            if line.startswith(
                f'archon_agent_upstream_errors_total{{kind="status",upstream="{busy.url}"'
            )
        )
        assert retried >= 1  # it was tried (it stays healthy: 503 means busy, not down)

        # Only the overloaded one left: its 503 reaches the client, named.
        server_only_busy = start_agent(tmp_path, [busy.url], None)
        try:
            wait_agent_ready(server_only_busy)
            resp = httpx.post(
                server_only_busy.url + "/v1/chat/completions",
                json={"model": MODEL, "messages": ask("Hi")},
                timeout=30,
            )
            assert resp.status_code == 503
            assert "queue full" in resp.json()["error"]["message"]
        finally:
            server_only_busy.stop()
    finally:
        agent.stop()
        busy.httpd.shutdown()


# -- upstream failures, with a stand-in model server --------------------------------------------


def _in_flight(agent: Server) -> list[int]:
    return [u["in_flight"] for u in httpx.get(agent.url + "/ready", timeout=5).json()["upstreams"]]


def _openai_error(resp: httpx.Response) -> dict[str, Any]:
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


def test_a_model_server_that_stalls_gets_a_504_not_a_503(tmp_path: Path) -> None:
    """Silent before the headers, and silent halfway through the body: both are timeouts
    (upstream_timeout, counted as kind="timeout"), not a broken answer."""
    fake = FakeUpstream()
    agent = start_agent(tmp_path, [fake.url], None, env={"ARCHON_AGENT_REQUEST_TIMEOUT": "1"})
    try:
        wait_agent_ready(agent)
        body = {"model": FAKE_MODEL, "messages": ask("Hi")}
        for mode, delay in (("ok", 3.0), ("stall_body", 0.0)):
            fake.mode, fake.delay = mode, delay
            resp = httpx.post(agent.url + "/v1/chat/completions", json=body, timeout=30)
            assert resp.status_code == 504, (mode, resp.text)
            error = _openai_error(resp)
            assert (error["type"], error["code"]) == ("timeout", "upstream_timeout")
            assert "request_timeout (1s)" in error["message"]
        metrics = httpx.get(agent.url + "/metrics", timeout=10).text
        assert (
            f'archon_agent_upstream_errors_total{{kind="timeout",upstream="{fake.url}"}} 2.0'
            in metrics
        )
        assert f'kind="midstream",upstream="{fake.url}"' not in metrics
        assert 'archon_agent_requests_total{code="504",route="chat"} 2.0' in metrics
        assert _in_flight(agent) == [0]
    finally:
        agent.stop()
        fake.stop()


def test_a_503_cut_short_is_a_failed_upstream_and_frees_its_slot(tmp_path: Path) -> None:
    """Reading a 503's body can fail too (the model server dies while saying it is busy): the
    request moves on, the in-flight count comes back to 0, and the client gets an OpenAI-shaped
    503, never a 500."""
    broken, good = FakeUpstream(), FakeUpstream()
    broken.mode = "broken_503"
    agent = start_agent(
        tmp_path,
        [broken.url, good.url],
        None,
        env={"ARCHON_AGENT_AFFINITY": "false", "ARCHON_AGENT_HEALTH_INTERVAL": "60"},
    )
    try:
        wait_agent_ready(agent, healthy=2)
        body = {"model": FAKE_MODEL, "messages": ask("Hi"), "max_tokens": 2}
        for _ in range(2):  # idle upstreams take turns: one of the two tries the broken one first
            resp = httpx.post(agent.url + "/v1/chat/completions", json=body, timeout=30)
            assert resp.status_code == 200, resp.text
            assert resp.headers["x-archon-upstream"] == "2"
        assert broken.bodies, "the broken upstream was never tried"
        assert _in_flight(agent) == [0, 0]
        good.mode = "broken_503"
        resp = httpx.post(agent.url + "/v1/chat/completions", json=body, timeout=30)
        assert resp.status_code == 503, resp.text
        assert _openai_error(resp)["code"] == "no_healthy_upstream"
        assert _in_flight(agent) == [0, 0]
    finally:
        agent.stop()
        broken.stop()
        good.stop()
