"""A stand-in model server for the agent's tests of failure paths and limits: the OpenAI API
shape of `archon serve` (health, models, chat and completions, streamed or not, `usage` in the
answer and, with stream_options.include_usage, a usage chunk before [DONE]), with switches for
the ways a real server misbehaves; /v1/embeddings for the models in ``embedding_models``
(three numbers a text, a token a word). The real model server is tested in the same files too."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAKE_MODEL = "fake-model"


class FakeUpstream:
    """``mode``: ok; stall_body (headers, then part of the body, then nothing); broken_503 (a
    503 whose body is cut off); refuse_503 (a whole 503). ``delay``: seconds before answering.
    ``prompt_tokens`` is what every answer's usage reports; completion tokens are max_tokens
    (default 5). ``reply``: a chat answer to give instead ("tok " max_tokens times), streamed a few
    characters an event, finish_reason "stop". ``bodies`` records what arrived."""

    def __init__(self, model: str = FAKE_MODEL) -> None:
        self.model = model
        self.mode = "ok"
        self.delay = 0.0
        self.prompt_tokens = 10
        self.reply: str | None = None
        self.embedding_models: list[str] = []  # listed in /v1/models too; /v1/embeddings answers
        self.bodies: list[dict[str, Any]] = []
        self.released = threading.Event()
        self.hold: threading.Event | None = None  # set: each request waits for it (then answers)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_GET(self) -> None:
                if self.path == "/health":
                    self._json(200, {"status": "ok"})
                elif self.path == "/v1/models":
                    ids = [fake.model, *fake.embedding_models]
                    self._json(200, {"object": "list", "data": [{"id": i} for i in ids]})
                else:
                    self._json(404, {"error": {"message": "no such path"}})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                fake.bodies.append(body)
                if fake.hold is not None:
                    fake.hold.wait(60)
                if fake.delay:
                    time.sleep(fake.delay)
                if fake.mode == "stall_body":
                    self.send_response(200)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"id": "x", ')
                    self.wfile.flush()
                    fake.released.wait(60)
                    return
                if fake.mode == "broken_503":
                    self.send_response(503)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", "500")
                    self.end_headers()
                    self.wfile.write(b'{"error": {"message": "queue')
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if fake.mode == "refuse_503":
                    self._json(503, {"error": {"message": "queue full", "type": "x"}})
                    return
                if self.path.endswith("/embeddings"):
                    self._embeddings(body)
                    return
                chat = self.path.endswith("/chat/completions")
                completion = int(body.get("max_tokens") or body.get("max_completion_tokens") or 5)
                pieces = ["tok "] * completion
                finish = "length"
                if chat and fake.reply is not None:
                    pieces = [fake.reply[i : i + 7] for i in range(0, len(fake.reply), 7)]
                    completion, finish = len(pieces), "stop"
                usage = {
                    "prompt_tokens": fake.prompt_tokens,
                    "completion_tokens": completion,
                    "total_tokens": fake.prompt_tokens + completion,
                }
                if body.get("stream"):
                    self._stream(body, chat, pieces, finish, usage)
                    return
                choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
                if chat:
                    choice["message"] = {"role": "assistant", "content": "".join(pieces)}
                else:
                    choice["text"] = "".join(pieces)
                self._json(
                    200,
                    {
                        "id": "cmpl-fake",
                        "object": "chat.completion" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": fake.model,
                        "choices": [choice],
                        "usage": usage,
                    },
                )

            def _embeddings(self, body: dict[str, Any]) -> None:
                texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
                data = [
                    {"object": "embedding", "index": n, "embedding": [0.5, -0.5, float(n)]}
                    for n in range(len(texts))
                ]
                tokens = sum(len(str(t).split()) for t in texts)
                usage = {"prompt_tokens": tokens, "total_tokens": tokens}
                self._json(
                    200, {"object": "list", "data": data, "model": body["model"], "usage": usage}
                )

            def _stream(
                self,
                body: dict[str, Any],
                chat: bool,
                pieces: list[str],
                last_finish: str,
                usage: dict[str, int],
            ) -> None:
                include = bool((body.get("stream_options") or {}).get("include_usage"))
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.end_headers()

                def event(choices: list[dict[str, Any]], last_usage: Any = None) -> None:
                    payload: dict[str, Any] = {
                        "id": "cmpl-fake",
                        "object": "chat.completion.chunk" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": fake.model,
                        "choices": choices,
                    }
                    if include:  # as archon serve and OpenAI: null on all but the last
                        payload["usage"] = last_usage
                    self.wfile.write(b"data: " + json.dumps(payload).encode() + b"\n\n")
                    self.wfile.flush()

                for n, piece in enumerate(pieces):
                    finish = last_finish if n == len(pieces) - 1 else None
                    if chat:
                        choice = {"index": 0, "delta": {"content": piece}, "finish_reason": finish}
                    else:
                        choice = {"index": 0, "text": piece, "finish_reason": finish}
                    event([choice])
                if include:
                    event([], usage)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()
