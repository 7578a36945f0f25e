"""What every service's settings share: one loader and one error line.

Each service's settings sit next to it (`modelserver/settings.py`, `kb/settings.py`,
`agent/settings.py`): a pydantic-settings model with its own `ARCHON_*` prefix. They are all
read by `load_settings`. Precedence, highest first: command-line flags, environment,
ConfigMap file (the model server's `--config`), defaults. A bad value is one `ConfigError`
line naming the setting and where to set it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from archon.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)


def read_configmap(path: Path, keys: Mapping[str, str]) -> dict[str, Any]:
    """Read a ConfigMap's ``data`` (or a kustomize ConfigMapGenerator's ``literals``), its keys
    mapped to settings fields by ``keys``; any other key is an error that lists them."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {path}: not valid YAML ({exc})".replace("\n", " ")) from None
    if isinstance(doc, dict) and doc.get("kind") == "ConfigMapGenerator":
        # manifests/model-server/configmap.yaml: `literals: [key=value, ...]`
        literals = doc.get("literals") or []
        if not all(isinstance(item, str) and "=" in item for item in literals):
            raise ConfigError(f"--config {path}: literals must be 'key=value' strings")
        doc = {"data": dict(item.split("=", 1) for item in literals)}
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise ConfigError(f"--config {path}: expected a ConfigMap with a 'data' mapping")
    values: dict[str, Any] = {}
    for key, value in doc["data"].items():
        if key not in keys:
            allowed = ", ".join(keys)
            raise ConfigError(f"--config {path}: unknown key data.{key}; known keys: {allowed}")
        values[keys[key]] = value
    return values


def explain(exc: ValidationError, prefix: str, source: str = "") -> str:
    """A validation error as one line: the setting, its variable (and ConfigMap key), why."""
    err = exc.errors()[0]
    field = str(err["loc"][0]) if err["loc"] else "?"
    where = f"{prefix}{field.upper()}" + (f" or data.{field} in {source}" if source else "")
    if err["type"] == "extra_forbidden":
        return f"unknown setting {field!r}"
    return f"invalid setting {field} ({where}): {err['msg']}, got {err.get('input')!r}"


def load_settings(
    model: type[S],
    overrides: Mapping[str, Any] | None = None,
    *,
    configmap: Path | None = None,
    configmap_keys: Mapping[str, str] | None = None,
) -> S:
    """``model`` from flags (``overrides``; None = not given) > environment > ConfigMap >
    defaults; raise ConfigError on a bad value."""
    flags = {k: v for k, v in (overrides or {}).items() if v is not None}
    prefix = str(model.model_config.get("env_prefix", ""))
    try:
        if configmap is None:
            return model(**flags)
        file_values = read_configmap(configmap, configmap_keys or {})
        # The environment wins over the file: keep only the fields it set.
        from_env = model()
        env_values = from_env.model_dump(include=from_env.model_fields_set)
        return model(**{**file_values, **env_values, **flags})
    except ValidationError as exc:
        raise ConfigError(explain(exc, prefix, str(configmap or ""))) from None


def split_list(value: Any) -> Any:
    """Accept a list or a comma/space-separated string (env vars, ConfigMap values)."""
    if isinstance(value, str):
        return [item for item in re.split(r"[,\s]+", value.strip()) if item]
    return value


def secret_from(value: Any, file: Path | None, setting: str, env: str) -> str | None:
    """A secret given inline (a SecretStr or str) or as a file holding it (a mounted Secret):
    the inline one wins; None when neither is set. An unreadable or empty file is a
    ConfigError naming ``setting``'s file setting and ``env``, its variable."""
    inline = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    if inline and inline.strip():
        return str(inline.strip())
    if file is None:
        return None
    try:
        text = file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"{setting}_file {file} ({env}_FILE): {exc.strerror}") from None
    if not text:
        raise ConfigError(f"{setting}_file {file} ({env}_FILE) is empty")
    return text
