"""Alluxio 3.x cluster membership: who the workers are and how to reach them.

Two sources, as PROTOCOL.md sections 2.2 and 2.3 describe: a static ``--workers`` list,
where a worker's identity is derived from its host name exactly as Alluxio's static
membership does, and the JSON each live worker registers in etcd under
``/ServiceDiscovery/<cluster>/``, which carries its identity and address. Pure parsing;
reading etcd is the job of the code that uses this.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from alluxiofuse.backends.cluster.ring import WorkerIdentity
from alluxiofuse.errors import ConfigError, ProtocolError

DEFAULT_HTTP_PORT = 28080
DEFAULT_ETCD_PORT = 2379
DEFAULT_CLUSTER = "DefaultAlluxioCluster"
_IDENTIFIER_BYTES = {0: 8, 1: 16}  # identity version -> identifier length (a long, a UUID)


class WorkerAddress(NamedTuple):
    """Where a worker's HTTP API answers."""

    host: str
    http_port: int = DEFAULT_HTTP_PORT

    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.http_port}"


def etcd_prefix(cluster: str = DEFAULT_CLUSTER) -> str:
    """The etcd key prefix under which the live workers of ``cluster`` register."""
    return f"/ServiceDiscovery/{cluster}/"


def parse_static_workers(
    spec: str, default_port: int = DEFAULT_HTTP_PORT,
) -> dict[WorkerIdentity, WorkerAddress]:
    """``host[:port],...`` as workers; the identity depends on the host alone.

    Raises ConfigError for an empty list, an empty entry, a bad port, or a host given
    twice (both entries would have one identity, so one ring position).
    """
    workers: dict[WorkerIdentity, WorkerAddress] = {}
    for entry in spec.split(","):
        address = _parse_host_port(entry.strip(), spec, "--workers", default_port)
        identity = WorkerIdentity.for_static_host(address.host)
        if identity in workers:
            raise ConfigError(f"--workers names host {address.host!r} twice: {spec!r}")
        workers[identity] = address
    return workers


def parse_etcd_endpoints(spec: str, default_port: int = DEFAULT_ETCD_PORT) -> list[str]:
    """``host[:port],...`` or ``http(s)://host:port,...`` as etcd client URLs."""
    urls = []
    for entry in spec.split(","):
        entry = entry.strip()
        scheme, sep, rest = entry.partition("://")
        if sep and scheme not in ("http", "https"):
            raise ConfigError(f"--etcd: {entry!r} is not an http(s) URL")
        address = _parse_host_port(rest.rstrip("/") if sep else entry, spec, "--etcd",
                                   default_port)
        urls.append(f"{scheme if sep else 'http'}://{WorkerAddress(*address).url()[7:]}")
    return urls


def _parse_host_port(entry: str, spec: str, option: str, default_port: int) -> WorkerAddress:
    if not entry:
        raise ConfigError(f"{option} has an empty entry: {spec!r}")
    host, port = entry, ""
    if entry.startswith("["):  # [IPv6]:port
        host, sep, rest = entry[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"{option}: cannot read {entry!r} as [address]:port")
        port = rest[1:]
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    if not host:
        raise ConfigError(f"{option}: no host in {entry!r}")
    if not port and entry.endswith(":"):
        raise ConfigError(f"{option}: no port after ':' in {entry!r}")
    if not port:
        return WorkerAddress(host, default_port)
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{option}: {port!r} is not a port number, in {entry!r}")
    return WorkerAddress(host, int(port))


def parse_worker_entity(value: bytes | str) -> tuple[WorkerIdentity, WorkerAddress]:
    """A worker's etcd registration (its ``WorkerServiceEntity`` JSON) as identity and
    address; missing address fields take Alluxio's defaults (host ``localhost``, HTTP port
    28080). Raises ProtocolError for anything that cannot be a registration."""
    try:
        entity = json.loads(value)
        identity = _identity(entity["Identity"])
        address = entity.get("WorkerNetAddress") or {}
        if not isinstance(address, Mapping):
            raise TypeError("WorkerNetAddress is not an object")
        host = address.get("Host") or "localhost"
        port = address.get("HttpServerPort", DEFAULT_HTTP_PORT)
        if not isinstance(host, str) or isinstance(port, bool) or not isinstance(port, int):
            raise TypeError(f"bad Host {host!r} or HttpServerPort {port!r}")
        if not 0 < port < 65536:
            raise ValueError(f"HttpServerPort {port} out of range")
        return identity, WorkerAddress(host, port)
    except (ValueError, KeyError, TypeError) as e:  # json.JSONDecodeError is a ValueError
        raise ProtocolError(f"not a worker registration: {e}: {str(value)[:200]!r}") from None


def _identity(raw: Any) -> WorkerIdentity:
    version, identifier = raw["version"], bytes.fromhex(raw["identifier"])
    if isinstance(version, bool) or _IDENTIFIER_BYTES.get(version) != len(identifier):
        raise ValueError(f"identity version {version!r} with {len(identifier)} bytes")
    return WorkerIdentity(identifier, version)
