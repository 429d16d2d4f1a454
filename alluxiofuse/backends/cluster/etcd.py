"""Alluxio 3.x workers as registered in etcd, read through etcd's JSON gateway.

Every live worker keeps ``/ServiceDiscovery/<cluster>/worker-<uuid>`` under a lease
(PROTOCOL.md section 2.2). This reads that prefix with one ``POST /v3/kv/range`` to etcd's
HTTP gateway (etcd >= 3.4), so it needs nothing but httpx: no gRPC stack. Endpoints are
tried in order, the first that answers wins; with a user name, a token is fetched first
(``/v3/auth/authenticate``) and fetched again once if etcd rejects it.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

import httpx

from alluxiofuse.backends.cluster.membership import (
    DEFAULT_CLUSTER,
    WorkerAddress,
    etcd_prefix,
    parse_worker_entity,
)
from alluxiofuse.backends.cluster.ring import WorkerIdentity
from alluxiofuse.errors import BackendTimeout, BackendUnavailable, ProtocolError

log = logging.getLogger(__name__)


class EtcdMembership:
    """The live workers of one Alluxio cluster, read from etcd on demand."""

    def __init__(
        self, endpoints: Sequence[str], *, cluster: str = DEFAULT_CLUSTER,
        username: str | None = None, password: str | None = None, timeout: float = 5.0,
    ) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [e if "://" in e else f"http://{e}" for e in endpoints]
        self.prefix = etcd_prefix(cluster)
        self.description = f"etcd {','.join(self.endpoints)} cluster {cluster}"
        self._credentials = (username, password or "") if username else None
        self._token: str | None = None
        self._client = httpx.AsyncClient(timeout=timeout)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def workers(self) -> dict[WorkerIdentity, WorkerAddress]:
        """Every registered worker. A registration that cannot be read is skipped (and
        logged): one broken worker must not hide the others."""
        kvs = await self._range(self.prefix.encode(), _prefix_end(self.prefix.encode()))
        workers: dict[WorkerIdentity, WorkerAddress] = {}
        for key, value in kvs:
            try:
                identity, address = parse_worker_entity(value)
            except ProtocolError as e:
                log.warning("etcd key %r: %s", key, e)
                continue
            workers[identity] = address
        return workers

    async def _range(self, key: bytes, range_end: bytes) -> list[tuple[bytes, bytes]]:
        body = {"key": _b64(key), "range_end": _b64(range_end)}
        failures, timeouts = [], 0
        for endpoint in self.endpoints:
            try:
                reply = await self._post(endpoint, "/v3/kv/range", body)
            except (httpx.TransportError, BackendUnavailable) as e:
                failures.append(f"{endpoint}: {type(e).__name__} {e}".rstrip())
                timeouts += isinstance(e, httpx.TimeoutException)
                continue
            return _key_values(reply)
        error = BackendTimeout if timeouts == len(failures) else BackendUnavailable
        raise error(f"no etcd endpoint answered: {'; '.join(failures)}")

    async def _post(self, endpoint: str, path: str, body: dict[str, Any]) -> Any:
        for attempt in (1, 2):
            if self._credentials and self._token is None:
                self._token = await self._authenticate(endpoint)
            headers = {"Authorization": self._token} if self._token else {}
            response = await self._client.post(endpoint + path, json=body, headers=headers)
            if response.status_code == 401 and self._credentials and attempt == 1:
                self._token = None  # expired or from another member: fetch a new one
                continue
            if response.status_code >= 500:
                raise BackendUnavailable(f"{endpoint}: HTTP {response.status_code}")
            if response.status_code != 200:
                raise ProtocolError(f"etcd {path}: HTTP {response.status_code}: "
                                    f"{response.text[:200]}")
            return _json(response)
        raise AssertionError("unreachable")

    async def _authenticate(self, endpoint: str) -> str:
        assert self._credentials is not None
        name, password = self._credentials
        response = await self._client.post(endpoint + "/v3/auth/authenticate",
                                           json={"name": name, "password": password})
        if response.status_code != 200:
            raise ProtocolError(f"etcd refused user {name!r}: HTTP {response.status_code}")
        token = _json(response).get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError("etcd authentication answered without a token")
        return token


def _prefix_end(prefix: bytes) -> bytes:
    """The smallest key after every key that starts with ``prefix``."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise ProtocolError(f"etcd answered with no JSON: {response.text[:200]!r}") from None


def _key_values(reply: Any) -> list[tuple[bytes, bytes]]:
    try:
        return [(base64.b64decode(kv["key"], validate=True),
                 base64.b64decode(kv.get("value", ""), validate=True))
                for kv in reply.get("kvs", [])]
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise ProtocolError(f"etcd range reply not understood: {e}") from None
