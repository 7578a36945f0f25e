"""Upstreams found in DNS: ``dns+http://name:port`` stands for every address ``name`` resolves to.

A Kubernetes headless Service (``clusterIP: None``) answers its name with one A/AAAA record per
ready pod, so the agent follows scaling, or a Deployment per GPU behind one Service, without a
restart: the name is resolved again on each health round. When a lookup fails the last answer is
kept (a DNS blip must not empty the pool; gone pods then fail their health checks instead).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

PREFIX = "dns+"

# host, port -> addresses (IPv4 or IPv6 text)
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True)
class DnsTarget:
    """One ``dns+http(s)://name:port[/path]`` entry of the upstreams setting."""

    entry: str
    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, entry: str) -> DnsTarget:
        parts = urlsplit(entry[len(PREFIX) :])
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{entry!r}: expected dns+http://name:port or dns+https://name:port")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"{entry!r}: the port is not a number") from None
        if port is None:
            raise ValueError(f"{entry!r}: name the port (dns+http://name:port)")
        return cls(entry, parts.scheme, parts.hostname, port, parts.path.rstrip("/"))

    def url(self, address: str) -> str:
        host = f"[{address}]" if ipaddress.ip_address(address).version == 6 else address
        return f"{self.scheme}://{host}:{self.port}{self.path}"


def is_dns(entry: str) -> bool:
    return entry.startswith(PREFIX)


async def system_resolver(host: str, port: int) -> list[str]:
    """The A and AAAA records of ``host``, through the system resolver (getaddrinfo)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    seen: dict[str, None] = {}
    for _family, _type, _proto, _name, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]).split("%")[0], None)  # drop an IPv6 zone index
    return list(seen)
