"""Per-key limits and usage through real agent processes and the real `openai` SDK: 429s with
OpenAI's headers that the SDK's retries honour, 403 for a model a key may not use, max_tokens
caps and defaults, tokens counted from the model server's usage (a stand-in model server, and
the bundled model on the real one), Redis shared by two agents, and a Redis outage."""

from __future__ import annotations

import itertools
import json
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
from tests.support.redis import RedisServer, start_redis
from tests.support.servers import MODEL, Server, run_cli
from tests.support.stack import running_agent, start_agent, wait_agent_ready, wait_for

pytestmark = pytest.mark.slow

KEYS: dict[str, dict[str, Any]] = {
    "alice": {"requests_per_minute": 3},
    "bob": {"tokens_per_minute": 30},
    "carol": {"daily_token_budget": 20},
    "dave": {"models": ["other-*"]},
    "erin": {"max_tokens": 8, "default_max_tokens": 4},
    "frank": {"max_concurrent": 1},
    "gina": {"requests_per_minute": 1000, "tokens_per_minute": 1_000_000},
    "ops": {"admin": True},
}


def secret(name: str) -> str:
    return f"sk-{name}-0123456789"


def keys_file(tmp: Path, keys: dict[str, dict[str, Any]] = KEYS) -> Path:
    path = tmp / "api-keys"
    entries = [{"name": name, "key": hash_key(secret(name)), **spec} for name, spec in keys.items()]
    path.write_text("# who may ask, and how much\n" + yaml.safe_dump({"keys": entries}))
    return path


def sdk(agent: Server, name: str, retries: int = 0, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=agent.url + "/v1", api_key=secret(name), max_retries=retries, timeout=60, **kw
    )


def ask(content: str = "Hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": content}]


def fresh_minute(margin: float = 12.0) -> None:
    """Limits count per clock minute: start a sequence that must fit in one minute early in it."""
    left = 60.0 - time.time() % 60.0
    if left < margin:
        time.sleep(left + 0.2)


def metric(agent: Server, prefix: str) -> float:
    text = httpx.get(agent.url + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("limits")
    env = {"ARCHON_AGENT_API_KEYS_FILE": str(keys_file(tmp))}
    with running_agent(tmp, [fake.url], None, env) as agent:
        yield agent


@pytest.fixture()
def reset_fake(fake: FakeUpstream) -> Iterator[FakeUpstream]:
    fake.mode, fake.delay, fake.prompt_tokens = "ok", 0.0, 10
    fake.bodies.clear()
    yield fake
    fake.mode, fake.delay, fake.prompt_tokens = "ok", 0.0, 10


def test_requests_per_minute_answer_429_with_openai_headers(
    agent: Server, reset_fake: FakeUpstream
) -> None:
    fresh_minute()
    client = sdk(agent, "alice")
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model=FAKE_MODEL, messages=ask())
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
        assert "x-ratelimit-limit-tokens" not in raw.headers  # alice has no token limit
        remaining.append(raw.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=FAKE_MODEL, messages=ask())
    exc = err.value
    assert exc.status_code == 429
    assert exc.body["code"] == "rate_limit_exceeded" and exc.body["type"] == "requests"
    assert set(exc.body) == {"message", "type", "param", "code"}
    assert "limit 3, used 3" in exc.body["message"]
    assert 1 <= int(exc.response.headers["retry-after"]) <= 60
    assert exc.response.headers["x-ratelimit-remaining-requests"] == "0"
    # Plain completions count against the same limit.
    with pytest.raises(openai.RateLimitError):
        client.completions.create(model=FAKE_MODEL, prompt="x")
    assert metric(agent, 'archon_agent_rate_limited_total{key="alice",limit="requests"}') == 2


def test_the_sdk_waits_as_retry_after_says(agent: Server, reset_fake: FakeUpstream) -> None:
    """frank may have one request open; a second gets 429 with Retry-After: 1, and the SDK
    (max_retries) waits that second, not its own shorter backoff, before trying again."""
    import threading

    reset_fake.delay = 1.5
    sent: list[float] = []
    client = sdk(
        agent,
        "frank",
        retries=4,
        http_client=httpx.Client(
            event_hooks={"request": [lambda _: sent.append(time.monotonic())]}
        ),
    )
    first = threading.Thread(
        target=lambda: sdk(agent, "frank").chat.completions.create(model=FAKE_MODEL, messages=ask())
    )
    first.start()
    time.sleep(0.4)  # the first one holds frank's slot at the model server
    answer = client.chat.completions.create(model=FAKE_MODEL, messages=ask())
    first.join()
    assert answer.choices[0].message.content
    assert len(sent) >= 2
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert all(gap >= 0.95 for gap in gaps), gaps  # the SDK's own first backoff is <= 0.5 s
    assert metric(agent, 'archon_agent_rate_limited_total{key="frank",limit="concurrency"}') >= 1


def test_tokens_per_minute_and_budgets_count_the_model_servers_usage(
    agent: Server, reset_fake: FakeUpstream
) -> None:
    fresh_minute()
    bob = sdk(agent, "bob")
    for remaining in ("30", "15"):  # 10 prompt + 5 completion tokens each
        raw = bob.chat.completions.with_raw_response.create(
            model=FAKE_MODEL, messages=ask(), max_tokens=5
        )
        assert raw.headers["x-ratelimit-limit-tokens"] == "30"
        assert raw.headers["x-ratelimit-remaining-tokens"] == remaining
    with pytest.raises(openai.RateLimitError) as err:
        bob.chat.completions.create(model=FAKE_MODEL, messages=ask())
    assert err.value.body["type"] == "tokens" and err.value.body["code"] == "rate_limit_exceeded"

    carol = sdk(agent, "carol")
    for _ in range(2):  # 15, then 30 >= the daily 20: the third is refused
        carol.chat.completions.create(model=FAKE_MODEL, messages=ask(), max_tokens=5)
    with pytest.raises(openai.RateLimitError) as err:
        carol.chat.completions.create(model=FAKE_MODEL, messages=ask())
    assert err.value.body["code"] == "insufficient_quota"
    assert err.value.body["type"] == "insufficient_quota"
    assert "daily token budget (30 of 20 tokens)" in err.value.body["message"]
    assert int(err.value.response.headers["retry-after"]) <= 86400

    # /v1/usage: a key sees its own usage, an admin key every named key's.
    own = httpx.get(
        agent.url + "/v1/usage", headers={"authorization": f"Bearer {secret('carol')}"}
    ).json()
    (entry,) = own["data"]
    assert own["backend"] == "memory"
    assert entry["key"] == "carol"
    assert entry["today"]["total_tokens"] == 30 and entry["today"]["remaining"] == 0
    assert entry["today"]["models"][FAKE_MODEL] == {
        "requests": 2,
        "prompt_tokens": 20,
        "completion_tokens": 10,
    }
    everyone = httpx.get(
        agent.url + "/v1/usage", headers={"authorization": f"Bearer {secret('ops')}"}
    ).json()
    assert {e["key"] for e in everyone["data"]} == set(KEYS)
    assert httpx.get(agent.url + "/v1/usage").status_code == 401

    text = httpx.get(agent.url + "/metrics", timeout=10).text
    for line in (
        f'archon_agent_tokens_total{{key="carol",kind="prompt",model="{FAKE_MODEL}"}} 20.0',
        f'archon_agent_tokens_total{{key="carol",kind="completion",model="{FAKE_MODEL}"}} 10.0',
        f'archon_agent_key_requests_total{{code="429",key="carol",model="{FAKE_MODEL}"}} 1.0',
        'archon_agent_key_budget_tokens{key="carol",period="daily"} 20.0',
        'archon_agent_key_budget_used_tokens{key="carol",period="daily"} 30.0',
    ):
        assert line in text, line
    assert "sk-" not in text  # names only, never keys

    # The CLI prints the same as a table.
    table = run_cli(
        "agent",
        "usage",
        "--url",
        agent.url,
        env={"ARCHON_API_KEY": secret("ops"), "COLUMNS": "160"},
    )
    assert table.returncode == 0, table.stderr
    assert "carol" in table.stdout and "150%" in table.stdout and FAKE_MODEL in table.stdout
    as_json = run_cli("agent", "usage", "--url", agent.url, "--api-key", secret("bob"), "--json")
    assert [e["key"] for e in json.loads(as_json.stdout)["data"]] == ["bob"]
    refused = run_cli("agent", "usage", "--url", agent.url, "--api-key", "wrong")
    assert refused.returncode == 1 and "401" in refused.stderr


def test_streams_count_tokens_and_the_usage_chunk_is_only_theirs_who_asked(
    agent: Server, reset_fake: FakeUpstream
) -> None:
    gina = sdk(agent, "gina")
    before = metric(agent, 'archon_agent_tokens_total{key="gina"')
    chunks = list(
        gina.chat.completions.create(model=FAKE_MODEL, messages=ask(), max_tokens=3, stream=True)
    )
    # The agent asked the model server for usage on gina's behalf ...
    assert reset_fake.bodies[-1]["stream_options"] == {"include_usage": True}
    # ... and kept the usage chunk to itself.
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    asked = list(
        gina.chat.completions.create(
            model=FAKE_MODEL,
            messages=ask(),
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert asked[-1].usage is not None and asked[-1].usage.completion_tokens == 3
    plain = list(gina.completions.create(model=FAKE_MODEL, prompt="x", max_tokens=3, stream=True))
    assert all(c.choices for c in plain)
    assert metric(agent, 'archon_agent_tokens_total{key="gina"') - before == 3 * (10 + 3)


def test_a_key_may_be_kept_to_some_models_and_to_a_max_tokens(
    agent: Server, reset_fake: FakeUpstream
) -> None:
    dave = sdk(agent, "dave")
    with pytest.raises(openai.PermissionDeniedError) as err:
        dave.chat.completions.create(model=FAKE_MODEL, messages=ask())
    assert err.value.status_code == 403
    assert err.value.body["code"] == "model_not_found" and err.value.body["param"] == "model"
    assert "other-*" in err.value.body["message"]
    assert dave.models.list().data == []  # only the models it may use
    assert [m.id for m in sdk(agent, "erin").models.list().data] == [FAKE_MODEL]
    with pytest.raises(openai.AuthenticationError):  # a wrong key is still a 401
        openai.OpenAI(base_url=agent.url + "/v1", api_key="nope", max_retries=0).models.list()

    erin = sdk(agent, "erin")
    erin.chat.completions.create(model=FAKE_MODEL, messages=ask())
    assert reset_fake.bodies[-1]["max_tokens"] == 4  # the key's default
    erin.chat.completions.create(model=FAKE_MODEL, messages=ask(), max_tokens=8)
    assert reset_fake.bodies[-1]["max_tokens"] == 8
    with pytest.raises(openai.BadRequestError) as err:
        erin.chat.completions.create(model=FAKE_MODEL, messages=ask(), max_completion_tokens=9)
    assert err.value.body["param"] == "max_completion_tokens"
    assert "above the 8 this key may ask for" in err.value.body["message"]


def test_tokens_of_the_real_model_server_are_counted(tmp_path: Path, server: Server) -> None:
    path = keys_file(tmp_path, {"team": {"tokens_per_minute": 100_000}})
    agent = start_agent(tmp_path, [server.url], None, env={"ARCHON_AGENT_API_KEYS_FILE": str(path)})
    try:
        wait_agent_ready(agent)
        team = sdk(agent, "team")
        answer = team.chat.completions.create(model=MODEL, messages=ask(), max_tokens=4)
        assert answer.usage is not None
        chunks = list(
            team.chat.completions.create(model=MODEL, messages=ask(), max_tokens=4, stream=True)
        )
        assert all(c.choices for c in chunks)  # no usage chunk: the client did not ask

        def tokens(kind: str) -> float:
            name = f'archon_agent_tokens_total{{key="team",kind="{kind}",model="{MODEL}"}}'
            return metric(agent, name)

        prompt, completion = tokens("prompt"), tokens("completion")
        assert prompt == 2 * answer.usage.prompt_tokens  # the same prompt twice
        # The stream's own usage (1 to 4 tokens), read from the chunk the client never saw.
        assert 1 <= completion - answer.usage.completion_tokens <= 4
    finally:
        agent.stop()


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture()
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = start_redis(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_two_agents_sharing_redis_hold_one_limit(
    tmp_path: Path, redis: RedisServer, reset_fake: FakeUpstream
) -> None:
    path = keys_file(tmp_path, {"alice": {"requests_per_minute": 3}, "ops": {"admin": True}})
    env = {"ARCHON_AGENT_API_KEYS_FILE": str(path), "ARCHON_AGENT_REDIS_URL": redis.url}
    agents = [start_agent(tmp_path, [reset_fake.url], None, env=env) for _ in range(2)]
    try:
        for a in agents:
            wait_agent_ready(a)
        fresh_minute()
        remaining = []
        for n in range(3):  # alternating between the replicas
            raw = sdk(agents[n % 2], "alice").chat.completions.with_raw_response.create(
                model=FAKE_MODEL, messages=ask()
            )
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
        assert remaining == ["2", "1", "0"]
        for a in agents:
            with pytest.raises(openai.RateLimitError):
                sdk(a, "alice").chat.completions.create(model=FAKE_MODEL, messages=ask())
        # Either replica reports the usage of both.
        usage = httpx.get(
            agents[1].url + "/v1/usage", headers={"authorization": f"Bearer {secret('ops')}"}
        ).json()
        assert usage["backend"] == "redis"
        alice = next(e for e in usage["data"] if e["key"] == "alice")
        assert alice["today"]["requests"] == 3
        assert alice["rate"]["requests"]["remaining"] == 0
    finally:
        for a in agents:
            a.stop()


@pytest.mark.parametrize("fail_closed", [False, True])
def test_a_redis_outage_answers_or_refuses_as_set(
    tmp_path: Path, redis: RedisServer, reset_fake: FakeUpstream, fail_closed: bool
) -> None:
    path = keys_file(tmp_path, {"alice": {"requests_per_minute": 1000}})
    env = {
        "ARCHON_AGENT_API_KEYS_FILE": str(path),
        "ARCHON_AGENT_REDIS_URL": redis.url,
        "ARCHON_AGENT_LIMITS_FAIL_CLOSED": str(fail_closed).lower(),
    }
    agent = start_agent(tmp_path, [reset_fake.url], None, env=env)
    try:
        wait_agent_ready(agent)
        url = agent.url + "/v1/chat/completions"
        headers = {"authorization": f"Bearer {secret('alice')}"}
        body = {"model": FAKE_MODEL, "messages": ask()}
        assert httpx.post(url, json=body, headers=headers, timeout=30).status_code == 200
        redis.kill()
        for _ in range(3):
            started = time.monotonic()
            resp = httpx.post(url, json=body, headers=headers, timeout=30)
            assert time.monotonic() - started < 5  # no waiting on a dead Redis
            if fail_closed:
                assert resp.status_code == 503, resp.text
                error = resp.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert error["code"] == "limits_unavailable"
                assert resp.headers["retry-after"] == "1"
            else:
                assert resp.status_code == 200, resp.text
                assert "x-ratelimit-limit-requests" not in resp.headers  # nothing to tell
            time.sleep(1.1)  # past the breaker: each request asks Redis again
        assert metric(agent, "archon_agent_limits_backend_errors_total") >= 3
        action = "refusing requests with 503" if fail_closed else "answering without limits"
        assert "limits backend redis://127.0.0.1" in agent.log() and action in agent.log()
        # Redis back (empty, on the same port): limits hold again.
        again = start_redis(tmp_path, port=redis.port)
        try:

            def limited_again(_: str) -> bool:
                resp = httpx.post(url, json=body, headers=headers, timeout=30)
                return resp.status_code == 200 and "x-ratelimit-limit-requests" in resp.headers

            wait_for(agent, limited_again, timeout=30, what="limits back")
            assert "limits backend is back" in agent.log()
        finally:
            again.stop()
    finally:
        agent.stop()
