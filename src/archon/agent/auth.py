"""API keys: kept only as SHA-256 digests, checked in constant time."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from pathlib import Path

from archon.errors import AuthenticationError, ConfigError

_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def hash_key(key: str) -> str:
    """The form to store in a keys file or Secret instead of the key itself."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _parse_entry(entry: str) -> bytes:
    match = _DIGEST.match(entry)
    return bytes.fromhex(match.group(1)) if match else digest(entry)


@dataclass(frozen=True)
class KeyRing:
    """The accepted keys. Empty means authentication is off."""

    digests: tuple[bytes, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.digests)

    @classmethod
    def load(cls, keys: list[str], keys_file: Path | None) -> KeyRing:
        entries = [k.strip() for k in keys if k.strip()]
        if keys_file is not None:
            try:
                lines = keys_file.read_text().splitlines()
            except OSError as exc:
                raise ConfigError(
                    f"api_keys_file {keys_file} (ARCHON_AGENT_API_KEYS_FILE): {exc.strerror}"
                ) from None
            # A line is a key or its sha256:<hex> digest, optionally followed by a label.
            for line in lines:
                line = line.split("#", 1)[0].strip()
                if line:
                    entries.append(line.split()[0])
            if not entries:
                raise ConfigError(
                    f"api_keys_file {keys_file} (ARCHON_AGENT_API_KEYS_FILE) holds no key; "
                    "remove the setting to turn authentication off"
                )
        return cls(tuple(_parse_entry(e) for e in entries))

    def check(self, authorization: str | None) -> None:
        """Raise AuthenticationError unless the Authorization header holds an accepted key."""
        if not self.enabled:
            return
        if not authorization:
            raise AuthenticationError(
                "Missing API key: send it as 'Authorization: Bearer <key>'",
                code="missing_api_key",
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise AuthenticationError(
                "Malformed Authorization header: expected 'Bearer <key>'",
                code="invalid_api_key",
            )
        candidate = digest(key)
        matched = False
        # Compare against every key so the time taken does not tell which one is close.
        for accepted in self.digests:
            matched |= hmac.compare_digest(candidate, accepted)
        if not matched:
            raise AuthenticationError("Incorrect API key provided", code="invalid_api_key")
