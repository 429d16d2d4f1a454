"""Client of the Alluxio 3.x worker HTTP API (PROTOCOL.md section 1), for any worker.

One pooled ``httpx.AsyncClient`` serves every worker, except for page reads, which take
the leaner keep-alive transport of ``http1.py``: they are the hot path, and through httpx
under trio a page request costs several times the event-loop CPU it costs there (one
small file is one page; the figures are in bench/RESULTS.md). Each call has a deadline;
idempotent calls (every GET but a load submit or stop) are sent again, with exponential
backoff and full jitter and within the same deadline, when a connection is refused or the
worker answers 429 or 503. A timeout is not retried: a stalled worker should cost one
deadline, and the caller has a faster way to the bytes (the under-storage).

Replies are checked before anything is returned. JSON that does not parse or lacks the
documented fields, and page bodies of the wrong length or cut short, raise
``ProtocolError`` and are counted; they never reach a reader as data.

Wire quirks kept on purpose, as the official clients send them:

- ``path=`` (``/v1/info``, ``/v1/files``, ``/v1/load``) is ``quote_plus``-encoded, and the
  OSS server decodes only ``%2F``, ``%3A`` and ``%3F``. A path that would not survive
  that round trip (a space, ``+``, ``%``, ``&``, non-ASCII, ...) cannot be asked for:
  :func:`oss_expressible` says so, and callers read it from the under-storage instead.
- ``ufsFullPath=`` and ``/v1/node?path=`` (Enterprise) carry the URI raw, only re-quoted
  the way ``requests`` does (a space becomes ``%20``; ``?``, ``+``, ``:`` stay).
- The OSS server fails a request by closing the connection without a status line:
  :class:`ConnectionDropped`. That is how it says a page is not cached.
"""

from __future__ import annotations

import builtins
import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any, NamedTuple

import httpx
import trio

from alluxiofuse.backends import http1
from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.rest import Retryable, bad_reply, retrying
from alluxiofuse.errors import (
    BackendTimeout,
    BackendUnavailable,
    ConnectionDropped,
    NotFound,
    ProtocolError,
    ServerError,
)
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import FileStatus, Kind

DEFAULT_PAGE_SIZE = 1024 * 1024  # alluxio.worker.page.store.page.size
_RETRY_STATUS = frozenset({429, 503})
# What the OSS server percent-decodes in ``path=`` (upper-case escapes only).
_OSS_DECODED = (("%2F", "/"), ("%3A", ":"), ("%3F", "?"))
# ``requests``' re-quoting of a URL: these stay as they are (``%`` too, when it starts an
# escape); everything else, including space and non-ASCII UTF-8, is percent-encoded.
_REQUOTE_SAFE = "!#$&'()*+,/:;=?@~"
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_TERMINAL_LOAD_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
_KINDS = {"file": Kind.FILE, "directory": Kind.DIRECTORY}


def oss_expressible(uri: str) -> bool:
    """Whether an OSS worker reads ``path=<uri>`` back as ``uri``."""
    encoded = urllib.parse.quote_plus(uri)
    for escape, char in _OSS_DECODED:
        encoded = encoded.replace(escape, char)
    return encoded == uri


def raw_expressible(uri: str) -> bool:
    """Whether ``uri`` survives as a raw query value (``ufsFullPath=``, ``/v1/node?path=``):
    the server splits the query on ``&`` and ``=``, ``#`` would end the URL, and an escape
    already in the name (``a%20b``) would be decoded into another name."""
    return not any(c in uri for c in "#&=") and not _ESCAPE.search(uri)


def requote(value: str) -> str:
    """``value`` re-quoted as ``requests`` re-quotes a URL before sending it."""
    safe = _REQUOTE_SAFE if _LONE_PERCENT.search(value) else _REQUOTE_SAFE + "%"
    return urllib.parse.quote(value, safe=safe)


class WorkerFileInfo(NamedTuple):
    """One entry of ``/v1/info`` or ``/v1/files``."""

    status: FileStatus
    ufs_path: str
    content_hash: str | None


class LoadProgress(NamedTuple):
    """A load job's state (``RUNNING``, ``VERIFYING``, ``SUCCEEDED``, ``FAILED``, ``STOPPED``)
    and the worker's report, line by line as ``key: value`` pairs."""

    state: str
    message: str
    properties: dict[str, str]

    @property
    def finished(self) -> bool:
        return any(s in self.state for s in _TERMINAL_LOAD_STATES)


class WorkerClient:
    """Calls on Alluxio workers; ``timeout`` bounds each call, retries included."""

    def __init__(
        self, *, timeout: float, retries: int = 2, max_connections: int = 64,
        metrics: Metrics | None = None,
    ) -> None:
        self._timeout = timeout
        self._retries = retries
        self._metrics = metrics
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections),
        )
        self._pool = http1.Http1Pool()

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._pool.aclose()

    # --- metadata -------------------------------------------------------------------

    async def info(self, worker: WorkerAddress, uri: str) -> WorkerFileInfo:
        """``GET /v1/info?path=``: the status of ``uri`` (an array of one)."""
        reply = await self._get_json(worker, "info", f"/v1/info?path={_plus(uri)}")
        if not isinstance(reply, list) or len(reply) != 1:
            raise self._bad("bad_json", f"{worker.url()} /v1/info: not a list of one: "
                            f"{_clip(reply)}")
        return self._file_info(worker, reply[0])

    async def files(self, worker: WorkerAddress, uri: str) -> builtins.list[WorkerFileInfo]:
        """``GET /v1/files?path=``: the entries of directory ``uri``."""
        reply = await self._get_json(worker, "files", f"/v1/files?path={_plus(uri)}")
        if not isinstance(reply, list):
            raise self._bad("bad_json", f"{worker.url()} /v1/files: not a list: {_clip(reply)}")
        return [self._file_info(worker, item) for item in reply]

    async def node(self, worker: WorkerAddress, uri: str) -> WorkerAddress:
        """``GET /v1/node?path=`` (Enterprise): the worker that serves ``uri``. Both reply
        shapes: ``{"Host", "HttpServerPort"}`` and the older block-location list."""
        reply = await self._get_json(worker, "node", f"/v1/node?path={requote(uri)}")
        try:
            if isinstance(reply, list):
                reply = reply[0]["mBlockInfo"]["mBlockInfo"]["mLocations"][0]["mWorkerAddress"]
            host, port = reply["Host"], reply["HttpServerPort"]
        except (KeyError, IndexError, TypeError):
            raise self._bad("bad_json", f"{worker.url()} /v1/node: no worker address in "
                            f"{_clip(reply)}") from None
        if (not isinstance(host, str) or not host or isinstance(port, bool)
                or not isinstance(port, int) or not 0 < port < 65536):
            raise self._bad("bad_json", f"{worker.url()} /v1/node: bad address {_clip(reply)}")
        return WorkerAddress(host, port)

    async def health(self, worker: WorkerAddress) -> str:
        """``GET /v1/health``: the worker's own words (``worker is active``)."""
        body = await self._call(worker, "health", "/v1/health", idempotent=True)
        return body.decode("utf-8", "replace")

    # --- data -------------------------------------------------------------------------

    async def read_page(
        self, worker: WorkerAddress, file_id: str, index: int, *, expected: int,
        offset: int = 0, length: int | None = None, ufs_full_path: str | None = None,
    ) -> bytes:
        """Page ``index`` of file ``file_id`` (``offset``/``length`` within the page; the
        whole page when ``length`` is None), which must be ``expected`` bytes long.

        With ``ufs_full_path`` (Enterprise) the worker reads through from the under-storage
        on a miss; without, an OSS worker drops the connection for a page it lacks.
        """
        params = [] if length is None else [f"offset={offset}", f"length={length}"]
        if ufs_full_path is not None:
            params.append(f"ufsFullPath={requote(ufs_full_path)}")
        target = f"/v1/file/{file_id}/page/{index}" + ("?" + "&".join(params) if params else "")
        data = await self._call(worker, "page", target, idempotent=True, fast=True)
        if len(data) != expected:
            raise self._bad("wrong_length", f"{worker.url()} page {index} of {file_id}: "
                            f"{len(data)} bytes where {expected} were due")
        return data

    # --- load jobs --------------------------------------------------------------------

    async def load_submit(self, worker: WorkerAddress, uri: str, *, verbose: bool = True) -> str:
        """Start loading ``uri`` into the cluster's cache; the job id. Not retried: a
        dropped connection may mean a job is already running (an OSS server bug), which
        the caller finds out by asking for progress."""
        reply = await self._get_json(
            worker, "load", f"/v1/load?path={_plus(uri)}&opType=submit&verbose={_b(verbose)}",
            idempotent=False)
        if not isinstance(reply, Mapping) or not isinstance(reply.get("success"), bool):
            raise self._bad("bad_json", f"{worker.url()} load submit: {_clip(reply)}")
        if not reply["success"]:
            raise BackendUnavailable(f"{worker.url()} refused to load {uri}: "
                                     f"{reply.get('message', '')}")
        return str(reply.get("jobId", ""))

    async def load_progress(
        self, worker: WorkerAddress, uri: str, *, verbose: bool = True,
    ) -> LoadProgress:
        reply = await self._get_json(
            worker, "load", f"/v1/load?path={_plus(uri)}&opType=progress&verbose={_b(verbose)}")
        state = reply.get("jobState") if isinstance(reply, Mapping) else None
        if not isinstance(state, str):
            raise self._bad("bad_json", f"{worker.url()} load progress: {_clip(reply)}")
        props = reply.get("respProperties")
        properties = ({str(k): str(v) for k, v in props.items()}
                      if isinstance(props, Mapping) else {})
        return LoadProgress(state, str(reply.get("message", "")), properties)

    async def load_stop(self, worker: WorkerAddress, uri: str) -> bool:
        """Stop the load of ``uri``; whether the worker says it stopped one."""
        reply = await self._get_json(
            worker, "load", f"/v1/load?path={_plus(uri)}&opType=stop", idempotent=False)
        if not isinstance(reply, Mapping) or not isinstance(reply.get("success"), bool):
            raise self._bad("bad_json", f"{worker.url()} load stop: {_clip(reply)}")
        return bool(reply["success"])

    # --- the one request path ---------------------------------------------------------

    async def _get_json(
        self, worker: WorkerAddress, method: str, target: str, *, idempotent: bool = True,
    ) -> Any:
        body = await self._call(worker, method, target, idempotent=idempotent)
        try:
            return json.loads(body)
        except ValueError:
            raise self._bad("bad_json", f"{worker.url()}{target}: not JSON: "
                            f"{body[:200]!r}") from None

    async def _call(
        self, worker: WorkerAddress, method: str, target: str, *, idempotent: bool,
        fast: bool = False,
    ) -> bytes:
        """GET ``target`` from ``worker``: the body of a 200 response. ``fast`` takes the
        page path's own transport (http1.py) instead of httpx."""
        url = worker.url() + target
        deadline = trio.current_time() + self._timeout

        async def send() -> bytes:
            if fast:
                return await self._send_fast(worker, target, url, deadline)
            return await self._send(url, deadline)

        return await retrying(send, op=method, deadline=deadline, retries=self._retries,
                              idempotent=idempotent, metrics=self._metrics)

    async def _send_fast(
        self, worker: WorkerAddress, target: str, url: str, deadline: float,
    ) -> bytes:
        try:
            with trio.fail_at(deadline):
                response = await self._pool.get(worker.host, worker.http_port, target)
        except trio.TooSlowError:
            raise BackendTimeout(f"{url}: no answer within {self._timeout}s") from None
        except http1.CannotConnect as e:
            raise Retryable(BackendUnavailable(f"{url}: cannot connect: {e}")) from None
        except http1.Dropped as e:
            raise ConnectionDropped(f"{url}: closed without a reply ({e})") from None
        except http1.Truncated as e:
            raise self._bad("truncated", f"{url}: body cut short ({e})") from None
        except http1.BadReply as e:
            raise self._bad("bad_reply", f"{url}: {e}") from None
        return self._checked_status(url, response.status, response.body)

    async def _send(self, url: str, deadline: float) -> bytes:
        try:
            with trio.fail_at(deadline):
                request = self._client.build_request("GET", url)
                try:
                    response = await self._client.send(request, stream=True)
                except httpx.ConnectError as e:
                    raise Retryable(BackendUnavailable(f"{url}: cannot connect: {e}")) from None
                except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as e:
                    raise ConnectionDropped(f"{url}: closed without a reply ({e})") from None
                try:
                    await response.aread()
                except (httpx.RemoteProtocolError, httpx.ReadError) as e:
                    raise self._bad("truncated", f"{url}: body cut short ({e})") from None
                finally:
                    await response.aclose()
        except (trio.TooSlowError, httpx.TimeoutException):
            raise BackendTimeout(f"{url}: no answer within {self._timeout}s") from None
        except httpx.HTTPError as e:  # anything else httpx can raise: the worker is unusable
            raise BackendUnavailable(f"{url}: {type(e).__name__}: {e}") from None
        return self._checked_status(url, response.status_code, response.content)

    def _checked_status(self, url: str, status: int, body: bytes) -> bytes:
        if status == 200:
            return body
        detail = f"{url}: HTTP {status}: {body[:200]!r}"
        if status in _RETRY_STATUS:
            raise Retryable(ServerError(detail))
        if status == 404:
            raise NotFound(detail)
        if status >= 500:
            raise ServerError(detail)
        raise self._bad("bad_status", detail)

    def _file_info(self, worker: WorkerAddress, item: Any) -> WorkerFileInfo:
        try:
            return parse_file_info(item)
        except ProtocolError as e:
            raise self._bad("bad_json", f"{worker.url()}: {e}") from None

    def _bad(self, kind: str, message: str) -> ProtocolError:
        return bad_reply(self._metrics, kind, message)


def parse_file_info(item: Any) -> WorkerFileInfo:
    """A FileInfo object (OSS or Enterprise fields) as a status; ProtocolError if it is not
    one. Times on the wire are milliseconds."""
    if not isinstance(item, Mapping):
        raise ProtocolError(f"a file info that is not an object: {_clip(item)}")
    kind = _KINDS.get(str(item.get("mType")))
    length, mtime_ms = item.get("mLength"), item.get("mLastModificationTimeMs", 0)
    name, path = item.get("mName", ""), item.get("mPath", "")
    ufs_path, content_hash = item.get("mUfsPath", ""), item.get("mContentHash") or None
    if (kind is None or not isinstance(length, int) or isinstance(length, bool) or length < 0
            or not isinstance(mtime_ms, int) or isinstance(mtime_ms, bool)
            or not isinstance(name, str) or not isinstance(path, str)
            or not isinstance(ufs_path, str)
            or not (content_hash is None or isinstance(content_hash, str))):
        raise ProtocolError(f"not a file info: {_clip(item)}")
    name = name or path.rstrip("/").rpartition("/")[2]
    status = FileStatus(name=name, kind=kind, size=length if kind is Kind.FILE else 0,
                        mtime_ns=mtime_ms * 1_000_000 if mtime_ms else None)
    return WorkerFileInfo(status, ufs_path, content_hash)


def _plus(uri: str) -> str:
    return urllib.parse.quote_plus(uri)


def _b(flag: bool) -> str:
    return "true" if flag else "false"


def _clip(value: Any) -> str:
    return repr(value)[:200]
