"""The vllm container's entry point: download llm_model into the model cache, then exec vLLM.

Runs in the vllm/vllm-openai image (python3 and huggingface_hub, which vLLM depends on), so it
imports nothing of Archon: the standard library and huggingface_hub only. Mounted from the
vllm-start ConfigMap (manifests/model-server/kustomization.yaml) and run as

    python3 /opt/archon/vllm-start.py -- python3 -m vllm.entrypoints.openai.api_server --config ...

Why here and not in an init container: `kubectl logs -l app=vllm -f` (and `--previous` after a
failure) read this container. While an init container downloads, they answer "PodInitializing"
and show nothing of a failed pull.

- The preflight init container (VRAM and GPU-count check, from config.json and the safetensors
  index only) leaves its verdict in /run/archon/preflight-failed.json when a check fails; it is
  printed here and the container exits with the preflight's code (5, 6), before any download.
- The download resumes (huggingface_hub keeps .incomplete blobs) and prints one plain progress
  line every ARCHON_DOWNLOAD_LOG_INTERVAL seconds (5), in the format Archon's own puller uses.
- A failure ends with one line "archon: error: <reason>" and Archon's exit codes:
  2 a setting, 4 llm_model not found / gated / refused, 7 network, 8 disk full.
- A model already complete in the cache (the marker Archon's `archon model pull` writes) needs
  no network: vLLM then starts at once, with HF_HUB_OFFLINE=1 either way.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import json
import os
import re
import shutil
import socket
import sys
import threading
import time
from pathlib import Path

EXIT_CONFIG = 2
EXIT_MODEL = 4
EXIT_NETWORK = 7
EXIT_DISK = 8
ATTEMPTS = 3

# The files vLLM needs (archon.modelserver.hub.MODEL_PATTERNS / EXCLUDE_PATTERNS, the same).
MODEL_PATTERNS = (
    "*.json",
    "*.safetensors",
    "*.txt",
    "*.model",
    "*.tiktoken",
    "*.py",
    "tokenizer*",
    "*.jinja",
)
EXCLUDE_PATTERNS = ("original/*", "*.gguf", "onnx/*", "*.onnx", "*.msgpack", "*.h5")
HUB_REPO = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")
NETWORK_ERRORS = {
    "ConnectionError",
    "ConnectError",
    "ConnectTimeout",
    "ReadTimeout",
    "Timeout",
    "TimeoutException",
    "TransportError",
    "NetworkError",
    "ReadError",
    "RemoteProtocolError",
    "ProtocolError",
    "ChunkedEncodingError",
    "IncompleteRead",
}


class Failure(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def say(line: str) -> None:
    print(line, flush=True)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    return Path(os.environ.get("HF_HOME") or "~/.cache/huggingface").expanduser() / "hub"


def repo_cache(repo_id: str) -> Path:
    return cache_dir() / f"models--{repo_id.replace('/', '--')}"


def _size(n: float) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def progress_line(name: str, done: int, total: int, rate: float) -> str:
    if not total:
        return f"downloading {name}: {_size(done)} {rate / 1e6:.1f} MB/s"
    eta = (total - done) / rate if rate > 0 else None
    return (
        f"downloading {name}: {100.0 * min(done, total) / total:.1f}% "
        f"({_size(done)}/{_size(total)}) {rate / 1e6:.1f} MB/s ETA {_duration(eta)}"
    )


# ---- the preflight's verdict ----


def report_preflight(path: Path) -> None:
    if not path.is_file():
        return
    verdict = json.loads(path.read_text())
    raise Failure(int(verdict["exit_code"]), str(verdict["message"]))


# ---- hub refusals, named as archon.modelserver.hub names them ----


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def classify(reference: str, exc: BaseException) -> Failure | None:
    token = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    for e in _chain(exc):
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return Failure(
                EXIT_DISK,
                f"llm_model {reference!r}: no space left in {cache_dir()} while downloading; "
                "free space or give the model cache (PVC model-cache) more room",
            )
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int) and status >= 400:
            return _refused(reference, status, response.headers, token)
    for e in _chain(exc):
        names = {c.__name__ for c in type(e).__mro__}
        if names & NETWORK_ERRORS or isinstance(e, (TimeoutError, socket.gaierror)):
            return Failure(
                EXIT_NETWORK,
                f"llm_model {reference!r}: the hub at {_endpoint()} is unreachable or the "
                f"transfer kept failing ({type(e).__name__}: {e}); check the network, "
                "HF_ENDPOINT or a proxy",
            )
    return None


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def _refused(reference: str, status: int, headers, token: bool) -> Failure:
    code = headers.get("x-error-code") or ""
    message = headers.get("x-error-message") or ""
    shown = f"HTTP {status}{' ' + code if code else ''}"
    if status >= 500 or status == 429:
        return Failure(
            EXIT_NETWORK, f"llm_model {reference!r}: the hub kept failing ({shown}); try later"
        )
    if code == "GatedRepo":
        return Failure(
            EXIT_MODEL,
            f"llm_model {reference!r}: a gated repository ({shown}); accept its conditions on "
            "the hub, then "
            + (
                "use a token of that account in the hf-token Secret (HF_TOKEN)"
                if token
                else "set HF_TOKEN (the hf-token Secret)"
            ),
        )
    if status == 401 and message == "Invalid credentials in Authorization header":
        return Failure(
            EXIT_MODEL,
            f"llm_model {reference!r}: the hub rejected HF_TOKEN ({shown}); set a valid token "
            "in the hf-token Secret",
        )
    if status == 401 and not token:
        # huggingface/datasets#4472: without a token the hub answers 401, not 404, for a
        # repository that does not exist, as for a private one: a typo far more often.
        return Failure(
            EXIT_MODEL,
            f"llm_model {reference!r}: not found on the hub ({shown}: without a token the hub "
            "answers 401 for a repository that does not exist and for a private one alike); "
            "check the repository name, or set HF_TOKEN if it is private",
        )
    if status in (401, 403):
        return Failure(
            EXIT_MODEL,
            f"llm_model {reference!r}: the hub refused access ({shown}) with the HF_TOKEN "
            "given; check the name, and that the token's account may read it",
        )
    return Failure(
        EXIT_MODEL,
        f"llm_model {reference!r}: not found on the hub ({shown}); check the repository name "
        "and revision",
    )


# ---- the download ----


def _selected(names: list[str]) -> list[str]:
    chosen = [
        n
        for n in names
        if any(fnmatch.fnmatch(n, p) for p in MODEL_PATTERNS)
        and not any(fnmatch.fnmatch(n, p) for p in EXCLUDE_PATTERNS)
    ]
    if not any(n.endswith(".safetensors") for n in chosen):
        chosen += [n for n in names if fnmatch.fnmatch(n, "*.bin")]  # PyTorch-only repositories
    return chosen


def cached_snapshot(repo_id: str, revision: str) -> Path | None:
    cache = repo_cache(repo_id)
    ref = cache / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    snapshot = cache / "snapshots" / commit
    marker = cache / ".archon" / f"complete-{commit}"
    return snapshot if marker.is_file() and snapshot.is_dir() else None


class Progress(threading.Thread):
    """Print a plain progress line every `interval` s from the bytes in the cache's blobs."""

    def __init__(self, name: str, blobs: Path, files: dict[str, int], interval: float):
        super().__init__(daemon=True)
        self.name, self.blobs, self.files, self.interval = name, blobs, files, interval
        self.total = sum(files.values())
        self.stopped = threading.Event()
        self.start_done = self.done()
        self.began = time.monotonic()

    def done(self) -> int:
        n = 0
        for etag, size in self.files.items():
            blob = self.blobs / etag
            if blob.is_file():
                n += size
                continue
            # huggingface_hub < 1 writes <etag>.incomplete (resumed by the next start); newer
            # releases <etag>.<uuid>.incomplete per process.
            for partial in self.blobs.glob(f"{etag}*.incomplete"):
                with contextlib.suppress(OSError):
                    n += min(partial.stat().st_size, size)
                break
        return n

    def line(self) -> str:
        done = self.done()
        rate = (done - self.start_done) / max(time.monotonic() - self.began, 1e-6)
        return progress_line(self.name, done, self.total, rate)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            say(self.line())


def pull(reference: str, repo_id: str, revision: str, interval: float) -> Path:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # no tqdm bars in the log
    from huggingface_hub import HfApi, snapshot_download

    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        failure = classify(reference, exc)
        if failure is None:
            raise
        raise failure from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    names = _selected(list(siblings))
    if "config.json" not in names:
        raise Failure(
            EXIT_MODEL,
            f"llm_model {reference!r}: the repository has no config.json; not a model vLLM loads",
        )
    files = {}
    for n in names:
        s = siblings[n]
        lfs = s.lfs
        sha = (lfs.get("sha256") if isinstance(lfs, dict) else getattr(lfs, "sha256", None)) or ""
        files[sha or s.blob_id or n] = int(s.size or 0)
    blobs = repo_cache(repo_id) / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    progress = Progress(repo_id, blobs, files, interval)
    needed = progress.total - progress.start_done
    free = shutil.disk_usage(blobs).free
    if needed > free:
        raise Failure(
            EXIT_DISK,
            f"llm_model {reference!r}: needs {_size(needed)} more but {cache_dir()} has "
            f"{_size(free)} free; give the model cache (PVC model-cache) more room or delete "
            "old models in it",
        )
    here = f", {_size(progress.start_done)} already here" if progress.start_done else ""
    say(
        f"downloading {repo_id}@{revision} ({info.sha}): {len(names)} files, "
        f"{_size(progress.total)}{here}"
    )
    progress.start()
    try:
        for attempt in range(1, ATTEMPTS + 1):
            try:
                path = snapshot_download(
                    repo_id, revision=revision, allow_patterns=names, cache_dir=str(cache_dir())
                )
                break
            except Exception as exc:
                failure = classify(reference, exc)
                if failure is None:
                    raise
                if failure.code != EXIT_NETWORK or attempt == ATTEMPTS:
                    raise failure from None
                say(
                    f"download interrupted ({type(exc).__name__}); resuming "
                    f"(attempt {attempt + 1}/{ATTEMPTS})"
                )
                time.sleep(min(2.0**attempt, 30.0))
    finally:
        progress.stopped.set()
        progress.join()
    say(progress.line())
    snapshot = Path(path)
    marker = repo_cache(repo_id) / ".archon" / f"complete-{snapshot.name}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(reference)
    say(f"llm_model {reference} downloaded to {snapshot}")
    return snapshot


def prepare(reference: str, interval: float) -> None:
    """Make llm_model available in the cache, or raise Failure."""
    if not reference:
        raise Failure(EXIT_CONFIG, "ARCHON_LLM_MODEL is empty: set llm_model in vllm-config")
    if reference.startswith(("/", ".", "~")):
        path = Path(reference).expanduser()
        if not (path / "config.json").is_file():
            raise Failure(EXIT_MODEL, f"llm_model {reference!r}: no model directory there")
        say(f"llm_model {reference} is a local directory; nothing to download")
        return
    match = HUB_REPO.match(reference)
    if match is None:
        raise Failure(
            EXIT_MODEL,
            f"llm_model {reference!r}: not a hub repository id ('org/name', optionally "
            "'org/name@revision') nor a local model directory",
        )
    repo_id, revision = match["repo"], match["rev"] or "main"
    snapshot = cached_snapshot(repo_id, revision)
    if snapshot is not None:
        say(f"llm_model {reference} is already available at {snapshot}")
        return
    if _offline():
        raise Failure(
            EXIT_MODEL,
            f"llm_model {reference!r}: not in the model cache ({cache_dir()}) and "
            "HF_HUB_OFFLINE is set",
        )
    pull(reference, repo_id, revision, interval)


def main(argv: list[str]) -> int:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        print("usage: vllm-start.py -- COMMAND [ARG...]", file=sys.stderr)
        return EXIT_CONFIG
    command = argv[argv.index("--") + 1 :]
    reference = os.environ.get("ARCHON_LLM_MODEL", "").strip()
    try:
        interval = float(os.environ.get("ARCHON_DOWNLOAD_LOG_INTERVAL") or 5.0)
        report_preflight(
            Path(os.environ.get("ARCHON_PREFLIGHT_FAILED", "/run/archon/preflight-failed.json"))
        )
        prepare(reference, interval)
    except Failure as failure:
        print(f"archon: error: {failure}", file=sys.stderr, flush=True)
        return failure.code
    # The model is in the cache now: vLLM must not wait on the hub.
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    say("starting vLLM: " + " ".join(command))
    sys.stderr.flush()
    os.execvpe(command[0], command, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
