"""Where `archon doctor` reads the cluster from: the API server, or a dump of an earlier read.

Everything is exchanged as the API server's JSON (camelCase keys, RFC 3339 times), so a dump is
exactly what the cluster said and the checks cannot tell the two apart.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from archon.errors import ConfigError

# The objects of a list call; an alias because a method named ``list`` hides the builtin in
# the classes' annotations.
Objects = list[dict[str, Any]]

KINDS = (
    "nodes",
    "runtimeclasses",
    "daemonsets",
    "deployments",
    "ingressclasses",
    "pods",
    "events",
    "persistentvolumeclaims",
    "configmaps",
    "replicasets",
    "storageclasses",
    "networkpolicies",
)


class Forbidden(Exception):
    """The API server refused a read (RBAC): what is there is unknown, not absent."""

    def __init__(self, kind: str, namespace: str | None, message: str):
        super().__init__(message)
        self.kind = kind
        self.namespace = namespace
        self.message = message


class ClusterSource(Protocol):
    def now(self) -> datetime: ...

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> Objects:
        """The objects (all namespaces when namespace is None); raises Forbidden on a 403."""
        ...

    def log(
        self, namespace: str, pod: str, container: str, *, previous: bool, tail: int = 200
    ) -> str | None: ...

    def pod_metrics(self, namespace: str, pod: str, port: int) -> str | None: ...

    def prometheus(self, query: str) -> Objects | None:
        """An instant query's result vector, or None when no Prometheus is reachable."""
        ...

    def node_stats(self, node: str) -> dict[str, Any] | None:
        """The kubelet's Summary API of a node (/api/v1/nodes/NODE/proxy/stats/summary: pods'
        volumes with usedBytes and capacityBytes), or None when it cannot be read."""
        ...


def _key(*parts: str | None) -> str:
    return quote("@".join(p or "" for p in parts), safe="") + ".json"


class LiveCluster:
    """The cluster of the current kube context (or the one this pod runs in)."""

    def __init__(self, context: str | None = None, prometheus_url: str | None = None):
        from kubernetes import client

        from archon.ops.kube import api_client

        self._prometheus_url = prometheus_url
        try:
            self._api = api_client(context)
        except ConfigError as exc:
            raise ConfigError(f"{exc}, or diagnose a dump with --from DIR") from None
        self._core = client.CoreV1Api(self._api)
        self._apps = client.AppsV1Api(self._api)
        self._node = client.NodeV1Api(self._api)
        self._net = client.NetworkingV1Api(self._api)
        self._storage = client.StorageV1Api(self._api)
        self._exc = client.exceptions.ApiException

    def now(self) -> datetime:
        return datetime.now(UTC)

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> Objects:
        # Raw JSON, not the client's models: exactly what the API server said, and no
        # validation error on a field a newer server adds.
        kw: dict[str, Any] = {"_preload_content": False}
        if selector:
            kw["label_selector"] = selector
        namespaced = {
            "pods": (self._core.list_namespaced_pod, self._core.list_pod_for_all_namespaces),
            "events": (self._core.list_namespaced_event, self._core.list_event_for_all_namespaces),
            "persistentvolumeclaims": (
                self._core.list_namespaced_persistent_volume_claim,
                self._core.list_persistent_volume_claim_for_all_namespaces,
            ),
            "configmaps": (
                self._core.list_namespaced_config_map,
                self._core.list_config_map_for_all_namespaces,
            ),
            "daemonsets": (
                self._apps.list_namespaced_daemon_set,
                self._apps.list_daemon_set_for_all_namespaces,
            ),
            "deployments": (
                self._apps.list_namespaced_deployment,
                self._apps.list_deployment_for_all_namespaces,
            ),
            "replicasets": (
                self._apps.list_namespaced_replica_set,
                self._apps.list_replica_set_for_all_namespaces,
            ),
            "networkpolicies": (
                self._net.list_namespaced_network_policy,
                self._net.list_network_policy_for_all_namespaces,
            ),
        }
        cluster = {
            "nodes": self._core.list_node,
            "runtimeclasses": self._node.list_runtime_class,
            "ingressclasses": self._net.list_ingress_class,
            "storageclasses": self._storage.list_storage_class,
        }
        result: Any  # the raw HTTP response (_preload_content=False)
        try:
            if kind in cluster:
                result = cluster[kind](**kw)
            else:
                by_ns, everywhere = namespaced[kind]
                result = by_ns(namespace, **kw) if namespace else everywhere(**kw)
        except self._exc as exc:
            if exc.status == 403:
                from archon.ops.kube import api_message

                raise Forbidden(kind, namespace, api_message(exc)) from None
            if exc.status == 404:  # an API this cluster does not serve
                return []
            raise
        items: Objects = json.loads(result.data).get("items", [])
        return items

    def log(
        self, namespace: str, pod: str, container: str, *, previous: bool, tail: int = 200
    ) -> str | None:
        try:
            # With _preload_content=False the client returns the raw HTTP response.
            response: Any = self._core.read_namespaced_pod_log(
                pod,
                namespace,
                container=container,
                previous=previous,
                tail_lines=tail,
                _preload_content=False,
            )
            text: str = response.data.decode("utf-8", "replace")
            return text
        except self._exc:
            return None

    def pod_metrics(self, namespace: str, pod: str, port: int) -> str | None:
        try:
            response: Any = self._core.connect_get_namespaced_pod_proxy_with_path(
                f"{pod}:{port}", namespace, "metrics", _preload_content=False
            )
            text: str = response.data.decode("utf-8", "replace")
            return text
        except self._exc:
            return None

    def node_stats(self, node: str) -> dict[str, Any] | None:
        try:
            response: Any = self._core.connect_get_node_proxy_with_path(
                node, "stats/summary", _preload_content=False
            )
            stats: dict[str, Any] = json.loads(response.data)
            return stats
        except (self._exc, ValueError):
            return None

    def prometheus(self, query: str) -> Objects | None:
        if not self._prometheus_url:
            return None
        import httpx

        try:
            body = httpx.get(
                f"{self._prometheus_url.rstrip('/')}/api/v1/query",
                params={"query": query},
                timeout=10,
            ).json()
        except (httpx.HTTPError, ValueError):
            return None
        return body.get("data", {}).get("result") if body.get("status") == "success" else None


class DumpCluster:
    """A directory written by `archon doctor --dump`."""

    def __init__(self, root: Path):
        if not (root / "meta.json").is_file():
            raise ConfigError(f"--from {root}: not an archon doctor dump (no meta.json)")
        self.root = root
        self.meta = json.loads((root / "meta.json").read_text())

    def now(self) -> datetime:
        return datetime.fromisoformat(self.meta["now"])

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> Objects:
        path = self.root / _key(kind, namespace, selector)
        data: Any = json.loads(path.read_text()) if path.is_file() else []
        if isinstance(data, dict) and "forbidden" in data:
            raise Forbidden(kind, namespace, data["forbidden"])
        objects: Objects = data
        return objects

    def log(
        self, namespace: str, pod: str, container: str, *, previous: bool, tail: int = 200
    ) -> str | None:
        path = (
            self.root
            / "logs"
            / _key(namespace, pod, container, str(previous)).replace(".json", ".txt")
        )
        return path.read_text() if path.is_file() else None

    def pod_metrics(self, namespace: str, pod: str, port: int) -> str | None:
        path = self.root / "metrics" / _key(namespace, pod).replace(".json", ".txt")
        return path.read_text() if path.is_file() else None

    def prometheus(self, query: str) -> Objects | None:
        path = self.root / "prometheus" / _key(query)
        return json.loads(path.read_text()) if path.is_file() else None

    def node_stats(self, node: str) -> dict[str, Any] | None:
        path = self.root / "stats" / _key(node)
        stats: dict[str, Any] | None = json.loads(path.read_text()) if path.is_file() else None
        return stats


class RecordingCluster:
    """Reads through another source and writes everything it read into a dump directory."""

    def __init__(self, inner: ClusterSource, root: Path, **meta: Any):
        self.inner = inner
        self.root = root
        (root / "logs").mkdir(parents=True, exist_ok=True)
        (root / "metrics").mkdir(exist_ok=True)
        (root / "prometheus").mkdir(exist_ok=True)
        self._now = inner.now()
        (root / "meta.json").write_text(json.dumps({"now": self._now.isoformat(), **meta}))

    def now(self) -> datetime:
        return self._now

    def list(self, kind: str, namespace: str | None = None, selector: str | None = None) -> Objects:
        path = self.root / _key(kind, namespace, selector)
        try:
            items = self.inner.list(kind, namespace, selector)
        except Forbidden as exc:
            path.write_text(json.dumps({"forbidden": exc.message}))
            raise
        path.write_text(json.dumps(items, indent=1))
        return items

    def log(
        self, namespace: str, pod: str, container: str, *, previous: bool, tail: int = 200
    ) -> str | None:
        text = self.inner.log(namespace, pod, container, previous=previous, tail=tail)
        if text is not None:
            name = _key(namespace, pod, container, str(previous)).replace(".json", ".txt")
            (self.root / "logs" / name).write_text(text)
        return text

    def pod_metrics(self, namespace: str, pod: str, port: int) -> str | None:
        text = self.inner.pod_metrics(namespace, pod, port)
        if text is not None:
            name = _key(namespace, pod).replace(".json", ".txt")
            (self.root / "metrics" / name).write_text(text)
        return text

    def prometheus(self, query: str) -> Objects | None:
        result = self.inner.prometheus(query)
        if result is not None:
            (self.root / "prometheus" / _key(query)).write_text(json.dumps(result))
        return result

    def node_stats(self, node: str) -> dict[str, Any] | None:
        stats = self.inner.node_stats(node)
        if stats is not None:
            (self.root / "stats").mkdir(exist_ok=True)
            (self.root / "stats" / _key(node)).write_text(json.dumps(stats))
        return stats
