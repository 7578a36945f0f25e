from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_upstream import FakeUpstream
from tests.support.servers import MAX_REQUEST_BYTES, MODEL, SLOTS, Server, start_server


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One model server with the bundled model, shared by the API tests."""
    tmp: Path = tmp_path_factory.mktemp("server")
    srv = start_server(
        tmp,
        "--parallel",
        str(SLOTS),
        "--max-model-len",
        "2048",
        env={"ARCHON_MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES), "ARCHON_BATCH_SIZE": "128"},
    )
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def bundled_model_path() -> Path:
    from archon.modelserver.models import resolve

    return resolve(MODEL).path


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    """A stand-in model server (tests/support/fake_upstream.py), one per test module."""
    upstream = FakeUpstream()
    try:
        yield upstream
    finally:
        upstream.stop()
