"""The one way Archon's operations commands reach a Kubernetes API server."""

from __future__ import annotations

from typing import Any

from archon.errors import ConfigError


def api_client(context: str | None = None) -> Any:
    """A kubernetes ``ApiClient`` for this pod's service account, else the kube context."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    try:
        config.load_incluster_config()
    except ConfigException:
        try:
            config.load_kube_config(context=context)
        except (ConfigException, FileNotFoundError) as exc:
            raise ConfigError(
                f"no Kubernetes cluster to talk to ({exc}); set KUBECONFIG or the kube context"
            ) from None
    return client.ApiClient()


def api_message(exc: Any) -> str:
    """The API server's own message of an ``ApiException`` (its Status body), else the reason."""
    import json

    try:
        return str(json.loads(exc.body).get("message") or exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "reason", exc))
