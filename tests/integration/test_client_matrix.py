"""The client matrix (issue 22): the libraries teams build on, unchanged, against a real model
server (bundled SmolLM2) and a real agent with a real knowledge base (Archon's own docs, as
`archon up` serves them) in front of it.

Each library has a driver in tests/clients/ (drive_*.py) that runs in the client venvs
(scripts/setup-clients-venv.sh; `make test` creates them) and prints one JSON line per case. The
drivers run once per target, in a subprocess; every line is a test here, failing with the
library's own error text. The drivers assert Archon's contract, not the tiny model's wit.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from tests.support.servers import MODEL, Server
from tests.support.stack import running_agent, start_kb

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "clients"
# The venv each driver runs in (two, because the pins clash: see the setup script).
VENV_OF = {
    "drive_openai.py": ".venv-clients",
    "drive_langchain.py": ".venv-clients",
    "drive_agents.py": ".venv-clients",
    "drive_litellm.py": ".venv-clients",
    "drive_pydantic_ai.py": ".venv-clients",
    "drive_instructor.py": ".venv-clients-openai2",
    "drive_llamaindex.py": ".venv-clients-openai2",
}
# The small embedding model served by name (the knowledge base's own MiniLM), unless the model
# server lists another one.
EMBEDDING_MODEL = "all-MiniLM-L6-v2"
DRIVER_TIMEOUT = 400
PARALLEL_DRIVERS = 2
TARGETS = ("server", "agent")


def cases_of(driver: str) -> list[str]:
    """The case names a driver registers (`@driver.case("name")`), read without running it."""
    tree = ast.parse((CLIENTS / driver).read_text())
    return [
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "case"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]


PARAMS = [
    pytest.param(target, driver, case, id=f"{target}-{driver[6:-3]}-{case}")
    for target in TARGETS
    for driver in VENV_OF
    for case in cases_of(driver)
]


@dataclass
class Run:
    lines: dict[str, dict]
    output: str  # stderr's tail and the exit status, for cases with no line


class Matrix:
    """Runs each driver once per target, when its first case asks."""

    def __init__(self, tmp: Path, selected: set[tuple[str, str]]) -> None:
        self.tmp = tmp
        self.selected = selected  # (target, driver) pairs with a case in this session
        self.runs: dict[tuple[str, str], Run] = {}

    def result(self, target: str, base_url: str, driver: str) -> Run:
        if (target, driver) not in self.runs:
            # Every driver of this target at once, two at a time: the model server has two
            # slots, and two sequences decode in about the time of one.
            todo = [d for d in VENV_OF if (target, d) in self.selected | {(target, driver)}]
            todo = [d for d in todo if (target, d) not in self.runs]
            with ThreadPoolExecutor(PARALLEL_DRIVERS) as pool:
                runs = pool.map(lambda d: self._run(target, base_url, d), todo)
                self.runs.update({(target, d): run for d, run in zip(todo, runs, strict=True)})
        return self.runs[(target, driver)]

    def _run(self, target: str, base_url: str, driver: str) -> Run:
        python = ROOT / VENV_OF[driver] / "bin" / "python"
        if not python.exists():
            return Run({}, f"{python} is missing")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "LITELLM_"))}
        env.update(NO_PROXY="127.0.0.1,localhost", OPENAI_AGENTS_DISABLE_TRACING="1")
        env["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
        args = [str(python), driver, "--base-url", base_url, "--model", MODEL]
        args += ["--embedding-model", embedding_model(base_url), "--target", target]
        try:
            done = subprocess.run(
                args,
                cwd=CLIENTS,
                capture_output=True,
                text=True,
                timeout=DRIVER_TIMEOUT,
                env=env,
                stdin=subprocess.DEVNULL,
            )
            stdout, tail = done.stdout, f"exit {done.returncode}: {done.stderr[-3000:]}"
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            tail = f"timed out after {DRIVER_TIMEOUT} s"
        lines = {}
        for raw in stdout.splitlines():
            if raw.startswith("{"):
                line = json.loads(raw)
                lines[line["case"]] = line
        log = self.tmp / f"{target}-{driver[:-3]}.jsonl"
        log.write_text("\n".join(json.dumps(v) for v in lines.values()) + "\n")
        return Run(lines, tail)


def embedding_model(base_url: str) -> str:
    """The first model /v1/models lists besides the chat model, else the default name."""
    try:
        ids = [m["id"] for m in httpx.get(base_url + "/models", timeout=10).json()["data"]]
    except (httpx.HTTPError, KeyError, ValueError):
        return EMBEDDING_MODEL
    others = [i for i in ids if i != MODEL]
    return EMBEDDING_MODEL if EMBEDDING_MODEL in ids or not others else others[0]


@pytest.fixture(scope="module")
def matrix(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Matrix:
    # Only the drivers with a selected case run (`-k langchain` runs one driver per target).
    selected = {
        (item.callspec.params["target"], item.callspec.params["driver"])
        for item in request.session.items
        if isinstance(item, pytest.Function)
        and item.originalname == "test_client"
        and hasattr(item, "callspec")
    }
    return Matrix(tmp_path_factory.mktemp("client-matrix"), selected)


@pytest.fixture(scope="module")
def docs_kb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A knowledge base over Archon's own docs, the sources `archon up` serves by default."""
    tmp = tmp_path_factory.mktemp("client-matrix-kb")
    sources = tmp / "sources.yaml"
    entry = {"name": "archon", "path": str(ROOT), "include": ["docs/**/*.md", "README.md"]}
    sources.write_text(yaml.safe_dump({"sources": [entry]}))
    kb = start_kb(tmp, sources)
    try:
        yield kb
    finally:
        kb.stop()


@pytest.fixture(scope="module")
def agent(
    tmp_path_factory: pytest.TempPathFactory, server: Server, docs_kb: Server
) -> Iterator[Server]:
    """The agent on its defaults, in front of the model server, with the docs KB."""
    tmp = tmp_path_factory.mktemp("client-matrix-agent")
    with running_agent(tmp, [server.url], docs_kb.url) as agent:
        yield agent


# The first case of a target waits for all of its drivers (about 2 minutes on 2 quiet cores).
@pytest.mark.timeout(3 * DRIVER_TIMEOUT)
@pytest.mark.parametrize(("target", "driver", "case"), PARAMS)
def test_client(
    request: pytest.FixtureRequest, matrix: Matrix, target: str, driver: str, case: str
) -> None:
    venv = ROOT / VENV_OF[driver]
    if not (venv / "bin" / "python").exists():
        pytest.skip(f"{VENV_OF[driver]} is missing: run `make clients-venv`")
    url = request.getfixturevalue(target).url + "/v1"
    run = matrix.result(target, url, driver)
    line = run.lines.get(case)
    assert line is not None, f"{driver} printed no line for {case} ({run.output})"
    assert line["ok"], line["error"]
