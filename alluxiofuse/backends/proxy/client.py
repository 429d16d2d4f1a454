"""Client of the Alluxio 2.x proxy REST API (PROTOCOL.md section 4): paths and streams.

Every call goes to one proxy, as a POST (``download-file`` and the proxy's info are GETs):
``/api/v1/paths/{path}/{op}`` with the op's options as the camelCase JSON of the 2.9
protobuf ``…POptions`` message (only its fields: the proxy's Jackson may refuse others),
and ``/api/v1/streams/{id}/{read,write,close}`` on a stream that ``create-file`` or
``open-file`` made. Stream ids are the proxy's own, so one client talks to one proxy.

A stream read answers with the whole rest of the file from the stream's position; it is
returned as a :class:`ReadStream` that the caller consumes as far as it needs and closes.

Errors: the proxy answers every failure with HTTP 500 and ``{"statusCode", "message"}``
(gRPC code names); each code maps to the errno tree, ``CANCELLED`` in both spellings. A
reply that cannot be right (not JSON where JSON is due, a 400 from the proxy's JSON
mapping, a 404 from a server that is no proxy) is a ``ProtocolError``, counted.

Deadlines and retries as for the worker client: each call has a deadline (``timeout``),
retries included; calls that change nothing on the server (get-status, list-status,
exists, the proxy's info) and open-file (its stream, if an answer was lost, expires on
its own) are sent again, with exponential backoff and full jitter within the deadline,
when the connection is refused or the proxy answers 429, 503 or ``UNAVAILABLE``. A
stream read's deadline applies to each part read, so a long file is never cut off for
being long; a write's deadline grows with its size.
"""

from __future__ import annotations

import builtins
import json
import urllib.parse
from collections.abc import AsyncIterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from alluxiofuse.backends import http1
from alluxiofuse.backends.rest import (
    Retryable,
    bad_reply,
    observe,
    outcome,
    retrying,
    unwrapped,
)
from alluxiofuse.errors import (
    AlluxioFuseError,
    AlreadyExists,
    BackendTimeout,
    BackendUnavailable,
    ConnectionDropped,
    InvalidArgument,
    NoSpace,
    NotFound,
    NotSupported,
    PermissionDenied,
    ProtocolError,
    Refused,
    ServerError,
)
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import Data, FileStatus, Kind

DEFAULT_PORT = 39999  # alluxio.proxy.web.port
READ_TYPES = ("NO_CACHE", "CACHE", "CACHE_PROMOTE")
WRITE_TYPES = ("MUST_CACHE", "CACHE_THROUGH", "THROUGH", "ASYNC_THROUGH")
TTL_ACTIONS = ("DELETE", "FREE")
_PREFIX = "/api/v1"
_RETRY_STATUS = frozenset({429, 503})
_MIN_WRITE_RATE = 1024 * 1024  # bytes per second a write is given time for
_JSON = (("Content-Type", "application/json"),)
_OCTETS = (("Content-Type", "application/octet-stream"),)
# The Bits enum of a PMode, indexed by the rwx bits of one class of users.
_BITS = ("NONE", "EXECUTE", "WRITE", "WRITE_EXECUTE", "READ", "READ_EXECUTE", "READ_WRITE", "ALL")

# gRPC status codes (as the proxy names them) and the errors they are.
_BY_CODE: dict[str, type[AlluxioFuseError]] = {
    "NOT_FOUND": NotFound,
    "ALREADY_EXISTS": AlreadyExists,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": PermissionDenied,
    "INVALID_ARGUMENT": InvalidArgument,
    "OUT_OF_RANGE": InvalidArgument,
    "FAILED_PRECONDITION": Refused,
    "RESOURCE_EXHAUSTED": NoSpace,
    "UNIMPLEMENTED": NotSupported,
    "DEADLINE_EXCEEDED": BackendTimeout,
    "UNAVAILABLE": ServerError,
    "ABORTED": ServerError,
    "CANCELLED": ServerError,
    "CANCELED": ServerError,  # the spelling of the official 0.x client's table
    "INTERNAL": ServerError,
    "UNKNOWN": ServerError,
    "DATA_LOSS": ServerError,
}
_RETRY_CODES = frozenset({"UNAVAILABLE"})


def mode_json(mode: int) -> dict[str, str]:
    """Permission bits as a PMode: ``0o754`` → ``{"ownerBits": "ALL", ...}``."""
    return {"ownerBits": _BITS[mode >> 6 & 7], "groupBits": _BITS[mode >> 3 & 7],
            "otherBits": _BITS[mode & 7]}


@dataclass(frozen=True, slots=True)
class ProxyStatus:
    """One URIStatus: what the mount uses (``status``) and what operators look at."""

    status: FileStatus
    path: str  # the Alluxio path
    file_id: int
    completed: bool
    persisted: bool
    persistence_state: str
    pinned: bool
    in_alluxio_percentage: int
    ttl: int  # milliseconds; -1 for none
    ttl_action: str
    owner: str
    group: str
    ufs_path: str


def parse_status(item: Any) -> ProxyStatus:
    """A URIStatus object as a :class:`ProxyStatus`; ProtocolError if it is not one. The
    file id is the version's etag: Alluxio files are written once, and a file made again
    at the same path gets a new id."""
    if not isinstance(item, Mapping):
        raise ProtocolError(f"a status that is not an object: {_clip(item)}")
    try:
        folder, length = item["folder"], item["length"]
        path, name = item["path"], item.get("name", "")
        file_id, mode = item["fileId"], item.get("mode", 0)
        mtime_ms = item.get("lastModificationTimeMs", 0)
    except KeyError as e:
        raise ProtocolError(f"a status without {e}: {_clip(item)}") from None
    if (not isinstance(folder, bool) or not _is_int(length) or length < 0
            or not isinstance(path, str) or not path.startswith("/")
            or not isinstance(name, str) or not _is_int(file_id) or not _is_int(mode)
            or not _is_int(mtime_ms)):
        raise ProtocolError(f"not a status: {_clip(item)}")
    kind = Kind.DIRECTORY if folder else Kind.FILE
    status = FileStatus(
        name=name or path.rstrip("/").rpartition("/")[2], kind=kind,
        size=length if kind is Kind.FILE else 0,
        mtime_ns=mtime_ms * 1_000_000 if mtime_ms > 0 else None,
        mode=mode & 0o7777 if mode else None, etag=str(file_id),
    )
    return ProxyStatus(
        status=status, path=path, file_id=file_id,
        completed=bool(item.get("completed", True)),
        persisted=bool(item.get("persisted", False)),
        persistence_state=str(item.get("persistenceState", "")),
        pinned=bool(item.get("pinned", False)),
        in_alluxio_percentage=_int_or(item.get("inAlluxioPercentage",
                                               item.get("inMemoryPercentage")), 0),
        ttl=_int_or(item.get("ttl"), -1), ttl_action=str(item.get("ttlAction", "")),
        owner=str(item.get("owner", "")), group=str(item.get("group", "")),
        ufs_path=str(item.get("ufsPath", "")),
    )


class ReadStream:
    """The rest of a file from a stream's position, read in parts; close it when done
    (the proxy's stream is closed separately, with :meth:`ProxyClient.close`)."""

    def __init__(self, body: http1.ResponseStream, url: str, timeout: float) -> None:
        self._body = body
        self._url = url
        self._timeout = timeout
        self.position = 0  # bytes read through this object

    @property
    def at_end(self) -> bool:
        return self._body.done

    async def read(self, n: int) -> Data:
        """The next ``n`` bytes; fewer only at the end of the file. They are received
        straight into a buffer of their own, of ``n`` bytes (returned as a read-only view
        of it): ask for what is due, not for "all"."""
        buffer = bytearray(n)
        got = await self.readinto(memoryview(buffer))
        return memoryview(buffer)[:got].toreadonly()

    async def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next bytes: how many, fewer only at the end of the file."""
        try:
            with trio.fail_after(self._timeout):
                got = await self._body.readinto(view)
        except trio.TooSlowError:
            raise BackendTimeout(f"{self._url}: no data within {self._timeout:g}s") from None
        except http1.Truncated as e:
            raise ConnectionDropped(f"{self._url}: stream cut short ({e})") from None
        except http1.HttpError as e:
            raise ProtocolError(f"{self._url}: {e}") from None
        self.position += got
        return got

    async def skip(self, n: int, part: int = 1024 * 1024) -> int:
        """Read past ``n`` bytes; how many there were (fewer at the end of the file)."""
        skipped = 0
        scratch = memoryview(bytearray(min(part, n)))  # one buffer for all the parts
        while skipped < n:
            got = await self.readinto(scratch[:min(part, n - skipped)])
            if not got:
                break
            skipped += got
        return skipped

    async def aclose(self) -> None:
        await self._body.aclose()


class ProxyClient:
    """Calls on one Alluxio 2.x proxy at ``host:port``; ``timeout`` bounds each call."""

    def __init__(
        self, host: str, port: int = DEFAULT_PORT, *, timeout: float, retries: int = 2,
        metrics: Metrics | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.base_url = f"http://{host}:{port}" if ":" not in host else f"http://[{host}]:{port}"
        self._timeout = timeout
        self._retries = retries
        self._metrics = metrics
        self._pool = http1.Http1Pool()

    async def aclose(self) -> None:
        await self._pool.aclose()

    # --- paths ------------------------------------------------------------------------

    async def get_status(self, path: str) -> ProxyStatus:
        reply = await self._json(path, "get-status", idempotent=True)
        try:
            return parse_status(reply)
        except ProtocolError as e:
            raise self._bad("bad_json", f"{self.base_url} get-status {path}: {e}") from None

    async def list_status(self, path: str) -> builtins.list[ProxyStatus]:
        reply = await self._json(path, "list-status", idempotent=True)
        if not isinstance(reply, list):
            raise self._bad("bad_json", f"{self.base_url} list-status {path}: not a list: "
                            f"{_clip(reply)}")
        try:
            return [parse_status(item) for item in reply]
        except ProtocolError as e:
            raise self._bad("bad_json", f"{self.base_url} list-status {path}: {e}") from None

    async def exists(self, path: str) -> bool:
        reply = await self._json(path, "exists", idempotent=True)
        if not isinstance(reply, bool):
            raise self._bad("bad_json", f"{self.base_url} exists {path}: {_clip(reply)}")
        return reply

    async def create_directory(
        self, path: str, *, mode: int | None = None, write_type: str | None = None,
        recursive: bool = False, allow_exists: bool = False,
    ) -> None:
        options: dict[str, Any] = {"recursive": recursive, "allowExists": allow_exists}
        if mode is not None:
            options["mode"] = mode_json(mode)
        if write_type is not None:
            options["writeType"] = write_type
        await self._json(path, "create-directory", options)

    async def create_file(
        self, path: str, *, mode: int | None = None, write_type: str | None = None,
        recursive: bool = False,
    ) -> int:
        """A new, empty file at ``path``, open for writing: its stream id."""
        options: dict[str, Any] = {"recursive": recursive}
        if mode is not None:
            options["mode"] = mode_json(mode)
        if write_type is not None:
            options["writeType"] = write_type
        return self._stream_id(await self._json(path, "create-file", options), path)

    async def open_file(self, path: str, *, read_type: str | None = None) -> int:
        """A read stream of ``path`` at its start: its id."""
        options = {"readType": read_type} if read_type else {}
        return self._stream_id(await self._json(path, "open-file", options, idempotent=True),
                               path)

    async def delete(self, path: str, *, recursive: bool = False) -> None:
        await self._json(path, "delete", {"recursive": recursive})

    async def rename(self, path: str, destination: str) -> None:
        """Move ``path`` to ``destination``, which must not exist."""
        await self._json(path, "rename", query={"dst": destination})

    async def set_attribute(
        self, path: str, *, mode: int | None = None, pinned: bool | None = None,
        persisted: bool | None = None, owner: str | None = None, group: str | None = None,
        replication_min: int | None = None, replication_max: int | None = None,
        ttl_ms: int | None = None, ttl_action: str | None = None, recursive: bool = False,
    ) -> None:
        """Set the attributes given (None: leave it); ``ttl_ms`` -1 removes a TTL."""
        options: dict[str, Any] = {}
        if mode is not None:
            options["mode"] = mode_json(mode)
        for key, value in (("pinned", pinned), ("persisted", persisted), ("owner", owner),
                           ("group", group), ("replicationMin", replication_min),
                           ("replicationMax", replication_max)):
            if value is not None:
                options[key] = value
        common: dict[str, Any] = {}
        if ttl_ms is not None:
            common["ttl"] = ttl_ms
        if ttl_action is not None:
            common["ttlAction"] = ttl_action
        if common:
            options["commonOptions"] = common
        if recursive:
            options["recursive"] = True
        await self._json(path, "set-attribute", options)

    async def free(self, path: str, *, recursive: bool = False, forced: bool = False) -> None:
        """Evict ``path``'s data from Alluxio storage (it stays in the under-storage)."""
        await self._json(path, "free", {"recursive": recursive, "forced": forced})

    async def mount(self, path: str, ufs_uri: str, *, read_only: bool = False,
                    shared: bool = False, properties: Mapping[str, str] | None = None) -> None:
        options: dict[str, Any] = {"readOnly": read_only, "shared": shared}
        if properties:
            options["properties"] = dict(properties)
        await self._json(path, "mount", options, query={"src": ufs_uri})

    async def unmount(self, path: str) -> None:
        await self._json(path, "unmount")

    async def info(self) -> Any:
        """``GET /api/v1/proxy/info``: the proxy's version, uptime and configuration."""
        return _parse_json(await self._call("GET", "info", f"{_PREFIX}/proxy/info",
                                            idempotent=True), self, "proxy/info")

    # --- streams ----------------------------------------------------------------------

    async def read(self, stream_id: int) -> ReadStream:
        """The rest of stream ``stream_id``'s file, to be read in parts."""
        target = f"{_PREFIX}/streams/{stream_id}/read"
        url = self.base_url + target
        started = trio.current_time()
        try:
            with trio.fail_after(self._timeout):
                body = await self._pool.open("POST", self.host, self.port, target)
                if body.status != 200:
                    try:
                        self._checked(target, body.status, await body.read_all())
                    finally:
                        await body.aclose()
        except trio.TooSlowError:
            observe(self._metrics, "read", False, started, "timeout")
            raise BackendTimeout(f"{url}: no answer within {self._timeout:g}s") from None
        except (AlluxioFuseError, Retryable, http1.HttpError) as e:  # never sent again
            error = unwrapped(self._transport_error(url, e)
                              if isinstance(e, http1.HttpError) else e)
            observe(self._metrics, "read", False, started, outcome(error))
            raise error from None
        observe(self._metrics, "read", True, started, "success")
        return ReadStream(body, url, self._timeout)

    async def write(self, stream_id: int, data: bytes | AsyncIterable[bytes],
                    length: int) -> int:
        """Append ``data`` (``length`` bytes) to write stream ``stream_id``."""
        target = f"{_PREFIX}/streams/{stream_id}/write"
        reply = _parse_json(await self._call(
            "POST", "write", target, body=data, length=length, headers=_OCTETS,
            deadline=self._timeout + length / _MIN_WRITE_RATE), self, target)
        if not _is_int(reply) or reply != length:
            raise self._bad("bad_json", f"{self.base_url}{target}: wrote {_clip(reply)} "
                            f"of {length} bytes")
        return length

    async def close(self, stream_id: int) -> None:
        """Close stream ``stream_id``; a write stream's file is then complete."""
        await self._call("POST", "close", f"{_PREFIX}/streams/{stream_id}/close")

    # --- the one request path ---------------------------------------------------------

    async def _json(
        self, path: str, op: str, options: Mapping[str, Any] | None = None, *,
        query: Mapping[str, str] | None = None, idempotent: bool = False,
    ) -> Any:
        target = f"{_PREFIX}/paths/{_quote(path)}/{op}"
        if query:
            target += "?" + "&".join(f"{k}={_quote(v)}" for k, v in query.items())
        body = json.dumps(options or {}, separators=(",", ":")).encode()
        reply = await self._call("POST", op, target, body=body, headers=_JSON,
                                 idempotent=idempotent)
        return _parse_json(reply, self, target) if reply else None

    async def _call(
        self, method: str, op: str, target: str, *, body: bytes | AsyncIterable[bytes] = b"",
        length: int | None = None, headers: tuple[tuple[str, str], ...] = (),
        idempotent: bool = False, deadline: float | None = None,
    ) -> bytes:
        """``method target``: the body of a 200 reply, or the error it stands for."""
        url = self.base_url + target
        timeout = deadline or self._timeout
        until = trio.current_time() + timeout

        async def send() -> bytes:
            try:
                with trio.fail_at(until):
                    response = await self._pool.request(
                        method, self.host, self.port, target, body=body, length=length,
                        headers=headers)
            except trio.TooSlowError:
                raise BackendTimeout(f"{url}: no answer within {timeout:g}s") from None
            except http1.HttpError as e:
                raise self._transport_error(url, e) from None
            return self._checked(target, response.status, response.body)

        return await retrying(send, op=op, deadline=until, retries=self._retries,
                              idempotent=idempotent, metrics=self._metrics)

    def _transport_error(self, url: str, e: http1.HttpError) -> AlluxioFuseError | Retryable:
        if isinstance(e, http1.CannotConnect):
            return Retryable(BackendUnavailable(f"{url}: cannot connect: {e}"))
        if isinstance(e, http1.Dropped):
            return ConnectionDropped(f"{url}: closed without a reply ({e})")
        if isinstance(e, http1.Truncated):
            return self._bad("truncated", f"{url}: reply cut short ({e})")
        return self._bad("bad_reply", f"{url}: {e}")

    def _checked(self, target: str, status: int, body: bytes) -> bytes:
        if status in (200, 204):
            return body
        url = self.base_url + target
        if status in _RETRY_STATUS:
            raise Retryable(ServerError(f"{url}: HTTP {status}: {body[:200]!r}"))
        if status != 500:  # 400: the proxy's JSON mapping refused the options; 404: no proxy
            raise self._bad("bad_status", f"{url}: HTTP {status}: {body[:200]!r}")
        try:
            error = json.loads(body)
            code, message = str(error["statusCode"]), str(error["message"])
        except (ValueError, TypeError, KeyError):
            raise self._bad("bad_json", f"{url}: HTTP 500 without a status: "
                            f"{body[:200]!r}") from None
        exc = _BY_CODE.get(code, ServerError)(f"{message} ({code})")
        raise Retryable(exc) if code in _RETRY_CODES else exc

    def _stream_id(self, reply: Any, path: str) -> int:
        if not _is_int(reply):
            raise self._bad("bad_json", f"{self.base_url}: no stream id for {path}: "
                            f"{_clip(reply)}")
        return int(reply)

    def _bad(self, kind: str, message: str) -> ProtocolError:
        return bad_reply(self._metrics, kind, message)


def _quote(path: str) -> str:
    """``path`` as the proxy's ``{path}`` (or a query value) percent-decodes it back: every
    byte but letters, digits, ``_.-~`` and ``/`` escaped (a ``+`` too: Jersey reads a bare
    ``+`` in a query value as a space)."""
    try:
        return urllib.parse.quote(path, safe="/")
    except UnicodeEncodeError:
        raise InvalidArgument(f"not a name Alluxio can hold (not UTF-8): {path!r}") from None


def _parse_json(body: bytes, client: ProxyClient, what: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise client._bad("bad_json", f"{client.base_url}{what}: not JSON: "
                          f"{body[:200]!r}") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or(value: Any, default: int) -> int:
    return value if _is_int(value) else default


def _clip(value: Any) -> str:
    return repr(value)[:200]
