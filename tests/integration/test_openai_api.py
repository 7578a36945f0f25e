"""The model server through the official openai SDK and raw HTTP, with real inference."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import httpx
import openai
import pytest

from tests.support.servers import MAX_REQUEST_BYTES, MODEL, SLOTS, Server


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def metric(server: Server, name: str, **labels: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    want = {"model_name": MODEL, **labels}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in want.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


def test_health_and_models(server: Server) -> None:
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    models = httpx.get(f"{server.url}/v1/models").json()
    # The chat model first, then the embedding model served by name (tests/integration/
    # test_embeddings.py).
    assert [m["id"] for m in models["data"]] == [MODEL, "all-MiniLM-L6-v2"]
    assert models["data"][0]["max_model_len"] == 2048


def test_chat_completion(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=24,
        temperature=0,
    )
    choice = reply.choices[0]
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL
    assert reply.created > 0
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 5
    assert 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_completion_prompt_tokens_match_tokenizer(
    client: openai.OpenAI, bundled_model_path
) -> None:
    from llama_cpp import Llama

    prompt = "Kubernetes schedules pods onto nodes because"
    vocab = Llama(str(bundled_model_path), vocab_only=True, verbose=False)
    expected = len(vocab.tokenize(prompt.encode(), add_bos=True, special=True))
    reply = client.completions.create(model=MODEL, prompt=prompt, max_tokens=8, temperature=0)
    assert reply.object == "text_completion"
    assert reply.usage.prompt_tokens == expected
    assert reply.usage.completion_tokens == 8
    assert reply.choices[0].finish_reason == "length"
    assert reply.choices[0].text


def test_finish_reason_length_counts_max_tokens(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=5,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_max_completion_tokens_is_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to twenty."}],
        max_completion_tokens=3,
    )
    assert reply.usage.completion_tokens == 3


def test_temperature_zero_is_deterministic(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Name three uses of a GPU."}],
        max_tokens=32,
        temperature=0,
    )
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        return (
            client.completions.create(
                model=MODEL, prompt="Once upon a time", max_tokens=24, temperature=1.0, seed=seed
            )
            .choices[0]
            .text
        )

    assert sample(1234) == sample(1234)
    # Different seeds explore different continuations (at least one of a few differs).
    assert len({sample(s) for s in (1, 2, 3, 4)}) > 1


def test_stop_string_cuts_output(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, prompt="The three primary colors are", temperature=0)
    full = client.completions.create(**kwargs, max_tokens=40).choices[0].text
    words = [w for w in re.findall(r"[A-Za-z]{4,}", full)]
    assert len(words) >= 3, full
    stop_word = words[2]
    cut = client.completions.create(**kwargs, max_tokens=40, stop=[stop_word, "@@never@@"])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[: full.index(stop_word)]
    streamed = "".join(
        c.choices[0].text
        for c in client.completions.create(**kwargs, max_tokens=40, stop=stop_word, stream=True)
        if c.choices
    )
    assert streamed == cut.choices[0].text


def test_chat_stream_matches_non_stream_and_reports_usage(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL,
        messages=[{"role": "user", "content": "Explain what a ConfigMap is."}],
        max_tokens=30,
        temperature=0,
    )
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(
            **kwargs, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_completions_stream_usage_only_in_the_last_chunk(server: Server) -> None:
    """OpenAI's legacy completion schema has no null usage (chat chunks have one): the chunks
    before the last leave the field out."""
    body = {
        "model": MODEL,
        "prompt": "Hello",
        "max_tokens": 4,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        events = [
            json.loads(line[len("data: ") :])
            for line in response.iter_lines()
            if line.startswith("data: {")
        ]
    assert all("usage" not in e for e in events[:-1])
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] >= 1


def test_raw_sse_framing_ends_with_done(server: Server) -> None:
    body = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 2


async def _stream_chat(client: openai.AsyncOpenAI, i: int) -> tuple[str, str | None]:
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"Tell me fact number {i} about the ocean."}],
        max_tokens=40,
        stream=True,
    )
    text, finish = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


def test_eight_concurrent_streams_queue_beyond_slots(server: Server) -> None:
    running: list[float] = []
    waiting: list[float] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            running.append(metric(server, "vllm:num_requests_running"))
            waiting.append(metric(server, "vllm:num_requests_waiting"))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()

    async def main() -> list[tuple[str, str | None]]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0
        ) as client:
            return await asyncio.gather(*(_stream_chat(client, i) for i in range(8)))

    try:
        results = asyncio.run(main())
    finally:
        done.set()
        watcher.join()
    assert len(results) == 8
    assert all(finish in ("stop", "length") for _, finish in results)
    assert all(text for text, _ in results)
    assert max(running) <= SLOTS
    assert max(running) >= 1
    assert max(waiting) > 0


def test_disconnected_stream_frees_its_slot(server: Server) -> None:
    aborted_before = metric(server, "vllm:request_success_total", finished_reason="abort")
    body = {
        "model": MODEL,
        "prompt": "Write an endless list of numbers:",
        "max_tokens": 1500,
        "ignore_eos": True,
        "stream": True,
    }
    for _ in range(SLOTS):
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            assert any(line.startswith("data: {") for line in received)
        # Leaving the block closes the connection mid-stream.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(server, "vllm:num_requests_running") == 0:
            break
        time.sleep(0.05)
    assert metric(server, "vllm:num_requests_running") == 0
    aborted = metric(server, "vllm:request_success_total", finished_reason="abort")
    assert aborted - aborted_before == SLOTS
    # Every slot is free again: a new request is served at once.
    reply = httpx.post(
        f"{server.url}/v1/completions",
        json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
        timeout=30,
    )
    assert reply.status_code == 200


def test_client_leaving_a_non_streaming_request_frees_its_slot(server: Server) -> None:
    # Start from an idle server: a slot an earlier test freed a moment ago may still count as
    # running, and "running >= 1" below must mean this request.
    deadline = time.monotonic() + 60
    while metric(server, "vllm:num_requests_running") > 0:
        assert time.monotonic() < deadline, "the server never became idle"
        time.sleep(0.05)
    aborted_before = metric(server, "vllm:request_success_total", finished_reason="abort")
    body = json.dumps(
        {"model": MODEL, "prompt": "Numbers:", "max_tokens": 2000, "ignore_eos": True}
    ).encode()
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        conn.sendall(request)
        deadline = time.monotonic() + 30
        while metric(server, "vllm:num_requests_running") < 1:
            assert time.monotonic() < deadline, "the request never started"
            time.sleep(0.05)
    # The client has hung up without reading its answer. (Generating all 2000 tokens would take
    # 15 s or more here: an abort must come well before, a finish reason "length" means failure.)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = metric(server, "vllm:request_success_total", finished_reason="abort")
        if done > aborted_before and metric(server, "vllm:num_requests_running") == 0:
            break
        time.sleep(0.05)
    assert metric(server, "vllm:request_success_total", finished_reason="abort") == (
        aborted_before + 1
    )
    assert metric(server, "vllm:num_requests_running") == 0


def test_metrics_use_vllm_names(server: Server, client: openai.OpenAI) -> None:
    before = metric(server, "vllm:generation_tokens_total")
    client.completions.create(model=MODEL, prompt="One two three", max_tokens=6)
    text = httpx.get(f"{server.url}/metrics").text
    for name in (
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:inter_token_latency_seconds_bucket",
        "vllm:request_queue_time_seconds_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        'vllm:request_success_total{finished_reason="length"',
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
    ):
        assert name in text, name
    assert metric(server, "vllm:generation_tokens_total") - before == 6


# ---- bad input: every user mistake is a 4xx in the OpenAI error shape ----

CHAT = "/v1/chat/completions"
COMP = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]

BAD_REQUESTS = [
    ("malformed json", CHAT, b'{"model": "x", "messages": [', 400, None, None),
    ("5000 nested arrays", CHAT, b"[" * 5000 + b"]" * 5000, 400, None, None),
    ("100 nested objects", CHAT, b'{"a":' * 100 + b"1" + b"}" * 100, 400, None, None),
    (
        "lone surrogate",
        CHAT,
        b'{"model": "m", "messages": [{"role": "user", "content": "\\ud800"}]}',
        400,
        None,
        None,
    ),
    ("NaN", COMP, b'{"model": "m", "prompt": "a", "temperature": NaN}', 400, None, None),
    ("Infinity", COMP, b'{"model": "m", "prompt": "a", "top_p": -Infinity}', 400, None, None),
    ("not an object", CHAT, [1, 2], 400, None, None),
    ("messages wrong type", CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages", None),
    ("messages empty", CHAT, {"model": MODEL, "messages": []}, 400, "messages", None),
    ("missing model", CHAT, {"messages": MSG}, 400, "model", None),
    (
        "bad role",
        CHAT,
        {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "messages[0].role",
        None,
    ),
    (
        "temperature high",
        CHAT,
        {"model": MODEL, "messages": MSG, "temperature": 3},
        400,
        "temperature",
        None,
    ),
    ("top_p above one", CHAT, {"model": MODEL, "messages": MSG, "top_p": 1.5}, 400, "top_p", None),
    (
        "max_tokens zero",
        CHAT,
        {"model": MODEL, "messages": MSG, "max_tokens": 0},
        400,
        "max_tokens",
        None,
    ),
    (
        "max_tokens string",
        CHAT,
        {"model": MODEL, "messages": MSG, "max_tokens": "many"},
        400,
        "max_tokens",
        None,
    ),
    (
        "max_tokens beyond context",
        CHAT,
        {"model": MODEL, "messages": MSG, "max_tokens": 5000},
        400,
        "max_tokens",
        None,
    ),
    ("n > slots", CHAT, {"model": MODEL, "messages": MSG, "n": SLOTS + 1}, 400, "n", None),
    ("stream yes", CHAT, {"model": MODEL, "messages": MSG, "stream": "yes"}, 400, "stream", None),
    (
        "max_tokens float",
        CHAT,
        {"model": MODEL, "messages": MSG, "max_tokens": 2.5},
        400,
        "max_tokens",
        None,
    ),
    (
        "logit_bias token out of range",
        CHAT,
        {"model": MODEL, "messages": MSG, "logit_bias": {"99999999": 1}},
        400,
        "logit_bias",
        None,
    ),
    (
        "logit_bias below -100",
        CHAT,
        {"model": MODEL, "messages": MSG, "logit_bias": {"5": -200}},
        400,
        "logit_bias",
        None,
    ),
    (
        "schema the converter refuses",
        CHAT,
        {
            "model": MODEL,
            "messages": MSG,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}},
            },
        },
        400,
        "response_format.json_schema.schema",
        None,
    ),
    (
        "tools",
        CHAT,
        {"model": MODEL, "messages": MSG, "tools": [{"type": "function"}]},
        400,
        "tools[0].function",
        None,
    ),
    (
        "unknown field",
        CHAT,
        {"model": MODEL, "messages": MSG, "frobnicate": True},
        400,
        "frobnicate",
        None,
    ),
    (
        "image part",
        CHAT,
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                }
            ],
        },
        400,
        "messages[0].content[0].type",
        None,
    ),
    (
        "stop too many",
        COMP,
        {"model": MODEL, "prompt": "a", "stop": [str(i) for i in range(65)]},
        400,
        "stop",
        None,
    ),
    (
        "stream_options without stream",
        COMP,
        {"model": MODEL, "prompt": "a", "stream_options": {"include_usage": True}},
        400,
        "stream_options",
        None,
    ),
    ("token id out of range", COMP, {"model": MODEL, "prompt": [1, 99999999]}, 400, "prompt", None),
    ("empty prompt", COMP, {"model": MODEL, "prompt": ""}, 400, "prompt", None),
    (
        "an empty prompt of many",
        COMP,
        {"model": MODEL, "prompt": ["a", ""]},
        400,
        "prompt[1]",
        None,
    ),
    (
        "prompt beyond context",
        COMP,
        {"model": MODEL, "prompt": "word " * 3000},
        400,
        "prompt",
        None,
    ),
    ("unknown model", CHAT, {"model": "gpt-4", "messages": MSG}, 404, "model", "model_not_found"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_input_gets_openai_error(server: Server, path, body, status, param, code) -> None:
    if isinstance(body, bytes):
        response = httpx.post(f"{server.url}{path}", content=body)
    else:
        response = httpx.post(f"{server.url}{path}", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if code:
        assert error["code"] == code


def test_body_over_limit_is_413(server: Server) -> None:
    big = {"model": MODEL, "prompt": "x" * (MAX_REQUEST_BYTES + 10)}
    response = httpx.post(f"{server.url}{COMP}", json=big)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"

    # Also without a content-length header (chunked upload).
    def chunks():
        yield b'{"model": "m", "prompt": "'
        for _ in range(MAX_REQUEST_BYTES // 1024 + 2):
            yield b"y" * 1024
        yield b'"}'

    response = httpx.post(f"{server.url}{COMP}", content=chunks())
    assert response.status_code == 413


def test_unknown_route_is_openai_shaped_404(server: Server) -> None:
    response = httpx.get(f"{server.url}/v1/nothing-here")
    assert response.status_code == 404
    assert "error" in response.json()


def test_sdk_raises_typed_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=MSG)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MSG, n=3)
    assert info.value.body["param"] == "n"
