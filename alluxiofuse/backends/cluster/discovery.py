"""Where the workers of an Alluxio 3.x cluster come from: a static list or DNS (etcd: etcd.py).

Every source answers one question, ``await source.workers()``: the workers now, each
with its ring identity and HTTP address. The cluster backend asks again periodically.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Protocol

import trio

from alluxiofuse.backends.cluster.membership import DEFAULT_HTTP_PORT, WorkerAddress
from alluxiofuse.backends.cluster.ring import WorkerIdentity
from alluxiofuse.errors import BackendTimeout, BackendUnavailable


class WorkerSource(Protocol):
    description: str

    async def workers(self) -> dict[WorkerIdentity, WorkerAddress]:
        """The current workers; raises a BackendError if the source cannot be read."""
        ...

    async def aclose(self) -> None:
        ...


class StaticWorkers:
    """A fixed list (``--workers``)."""

    def __init__(self, workers: Mapping[WorkerIdentity, WorkerAddress]) -> None:
        self._workers = dict(workers)
        self.description = "workers " + ",".join(
            f"{a.host}:{a.http_port}" for a in self._workers.values())

    async def workers(self) -> dict[WorkerIdentity, WorkerAddress]:
        return dict(self._workers)

    async def aclose(self) -> None:
        return None


class DnsWorkers:
    """Every address a DNS name resolves to (``--load-balance-domain``), as a statically
    listed worker of that address: a headless Kubernetes service lists the workers' pods.
    Resolved through trio's resolver thread, so the event loop never blocks on DNS."""

    def __init__(self, name: str, port: int = DEFAULT_HTTP_PORT, timeout: float = 10.0) -> None:
        self.name = name
        self.port = port
        self.description = f"DNS name {name}"
        self._timeout = timeout

    async def workers(self) -> dict[WorkerIdentity, WorkerAddress]:
        try:
            with trio.fail_after(self._timeout):
                infos = await trio.socket.getaddrinfo(self.name, self.port,
                                                      type=socket.SOCK_STREAM)
        except trio.TooSlowError:
            raise BackendTimeout(f"resolving {self.name}: no answer within "
                                 f"{self._timeout}s") from None
        except OSError as e:
            raise BackendUnavailable(f"cannot resolve {self.name}: {e}") from None
        hosts = sorted({str(info[4][0]) for info in infos})
        return {WorkerIdentity.for_static_host(h): WorkerAddress(h, self.port) for h in hosts}

    async def aclose(self) -> None:
        return None
