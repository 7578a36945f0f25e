"""What `archon model pull` says when the hub refuses, against a stand-in that answers as
huggingface.co does: without a token, a repository that does not exist gets 401 RepoNotFound,
not 404 (huggingface/datasets#4472; huggingface_hub reads it as RepositoryNotFound), so a typo
must not be reported as a missing HF_TOKEN."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import fake_hub
from tests.support.servers import run_cli


@pytest.fixture
def hub():
    server = fake_hub.FakeHub(fake_hub.load_tree(fake_hub.MODEL_FACTS)).start()
    yield server
    server.stop()


def _pull(tmp_path: Path, hub: fake_hub.FakeHub, reference: str, token: str | None = None):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "ARCHON_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "models"))
    if token:
        env["HF_TOKEN"] = token
    return run_cli("model", "pull", reference, env=env)


def test_a_typo_without_a_token_is_named_a_typo(tmp_path: Path, hub) -> None:
    result = _pull(tmp_path, hub, "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int5")
    assert result.returncode == 4
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "not found on the hub (HTTP 401 RepoNotFound" in line
    assert line.index("check the repository name") < line.index("HF_TOKEN")


def test_a_typo_with_a_token_is_a_plain_404(tmp_path: Path, hub) -> None:
    result = _pull(tmp_path, hub, "Qwen/Qwen2.5-Coder-14B-Instruct-GPTQ-Int5", token="hf_abc")
    assert result.returncode == 4
    assert "not found on the hub (HTTP 404 RepoNotFound" in result.stderr


def test_a_gated_repository_asks_for_a_token(tmp_path: Path, hub) -> None:
    repo = "meta-llama/Llama-3.1-8B-Instruct"
    hub.gated.add(repo)
    result = _pull(tmp_path, hub, repo)
    assert result.returncode == 4
    assert "gated repository (HTTP 401 GatedRepo" in result.stderr
    assert "set HF_TOKEN" in result.stderr
    with_token = _pull(tmp_path, hub, repo, token="hf_not_accepted")
    assert "HTTP 403 GatedRepo" in with_token.stderr
    assert "use a token of that account" in with_token.stderr
