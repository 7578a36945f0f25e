"""API keys: kept only as SHA-256 digests, checked in constant time.

A keys file is either the plain format (one key or ``sha256:<hex>`` digest a line, an optional
label after it) or YAML whose first statement is ``keys:``. A YAML key names who holds it and
may carry limits (see ``KeySpec``); its usage is counted per name (archon.agent.limits).
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from archon.errors import AuthenticationError, ConfigError

_DIGEST = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
# Key names become Prometheus label values and Redis key parts: keep them plain.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_SETTING = "ARCHON_AGENT_API_KEYS_FILE"

Priority = Literal["interactive", "batch"]


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def hash_key(key: str) -> str:
    """The form to store in a keys file or Secret instead of the key itself."""
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def _parse_entry(entry: str) -> bytes:
    match = _DIGEST.match(entry)
    return bytes.fromhex(match.group(1)) if match else digest(entry)


@dataclass(frozen=True)
class Limits:
    """Per-key limits; None: no limit of that kind."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    daily_token_budget: int | None = None
    monthly_token_budget: int | None = None

    @property
    def any(self) -> bool:
        return any(v is not None for v in self.__dict__.values())

    def describe(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True, eq=False)
class ApiKey:
    """An accepted key. ``metered`` keys (declared in the YAML format) have their requests and
    tokens counted and their limits enforced; plain-format keys only open the door."""

    name: str
    digest: bytes = field(repr=False)
    metered: bool = False
    admin: bool = False
    priority: Priority = "interactive"  # its class in the admission queue (archon.agent.admission)
    set_priority: bool = False  # may raise its class with the x-archon-priority header
    models: tuple[str, ...] | None = None  # glob patterns; None: every model
    max_tokens: int | None = None  # the cap a request may ask for
    default_max_tokens: int | None = None  # applied when a request names none
    limits: Limits = field(default_factory=Limits)
    # The groups whose knowledge-base sources it may read (archon.kb.access); a key of no
    # group, and every plain-format key, reads only the sources that name no group.
    groups: tuple[str, ...] = ()

    def may_use(self, model: str | None) -> bool:
        if self.models is None:
            return True
        return isinstance(model, str) and any(fnmatch.fnmatchcase(model, p) for p in self.models)


class KeySpec(BaseModel):
    """One entry of a YAML keys file."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=_NAME.pattern)
    key: str = Field(min_length=1, description="sha256:<hex> digest (or, discouraged, the key)")
    admin: bool = False
    priority: Priority = "interactive"
    set_priority: bool = False
    models: list[str] | None = None
    max_tokens: int | None = Field(None, ge=1)
    default_max_tokens: int | None = Field(None, ge=1)
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_concurrent: int | None = Field(None, ge=1)
    daily_token_budget: int | None = Field(None, ge=1)
    monthly_token_budget: int | None = Field(None, ge=1)
    groups: list[str] = Field(
        default_factory=list,
        description="Groups whose knowledge-base sources the key may read (sources file).",
    )

    @field_validator("groups")
    @classmethod
    def _group_names(cls, value: list[str]) -> list[str]:
        for group in value:
            if not _NAME.match(group):
                raise ValueError(f"group {group!r}: letters, digits, '_', '.', '-' (at most 64)")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _defaults_within_cap(self) -> KeySpec:
        if (
            self.max_tokens
            and self.default_max_tokens
            and self.default_max_tokens > self.max_tokens
        ):
            raise ValueError(
                f"default_max_tokens {self.default_max_tokens} is above max_tokens "
                f"{self.max_tokens}"
            )
        if self.models is not None and not self.models:
            raise ValueError("models is empty: the key could use no model (leave it out for all)")
        return self

    def to_key(self) -> ApiKey:
        return ApiKey(
            name=self.name,
            digest=_parse_entry(self.key.strip()),
            metered=True,
            admin=self.admin,
            priority=self.priority,
            set_priority=self.set_priority,
            models=tuple(self.models) if self.models is not None else None,
            max_tokens=self.max_tokens,
            default_max_tokens=self.default_max_tokens,
            limits=Limits(
                self.requests_per_minute,
                self.tokens_per_minute,
                self.max_concurrent,
                self.daily_token_budget,
                self.monthly_token_budget,
            ),
            groups=tuple(self.groups),
        )


def _is_yaml(text: str) -> bool:
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line.startswith("keys:")
    return False


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _load_yaml(text: str, keys_file: Path) -> list[ApiKey]:
    where = f"api_keys_file {keys_file} ({_SETTING})"
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {exc}") from None
    if not isinstance(document, dict) or set(document) != {"keys"}:
        raise ConfigError(f"{where}: expected a mapping with one entry, keys: a list of keys")
    entries = document["keys"]
    if not isinstance(entries, list):
        raise ConfigError(f"{where}: expected a mapping with one entry, keys: a list of keys")
    keys = []
    for n, entry in enumerate(entries):
        try:
            keys.append(KeySpec.model_validate(entry).to_key())
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = _where(("keys", n, *first.get("loc", ())))
            raise ConfigError(f"{where}: {loc}: {first.get('msg')}") from None
    names = [k.name for k in keys]
    if duplicate := next((n for n in names if names.count(n) > 1), None):
        raise ConfigError(f"{where}: the name {duplicate!r} is given to two keys")
    return keys


@dataclass(frozen=True)
class KeyRing:
    """The accepted keys. Empty means authentication is off."""

    keys: tuple[ApiKey, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    @property
    def digests(self) -> tuple[bytes, ...]:
        return tuple(k.digest for k in self.keys)

    @property
    def metered(self) -> tuple[ApiKey, ...]:
        return tuple(k for k in self.keys if k.metered)

    @classmethod
    def load(cls, keys: list[str], keys_file: Path | None) -> KeyRing:
        plain = [k.strip() for k in keys if k.strip()]
        labels: list[str | None] = [None] * len(plain)
        named: list[ApiKey] = []
        if keys_file is not None:
            try:
                text = keys_file.read_text()
            except OSError as exc:
                raise ConfigError(
                    f"api_keys_file {keys_file} ({_SETTING}): {exc.strerror}"
                ) from None
            if _is_yaml(text):
                named = _load_yaml(text, keys_file)
            else:
                # A line is a key or its sha256:<hex> digest, optionally followed by a label.
                for line in text.splitlines():
                    line = line.split("#", 1)[0].strip()
                    if line:
                        entry, *label = line.split()
                        plain.append(entry)
                        labels.append(label[0] if label and _NAME.match(label[0]) else None)
            if not plain and not named:
                raise ConfigError(
                    f"api_keys_file {keys_file} ({_SETTING}) holds no key; "
                    "remove the setting to turn authentication off"
                )
        ring = [
            ApiKey(label or f"key-{n}", _parse_entry(entry))
            for n, (entry, label) in enumerate(zip(plain, labels, strict=True), start=1)
        ]
        # A plain key listed again is harmless; a named key listed twice would count its usage
        # under one of two names, so it stops the start. A named key wins over a plain copy.
        by_digest: dict[bytes, ApiKey] = {}
        for key in ring:
            by_digest.setdefault(key.digest, key)
        for key in named:
            other = by_digest.get(key.digest)
            if other is not None and other.metered:
                raise ConfigError(
                    f"api_keys_file {keys_file} ({_SETTING}): the keys named {other.name!r} and "
                    f"{key.name!r} are the same key"
                )
            by_digest[key.digest] = key
        return cls(tuple(by_digest.values()))

    def check(self, authorization: str | None) -> ApiKey | None:
        """The key the Authorization header holds (None with authentication off); raise
        AuthenticationError unless it is an accepted one."""
        if not self.keys:
            return None
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
        matched: ApiKey | None = None
        # Compare against every key so the time taken does not tell which one is close.
        for accepted in self.keys:
            if hmac.compare_digest(candidate, accepted.digest):
                matched = accepted
        if matched is None:
            raise AuthenticationError("Incorrect API key provided", code="invalid_api_key")
        return matched
