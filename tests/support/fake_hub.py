"""A local HTTP server standing in for the Hugging Face hub (``HF_ENDPOINT``).

It serves ``/{org}/{repo}/resolve/{revision}/{file}`` the way the hub does for LFS files:
HEAD with ``X-Repo-Commit``, ``X-Linked-Etag`` (the sha256) and ``X-Linked-Size``; GET with
``Range`` support. It can throttle, and can drop the connection part-way once, to test resume.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class HubFile:
    data: bytes
    sha256: str = ""

    def __post_init__(self) -> None:
        self.sha256 = hashlib.sha256(self.data).hexdigest()


@dataclass
class FakeHub:
    files: dict[str, HubFile]  # "org/repo/file" -> content
    bytes_per_s: float = 0.0
    drop_after: int | None = None  # close the first GET after this many bytes
    ranges: list[str | None] = field(default_factory=list)
    gated: set[str] = field(default_factory=set)  # "org/repo" behind accepted conditions
    granted: set[str] = field(default_factory=set)  # Authorization headers that accepted them
    claimed_sizes: dict[str, int] = field(default_factory=dict)  # "org/repo/file" -> size told
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _lookup(self) -> HubFile | None:
                parts = self.path.split("/")
                # ['', org, repo, 'resolve', revision, file...]
                if len(parts) < 6 or parts[3] != "resolve":
                    return None
                return hub.files.get(f"{parts[1]}/{parts[2]}/{'/'.join(parts[5:])}")

            def _entry_not_found(self) -> None:
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self) -> None:
                f = self._lookup()
                if f is None:
                    self._entry_not_found()
                    return
                self.send_response(200)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("X-Linked-Etag", f'"{f.sha256}"')
                self.send_header("X-Linked-Size", str(len(f.data)))
                self.send_header("Content-Length", str(len(f.data)))
                self.end_headers()

            def _repo_info(self) -> None:
                # /api/models/{org}/{repo}/revision/{rev}
                parts = self.path.split("?")[0].split("/")
                repo = f"{parts[3]}/{parts[4]}"
                prefix = repo + "/"
                # As ?blobs=true answers for LFS files: blobId (the pointer's git blob), size,
                # lfs {sha256, size, pointerSize}.
                siblings = [
                    {
                        "rfilename": key[len(prefix) :],
                        "blobId": hashlib.sha1(f.sha256.encode()).hexdigest(),
                        "size": hub.claimed_sizes.get(key, len(f.data)),
                        "lfs": {
                            "sha256": f.sha256,
                            "size": hub.claimed_sizes.get(key, len(f.data)),
                            "pointerSize": 134,
                        },
                    }
                    for key, f in hub.files.items()
                    if key.startswith(prefix)
                ]
                if repo in hub.gated and self.headers.get("Authorization") not in hub.granted:
                    # 401 without a token, 403 with one that has not accepted the conditions.
                    self.send_response(403 if self.headers.get("Authorization") else 401)
                    self.send_header("X-Error-Code", "GatedRepo")
                    self.send_header(
                        "X-Error-Message",
                        f"Access to model {repo} is restricted and you are not in the "
                        "authorized list.",
                    )
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if not siblings:
                    # As huggingface.co answers: 401 without a token (a missing and a private
                    # repository look the same), 404 with one.
                    self.send_response(404 if self.headers.get("Authorization") else 401)
                    self.send_header("X-Error-Code", "RepoNotFound")
                    self.send_header("X-Error-Message", "Repository not found")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = json.dumps({"id": repo, "sha": COMMIT, "siblings": siblings}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _tree(self) -> None:
                # /api/models/{org}/{repo}/tree/{rev}[/{path}]?recursive=...: one page, the
                # shape huggingface.co gives (oid: git blob id; lfs.oid: the sha256).
                parts = self.path.split("?")[0].split("/")
                prefix = f"{parts[3]}/{parts[4]}/"
                entries = [
                    {
                        "type": "file",
                        "oid": hashlib.sha1(f.sha256.encode()).hexdigest(),
                        "size": len(f.data),
                        "path": key[len(prefix) :],
                        "lfs": {"oid": f.sha256, "size": len(f.data), "pointerSize": 134},
                    }
                    for key, f in hub.files.items()
                    if key.startswith(prefix)
                ]
                body = json.dumps(entries).encode()
                self.send_response(200 if entries else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                if self.path.startswith("/api/models/") and "/tree/" in self.path:
                    self._tree()
                    return
                if self.path.startswith("/api/models/"):
                    self._repo_info()
                    return
                f = self._lookup()
                if f is None:
                    self._entry_not_found()
                    return
                header = self.headers.get("Range")
                hub.ranges.append(header)
                start = int(header.split("=")[1].split("-")[0]) if header else 0
                body = f.data[start:]
                self.send_response(206 if header else 200)
                if header:
                    self.send_header(
                        "Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}"
                    )
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                sent = 0
                chunk = 256 * 1024
                drop_at = hub.drop_after
                if drop_at is not None and len(body) > drop_at:
                    hub.drop_after = None  # only the first large transfer breaks
                else:
                    drop_at = None
                for i in range(0, len(body), chunk):
                    piece = body[i : i + chunk]
                    if drop_at is not None and sent + len(piece) > drop_at:
                        self.wfile.write(piece[: drop_at - sent])
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    self.wfile.write(piece)
                    sent += len(piece)
                    if hub.bytes_per_s:
                        time.sleep(len(piece) / hub.bytes_per_s)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def load(path: Path) -> HubFile:
    return HubFile(path.read_bytes())


def load_tree(root: Path) -> dict[str, HubFile]:
    """Every file under root/org/repo/... as 'org/repo/path'."""
    return {
        str(path.relative_to(root)): HubFile(path.read_bytes())
        for path in sorted(root.rglob("*"))
        if path.is_file() and len(path.relative_to(root).parts) >= 3
    }


MODEL_FACTS = Path(__file__).resolve().parent.parent / "data" / "models"
