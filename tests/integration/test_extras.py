"""Each part deployable on its own: the packaging extras of pyproject.toml, and the agent run
with every module that only the other parts' packages provide made unimportable, as in an
install of `archon[agent]` alone (what the agent's image holds).

The modules to hide are worked out from the installed distributions' metadata: the dependency
closure of the other extras, minus the closure of the base dependencies and the agent extra.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import httpx
import pytest
from packaging.requirements import Requirement

from archon.extras import EXTRAS
from tests.support.fake_upstream import FAKE_MODEL, FakeUpstream
from tests.support.servers import free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
HEAVY = {"torch", "llama-cpp-python", "qdrant-client", "sentence-transformers", "kubernetes"}

# Runs the CLI with the modules named in argv[1] unimportable (the rest of argv: its args).
HIDING_RUNNER = """
import runpy, sys
from importlib.abc import MetaPathFinder

HIDDEN = set(sys.argv[1].split(","))

class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
sys.argv = ["archon", *sys.argv[2:]]
runpy.run_module("archon.cli", run_name="__main__")
"""


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def closure(requirements: list[str]) -> set[str]:
    """Distribution names these requirements pull in, transitively (markers evaluated)."""
    seen: set[tuple[str, str]] = set()  # (distribution, extra)
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, active_extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": active_extra}):
            continue
        name = _name(str(req))
        for extra in ("", *sorted(req.extras)):
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            if name == "archon":  # archon[all] and the like: this project's own lists
                own = PROJECT["optional-dependencies"][extra] if extra else []
                todo += [(Requirement(r), "") for r in own]
                continue
            try:
                requires = metadata.distribution(name).requires or []
            except metadata.PackageNotFoundError:
                continue
            todo += [(Requirement(r), extra) for r in requires]
    return {name for name, _ in seen}


def top_level_modules(distributions: set[str]) -> set[str]:
    modules: set[str] = set()
    for name in distributions:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        top = dist.read_text("top_level.txt")
        if top:
            modules.update(line.strip() for line in top.splitlines() if line.strip())
            continue
        for file in dist.files or []:
            first = file.parts[0]
            if first.endswith((".dist-info", ".data")) or first in ("..", "__pycache__"):
                continue
            modules.add(first.removesuffix(".py").split(".")[0])
    return {m for m in modules if m.isidentifier()}


def agent_only_hidden_modules() -> set[str]:
    extras = PROJECT["optional-dependencies"]
    agent = closure([*PROJECT["dependencies"], *extras["agent"]])
    others = closure([r for e in ("modelserver", "kb", "ops") for r in extras[e]])
    hidden = top_level_modules(others - agent) - top_level_modules(agent)
    return hidden - {"archon", "tests"}


def test_the_base_dependencies_leave_the_heavy_packages_to_the_extras() -> None:
    base = {_name(r) for r in PROJECT["dependencies"]}
    extras = PROJECT["optional-dependencies"]
    assert not base & HEAVY
    assert not {_name(r) for r in extras["agent"]} & HEAVY
    assert "llama-cpp-python" in {_name(r) for r in extras["modelserver"]}
    assert {"torch", "qdrant-client"} <= {_name(r) for r in extras["kb"]}
    assert "kubernetes" in {_name(r) for r in extras["ops"]}
    # `make install` (.[dev,bench]) still takes every part.
    assert "archon[all]" in extras["dev"]
    assert set(Requirement(extras["all"][0]).extras) == {"modelserver", "kb", "agent", "ops"}


def test_each_extra_s_imports_are_named_for_the_missing_package_message() -> None:
    extras = PROJECT["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        provided = top_level_modules(closure(extras[extra]))
        assert set(modules) <= provided, (extra, set(modules) - provided)


@pytest.fixture(scope="module")
def hidden() -> set[str]:
    modules = agent_only_hidden_modules()
    # The check hides what it must: the other parts' engines and clients.
    assert {"torch", "llama_cpp", "qdrant_client", "numpy", "kubernetes"} <= modules
    assert not {"aiohttp", "redis", "fastapi", "uvicorn", "httpx"} & modules
    return modules


def run_hidden(hidden: set[str], *args: str, **kw: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", HIDING_RUNNER, ",".join(sorted(hidden)), *args],
        stdin=subprocess.DEVNULL,
        **kw,  # type: ignore[call-overload]
    )


def test_the_agent_serves_without_the_other_parts_packages(tmp_path: Path, hidden: set[str]):
    upstream = FakeUpstream()
    port = free_port()
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        agent = run_hidden(
            hidden,
            "agent",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--upstream",
            upstream.url,
            "--no-kb",
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: httpx.get(url + "/ready", timeout=2).status_code == 200,
            timeout=60,
            what="the agent ready",
            process=agent,
            log=log_path.read_text,
        )
        answer = httpx.post(
            url + "/v1/chat/completions",
            json={"model": FAKE_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
        streamed = httpx.post(
            url + "/v1/chat/completions",
            json={
                "model": FAKE_MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": "hi"}],
            },
            timeout=30,
        )
        assert streamed.status_code == 200 and streamed.text.rstrip().endswith("data: [DONE]")
        assert "archon_agent" in httpx.get(url + "/metrics", timeout=10).text
        assert agent.poll() is None
    finally:
        agent.terminate()
        agent.wait(timeout=20)
        upstream.stop()
    assert "Traceback" not in log_path.read_text()


def test_a_part_without_its_packages_says_which_extra_to_install(hidden: set[str]) -> None:
    served = run_hidden(
        hidden, "serve", "--port", "1", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    _, stderr = served.communicate(timeout=120)
    assert served.returncode == 2, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("archon: error: the Python package ")
    assert "pip install 'archon[modelserver]'" in lines[0]
