"""The agent's /v1/embeddings: routed by model to the upstream that serves it, a named key's
model list and token counting as for chat; two stand-in model servers (one serving an
embedding model too), then the real model server when it serves embeddings."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from archon.agent.auth import hash_key
from tests.support.fake_upstream import FAKE_MODEL, FakeUpstream
from tests.support.servers import Server
from tests.support.stack import running_agent

pytestmark = pytest.mark.slow

EMBEDDER = "all-minilm-l6-v2"


@pytest.fixture
def upstreams() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    chat_only, with_embedder = FakeUpstream(), FakeUpstream()
    with_embedder.embedding_models = [EMBEDDER]
    try:
        yield chat_only, with_embedder
    finally:
        chat_only.stop()
        with_embedder.stop()


def sdk(agent: Server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=agent.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_embeddings_go_to_the_upstream_that_serves_the_model(
    tmp_path: Path, upstreams: tuple[FakeUpstream, FakeUpstream]
) -> None:
    chat_only, with_embedder = upstreams
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"name": "chat", "key": hash_key("sk-chat"), "models": ["fake-*"]},
                    {"name": "all", "key": hash_key("sk-all"), "max_tokens": 4},
                ]
            }
        )
    )
    env = {"ARCHON_AGENT_API_KEYS_FILE": str(keys)}
    urls = [chat_only.url, with_embedder.url]
    with running_agent(tmp_path, urls, None, env, healthy=2) as agent:
        client = sdk(agent, "sk-all")
        for _ in range(3):  # every time, whatever the routing policy prefers
            raw = client.embeddings.with_raw_response.create(
                model=EMBEDDER, input=["one two", "three"]
            )
            assert raw.headers["x-archon-upstream"] == "2"
            assert raw.headers["x-archon-rag"] == "off"
            result = raw.parse()
            assert [d.index for d in result.data] == [0, 1]
            assert result.usage.prompt_tokens == 3
        # Sent as the client sent it: no max_tokens (the key's cap is for generation), no
        # sampling, no retrieval.
        assert with_embedder.bodies[-1] == {
            "model": EMBEDDER,
            "input": ["one two", "three"],
            "encoding_format": "base64",  # the SDK's own default
        }
        assert not [b for b in chat_only.bodies if "input" in b]

        # A key limited to other models: 403, as for chat.
        with pytest.raises(openai.PermissionDeniedError) as denied:
            sdk(agent, "sk-chat").embeddings.create(model=EMBEDDER, input="x")
        assert denied.value.body["param"] == "model"
        # A model no upstream serves: 404 naming the ones there are.
        with pytest.raises(openai.NotFoundError) as missing:
            client.embeddings.create(model="no-such-embedder", input="x")
        assert EMBEDDER in missing.value.body["message"]

        # The tokens are counted for the key, under the model.
        usage = httpx.get(
            agent.url + "/v1/usage", headers={"authorization": "Bearer sk-all"}, timeout=10
        ).json()
        (entry,) = usage["data"]
        assert entry["today"]["models"][EMBEDDER]["prompt_tokens"] == 9
        assert entry["today"]["models"][EMBEDDER]["requests"] == 3
        metrics = httpx.get(agent.url + "/metrics", timeout=10).text
        assert 'archon_agent_requests_total{code="200",route="embeddings"} 3.0' in metrics
        # Chat still goes to either; the chat model is served by both.
        assert client.chat.completions.create(
            model=FAKE_MODEL, messages=[{"role": "user", "content": "Hi"}]
        ).choices


def test_the_real_model_servers_embeddings_through_the_agent(
    tmp_path: Path, server: Server
) -> None:
    models = httpx.get(server.url + "/v1/models", timeout=10).json()["data"]
    embedders = [m["id"] for m in models if m.get("type") == "embeddings"]
    if not embedders:
        pytest.skip("this model server does not serve an embedding model")
    name = embedders[0]  # the bundled all-MiniLM-L6-v2
    with running_agent(tmp_path, [server.url], None) as agent:
        direct = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        want = direct.embeddings.create(model=name, input=["How do I sync?"])
        got = sdk(agent).embeddings.create(model=name, input=["How do I sync?"])
        # With an embedding model next to it, the chat model is still the one to default to.
        answer = httpx.post(
            agent.url + "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=300,
        )
        assert answer.status_code == 200, answer.text
    assert got.data[0].embedding == want.data[0].embedding
    assert got.usage.prompt_tokens == want.usage.prompt_tokens
