"""Who may read which source: the groups in the sources file, and the service token.

A source with ``groups`` is readable by a caller of any of those groups; a source without is
readable by every caller. The caller's groups come with each query (the agent sends its key's);
a query without groups is the service's own (the token holder's: operators, `archon kb`
commands, evaluations) and reads everything. The result is a list of readable source names
that the search itself filters on (archon.kb.index, archon.kb.store): a chunk of another
source is never a candidate. Chunks are filtered by their source's name, so changing the groups
in the file takes effect on the next query, without a re-index.

The file is read again when it changes (its size, mtime or inode: a Kubernetes ConfigMap
update swaps the file); a file that no longer parses keeps the last good policy.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from archon.errors import AuthenticationError, ConfigError
from archon.kb.sources import GROUP_NAME, load_sources

log = logging.getLogger("archon.kb")

GROUPS_HEADER = "x-archon-groups"  # GET /sources: the caller's groups, comma-separated


@dataclass(frozen=True)
class Policy:
    """Each source's groups, as the sources file gives them (an empty set: every caller)."""

    groups: dict[str, frozenset[str]]

    def readable(self, caller: Iterable[str] | None) -> list[str] | None:
        """The sources ``caller``'s groups may read; None: every source (no groups given).
        A source the file no longer names is readable by nobody but the service itself."""
        if caller is None:
            return None
        mine = frozenset(caller)
        return sorted(name for name, groups in self.groups.items() if not groups or groups & mine)


class AccessPolicy:
    """The policy of a sources file, re-read when the file changes."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._policy: Policy | None = None

    def current(self) -> Policy:
        try:
            stat = os.stat(self.path)
            stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            stamp = None
        if stamp is not None and stamp == self._stamp and self._policy is not None:
            return self._policy
        with self._lock:
            try:
                sources = load_sources(self.path)
            except ConfigError as exc:
                if self._policy is None:
                    # Fail closed: with no policy ever read, grouped callers read nothing.
                    log.error("access policy: %s; grouped callers read nothing", exc)
                    return Policy({})
                log.error("access policy: %s; keeping the last good one", exc)
                return self._policy
            self._policy = Policy({s.name: frozenset(s.groups) for s in sources})
            self._stamp = stamp
            return self._policy

    def readable(self, caller: Iterable[str] | None) -> list[str] | None:
        return self.current().readable(caller)


def parse_groups_header(value: str | None) -> list[str] | None:
    """The groups of an ``x-archon-groups`` header; None when absent. An empty header is a
    caller of no group (ungrouped sources only); a malformed name matches no source."""
    if value is None:
        return None
    return [g for g in (part.strip() for part in value.split(",")) if GROUP_NAME.match(g)]


def check_token(expected: str | None, authorization: str | None) -> None:
    """Raise AuthenticationError unless ``authorization`` holds the service token (no token
    configured: open, as before the token existed)."""
    if not expected:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise AuthenticationError(
            "The knowledge base wants its service token: send 'Authorization: Bearer <token>'",
            code="invalid_service_token" if authorization else "missing_service_token",
        )
