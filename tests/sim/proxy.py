"""A simulated Alluxio 2.x proxy: the REST API of PROTOCOL.md section 4 over a local directory.

Namespace. Alluxio ``/`` is the under-storage directory ``ufs`` (``file://<ufs>``); more local
directories can be mounted (``mount``). What is persisted lives as real files and directories
there; what exists only in Alluxio lives in the simulator: files not persisted (MUST_CACHE,
ASYNC_THROUGH until persisted, any file still being written) and MUST_CACHE directories, plus
every path's attributes (``fileId``, pinned, ttl, replication, owner, group, mode of
non-persisted paths, whether it is cached). File data never sits in memory: a file being written
spools to a file in a per-simulator temporary directory (``spool_dir``), which becomes the data of
a MUST_CACHE or not-yet-persisted ASYNC_THROUGH file, or is moved into the under-storage (a rename
when on the same device, else a copy to a temporary name and an atomic rename). The default
spool directory is named after the process and removed at exit; one left by a killed simulator
is removed by the next one to start.

Write types (``create-file`` ``writeType``; absent means ``ASYNC_THROUGH``, the 2.x default of
``alluxio.user.file.writetype.default``): THROUGH and CACHE_THROUGH land in the under-storage when
the stream closes (cached: CACHE_THROUGH only); MUST_CACHE (and the deprecated TRY_CACHE) is never
persisted; ASYNC_THROUGH is cached at close (``TO_BE_PERSISTED``) and persisted after
``async_persist_delay`` seconds. ``inAlluxioPercentage`` is 100 once cached: written with a
caching type, or read to the end with readType CACHE (the default) or CACHE_PROMOTE; 0 after
``free``. TTLs, owners, groups and read-only mounts are stored and reported, never enforced;
``loadMetadataType`` is accepted and ignored (the under-storage is always read through).

Wire rules, as the Java proxy (Jersey + Jackson) answers: option bodies are checked as Jackson
maps them onto the protobuf ``...POptions`` (an unknown field, an enum name not in the enum or a
JSON value of the wrong type gives HTTP 400 with a plain-text body, before the operation runs; the
simulator is stricter than Jackson on scalar coercions such as ``"5"`` for a number); a
``Content-Type`` the method does not consume gives 415; every failure of the operation itself is
HTTP 500 with ``{"statusCode": "<gRPC code>", "message": ...}``; void operations answer 200 with
no entity. Stream reads answer the rest of the file from the stream's position, chunked;
if the client goes away mid-body the reading stops and the position stays after the last chunk
handed to the socket (so it may run ahead of what the client received, by what was buffered).
Unused streams expire after ``stream_timeout`` seconds (an expired write stream is committed,
as Alluxio's stream cache closes it).

Fault switches (``POST /_sim/faults`` with a JSON object, or :meth:`SimProxy.set_faults`):
``delay`` (seconds before answering), ``stall`` (never answer), ``error`` (answer 500 with this
gRPC code name, sent as given: ``CANCELLED`` and ``CANCELED`` both go out unchanged), ``status``
(answer this raw HTTP status with a text body), ``drop`` (close without a reply), ``truncate``
(close part-way through the body: a stream read's chunked body, or any other body),
``routes`` (only these routes, e.g. ``["get-status", "read"]``; empty: all), ``count`` (only the
next N matching requests, then the faults clear; 0: until changed). Routes are the ``paths``
op names, ``read``/``write``/``close`` for streams and ``info`` for ``/api/v1/proxy/info``.
``GET /_sim/stats`` counts requests by route, plus ``streams_open``, ``streams_opened``,
``streams_closed`` (by ``close``), ``streams_expired``, ``bytes_read``, ``bytes_written``;
``GET /_sim/requests`` lists recent requests as received (method, raw target, content type,
content length, transfer encoding, body prefix). In-process, :meth:`SimProxy.set_faults`,
:meth:`SimProxy.stats` and :meth:`SimProxy.requests` give the same. Listens on 127.0.0.1 only.

Run as a process: ``python -m tests.sim.proxy --ufs DIR [--port N] [--stream-timeout S]
[--async-persist-delay S] [--spool-dir DIR]``; it prints ``listening <port>`` once it serves.
:class:`SimProxyProcess` does that for tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import grp
import json
import os
import pwd
import re
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

CHUNK = 1 << 20  # stream read and write piece: large, so that Python costs little per byte
BODY_LIMIT = 1 << 20  # largest options body of a ``paths`` call (413 beyond)
BLOCK_SIZE = 64 << 20  # alluxio.user.block.size.bytes.default
REQUEST_LOG = 1000
BODY_PREFIX = 512
VERSION = "2.9.0-sim"
_API = "/api/v1/"
_TMP = re.compile(r"^\..*\.simproxy-[0-9a-f]{8}\.tmp$")  # our own half-written UFS files

# --- option bodies: the protobuf messages of PROTOCOL.md 4.1, as Jackson maps them ------


@dataclass(eq=False)
class _Enum:
    java: str
    names: tuple[str, ...]


@dataclass(eq=False)
class _Msg:
    java: str
    fields: dict[str, Any]
    required: tuple[str, ...] = ()


@dataclass(eq=False)
class _MapOf:
    value: str  # scalar kind of the values ("string", or "bytes": base64 in JSON)


@dataclass(eq=False)
class _ListOf:
    item: str


BITS = ("NONE", "EXECUTE", "WRITE", "WRITE_EXECUTE", "READ", "READ_EXECUTE", "READ_WRITE", "ALL")
_BITS = _Enum("alluxio.grpc.Bits", BITS)  # index == the rwx value
_MODE = _Msg("alluxio.grpc.PMode", {"ownerBits": _BITS, "groupBits": _BITS, "otherBits": _BITS},
             required=("ownerBits", "groupBits", "otherBits"))  # proto2 required fields
_WRITE_TYPE = _Enum("alluxio.grpc.WritePType", ("MUST_CACHE", "TRY_CACHE", "CACHE_THROUGH",
                                                "THROUGH", "ASYNC_THROUGH", "NONE"))
_READ_TYPE = _Enum("alluxio.grpc.ReadPType", ("NO_CACHE", "CACHE", "CACHE_PROMOTE"))
_LOAD_METADATA = _Enum("alluxio.grpc.LoadMetadataPType", ("NEVER", "ONCE", "ALWAYS"))
_TTL_ACTION = _Enum("alluxio.grpc.TtlAction", ("DELETE", "FREE"))
_XATTR_PROP = _Enum("alluxio.grpc.XAttrPropagationStrategy", ("NEW_PATHS", "LEAF_NODE"))
_XATTR_UPDATE = _Enum("alluxio.grpc.XAttrUpdateStrategy",
                      ("REPLACE", "UNION_REPLACE", "UNION_PRESERVE", "DELETE_KEYS"))
_COMMON = _Msg("alluxio.grpc.FileSystemMasterCommonPOptions", {
    "syncIntervalMs": "int64", "ttl": "int64", "ttlAction": _TTL_ACTION,
    "operationId": _Msg("alluxio.grpc.FsOpPId",
                        {"mostSignificantBits": "int64", "leastSignificantBits": "int64"}),
})
_XATTR = _MapOf("bytes")

OPTIONS: dict[str, _Msg] = {
    "create-directory": _Msg("alluxio.grpc.CreateDirectoryPOptions", {
        "recursive": "bool", "allowExists": "bool", "mode": _MODE, "writeType": _WRITE_TYPE,
        "commonOptions": _COMMON, "xattr": _XATTR, "xattrPropStrat": _XATTR_PROP}),
    "create-file": _Msg("alluxio.grpc.CreateFilePOptions", {
        "blockSizeBytes": "int64", "recursive": "bool", "mode": _MODE, "replicationMax": "int32",
        "replicationMin": "int32", "replicationDurable": "int32", "writeTier": "int32",
        "writeType": _WRITE_TYPE, "commonOptions": _COMMON, "persistenceWaitTime": "int64",
        "xattr": _XATTR, "xattrPropStrat": _XATTR_PROP}),
    "delete": _Msg("alluxio.grpc.DeletePOptions", {
        "recursive": "bool", "alluxioOnly": "bool", "unchecked": "bool",
        "commonOptions": _COMMON, "deleteMountPoint": "bool"}),
    "exists": _Msg("alluxio.grpc.ExistsPOptions", {
        "loadMetadataType": _LOAD_METADATA, "commonOptions": _COMMON}),
    "free": _Msg("alluxio.grpc.FreePOptions", {
        "recursive": "bool", "forced": "bool", "commonOptions": _COMMON}),
    "get-status": _Msg("alluxio.grpc.GetStatusPOptions", {
        "loadMetadataType": _LOAD_METADATA, "commonOptions": _COMMON, "accessMode": _BITS,
        "updateTimestamps": "bool"}),
    "list-status": _Msg("alluxio.grpc.ListStatusPOptions", {
        "loadDirectChildren": "bool", "loadMetadataType": _LOAD_METADATA,
        "commonOptions": _COMMON, "recursive": "bool", "loadMetadataOnly": "bool"}),
    "mount": _Msg("alluxio.grpc.MountPOptions", {
        "readOnly": "bool", "properties": _MapOf("string"), "shared": "bool",
        "commonOptions": _COMMON}),
    "open-file": _Msg("alluxio.grpc.OpenFilePOptions", {
        "readType": _READ_TYPE, "maxUfsReadConcurrency": "int32", "commonOptions": _COMMON,
        "updateLastAccessTime": "bool"}),
    "rename": _Msg("alluxio.grpc.RenamePOptions", {"commonOptions": _COMMON, "persist": "bool"}),
    "set-attribute": _Msg("alluxio.grpc.SetAttributePOptions", {
        "pinned": "bool", "persisted": "bool", "owner": "string", "group": "string",
        "mode": _MODE, "recursive": "bool", "replicationMax": "int32", "replicationMin": "int32",
        "commonOptions": _COMMON, "pinnedMedia": _ListOf("string"), "xattr": _XATTR,
        "xattrUpdateStrategy": _XATTR_UPDATE}),
    "unmount": _Msg("alluxio.grpc.UnmountPOptions", {"commonOptions": _COMMON}),
}
_GET_OPS = {"download-file"}  # every other paths op is POST

GRPC_CODES = ("CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
              "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
              "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
              "UNAUTHENTICATED")

# Opening an incomplete file: the brief for this simulator says FAILED_PRECONDITION. The Java
# client throws FileIncompleteException, which AlluxioStatusException.fromAlluxioException does
# not list, so a real 2.x proxy would answer UNKNOWN (as for OpenDirectoryException below).
OPEN_INCOMPLETE_CODE = "FAILED_PRECONDITION"


class _Status(Exception):
    """An operation's failure: HTTP 500 with ``{"statusCode", "message"}`` (RestUtils)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Malformed(Exception):
    """A request body that is not valid HTTP/1.1 framing: the connection is closed."""


class _Http(Exception):
    """A failure before the operation runs (Jersey, Jackson): a bare status, plain text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


def _json_kind(value: Any) -> str:
    return {bool: "Boolean value", int: "Integer value", float: "Floating-point value",
            str: "String value", list: "Array value", dict: "Object value"}.get(
                type(value), "value")


def decode_options(kind: _Msg, value: Any, where: str = "") -> dict[str, Any]:
    """``value`` (parsed JSON) as Jackson maps it onto the message ``kind``; 400 if it cannot.
    JSON ``null`` leaves a field unset, as for the whole body."""
    if not isinstance(value, dict):
        raise _Http(400, f"Cannot deserialize value of type `{kind.java}` from "
                         f"{_json_kind(value)} (at {where or 'root'})")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if key not in kind.fields:
            raise _Http(400, f'Unrecognized field "{key}" (class {kind.java}), '
                             "not marked as ignorable")
        if item is not None:
            out[key] = _decode(kind.fields[key], item, f"{where}.{key}" if where else key)
    missing = [name for name in kind.required if name not in out]
    if missing:
        raise _Http(400, f"Message missing required fields: {', '.join(missing)} "
                         f"(class {kind.java}, at {where or 'root'})")
    return out


def _decode(kind: Any, value: Any, where: str) -> Any:
    def bad(java: str) -> _Http:
        return _Http(400, f"Cannot deserialize value of type `{java}` from {_json_kind(value)} "
                          f"(at {where})")

    if isinstance(kind, _Msg):
        return decode_options(kind, value, where)
    if isinstance(kind, _Enum):
        if not isinstance(value, str):
            raise bad(kind.java)
        if value not in kind.names:
            raise _Http(400, f"Cannot deserialize value of type `{kind.java}` from String "
                             f'"{value}": not one of the values accepted for Enum class: '
                             f"[{', '.join(kind.names)}] (at {where})")
        return value
    if isinstance(kind, _MapOf):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad(f"java.util.Map<String,{kind.value}>")
        return dict(value)
    if isinstance(kind, _ListOf):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise bad("java.util.List<String>")
        return list(value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise bad("boolean")
        return value
    if kind in ("int32", "int64"):
        bits = 31 if kind == "int32" else 63
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("int" if kind == "int32" else "long")
        if not -(1 << bits) <= value < (1 << bits):
            raise _Http(400, f"Numeric value ({value}) out of range of "
                             f"{'int' if kind == 'int32' else 'long'} (at {where})")
        return value
    if kind == "string":
        if not isinstance(value, str):
            raise bad("java.lang.String")
        return value
    raise AssertionError(kind)


def mode_bits(mode: dict[str, str]) -> int:
    """A ``PMode`` (``{"ownerBits": "ALL", ...}``) as the int of a URIStatus."""
    return (BITS.index(mode["ownerBits"]) << 6 | BITS.index(mode["groupBits"]) << 3
            | BITS.index(mode["otherBits"]))


# --- paths ---------------------------------------------------------------------------


def _parent(path: str) -> str:
    return path.rsplit("/", 1)[0] or "/"


def _name(path: str) -> str:
    return path.rsplit("/", 1)[1]


def _join(parent: str, name: str) -> str:
    return f"{parent.rstrip('/')}/{name}"


def _under(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it."""
    return path == top or top == "/" or path.startswith(top + "/")


def alluxio_path(path: str) -> str:
    """An absolute Alluxio path, normalized as AlluxioURI does (``//`` and a trailing ``/``
    collapse); a relative path, ``.``/``..`` components or NUL are INVALID_ARGUMENT."""
    if not path.startswith("/") or "\0" in path:
        raise _Status("INVALID_ARGUMENT", f"Path {path} is invalid")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise _Status("INVALID_ARGUMENT", f"Path {path} is invalid")
    return "/" + "/".join(parts)


def _not_found(path: str) -> _Status:
    return _Status("NOT_FOUND", f'Path "{path}" does not exist.')


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@lru_cache(maxsize=256)
def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


@lru_cache(maxsize=256)
def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


# --- state -----------------------------------------------------------------------------


@dataclass
class _Node:
    """One path's Alluxio state. ``persisted`` nodes are backed by a real file or directory
    (identified by ``ino`` = (st_dev, st_ino), so that one replaced behind the simulator's back
    gets a new id); the others exist only here (``data``: a complete file's spool file)."""

    path: str
    file_id: int
    folder: bool
    owner: str
    group: str
    mode: int  # of a non-persisted path; a persisted one reports its real mode
    persisted: bool = False
    state: str = "NOT_PERSISTED"  # persistenceState
    completed: bool = True
    cached: bool = False
    pinned: bool = False
    ttl: int = -1
    ttl_action: str = "DELETE"
    replication_min: int = 0
    replication_max: int = -1
    block_size: int = BLOCK_SIZE
    creation_ms: int = 0
    mtime_ms: int = 0
    atime_ms: int = 0
    length: int = 0  # of a non-persisted file
    data: Path | None = None
    ino: tuple[int, int] = (0, 0)
    deleted: bool = False


@dataclass
class _Mount:
    local: Path
    mount_id: int
    read_only: bool = False


@dataclass
class _Stream:
    node: _Node
    fd: int
    last_used: float
    busy: int = 0  # requests in progress: a stream in use does not expire
    closed: bool = False  # closed while busy: the request using it finishes the close


@dataclass
class _WriteStream(_Stream):
    spool: Path = Path()
    write_type: str = "ASYNC_THROUGH"
    written: int = 0


@dataclass
class _ReadStream(_Stream):
    length: int = 0
    read_type: str = "CACHE"
    pos: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class Faults:
    delay: float = 0.0
    stall: bool = False
    error: str = ""
    status: int = 0
    drop: bool = False
    truncate: bool = False
    routes: list[str] = field(default_factory=list)  # empty: every route
    count: int = 0  # the next N matching requests only; 0: until changed

    def active(self) -> bool:
        return bool(self.delay or self.stall or self.error or self.status or self.drop
                    or self.truncate)

    def applies(self, route: str) -> bool:
        return self.active() and (not self.routes or route in self.routes)


@dataclass
class _Request:
    method: str
    target: str
    headers: dict[str, str]
    log: dict[str, Any]


class _Body:
    """A request body, read as it arrives: ``Content-Length`` or chunked."""

    def __init__(self, reader: asyncio.StreamReader, headers: dict[str, str],
                 log: dict[str, Any]) -> None:
        self.reader = reader
        self.chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self.remaining = 0 if self.chunked else int(headers.get("content-length") or 0)
        self.done = not self.chunked and self.remaining == 0
        self.log = log
        self._prefix = bytearray()

    def _seen(self, piece: bytes) -> None:
        if len(self._prefix) < BODY_PREFIX:
            self._prefix += piece[:BODY_PREFIX - len(self._prefix)]
            self.log["body"] = self._prefix.decode("utf-8", "backslashreplace")

    async def pieces(self) -> AsyncIterator[bytes]:
        if self.done:
            return
        if self.chunked:
            while True:
                line = await self.reader.readuntil(b"\r\n")
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise _Malformed(f"bad chunk size {line!r}") from None
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    break
                while size:
                    piece = await self.reader.readexactly(min(size, CHUNK))
                    size -= len(piece)
                    self._seen(piece)
                    yield piece
                await self.reader.readexactly(2)
        else:
            while self.remaining:
                piece = await self.reader.readexactly(min(self.remaining, CHUNK))
                self.remaining -= len(piece)
                self._seen(piece)
                yield piece
        self.done = True

    async def read(self, limit: int) -> bytes:
        data = bytearray()
        async for piece in self.pieces():
            data += piece
            if len(data) > limit:
                raise _Http(413, "request entity too large")
        return bytes(data)

    async def discard(self) -> None:
        async for _ in self.pieces():
            pass


class SimProxy:
    """The simulated proxy over ``ufs``. Not thread-safe: all state is the event loop's;
    :meth:`stats`, :meth:`requests` and :meth:`set_faults` may be called from any thread."""

    def __init__(self, ufs: Path, *, stream_timeout: float = 3600.0,
                 async_persist_delay: float = 0.2, spool_dir: Path | None = None) -> None:
        self.ufs = ufs.resolve()
        if not self.ufs.is_dir():
            raise ValueError(f"{ufs} is not a directory")
        self.ufs_uri = f"file://{self.ufs}"
        self.stream_timeout = stream_timeout
        self.async_persist_delay = async_persist_delay
        self.faults = Faults()
        self.port = 0
        self._spool_arg = spool_dir
        self._spool = Path()
        self._start_ms = _now_ms()
        self._user = _user(os.getuid())
        self._group = _group(os.getgid())
        self._lock = threading.Lock()  # guards the counters and the request log
        self._counts: Counter[str] = Counter()
        self._requests: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG)
        self._next_container = 0
        self._next_stream = 0
        self._next_mount = 1
        self._nodes: dict[str, _Node] = {}
        self._memory_children: dict[str, set[str]] = {}  # parent -> names of non-persisted
        self._mounts: dict[str, _Mount] = {"/": _Mount(self.ufs, self._new_mount_id())}
        self._streams: dict[int, _Stream] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    # --- running -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def serve(self, port: int = 0, ready: Callable[[int], None] = lambda p: None,
                    *, handle_signals: bool = False) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT with ``handle_signals``); on the way
        out, streams are dropped (uncommitted writes lost, as in a crash) and the spool goes."""
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stopping.set)
        made_spool = self._spool_arg is None
        if made_spool:
            _sweep_spools()
            self._spool = Path(tempfile.mkdtemp(prefix=f"{_SPOOL_PREFIX}{os.getpid()}-"))
        else:
            self._spool = Path(self._spool_arg or "")
            self._spool.mkdir(parents=True, exist_ok=True)
        # A large reader limit: a stream write arrives in big pieces, not 64 KiB ones.
        server = await asyncio.start_server(self._connection, "127.0.0.1", port,
                                            limit=4 * CHUNK)
        self.port = server.sockets[0].getsockname()[1]
        self._spawn(self._reap_streams())
        try:
            ready(self.port)
            await self._stopping.wait()
        finally:
            server.close()
            tasks = [t for t in self._tasks if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for stream in self._streams.values():
                with contextlib.suppress(OSError):
                    os.close(stream.fd)
            self._streams.clear()
            if made_spool:
                shutil.rmtree(self._spool, ignore_errors=True)

    def start_in_thread(self) -> SimProxy:
        """Serve from a thread with its own event loop (for tests); returns self."""
        started = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.serve(0, lambda port: started.set())), daemon=True,
            name="simproxy")
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("simulated proxy did not start")
        return self

    def stop(self) -> None:
        """Stop serving (idempotent); open connections are cut."""
        if self._thread is None or not self._thread.is_alive():
            return
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(stopping.set)
        self._thread.join(10)

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- test accessors ------------------------------------------------------------

    def set_faults(self, **faults: Any) -> None:
        self.faults = Faults(**faults)

    def stats(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        for key in ("streams_opened", "streams_closed", "streams_expired", "bytes_read",
                    "bytes_written"):
            counts.setdefault(key, 0)
        counts["streams_open"] = len(self._streams)
        return counts

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._requests]

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    # --- HTTP ----------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        # Let a stream read queue a few chunks before drain() waits.
        writer.transport.set_write_buffer_limits(high=4 * CHUNK)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                try:
                    method, target, _version = lines[0].split(" ", 2)
                    int(headers.get("content-length") or 0)
                except ValueError:
                    return  # not HTTP/1.1 as we know it: close
                log = {"method": method, "target": target,
                       "content_type": headers.get("content-type"),
                       "content_length": headers.get("content-length"),
                       "transfer_encoding": headers.get("transfer-encoding"), "body": ""}
                if not target.startswith("/_sim/"):
                    with self._lock:
                        self._requests.append(log)
                if headers.get("expect", "").lower() == "100-continue":
                    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                body = _Body(reader, headers, log)
                keep = await self._answer(_Request(method, target, headers, log), body, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
                await body.discard()  # whatever the handler left, before the next request
        except (ConnectionError, asyncio.IncompleteReadError, _Malformed):
            return  # a client gone, or a malformed request: close
        except asyncio.CancelledError:
            return  # the proxy stopping
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _answer(self, req: _Request, body: _Body, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        raw_path, _, query = req.target.partition("?")
        if raw_path.startswith("/_sim/"):
            return await self._control(raw_path[len("/_sim/"):], body, writer)
        route = _route_name(raw_path)
        self._count(route)
        faults = self._take_faults(route)
        if faults is not None:
            if faults.stall:
                await asyncio.sleep(1 << 30)
            if faults.delay:
                await asyncio.sleep(faults.delay)
            if faults.drop:
                return False
            if faults.status:
                await body.discard()
                await self._send(writer, faults.status, b"simulated failure", "text/plain")
                return True
            if faults.error:
                await body.discard()
                await self._send(writer, 500, _error_json(faults.error, "simulated failure"),
                                 "application/json")
                return True
        truncate = faults is not None and faults.truncate
        try:
            reply = await self._route(req, raw_path, query, body, writer, truncate)
        except _Http as e:
            reply = (e.status, e.text.encode(), "text/plain")
        except _Status as e:
            reply = (500, _error_json(e.code, e.message), "application/json")
        except (ConnectionError, asyncio.IncompleteReadError, _Malformed):
            raise  # the connection is gone or unusable: _connection closes it
        except OSError as e:  # the under-storage failed: as an IOException, UNKNOWN
            reply = (500, _error_json("UNKNOWN", str(e)), "application/json")
        except Exception as e:  # a simulator bug: a RuntimeException is INTERNAL; say where
            traceback.print_exc()
            reply = (500, _error_json("INTERNAL", repr(e)), "application/json")
        if reply is None:
            return True  # streamed by the handler
        if isinstance(reply, bool):
            return reply  # streamed, and whether the connection survived
        status, payload, ctype = reply
        if truncate and len(payload) > 1:
            writer.write(_head(status, ctype, len(payload)) + payload[: len(payload) // 2])
            await writer.drain()
            return False
        await self._send(writer, status, payload, ctype)
        return True

    def _take_faults(self, route: str) -> Faults | None:
        faults = self.faults
        if not faults.applies(route):
            return None
        if faults.count:
            faults.count -= 1
            if faults.count == 0:
                self.faults = Faults()
        return faults

    async def _send(self, writer: asyncio.StreamWriter, status: int, payload: bytes,
                    ctype: str | None) -> None:
        writer.write(_head(status, ctype, len(payload)) + payload)
        await writer.drain()

    async def _control(self, what: str, body: _Body, writer: asyncio.StreamWriter) -> bool:
        status, reply = 200, cast(Any, None)
        if what == "faults":
            try:
                self.set_faults(**json.loads(await body.read(BODY_LIMIT) or b"{}"))
                reply = {"ok": True}
            except (TypeError, ValueError) as e:
                status, reply = 400, {"error": str(e)}
        elif what == "stats":
            reply = self.stats()
        elif what == "requests":
            reply = self.requests()
        else:
            status, reply = 404, {"error": f"unknown control {what!r}"}
        await self._send(writer, status, json.dumps(reply).encode(), "application/json")
        return True

    async def _route(self, req: _Request, raw_path: str, query: str, body: _Body,
                     writer: asyncio.StreamWriter, truncate: bool,
                     ) -> tuple[int, bytes, str | None] | bool | None:
        if raw_path.startswith(_API + "paths/"):
            rest = raw_path[len(_API + "paths/"):]
            if "/" not in rest:
                raise _Http(404, "Not Found")
            raw, op = rest.rsplit("/", 1)
            if op not in OPTIONS and op not in _GET_OPS:
                raise _Http(404, "Not Found")
            _need_method(req.method, "GET" if op in _GET_OPS else "POST")
            _need_type(req, "application/json")
            # Jersey decodes the {path} template; a single slash after paths/ is accepted too.
            path = urllib.parse.unquote(raw, errors="replace")
            path = path if path.startswith("/") else "/" + path
            if op == "download-file":
                return await self._download(path, writer, truncate)
            options = _parse_options(op, await body.read(BODY_LIMIT))
            return await self._paths_op(op, path, options, _query(query))
        if raw_path.startswith(_API + "streams/"):
            parts = raw_path[len(_API + "streams/"):].split("/")
            if len(parts) != 2 or not re.fullmatch(r"-?[0-9]{1,10}", parts[0]) \
                    or parts[1] not in ("read", "write", "close"):
                raise _Http(404, "Not Found")  # an id Jersey cannot convert to Integer: 404
            _need_method(req.method, "POST")
            stream_id, op = int(parts[0]), parts[1]
            if op == "write":
                _need_type(req, "application/octet-stream")
                return await self._write(stream_id, body)
            _need_type(req, "application/json")
            if op == "read":
                return await self._read(stream_id, writer, truncate)
            await self._close(stream_id)
            return 200, b"", None
        if raw_path == _API + "proxy/info":
            _need_method(req.method, "GET")
            now = _now_ms()
            return _json({"configuration": {}, "startTimeMs": self._start_ms,
                          "uptimeMs": now - self._start_ms, "version": VERSION})
        raise _Http(404, "Not Found")

    # --- paths operations ------------------------------------------------------------

    async def _paths_op(self, op: str, raw: str, o: dict[str, Any],
                        q: dict[str, str]) -> tuple[int, bytes, str | None]:
        path = alluxio_path(raw)
        if op == "get-status":
            node, st = self._need(path)
            return _json(self._status(node, st))
        if op == "list-status":
            node, st = self._need(path)
            if not node.folder:
                return _json([self._status(node, st)])
            found = list(self._walk(path))[1:] if o.get("recursive") else \
                self._children(path, node)
            return _json([self._status(n, s) for n, s in found])
        if op == "exists":
            return _json(self._lookup(path) is not None)
        if op == "create-directory":
            self._create_directory(path, o)
        elif op == "create-file":
            return _json(self._create_file(path, o))
        elif op == "open-file":
            return _json(self._open_file(path, o))
        elif op == "delete":
            self._delete(path, o)
        elif op == "rename":
            if "dst" not in q:  # Preconditions.checkNotNull: a NullPointerException
                raise _Status("INTERNAL", "required 'dst' parameter is missing")
            self._rename(path, alluxio_path(q["dst"]))
        elif op == "free":
            self._free(path, o)
        elif op == "set-attribute":
            await self._set_attribute(path, o)
        elif op == "mount":
            if "src" not in q:
                raise _Status("INTERNAL", "required 'src' parameter is missing")
            self._mount(path, q["src"], o)
        elif op == "unmount":
            self._unmount(path)
        return 200, b"", None

    def _create_directory(self, path: str, o: dict[str, Any]) -> None:
        found = self._lookup(path)
        if found is not None:
            if o.get("allowExists") and found[0].folder:
                return
            raise _Status("ALREADY_EXISTS", f"{path} already exists")
        write_type = o.get("writeType", "ASYNC_THROUGH")
        persist = write_type not in ("MUST_CACHE", "TRY_CACHE")
        self._need_parent(path, bool(o.get("recursive")), persist)
        mode = mode_bits(o["mode"]) if "mode" in o else 0o755
        node = self._mkdir(path, persist, mode)
        self._apply_common(node, o)

    def _create_file(self, path: str, o: dict[str, Any]) -> int:
        if self._lookup(path) is not None:
            raise _Status("ALREADY_EXISTS", f"{path} already exists")
        write_type = o.get("writeType", "ASYNC_THROUGH")
        if write_type == "NONE":
            raise _Status("INVALID_ARGUMENT", "write type NONE cannot create a file")
        if write_type == "TRY_CACHE":  # deprecated: caches, never persists
            write_type = "MUST_CACHE"
        repl_min, repl_max = o.get("replicationMin", 0), o.get("replicationMax", -1)
        if repl_max != -1 and repl_max < repl_min:
            raise _Status("INVALID_ARGUMENT",
                          f"replicationMax ({repl_max}) < replicationMin ({repl_min})")
        if o.get("blockSizeBytes", BLOCK_SIZE) <= 0:
            raise _Status("INVALID_ARGUMENT", "blockSizeBytes must be positive")
        # Parents made on the way are persisted only for the synchronous through types.
        self._need_parent(path, bool(o.get("recursive")),
                          write_type in ("THROUGH", "CACHE_THROUGH"))
        now = _now_ms()
        node = _Node(path, self._new_file_id(), False, self._user, self._group,
                     mode_bits(o["mode"]) if "mode" in o else 0o644, completed=False,
                     replication_min=repl_min, replication_max=repl_max,
                     block_size=o.get("blockSizeBytes", BLOCK_SIZE), creation_ms=now,
                     mtime_ms=now, atime_ms=now)
        self._apply_common(node, o)
        self._add_memory(node)
        spool = self._spool / f"w{node.file_id:x}"
        fd = os.open(spool, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
        return self._add_stream(_WriteStream(node, fd, time.monotonic(), spool=spool,
                                             write_type=write_type))

    def _open_file(self, path: str, o: dict[str, Any]) -> int:
        node, fd, length = self._open_fd(path, o)
        return self._add_stream(_ReadStream(node, fd, time.monotonic(), length=length,
                                            read_type=o.get("readType", "CACHE")))

    def _open_fd(self, path: str, o: dict[str, Any]) -> tuple[_Node, int, int]:
        """What FileSystem.openFile checks, then a descriptor on the file's data."""
        node, _st = self._need(path)
        if node.folder:  # OpenDirectoryException: not in fromAlluxioException's table
            raise _Status("UNKNOWN", f"Cannot read from {path} because it is a directory")
        if not node.completed:
            raise _Status(OPEN_INCOMPLETE_CODE, f"Cannot read from {path} because it is "
                                                "incomplete. Wait for the file to be marked "
                                                "as complete by the writing thread.")
        local = self._data_path(node)
        try:
            fd = os.open(local, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise _Status("UNAVAILABLE", f"cannot read {path}: {e}") from e
        if o.get("updateLastAccessTime", True):
            node.atime_ms = _now_ms()
        return node, fd, os.fstat(fd).st_size

    def _delete(self, path: str, o: dict[str, Any]) -> None:
        if path == "/":
            raise _Status("INVALID_ARGUMENT", "Cannot delete the root path")
        node, _st = self._need(path)
        mounts = self._mounts_under(path)
        if mounts and not o.get("deleteMountPoint"):
            raise _Status("INVALID_ARGUMENT", f"{path} is or holds a mount point: unmount it "
                                              "first (or set deleteMountPoint)")
        if node.folder and self._children(path, node) and not o.get("recursive"):
            raise _Status("FAILED_PRECONDITION", f"Directory {path} is not empty")
        # A mount point itself is only unmounted: its under-storage stays.
        if node.persisted and not o.get("alluxioOnly") and path not in mounts:
            local = self._local(path)
            try:
                if node.folder:
                    shutil.rmtree(local)
                else:
                    os.unlink(local)
            except FileNotFoundError:
                pass
        for mount in mounts:
            del self._mounts[mount]
        self._forget(path, node.folder)

    def _rename(self, src: str, dst: str) -> None:
        if src == "/":
            raise _Status("INVALID_ARGUMENT", "Cannot rename the root path")
        node, _st = self._need(src)
        if _under(dst, src):
            raise _Status("INVALID_ARGUMENT", f"Cannot rename {src} into itself ({dst})")
        if self._lookup(dst) is not None:
            raise _Status("ALREADY_EXISTS", f"Cannot rename because destination already "
                                            f"exists. src: {src} dst: {dst}")
        parent = self._lookup(_parent(dst))
        if parent is None:
            raise _not_found(_parent(dst))
        if not parent[0].folder:
            raise _Status("INVALID_ARGUMENT", f"Cannot rename to {dst}: "
                                              f"{_parent(dst)} is a file")
        if self._mounts_under(src) or self._mount_of(src) != self._mount_of(_parent(dst)):
            raise _Status("INVALID_ARGUMENT",
                          f"Renaming {src} to {dst} is a mount point or across mount points")
        if node.persisted:
            self._persist_dirs(_parent(dst))
            os.rename(self._local(src), self._local(dst))
        self._rekey(src, dst, node.folder)

    def _free(self, path: str, o: dict[str, Any]) -> None:
        node, _st = self._need(path)
        if node.folder and not o.get("recursive"):
            raise _Status("FAILED_PRECONDITION",
                          f"Cannot free directory {path} which is not empty without recursive")
        targets = [n for n, _ in self._walk(path)] if node.folder else [node]
        for target in targets:
            if target.state != "PERSISTED":
                raise _Status("FAILED_PRECONDITION",
                              f"Cannot free file {target.path} which is not persisted")
            if target.pinned and not o.get("forced"):
                raise _Status("FAILED_PRECONDITION", f"Cannot free pinned file {target.path} "
                                                     "unless forced")
        for target in targets:
            target.cached = False
            target.pinned = False if o.get("forced") else target.pinned

    async def _set_attribute(self, path: str, o: dict[str, Any]) -> None:
        node, _st = self._need(path)
        repl_min = o.get("replicationMin", node.replication_min)
        repl_max = o.get("replicationMax", node.replication_max)
        if repl_max != -1 and repl_max < repl_min:
            raise _Status("INVALID_ARGUMENT",
                          f"replicationMax ({repl_max}) < replicationMin ({repl_min})")
        targets = [n for n, _ in self._walk(path)] if o.get("recursive") else [node]
        if o.get("persisted") is False and any(t.persisted for t in targets):
            raise _Status("INVALID_ARGUMENT", f"Cannot set {path} to not persisted")
        if o.get("persisted") and any(not t.completed for t in targets):
            raise _Status("FAILED_PRECONDITION", f"{path} is incomplete: cannot persist it")
        for target in targets:
            for key, attr in (("pinned", "pinned"), ("owner", "owner"), ("group", "group"),
                              ("replicationMin", "replication_min"),
                              ("replicationMax", "replication_max")):
                if key in o:
                    setattr(target, attr, o[key])
            self._apply_common(target, o)
            if "mode" in o:
                target.mode = mode_bits(o["mode"])
                if target.persisted:
                    os.chmod(self._local(target.path), target.mode)
        if o.get("persisted"):
            for target in targets:
                if target.deleted or target.persisted:
                    continue
                if target.folder:
                    self._persist_dirs(target.path)
                else:
                    await self._persist_file(target)

    def _mount(self, path: str, src: str, o: dict[str, Any]) -> None:
        if self._lookup(path) is not None:
            raise _Status("INVALID_ARGUMENT", f"Mount point {path} already exists")
        parent = self._lookup(_parent(path))
        if parent is None:
            raise _not_found(_parent(path))
        if not parent[0].folder:
            raise _Status("INVALID_ARGUMENT", f"{_parent(path)} is a file")
        if src.startswith("file://"):
            src = src[len("file://"):]
        if not src.startswith("/"):
            raise _Status("INVALID_ARGUMENT", f"Unsupported under storage: {src}")
        local = Path(src).resolve()
        if not local.is_dir():
            raise _Status("NOT_FOUND", f"Ufs path {src} does not exist")
        for mount in self._mounts.values():
            if local == mount.local or local in mount.local.parents \
                    or mount.local in local.parents:
                raise _Status("INVALID_ARGUMENT", f"Mount point {src} is a prefix of, or "
                                                  f"under, mounted {mount.local}")
        self._mounts[path] = _Mount(local, self._new_mount_id(), bool(o.get("readOnly")))
        self._ufs_node(path, os.stat(local))

    def _unmount(self, path: str) -> None:
        self._need(path)
        if path == "/":
            raise _Status("INVALID_ARGUMENT", "Cannot unmount the root mount point")
        if path not in self._mounts:
            raise _Status("INVALID_ARGUMENT", f"Path {path} is not a mount point")
        if len(self._mounts_under(path)) > 1:
            raise _Status("INVALID_ARGUMENT", f"{path} holds other mount points")
        del self._mounts[path]
        self._forget(path, True)

    # --- streams ---------------------------------------------------------------------

    def _add_stream(self, stream: _Stream) -> int:
        self._next_stream += 1
        self._streams[self._next_stream] = stream
        self._count("streams_opened")
        return self._next_stream

    def _stream(self, stream_id: int, kind: type[_Stream]) -> _Stream:
        """The open stream ``stream_id`` of this kind, as StreamCache.get*Stream: anything else
        (unknown, closed, expired, of the other kind) is IllegalArgumentException: INTERNAL."""
        stream = self._streams.get(stream_id)
        if stream is not None and time.monotonic() - stream.last_used > self.stream_timeout \
                and not stream.busy:
            self._expire(stream_id)
            stream = None
        if not isinstance(stream, kind):
            raise _Status("INTERNAL", "stream does not exist")
        stream.last_used = time.monotonic()
        return stream

    async def _write(self, stream_id: int, body: _Body) -> tuple[int, bytes, str | None]:
        try:
            stream = self._stream(stream_id, _WriteStream)
        except _Status:
            await body.discard()
            raise
        assert isinstance(stream, _WriteStream)
        stream.busy += 1
        written = 0
        try:
            async for piece in body.pieces():
                if stream.closed:
                    raise _Status("INTERNAL", "stream does not exist")  # closed meanwhile
                if len(piece) >= CHUNK // 4:
                    await asyncio.to_thread(_write_all, stream.fd, piece)
                else:
                    _write_all(stream.fd, piece)
                written += len(piece)
                stream.written += len(piece)
                self._count("bytes_written", len(piece))
        finally:
            self._unbusy(stream)
        return _json(written)

    async def _read(self, stream_id: int, writer: asyncio.StreamWriter,
                    truncate: bool) -> tuple[int, bytes, str | None] | bool:
        stream = self._stream(stream_id, _ReadStream)
        assert isinstance(stream, _ReadStream)
        stream.busy += 1
        try:
            async with stream.lock:
                writer.write(_head(200, "application/octet-stream", None))
                return await self._send_file(writer, stream, truncate)
        finally:
            self._unbusy(stream)

    def _unbusy(self, stream: _Stream) -> None:
        stream.busy -= 1
        stream.last_used = time.monotonic()
        if stream.closed and not stream.busy:  # closed while in use: finish it now
            self._spawn(self._release(stream, quiet=True))

    async def _send_file(self, writer: asyncio.StreamWriter, stream: _ReadStream,
                         truncate: bool) -> bool:
        """The chunked body: the rest of the file from the stream's position. False when the
        connection is gone or was cut on purpose."""
        while True:
            try:
                data = await asyncio.to_thread(os.pread, stream.fd, CHUNK, stream.pos)
            except OSError:
                return False  # the head is out: all that is left is to cut the body short
            if truncate:
                writer.write(b"%x\r\n" % max(len(data), 1) + data[: len(data) // 2])
                await writer.drain()
                stream.pos += len(data) // 2
                return False
            if not data:
                break
            if writer.transport.is_closing() or stream.closed:
                return False
            writer.write(b"%x\r\n" % len(data))
            writer.write(data)
            writer.write(b"\r\n")
            # Counted once handed to the transport, which may send it at once: the position
            # is never behind what the client got (it may be ahead, by what was buffered).
            stream.pos += len(data)
            self._count("bytes_read", len(data))
            await writer.drain()  # raises ConnectionError when the client has gone
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        if stream.pos >= stream.length and stream.read_type != "NO_CACHE" \
                and not stream.node.deleted:
            stream.node.cached = True
        return True

    async def _close(self, stream_id: int) -> None:
        stream = self._stream(stream_id, _Stream)
        del self._streams[stream_id]
        self._count("streams_closed")
        await self._finish(stream)

    def _expire(self, stream_id: int) -> None:
        stream = self._streams.pop(stream_id)
        self._count("streams_expired")
        stream.closed = True
        self._spawn(self._release(stream, quiet=True))

    async def _finish(self, stream: _Stream) -> None:
        """Close a stream: a write stream's file is completed (its write type applies). A
        stream in use is closed by the request using it, when that ends."""
        stream.closed = True
        if not stream.busy:
            await self._release(stream)

    async def _release(self, stream: _Stream, quiet: bool = False) -> None:
        fd, stream.fd = stream.fd, -1
        if fd >= 0:
            os.close(fd)
        if isinstance(stream, _WriteStream):
            try:
                await self._commit(stream)
            except (_Status, OSError):
                if not quiet:  # nobody to tell when a stream expires
                    raise

    async def _reap_streams(self) -> None:
        """Expire unused streams, as the stream cache's expireAfterAccess."""
        while True:
            await asyncio.sleep(max(0.01, min(1.0, self.stream_timeout / 4)))
            now = time.monotonic()
            for stream_id, stream in list(self._streams.items()):
                if not stream.busy and now - stream.last_used > self.stream_timeout:
                    self._expire(stream_id)

    async def _commit(self, stream: _WriteStream) -> None:
        node = stream.node
        if node.deleted:
            with contextlib.suppress(OSError):
                os.unlink(stream.spool)
            raise _not_found(node.path)
        node.length = stream.written
        node.mtime_ms = _now_ms()
        if stream.write_type in ("THROUGH", "CACHE_THROUGH"):
            node.data = stream.spool
            await self._persist_file(node)
            node.cached = stream.write_type == "CACHE_THROUGH"
            node.completed = True
            return
        node.data = stream.spool
        node.cached = True
        node.completed = True
        if stream.write_type == "ASYNC_THROUGH":
            node.state = "TO_BE_PERSISTED"
            self._spawn(self._persist_later(node))

    async def _persist_later(self, node: _Node) -> None:
        await asyncio.sleep(self.async_persist_delay)
        if not node.deleted and node.state == "TO_BE_PERSISTED":
            await self._persist_file(node)

    async def _persist_file(self, node: _Node) -> None:
        """Move a complete non-persisted file's data into the under-storage, atomically: a
        rename on the same device, else a copy to a temporary name and a rename."""
        src = node.data
        assert src is not None
        self._persist_dirs(_parent(node.path))
        final = self._local(node.path)
        try:
            os.replace(src, final)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise _Status("UNAVAILABLE", f"cannot persist {node.path}: {e}") from e
            tmp = final.with_name(f".{final.name}.simproxy-{os.urandom(4).hex()}.tmp")
            try:
                await asyncio.to_thread(shutil.copyfile, src, tmp)
            except OSError as copy_error:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                if node.deleted:
                    return
                raise _Status("UNAVAILABLE", f"cannot persist {node.path}: {copy_error}") \
                    from copy_error
            if node.deleted or node.persisted:  # deleted, or persisted another way meanwhile
                os.unlink(tmp)
                with contextlib.suppress(OSError):
                    os.unlink(src)
                return
            self._persist_dirs(_parent(node.path))  # it may have been renamed meanwhile
            final = self._local(node.path)
            os.replace(tmp, final)
            os.unlink(src)
        os.chmod(final, node.mode)
        self._to_persisted(node, os.stat(final))

    async def _download(self, raw: str, writer: asyncio.StreamWriter,
                        truncate: bool) -> tuple[int, bytes, str | None] | bool:
        path = alluxio_path(raw)
        node, fd, length = self._open_fd(path, {})
        stream = _ReadStream(node, fd, time.monotonic(), length=length)
        try:
            writer.write(_head(200, "application/octet-stream", None,
                               f"Content-Disposition: attachment; filename={_name(path)}"))
            return await self._send_file(writer, stream, truncate)
        finally:
            os.close(stream.fd)

    # --- namespace -----------------------------------------------------------------

    def _new_file_id(self) -> int:
        # As Alluxio: a block container id in the high bits, all sequence bits set.
        self._next_container += 1
        return self._next_container << 24 | 0xFFFFFF

    def _new_mount_id(self) -> int:
        self._next_mount += 1
        return self._next_mount - 1

    def _mount_of(self, path: str) -> str:
        return max((m for m in self._mounts if _under(path, m)), key=len)

    def _mounts_under(self, path: str) -> list[str]:
        return [m for m in self._mounts if m != "/" and _under(m, path)]

    def _local(self, path: str) -> Path:
        mount = self._mount_of(path)
        rest = path[len(mount):].lstrip("/")
        return self._mounts[mount].local / rest if rest else self._mounts[mount].local

    def _data_path(self, node: _Node) -> Path:
        if node.persisted:
            return self._local(node.path)
        assert node.data is not None
        return node.data

    def _lookup(self, path: str) -> tuple[_Node, os.stat_result | None] | None:
        node = self._nodes.get(path)
        if node is not None and not node.persisted:
            return node, None
        try:
            st = os.stat(self._local(path))
        except (FileNotFoundError, NotADirectoryError):
            if node is not None:
                del self._nodes[path]
            return None
        return self._ufs_node(path, st), st

    def _need(self, path: str) -> tuple[_Node, os.stat_result | None]:
        found = self._lookup(path)
        if found is None:
            raise _not_found(path)
        return found

    def _ufs_node(self, path: str, st: os.stat_result) -> _Node:
        """The node of a real file or directory: the known one, or a new id if it is new."""
        node = self._nodes.get(path)
        folder = stat.S_ISDIR(st.st_mode)
        if node is not None and node.persisted and node.ino == (st.st_dev, st.st_ino) \
                and node.folder == folder:
            return node
        mtime = st.st_mtime_ns // 1_000_000
        node = _Node(path, self._new_file_id(), folder, _user(st.st_uid), _group(st.st_gid),
                     stat.S_IMODE(st.st_mode), persisted=True, state="PERSISTED",
                     creation_ms=mtime, mtime_ms=mtime, atime_ms=st.st_atime_ns // 1_000_000,
                     ino=(st.st_dev, st.st_ino))
        self._nodes[path] = node
        return node

    def _children(self, path: str, node: _Node) -> list[tuple[_Node, os.stat_result | None]]:
        """A directory's children, by name: real ones, those only in Alluxio, mount points."""
        memory = self._memory_children.get(path, set())
        found: dict[str, tuple[_Node, os.stat_result | None]] = {}
        if node.persisted:
            try:
                with os.scandir(self._local(path)) as entries:
                    for entry in entries:
                        child = _join(path, entry.name)
                        if entry.name in memory or _TMP.match(entry.name) \
                                or child in self._mounts:
                            continue
                        try:
                            st = entry.stat()
                        except OSError:  # a dangling symlink
                            continue
                        found[entry.name] = (self._ufs_node(child, st), st)
            except (FileNotFoundError, NotADirectoryError):
                pass
        for name in memory:
            found[name] = (self._nodes[_join(path, name)], None)
        for mount in self._mounts:
            if mount != "/" and _parent(mount) == path:
                got = self._lookup(mount)
                if got is not None:
                    found[_name(mount)] = got
        return [found[name] for name in sorted(found)]

    def _walk(self, path: str) -> Iterator[tuple[_Node, os.stat_result | None]]:
        """``path`` and everything under it, depth first."""
        top = self._lookup(path)
        if top is None:
            return
        stack = [top]
        while stack:
            node, st = stack.pop()
            yield node, st
            if node.folder:
                stack.extend(reversed(self._children(node.path, node)))

    def _need_parent(self, path: str, recursive: bool, persist: bool) -> None:
        parent = _parent(path)
        found = self._lookup(parent)
        if found is None:
            if not recursive:
                raise _not_found(parent)
            self._mkdir(parent, persist, 0o755, recursive=True)
        elif not found[0].folder:
            raise _Status("INVALID_ARGUMENT",
                          f"Traversal failed for path {path}: {parent} is a file")

    def _mkdir(self, path: str, persist: bool, mode: int, recursive: bool = False) -> _Node:
        """Make directory ``path`` (and its missing ancestors with ``recursive``): a real one
        with ``persist`` (its non-persisted ancestors get persisted), else only in Alluxio."""
        if recursive and path != "/":
            found = self._lookup(_parent(path))
            if found is None:
                self._mkdir(_parent(path), persist, mode, recursive=True)
            elif not found[0].folder:
                raise _Status("INVALID_ARGUMENT", f"Traversal failed for path {path}: "
                                                  f"{_parent(path)} is a file")
        if persist:
            self._persist_dirs(_parent(path))
            local = self._local(path)
            os.mkdir(local)
            os.chmod(local, mode)  # as given, not through the umask
            return self._ufs_node(path, os.stat(local))
        now = _now_ms()
        node = _Node(path, self._new_file_id(), True, self._user, self._group, mode,
                     creation_ms=now, mtime_ms=now, atime_ms=now)
        self._add_memory(node)
        return node

    def _persist_dirs(self, path: str) -> None:
        """Make directory ``path`` and its ancestors real, as Alluxio persists the parents of a
        file it persists."""
        missing: list[_Node] = []
        current = path
        while True:
            node = self._nodes.get(current)
            if node is None or node.persisted:
                break
            missing.append(node)
            current = _parent(current)
        for node in reversed(missing):
            local = self._local(node.path)
            with contextlib.suppress(FileExistsError):
                os.mkdir(local)
            os.chmod(local, node.mode)
            self._to_persisted(node, os.stat(local))

    def _to_persisted(self, node: _Node, st: os.stat_result) -> None:
        if not node.persisted:
            names = self._memory_children.get(_parent(node.path))
            if names is not None:
                names.discard(_name(node.path))
                if not names:
                    del self._memory_children[_parent(node.path)]
        node.persisted = True
        node.state = "PERSISTED"
        node.data = None
        node.ino = (st.st_dev, st.st_ino)

    def _add_memory(self, node: _Node) -> None:
        self._nodes[node.path] = node
        self._memory_children.setdefault(_parent(node.path), set()).add(_name(node.path))

    def _subtree_keys(self, path: str, folder: bool) -> list[str]:
        keys = [path] if path in self._nodes else []
        if folder:
            prefix = path.rstrip("/") + "/"
            keys += [k for k in self._nodes if k.startswith(prefix)]
        return keys

    def _forget(self, path: str, folder: bool) -> None:
        """Drop ``path`` (and with ``folder`` all below it) from Alluxio."""
        for key in self._subtree_keys(path, folder):
            node = self._nodes.pop(key)
            node.deleted = True
            if not node.persisted:
                names = self._memory_children.get(_parent(key), set())
                names.discard(_name(key))
                if not names:
                    self._memory_children.pop(_parent(key), None)
                if node.data is not None and node.completed:
                    with contextlib.suppress(OSError):
                        os.unlink(node.data)

    def _rekey(self, src: str, dst: str, folder: bool) -> None:
        for key in self._subtree_keys(src, folder):
            node = self._nodes.pop(key)
            new = dst + key[len(src):]
            node.path = new
            self._nodes[new] = node
            if not node.persisted:
                names = self._memory_children.get(_parent(key), set())
                names.discard(_name(key))
                if not names:
                    self._memory_children.pop(_parent(key), None)
                self._memory_children.setdefault(_parent(new), set()).add(_name(new))

    def _apply_common(self, node: _Node, o: dict[str, Any]) -> None:
        common = o.get("commonOptions", {})
        if "ttl" in common:
            node.ttl = common["ttl"]
        if "ttlAction" in common:
            node.ttl_action = common["ttlAction"]

    # --- URIStatus -----------------------------------------------------------------

    def _status(self, node: _Node, st: os.stat_result | None) -> dict[str, Any]:
        """URIStatus as Jackson writes it: every public getter (PROTOCOL.md 4.1)."""
        path = node.path
        mount = self._mount_of(path)
        if st is not None:
            mode = stat.S_IMODE(st.st_mode)
            mtime = st.st_mtime_ns // 1_000_000
            length = 0 if node.folder else st.st_size
        else:
            mode, mtime, length = node.mode, node.mtime_ms, node.length
        if node.folder:  # InodeDirectory.generateClientFileInfo: the number of children
            length = len(self._children(path, node))
            block_size, blocks, percent = 0, 0, 0
        else:
            block_size = node.block_size
            blocks = -(-length // block_size) if node.completed else 0
            percent = 100 if node.completed and (node.cached or length == 0) else 0
        container = node.file_id >> 24 << 24
        block_ids = [container | i for i in range(blocks)]
        location = {"workerId": 1, "workerAddress": {
            "host": "127.0.0.1", "containerHost": "", "rpcPort": 29999, "dataPort": 29999,
            "secureRpcPort": 0, "nettyDataPort": 29999, "webPort": 30000,
            "domainSocketPath": "", "tieredIdentity": {"tiers": [
                {"tierName": "node", "value": "127.0.0.1"}]}},
            "tierAlias": "MEM", "mediumType": "MEM"}
        infos = [{"blockInfo": {"blockId": block_ids[i],
                                "length": min(block_size, length - i * block_size),
                                "locations": [location] if percent else []},
                  "offset": i * block_size, "ufsLocations": []} for i in range(blocks)]
        fingerprint = "" if node.folder or not node.persisted else (
            f"TYPE|FILE|UFS|local|OWNER|{node.owner}|GROUP|{node.group}|MODE|{mode}|"
            f"CONTENT_HASH|({length}:{mtime})|")
        acl = {"owningUser": node.owner, "owningGroup": node.group, "mode": mode,
               "entries": [], "empty": True}
        info: dict[str, Any] = {
            "blockIds": block_ids, "blockSizeBytes": block_size,
            "cacheable": not node.folder, "completed": node.completed,
            "creationTimeMs": node.creation_ms, "lastModificationTimeMs": mtime,
            "lastAccessTimeMs": node.atime_ms, "fileBlockInfos": infos,
            "fileId": node.file_id, "folder": node.folder, "owner": node.owner,
            "group": node.group, "inMemoryPercentage": percent,
            "inAlluxioPercentage": percent, "length": length,
            "name": "" if path == "/" else _name(path), "path": path,
            "ufsPath": f"file://{self._local(path)}", "pinned": node.pinned,
            "persisted": node.persisted, "persistenceState": node.state, "mode": mode,
            "mountPoint": path in self._mounts, "mountId": self._mounts[mount].mount_id,
            "ttl": node.ttl, "ttlAction": node.ttl_action,
            "replicationMax": node.replication_max, "replicationMin": node.replication_min,
            "ufsFingerprint": fingerprint, "xattr": None, "pinnedMediumTypes": [],
            "acl": acl, "defaultAcl": {**acl, "mode": 0},
        }
        info["fileInfo"] = dict(info)  # URIStatus.getFileInfo(): the wrapped wire FileInfo
        return info


# --- helpers ---------------------------------------------------------------------------


def _route_name(raw_path: str) -> str:
    if raw_path.startswith(_API + "paths/"):
        return raw_path.rsplit("/", 1)[1]
    if raw_path.startswith(_API + "streams/"):
        return raw_path.rsplit("/", 1)[1]
    if raw_path == _API + "proxy/info":
        return "info"
    return "unknown"


def _need_method(method: str, wanted: str) -> None:
    if method != wanted:
        raise _Http(405, "Method Not Allowed")


def _need_type(req: _Request, wanted: str) -> None:
    """Jersey's @Consumes: no Content-Type matches anything, another type gets 415."""
    ctype = req.headers.get("content-type")
    if ctype is not None and ctype.split(";", 1)[0].strip().lower() != wanted:
        raise _Http(415, "Unsupported Media Type")


def _parse_options(op: str, body: bytes) -> dict[str, Any]:
    """A ``paths`` body: none, ``null`` or ``{}`` are the defaults; else Jackson's mapping."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except ValueError as e:
        raise _Http(400, f"Unexpected character: {e}") from e
    if value is None:
        return {}
    return decode_options(OPTIONS[op], value)


def _query(query: str) -> dict[str, str]:
    """Query parameters as Jersey decodes them (``+`` is a space); the first value wins."""
    params: dict[str, str] = {}
    for key, value in urllib.parse.parse_qsl(query, keep_blank_values=True):
        params.setdefault(key, value)
    return params


def _json(value: Any) -> tuple[int, bytes, str]:
    return 200, json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode(), \
        "application/json"


def _error_json(code: str, message: str) -> bytes:
    return json.dumps({"statusCode": code, "message": message}).encode()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            413: "Payload Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 503: "Service Unavailable"}


def _head(status: int, ctype: str | None, length: int | None, *extra: str) -> bytes:
    """A response head: ``length`` None means a chunked body."""
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    if ctype is not None:
        lines.append(f"Content-Type: {ctype}")
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace")


_SPOOL_PREFIX = "simproxy-spool-"


def _sweep_spools() -> None:
    """Remove the default spool directories of simulators that died without cleaning up
    (killed with SIGKILL): they are named after their process id."""
    for spool in Path(tempfile.gettempdir()).glob(f"{_SPOOL_PREFIX}*-*"):
        pid = spool.name[len(_SPOOL_PREFIX):].split("-", 1)[0]
        if not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(spool, ignore_errors=True)
        except PermissionError:
            pass  # alive, someone else's


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- as a process ----------------------------------------------------------------------


REPO = Path(__file__).resolve().parents[2]


@dataclass
class SimProxyProcess:
    """``python -m tests.sim.proxy`` as a child process (for integration tests and
    benchmarks); :meth:`start` runs one for the length of a ``with`` block."""

    proc: subprocess.Popen[str]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    @contextmanager
    def start(cls, ufs: Path, *, port: int = 0, stream_timeout: float | None = None,
              async_persist_delay: float | None = None, spool_dir: Path | None = None,
              log: Path | None = None) -> Iterator[SimProxyProcess]:
        args = [sys.executable, "-m", "tests.sim.proxy", "--ufs", str(ufs), "--port", str(port)]
        for flag, value in (("--stream-timeout", stream_timeout),
                            ("--async-persist-delay", async_persist_delay),
                            ("--spool-dir", spool_dir)):
            if value is not None:
                args += [flag, str(value)]
        own_log = log is None
        if log is None:
            handle, name = tempfile.mkstemp(prefix="simproxy-", suffix=".log")
            os.close(handle)
            log = Path(name)
        with open(log, "w") as err:
            proc = subprocess.Popen(args, cwd=REPO, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=err, text=True,
                                    env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert proc.stdout is not None
            line = _readline(proc.stdout, 20)  # "listening <port>", or "" if it died
            if not line.startswith("listening "):
                raise RuntimeError(f"simulated proxy did not start: {log.read_text()}")
            yield cls(proc, int(line.split()[1]), log)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()
            if own_log:
                log.unlink(missing_ok=True)

    def faults(self, **faults: Any) -> None:
        self._http("POST", "/_sim/faults", json.dumps(faults).encode())

    def stats(self) -> dict[str, int]:
        return dict(json.loads(self._http("GET", "/_sim/stats")))

    def requests(self) -> list[dict[str, Any]]:
        return list(json.loads(self._http("GET", "/_sim/requests")))

    def _http(self, method: str, path: str, body: bytes | None = None) -> bytes:
        import urllib.request

        request = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(request, timeout=10) as reply:
            return bytes(reply.read())


def _readline(stream: Any, timeout: float) -> str:
    """One line from a child's stdout, or "" after ``timeout`` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return ""
    return str(stream.readline())


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--ufs", required=True, type=Path)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--stream-timeout", type=float, default=3600.0)
    p.add_argument("--async-persist-delay", type=float, default=0.2)
    p.add_argument("--spool-dir", type=Path, help="where files being written spool "
                                                  "(default: a new temporary directory)")
    args = p.parse_args()
    # Each open read stream holds a descriptor: allow as many as the hard limit lets.
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 1 << 16)), hard))
    sim = SimProxy(args.ufs, stream_timeout=args.stream_timeout,
                   async_persist_delay=args.async_persist_delay, spool_dir=args.spool_dir)
    asyncio.run(sim.serve(args.port, lambda port: print(f"listening {port}", flush=True),
                          handle_signals=True))


if __name__ == "__main__":
    main()
