"""/health follows the engine: 200 when it can serve, 503 once its loop has died."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from archon.modelserver.app import create_app
from archon.modelserver.settings import ModelServerSettings


def test_health_turns_503_when_the_engine_loop_dies() -> None:
    app = create_app(ModelServerSettings(parallel=1, max_model_len=512, threads=2))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/health").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["status"] == "ok"
        ok = client.post(
            "/v1/completions",
            json={"model": "smollm2-135m-instruct", "prompt": "Hi", "max_tokens": 2},
        )
        assert ok.status_code == 200

        app.state.runtime.engine.close()  # the engine thread ends, as if it had crashed

        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["status"] == "error"
        refused = client.post(
            "/v1/completions",
            json={"model": "smollm2-135m-instruct", "prompt": "Hi", "max_tokens": 2},
        )
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "engine_dead"
        metrics = client.get("/metrics").text
        assert 'archon_model_ready{model_name="smollm2-135m-instruct"} 0.0' in metrics
