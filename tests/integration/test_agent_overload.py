"""Priorities under overload through a real agent process: with its one upstream at
upstream_concurrency, requests queue; interactive ones reach the model server before batch ones
that came earlier; at queue_size the newest batch request is shed with a 503 in the OpenAI shape
and Retry-After (the openai SDK sees an InternalServerError it may retry); a key may raise its
class with x-archon-priority only when the keys file allows it. The upstream is the stand-in
model server (tests/support/fake_upstream.py) so that how long each request holds it is known."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from archon.agent.auth import hash_key
from tests.support.fake_upstream import FAKE_MODEL, FakeUpstream
from tests.support.servers import Server
from tests.support.stack import running_agent, start_agent, wait_agent_ready

pytestmark = pytest.mark.slow

KEYS = {
    "person": {},
    "job": {"priority": "batch"},
    "lead": {"priority": "batch", "set_priority": True},
}


def secret(name: str) -> str:
    return f"sk-{name}-0123456789"


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Server]:
    tmp: Path = tmp_path_factory.mktemp("overload")
    keys = tmp / "keys.yaml"
    entries = [{"name": n, "key": hash_key(secret(n)), **spec} for n, spec in KEYS.items()]
    keys.write_text(yaml.safe_dump({"keys": entries}))
    env = {
        "ARCHON_AGENT_API_KEYS_FILE": str(keys),
        "ARCHON_AGENT_UPSTREAM_CONCURRENCY": "1",
        "ARCHON_AGENT_QUEUE_SIZE": "3",
    }
    with running_agent(tmp, [fake.url], None, env) as agent:
        yield agent


def metrics(agent: Server) -> str:
    return httpx.get(agent.url + "/metrics", timeout=10).text


def value(text: str, sample: str) -> float:
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return 0.0


def wait_until(check: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_interactive_goes_first_and_batch_is_shed_at_the_bound(
    agent: Server, fake: FakeUpstream
) -> None:
    fake.bodies.clear()
    fake.hold = threading.Event()  # b0 holds the upstream's one slot until released below
    results: dict[str, Any] = {}

    def ask(label: str, key: str, **headers: str) -> None:
        resp = httpx.post(
            agent.url + "/v1/chat/completions",
            json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": label}]},
            headers={"authorization": f"Bearer {secret(key)}", **headers},
            timeout=60,
        )
        results[label] = resp

    def start(label: str, key: str, **headers: str) -> threading.Thread:
        thread = threading.Thread(target=ask, args=(label, key), kwargs=headers)
        thread.start()
        return thread

    def depth(cls: str) -> float:
        return value(metrics(agent), f'archon_agent_queue_depth{{priority="{cls}"}}')

    try:
        threads = [start("b0", "job")]
        wait_until(lambda: len(fake.bodies) == 1)  # b0 holds the upstream's one slot
        threads.append(start("b1", "job"))
        wait_until(lambda: depth("batch") == 1)  # in this order: b2 is the newest
        threads.append(start("b2", "person", **{"x-archon-priority": "batch"}))
        wait_until(lambda: depth("batch") == 2)
        threads.append(start("i1", "person"))
        wait_until(lambda: depth("interactive") == 1)
        threads.append(start("i2", "lead", **{"x-archon-priority": "interactive"}))  # sheds b2
        threads[2].join(60)  # b2's answer: the 503
        fake.hold.set()  # now each goes through in turn
        for thread in threads:
            thread.join(60)
    finally:
        fake.hold.set()
        fake.hold = None
    shed = results["b2"]
    assert shed.status_code == 503
    assert set(shed.json()["error"]) == {"message", "type", "param", "code"}
    assert shed.json()["error"]["code"] == "queue_shed"
    assert 1 <= int(shed.headers["retry-after"]) <= 60
    assert all(results[label].status_code == 200 for label in ("b0", "b1", "i1", "i2"))
    arrived = [body["messages"][-1]["content"] for body in fake.bodies]
    assert arrived == ["b0", "i1", "i2", "b1"]  # the interactive ones overtook b1
    text = metrics(agent)
    assert value(text, 'archon_agent_shed_total{priority="batch",reason="shed"}') == 1
    assert value(text, 'archon_agent_queue_wait_seconds_count{priority="interactive"}') == 2
    assert value(text, 'archon_agent_queue_wait_seconds_count{priority="batch"}') == 1


def test_a_key_raises_its_class_only_when_allowed(agent: Server, fake: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=agent.url + "/v1", api_key=secret("job"), max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        client.chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "me first"}],
            extra_headers={"x-archon-priority": "interactive"},
        )
    assert refused.value.body["code"] == "priority_not_allowed"
    assert refused.value.body["param"] == "x-archon-priority"
    answer = client.chat.completions.create(  # stepping down (or staying) is fine
        model=FAKE_MODEL,
        messages=[{"role": "user", "content": "later is fine"}],
        extra_headers={"x-archon-priority": "batch"},
    )
    assert answer.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model=FAKE_MODEL,
            messages=[{"role": "user", "content": "?"}],
            extra_headers={"x-archon-priority": "urgent"},
        )
    assert bad.value.body["param"] == "x-archon-priority"


def test_an_upstream_found_in_dns_through_the_system_resolver(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    """dns+http://localhost:<port>: every address localhost resolves to becomes an upstream; the
    IPv4 one answers (the stand-in listens on 127.0.0.1), an IPv6 one, if any, is unhealthy."""
    port = fake.url.rsplit(":", 1)[1]
    agent = start_agent(tmp_path, [f"dns+http://localhost:{port}"], None)
    try:
        wait_agent_ready(agent)
        ups = httpx.get(agent.url + "/ready", timeout=5).json()["upstreams"]
        assert {u["found_by"] for u in ups} == {f"dns+http://localhost:{port}"}
        urls = {u["url"]: u["healthy"] for u in ups}
        assert urls[f"http://127.0.0.1:{port}"] is True
        assert set(urls) <= {f"http://127.0.0.1:{port}", f"http://[::1]:{port}"}
        answer = httpx.post(
            agent.url + "/v1/chat/completions",
            json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": "found?"}]},
            timeout=30,
        )
        assert answer.status_code == 200
        assert int(answer.headers["x-archon-upstream"]) >= 2  # numbered after the listed (one)
    finally:
        agent.stop()


def test_a_client_that_leaves_while_queued_or_waiting_for_headers_frees_everything(
    agent: Server, fake: FakeUpstream
) -> None:
    """A non-streamed answer's headers come with the whole answer: a client that hangs up before
    must free the upstream (in flight 0), and one that hangs up in the queue its place."""
    fake.bodies.clear()
    fake.hold = threading.Event()
    auth = {"authorization": f"Bearer {secret('person')}"}
    body = {"model": FAKE_MODEL, "messages": [{"role": "user", "content": "x"}]}

    def post(timeout: float) -> None:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(agent.url + "/v1/chat/completions", json=body, headers=auth, timeout=timeout)

    def state() -> tuple[int, float]:
        ready = httpx.get(agent.url + "/ready", timeout=5).json()
        depth = value(metrics(agent), 'archon_agent_queue_depth{priority="interactive"}')
        return ready["upstreams"][0]["in_flight"], depth

    try:
        first = threading.Thread(target=post, args=(6.0,))  # waits at the upstream
        first.start()
        wait_until(lambda: len(fake.bodies) == 1)
        post(1.0)  # waits in the agent's queue (the one slot is taken), then hangs up
        wait_until(lambda: state() == (1, 0))  # its place is free, the first still there
        first.join(30)
        wait_until(lambda: state() == (0, 0))  # the first's client left: the upstream is free
    finally:
        fake.hold.set()
        fake.hold = None
    assert len(fake.bodies) == 1  # the queued one never reached the model server
    ok = httpx.post(agent.url + "/v1/chat/completions", json=body, headers=auth, timeout=30)
    assert ok.status_code == 200
