"""Downloads from the Hugging Face hub into its cache layout, with progress, resume and retries.

Files land where ``huggingface_hub`` and vLLM look for them (``$HF_HOME/hub/models--org--repo``:
``blobs/<etag>``, ``snapshots/<commit>/<file>`` links, ``refs/<revision>``), so a model pulled
here is served by vLLM with ``HF_HUB_OFFLINE=1`` and by a restart without the network.

Why not ``huggingface_hub`` itself: we need byte-level progress in our own log format and in
``/health`` at a fixed cadence, and typed failures (bad name / network / disk full) that map to
distinct exit codes; its download helpers report through tqdm bars and generic exceptions.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
from tenacity import (
    RetryCallState,
    retry,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from archon.errors import DiskFullError, ModelReferenceError, NetworkError
from archon.modelserver.progress import Progress, Reporter, size_text

log = logging.getLogger("archon.hub")

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# What vLLM needs from a repository; everything else (original checkpoints, ONNX, GGUF
# siblings, images) would only cost disk and download time.
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
ATTEMPTS = 5


def endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return Path(home).expanduser() / "hub"


def repo_cache(repo_id: str) -> Path:
    return cache_dir() / f"models--{repo_id.replace('/', '--')}"


def auth_headers() -> dict[str, str]:
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


def resolve_url(repo_id: str, revision: str, filename: str) -> str:
    return f"{endpoint()}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"


def cached_file(repo_id: str, revision: str, filename: str) -> Path | None:
    """The cached copy of one file, found without the network."""
    cache = repo_cache(repo_id)
    ref = cache / "refs" / revision
    commit = ref.read_text().strip() if ref.is_file() else revision
    candidate = cache / "snapshots" / commit / filename
    return candidate.resolve() if candidate.is_file() else None


def _refused(reference: str, response: httpx.Response, what: str) -> ModelReferenceError:
    """Name the fix a refusal needs. The hub's X-Error-Code tells what the status does not:
    without a token it answers 401 (not 404) for a repository that does not exist, exactly as
    for a private one (huggingface/datasets#4472; huggingface_hub reads such a 401 as
    RepositoryNotFound), so a 401 is a typo far more often than a missing token."""
    code = response.headers.get("x-error-code") or ""
    message = response.headers.get("x-error-message") or ""
    status = f"HTTP {response.status_code}{' ' + code if code else ''}"
    token = bool(auth_headers())
    if code == "GatedRepo":
        return ModelReferenceError(
            f"llm_model {reference!r}: a gated repository ({status} for {what}); accept its "
            "conditions on the hub, then "
            + ("use a token of that account in HF_TOKEN" if token else "set HF_TOKEN")
        )
    if response.status_code == 401 and message == "Invalid credentials in Authorization header":
        return ModelReferenceError(
            f"llm_model {reference!r}: the hub rejected HF_TOKEN ({status}); set a valid token"
        )
    if response.status_code == 401 and not token:
        return ModelReferenceError(
            f"llm_model {reference!r}: not found on the hub ({status} for {what}: without a "
            "token the hub answers 401 for a repository that does not exist and for a private "
            "one alike); check the repository name, or set HF_TOKEN if it is private"
        )
    if response.status_code in (401, 403):
        return ModelReferenceError(
            f"llm_model {reference!r}: the hub refused access ({status} for {what}) with the "
            "HF_TOKEN given; check the name, and that the token's account may read it"
        )
    return ModelReferenceError(
        f"llm_model {reference!r}: not found on the hub ({status} for {what}); "
        "check the repository and file name"
    )


def _network(reference: str, exc: Exception) -> NetworkError:
    return NetworkError(
        f"llm_model {reference!r}: the hub at {endpoint()} is unreachable "
        f"({exc.__class__.__name__}: {exc}); check the network, HF_ENDPOINT or a proxy"
    )


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repository revision, as the hub describes it."""

    repo_id: str
    revision: str
    commit: str
    filename: str
    etag: str  # sha256 for LFS files, the git blob id otherwise
    size: int | None

    @property
    def url(self) -> str:
        return resolve_url(self.repo_id, self.commit, self.filename)

    @property
    def blob(self) -> Path:
        return repo_cache(self.repo_id) / "blobs" / self.etag

    @property
    def target(self) -> Path:
        return repo_cache(self.repo_id) / "snapshots" / self.commit / self.filename


def _refuse_if_offline(reference: str) -> None:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelReferenceError(
            f"llm_model {reference!r}: not in the model cache ({cache_dir()}) and HF_HUB_OFFLINE "
            "is set; pull it first (archon model pull) or unset HF_HUB_OFFLINE"
        )


def head_file(reference: str, repo_id: str, revision: str, filename: str) -> RemoteFile:
    """Ask the hub about one file; raise ModelReferenceError / NetworkError on failure."""
    _refuse_if_offline(reference)
    url = resolve_url(repo_id, revision, filename)
    try:
        response = httpx.head(url, headers=auth_headers(), follow_redirects=False, timeout=15)
    except httpx.HTTPError as exc:
        raise _network(reference, exc) from None
    if response.status_code >= 400:
        raise _refused(reference, response, f"{repo_id}@{revision} file {filename}")
    etag = response.headers.get("x-linked-etag") or response.headers.get("etag") or ""
    etag = etag.removeprefix("W/").strip('"')
    size = response.headers.get("x-linked-size") or response.headers.get("content-length")
    commit = response.headers.get("x-repo-commit") or revision
    if not etag:
        etag = hashlib.sha256(f"{repo_id}/{commit}/{filename}".encode()).hexdigest()
    return RemoteFile(
        repo_id, revision, commit, filename, etag, int(size) if size and size.isdigit() else None
    )


def list_files(reference: str, repo_id: str, revision: str) -> list[RemoteFile]:
    """All files of a repository revision, with sizes (the hub's model-info API)."""
    _refuse_if_offline(reference)
    url = f"{endpoint()}/api/models/{repo_id}/revision/{quote(revision, safe='')}"
    try:
        response = httpx.get(url, params={"blobs": "true"}, headers=auth_headers(), timeout=30)
    except httpx.HTTPError as exc:
        raise _network(reference, exc) from None
    if response.status_code >= 400:
        raise _refused(reference, response, f"repository {repo_id}@{revision}")
    info = response.json()
    commit = info.get("sha") or revision
    files = []
    for sibling in info.get("siblings", []):
        name = sibling["rfilename"]
        lfs = sibling.get("lfs") or {}
        etag = (
            lfs.get("sha256")
            or sibling.get("blobId")
            or hashlib.sha256(f"{repo_id}/{commit}/{name}".encode()).hexdigest()
        )
        size = lfs.get("size", sibling.get("size"))
        files.append(RemoteFile(repo_id, revision, commit, name, etag, size))
    return files


def select_model_files(files: Iterable[RemoteFile]) -> list[RemoteFile]:
    chosen = [
        f
        for f in files
        if any(fnmatch.fnmatch(f.filename, p) for p in MODEL_PATTERNS)
        and not any(fnmatch.fnmatch(f.filename, p) for p in EXCLUDE_PATTERNS)
    ]
    if not any(f.filename.endswith(".safetensors") for f in chosen):
        # Older repositories ship only PyTorch pickles.
        chosen += [f for f in files if fnmatch.fnmatch(f.filename, "*.bin")]
    return chosen


def _log_retry(state: RetryCallState) -> None:
    exc = state.outcome.exception() if state.outcome else None
    log.warning(
        "download interrupted (%s); resuming (attempt %d/%d)",
        exc.__class__.__name__ if exc else "?",
        state.attempt_number + 1,
        ATTEMPTS,
    )


def _worth_retrying(exc: BaseException) -> bool:
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    return isinstance(exc, httpx.TransportError)


def _is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def fetch_files(
    reference: str,
    files: list[RemoteFile],
    *,
    name: str,
    on_progress: Callable[[Progress], None] = lambda _p: None,
    log_interval: float = 5.0,
    wait_multiplier: float = 1.0,
) -> None:
    """Download ``files`` (skipping complete blobs, resuming partial ones) and link them."""
    missing = [f for f in files if not f.blob.is_file()]
    partial_bytes = sum(_partial(f).stat().st_size for f in missing if _partial(f).exists())
    total = sum(f.size or 0 for f in files) or None
    remaining = sum(f.size or 0 for f in missing) - partial_bytes
    _check_space(reference, remaining)
    reporter = Reporter(
        name,
        total,
        on_progress,
        log_interval,
        already=sum(f.size or 0 for f in files if f not in missing) + partial_bytes,
    )

    @retry(
        retry=retry_if_exception(_worth_retrying),
        stop=stop_after_attempt(ATTEMPTS),
        wait=wait_exponential(multiplier=wait_multiplier, max=30),
        before_sleep=_log_retry,
        reraise=True,
    )
    def fetch(remote: RemoteFile) -> None:
        _download(remote, reporter)

    for remote in missing:
        try:
            fetch(remote)
        except httpx.HTTPStatusError as exc:
            raise _refused(reference, exc.response, f"file {remote.filename}") from None
        except httpx.TransportError as exc:
            raise _network(reference, exc) from None
        except OSError as exc:
            if _is_disk_full(exc):
                raise DiskFullError(
                    f"llm_model {reference!r}: no space left in {cache_dir()} while writing "
                    f"{remote.filename}; free space or give the model cache more room"
                ) from None
            raise
        _verify(remote)
        _partial(remote).replace(remote.blob)
    for remote in files:
        _link(remote)
    reporter.finish()


def _partial(remote: RemoteFile) -> Path:
    return remote.blob.with_name(remote.etag + ".incomplete")


def _check_space(reference: str, needed: int) -> None:
    root = cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(root).free
    if needed > free:
        raise DiskFullError(
            f"llm_model {reference!r}: needs {size_text(needed)} but {root} has "
            f"{size_text(free)} free; "
            "free space or give the model cache more room"
        )


def _download(remote: RemoteFile, reporter: Reporter) -> None:
    partial = _partial(remote)
    partial.parent.mkdir(parents=True, exist_ok=True)
    start_at = partial.stat().st_size if partial.exists() else 0
    headers = auth_headers()
    if start_at:
        headers["range"] = f"bytes={start_at}-"
    with httpx.stream(
        "GET", remote.url, headers=headers, follow_redirects=True, timeout=30.0
    ) as response:
        if response.status_code == 416 and start_at and start_at == remote.size:
            return
        response.raise_for_status()
        if start_at and response.status_code != 206:
            log.info("the server ignored the range request; restarting %s", remote.filename)
            reporter.add(-start_at)
            start_at = 0
        elif start_at:
            log.info("resuming %s at %s", remote.filename, size_text(start_at))
        written = start_at
        with partial.open("ab" if start_at else "wb") as out:
            for chunk in response.iter_bytes(1 << 20):
                out.write(chunk)
                written += len(chunk)
                reporter.add(len(chunk))
        if remote.size is not None and written < remote.size:
            raise httpx.ReadError(f"connection closed at {written} of {remote.size} bytes")


def _verify(remote: RemoteFile) -> None:
    partial = _partial(remote)
    if remote.size is not None and partial.stat().st_size != remote.size:
        partial.unlink()
        raise NetworkError(f"downloaded size of {remote.filename} does not match the hub's")
    if re.fullmatch(r"[0-9a-f]{64}", remote.etag):
        digest = hashlib.sha256()
        with partial.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
        if digest.hexdigest() != remote.etag:
            partial.unlink()
            raise NetworkError(f"checksum of {remote.filename} does not match the hub's sha256")


def _link(remote: RemoteFile) -> None:
    target = remote.target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        if target.is_symlink():
            target.unlink()
        relative = os.path.relpath(remote.blob, target.parent)
        try:
            target.symlink_to(relative)
        except OSError:
            os.link(remote.blob, target)
    ref = repo_cache(remote.repo_id) / "refs" / remote.revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    if remote.revision != remote.commit:
        ref.write_text(remote.commit)
