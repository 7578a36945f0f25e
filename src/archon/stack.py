"""`archon up`: the model server, the knowledge base and the agent on one machine.

Each part runs as its own `archon` process (as in Kubernetes), with its output in a log file;
`up` waits until all of them are ready, prints where they are, and stops them all on Ctrl-C.
A part that dies is started again after a backoff (``RESTART_DELAYS``) while the others go on
(the agent answers degraded meanwhile); one that keeps dying stops everything (``supervise``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

import archon
from archon.readiness import port_in_use, wait_until
from archon.settings import secret_from

STOP_ORDER = ("agent", "knowledge base", "model server")  # the front door closes first
# Seconds before each restart of a part that died, in a row; one more death after the last of
# them stops everything. A part that ran STABLE_AFTER seconds before dying starts a fresh row.
RESTART_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)
STABLE_AFTER = 120.0
MEANWHILE = {
    "model server": "the agent answers 503 no_healthy_upstream meanwhile",
    "knowledge base": "the agent answers without retrieval meanwhile",
    "agent": "the API and the chat page are down meanwhile",
}


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    model_port: int = 8000
    kb_port: int = 8100
    agent_port: int = 8080
    llm_model: str | None = None
    sources: Path | None = None  # None: the project's own docs
    knowledge_base: bool = True
    data_dir: Path = Path(".archon")
    ready_timeout: float = 900.0  # a first run may download a model or sync many docs


@dataclass
class Part:
    name: str
    args: list[str]
    url: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # sent by the readiness check
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "archon.cli", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,  # Ctrl-C reaches `up`, which stops the parts in order
            )

    def exited(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class PartFailed(Exception):
    def __init__(self, part: Part, message: str):
        super().__init__(message)
        self.part = part


def project_root() -> Path | None:
    """The checkout Archon runs from (an editable install), whose docs `up` serves by default."""
    for parent in Path(archon.__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file() and (parent / "docs").is_dir():
            return parent
    return None


def default_sources(data_dir: Path) -> Path:
    root = project_root() or Path.cwd()
    path = data_dir / "up-sources.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "sources": [{"name": "archon", "path": str(root), "include": ["docs/**/*.md", "README.md"]}]
    }
    path.write_text(
        "# Written by `archon up`: the docs it serves when no --sources is given.\n"
        + yaml.safe_dump(doc, sort_keys=False)
    )
    return path


def kb_service_token(environ: dict[str, str]) -> str | None:
    """The knowledge base's service token as the KB itself reads it from the environment
    (ARCHON_KB_SERVICE_TOKEN, or the file ARCHON_KB_SERVICE_TOKEN_FILE names): `up` hands it
    to the agent and to its own readiness check, which the token would otherwise lock out."""
    file = environ.get("ARCHON_KB_SERVICE_TOKEN_FILE")
    return secret_from(
        environ.get("ARCHON_KB_SERVICE_TOKEN"),
        Path(file) if file else None,
        "service_token",
        "ARCHON_KB_SERVICE_TOKEN",
    )


def plan(options: StackOptions) -> list[Part]:
    h = options.host
    logs = options.data_dir / "logs"
    model_url = f"http://{h}:{options.model_port}"
    serve = ["serve", "--host", h, "--port", str(options.model_port)]
    if options.llm_model:
        serve += ["--llm-model", options.llm_model]
    parts = [Part("model server", serve, model_url, logs / "model-server.log")]
    agent = ["agent", "--host", h, "--port", str(options.agent_port), "--upstream", model_url]
    agent_env: dict[str, str] = {}
    token = kb_service_token(dict(os.environ))
    if options.knowledge_base:
        sources = options.sources or default_sources(options.data_dir)
        kb_url = f"http://{h}:{options.kb_port}"
        parts.append(
            Part(
                "knowledge base",
                [
                    "kb",
                    "serve",
                    "--sources",
                    str(sources),
                    "--host",
                    h,
                    "--port",
                    str(options.kb_port),
                    "--sync-interval",
                    "3600",
                ],
                kb_url,
                logs / "knowledge-base.log",
                env={"ARCHON_KB_DATA_DIR": str(options.data_dir / "kb")},
                headers={"authorization": f"Bearer {token}"} if token else {},
            )
        )
        agent += ["--kb-url", kb_url]
        if token and not any(k.startswith("ARCHON_AGENT_KB_TOKEN") for k in os.environ):
            agent_env["ARCHON_AGENT_KB_TOKEN"] = token
    else:
        agent.append("--no-kb")
    parts.append(
        Part("agent", agent, f"http://{h}:{options.agent_port}", logs / "agent.log", agent_env)
    )
    return parts


def _ready(part: Part, client: httpx.Client) -> tuple[bool, str]:
    """Whether the part can serve, and what it is doing if not."""
    try:
        if part.name == "knowledge base":
            # Ready once its first sync is done, so the first question already finds the docs.
            resp = client.get(part.url + "/sync", headers=part.headers)
            if resp.status_code == 401:
                return False, "refused without its service token (ARCHON_KB_SERVICE_TOKEN)"
            if resp.status_code != 200:
                return False, "loading the embedding model"
            body = resp.json()
            if body.get("running") or not body.get("last"):
                return False, "syncing the docs"
            return True, ""
        path = "/ready" if part.name == "agent" else "/health"
        resp = client.get(part.url + path)
        if resp.status_code == 200 and part.name == "agent":
            # The agent serves without its knowledge base too (degraded), but until it has
            # seen it up, the first question would be answered without the docs.
            kb = resp.json().get("knowledge_base")
            if isinstance(kb, dict) and kb.get("status") not in ("up", "off"):
                return False, "waiting to see the knowledge base up"
            return True, ""
        if resp.status_code == 200:
            return True, ""
        detail = resp.json() if "json" in resp.headers.get("content-type", "") else {}
        return False, str(detail.get("status") or detail.get("phase") or resp.status_code)
    except httpx.HTTPError:
        return False, "starting"


def wait_ready(
    parts: list[Part], timeout: float, report: Callable[[str], None], poll: float = 0.5
) -> None:
    pending = list(parts)
    last_state: dict[str, str] = {}
    with httpx.Client(timeout=5) as client:

        def all_ready() -> bool:
            for part in list(pending):
                code = part.exited()
                if code is not None:
                    raise PartFailed(part, f"the {part.name} exited with status {code}")
                ok, state = _ready(part, client)
                if ok:
                    pending.remove(part)
                    report(f"{part.name} ready at {part.url}")
                elif last_state.get(part.name) != state:
                    last_state[part.name] = state
                    report(f"{part.name}: {state}")
            return not pending

        try:
            wait_until(all_ready, timeout=timeout, what="archon up", poll=poll)
        except TimeoutError:
            raise PartFailed(
                pending[0], f"the {pending[0].name} was not ready in {timeout:g}s"
            ) from None


@dataclass
class _Watch:
    started: float
    failures: int = 0  # deaths in a row (reset by a stable run)
    due: float | None = None  # when the restart is due
    recovering: bool = False  # restarted, not ready yet


def supervise(
    parts: list[Part],
    report: Callable[[str], None],
    delays: tuple[float, ...] = RESTART_DELAYS,
    stable_after: float = STABLE_AFTER,
    poll: float = 0.5,
    until: Callable[[], bool] = lambda: False,
) -> None:
    """Watch the running parts: restart one that dies after its backoff, say when it is back;
    raise PartFailed when one dies again after ``len(delays)`` restarts in a row. Returns when
    ``until()`` is true (tests); `up` itself leaves by Ctrl-C."""
    now = time.monotonic()
    watch = {part.name: _Watch(started=now) for part in parts}
    with httpx.Client(timeout=5) as client:
        while not until():
            now = time.monotonic()
            for part in parts:
                w = watch[part.name]
                if w.due is not None:
                    if now >= w.due:
                        w.due, w.started, w.recovering = None, now, True
                        part.start()
                        report(f"{part.name}: restarted ({w.failures} of {len(delays)} in a row)")
                    continue
                code = part.exited()
                if code is not None:
                    if now - w.started >= stable_after:
                        w.failures = 0
                    if w.failures >= len(delays):
                        raise PartFailed(
                            part,
                            f"the {part.name} exited with status {code} again after "
                            f"{w.failures} restarts in a row",
                        )
                    delay = delays[w.failures]
                    w.failures += 1
                    w.due = now + delay
                    report(
                        f"the {part.name} exited with status {code}; restarting it in {delay:g}s "
                        f"({MEANWHILE.get(part.name, 'degraded meanwhile')}); last lines of "
                        f"{part.log_path}:\n{part.log_tail(5)}"
                    )
                elif w.recovering and _ready(part, client)[0]:
                    w.recovering = False
                    report(f"{part.name} is back at {part.url}")
            time.sleep(poll)


def stop_all(parts: list[Part]) -> None:
    by_name = {p.name: p for p in parts}
    for name in STOP_ORDER:
        if name in by_name:
            by_name[name].stop()


def busy_ports(options: StackOptions, parts: list[Part]) -> list[str]:
    flags = {"model server": "--model-port", "knowledge base": "--kb-port", "agent": "--agent-port"}
    busy = []
    for part in parts:
        port = int(part.url.rsplit(":", 1)[1])
        if port_in_use(port, options.host, timeout=0.3):
            busy.append(
                f"port {port} (the {part.name}) is in use; choose another with {flags[part.name]}"
            )
    return busy


def run(
    options: StackOptions,
    report: Callable[[str], None],
    banner: Callable[[list[Part]], None],
) -> int:
    """Start everything, wait, serve until Ctrl-C (or SIGTERM), restarting a part that dies;
    0 on a clean stop, 1 when a part failed to start or kept dying."""
    parts = plan(options)
    busy = busy_ports(options, parts)
    if busy:
        for line in busy:
            report(f"error: {line}")
        return 2

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        for part in parts:
            part.start()
        report(f"logs in {options.data_dir / 'logs'}")
        wait_ready(parts, options.ready_timeout, report)
        banner(parts)
        supervise(parts, report)  # returns only in tests (until)
        return 0
    except PartFailed as exc:
        report(f"error: {exc}; last lines of {exc.part.log_path}:\n{exc.part.log_tail()}")
        return 1
    except KeyboardInterrupt:
        report("stopping…")
        return 0
    finally:
        with contextlib.suppress(KeyboardInterrupt):
            stop_all(parts)
        signal.signal(signal.SIGTERM, previous)
