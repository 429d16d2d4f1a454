"""A simulated AIStore cluster: one proxy and N targets serving the /v1 REST API over local dirs.

Nodes. Every node (the proxy ``p[...]`` and each target ``t[...]``) is its own HTTP/1.1 server
on 127.0.0.1 with an ephemeral port, all on one event loop in one thread. ``GET
/v1/daemon?what=smap`` (any node) answers the cluster map as ``meta.Smap`` marshals it: ``tmap``
and ``pmap`` of Snodes (``daemon_id``, ``daemon_type``, ``public_net`` with ``node_hostname``,
``daemon_port``, ``direct_url``, ``flags``, ``id_digest`` = XXH64(daemon_id, seed 1103515245)),
``proxy_si``, ``version``, ``uuid``. The target of an object is chosen by highest random weight
as ``Smap.HrwName2T``: max over targets of xoshiro256(id_digest ^ XXH64(uname, seed 1103515245)),
uname ``"<provider>/@#/<bucket>/<object>"``.

Buckets and objects. Bucket "ais" objects live only in the cluster; a bucket of a remote
provider (``aws``, ``gcp``, ``azure``, ...) has a remote store (a directory shared by the
cluster) and in-cluster cached copies. Each node keeps data files under ``<root>/<daemon id>/``
(the remote store under ``<root>/remote/``), named by a hash of the uname; object metadata
(size, version, checksum, atime) is kept in memory. Requests, as the Go nodes answer them:

- ``HEAD /v1/buckets/B?provider=P``: 200 with header ``Ais-Bucket-Props`` (JSON bucket props), or
  404 with the error in header ``Hdr-Error``.
- ``GET /v1/buckets/B?provider=P`` with ``{"action": "list", "value": LsoMsg}``: one page of
  ``LsoRes``, MessagePack (``UUID``, ``ContinuationToken``, ``Entries`` of ``{n, cs, a, v, t, s,
  c, f}``, ``Flags``) when ``Accept: application/msgpack``, JSON otherwise. Honors ``props``
  (name, size, checksum, atime, version, location, copies; ``a`` formatted as ``time_format``,
  default RFC822 in UTC), ``pagesize`` (0 means the maximum: 10000 for ais, 1000 for the clouds),
  ``continuation_token`` (the last name of the previous page), ``prefix``, ``start_after``,
  ``LsCached``, ``LsNotCached``, ``LsNoRecursion`` (direct children plus virtual directories
  named ``<dir>/`` with ``EntryIsDir``), ``LsNoDirs``. Entries carry ``EntryIsCached`` when a
  target holds a copy (every object of an ais bucket).
- ``/v1/objects/B/O?provider=P`` at the proxy: 307 with ``Location`` at the owning target (the
  request's path and query kept); a body sent with it is read and dropped. At a target: ``GET``
  (``Range: bytes=a-b``, ``a-``, ``-n`` gives 206 with ``Content-Range`` and ``Accept-Ranges``,
  an unsatisfiable range 416 with ``Content-Range: bytes */size``; headers ``ais-checksum-type``,
  ``ais-checksum-value`` (of the whole object, as with ranged checksums off, the default),
  ``ais-atime`` (unix nanoseconds), ``ais-version``, ``Content-Length``, ``Content-Type:
  application/octet-stream``); ``HEAD`` with ``props`` (``ais-present``, size as
  ``Content-Length``, checksum/atime/version/location only when asked); ``PUT`` (body streamed
  to a file, ``Content-Length`` or chunked; the bucket's checksum computed; a client
  ``Ais-Checksum-Type``/``Ais-Checksum-Value`` that does not match the data gives 400 ``BAD DATA
  CHECKSUM``; a PUT whose client checksum equals the stored one is a no-op, as in Go; otherwise
  the version goes up by one); ``DELETE``. A PUT sets the atime; a GET sends the atime it
  finds and sets it once the body is sent (Go's ``expostfacto``); HEAD leaves it. A target
  serves the objects it holds whether or not it owns them (Go's misplaced objects); asked for
  an ais object it does not hold it answers 404 (Go without a rebalance running), so the SDK's
  direct mode refetches the smap and retries; for a remote bucket it cold-GETs from the remote
  store into its own store.
- ``POST /v1/buckets/B`` ``{"action": "prefetch-listrange", "value": {"objnames": [...]} |
  {"template": T}}`` and ``DELETE /v1/buckets/B`` ``{"action": "evict-listrange" |
  "delete-listrange", ...}`` answer a job id (text); a template with ``{a..b}`` ranges or
  ``{x,y}`` alternatives expands, any other template is a prefix ("" = all). Prefetch loads each
  missing remote object into its owning target (``job_delay`` seconds each); evict drops the
  cached copies. ``POST /v1/buckets/B`` ``create-bck``, ``DELETE /v1/buckets/B`` with
  ``destroy-bck`` (or no body) or ``evict-remote-bck``, and ``GET /v1/buckets/`` (the bucket
  list) work too. ``GET /v1/cluster?what=status`` with ``JobArgs`` answers ``{uuid, err, end_time,
  aborted}`` (end_time 0 while running); ``what=qryxstats`` answers snaps per target.
- Errors: JSON ``{"message", "method", "url_path", "remote_addr", "caller", "node", "status"}``
  as ``cmn.ErrHTTP``: ``t[ID]: ais://b/o does not exist`` for a missing object, ``bucket
  "ais://b" does not exist`` (``aws bucket "s3://b" does not exist``) for a missing bucket, so
  that the SDK maps them to ErrObjNotFound, ErrBckNotFound and ErrRemoteBckNotFound.

Membership: :meth:`SimAis.add_target` and :meth:`SimAis.remove_target` change the smap (version
up by one) and move every object whose owner changed to its new owner at once (a rebalance that
finishes before the call returns); a client holding the old smap gets 404 from the old owner.

Checksums as ``cmn/cos/cksum.go``: ``xxhash`` and ``xxhash2`` (XXH64 seed 0), ``md5``,
``sha256`` (SHA-256: ``sha256.New()``, whatever the constant's comment says), ``sha512``,
``crc32c``; values are the hex of the big-endian digest; ``none`` records no checksum.

Simplifications: one proxy; no namespaces, mirroring, EC, archives, ETL, chunked objects,
custom metadata or authentication; a remote bucket exists only once :meth:`SimAis.create_bucket`
names it (Go adds one its backend has on first access); remote objects get versions "1", "2",
... from :meth:`SimAis.put_remote`; a non-recursive listing takes the prefix up to its last
``/`` as the directory (Go's ``CheckDirNoRecurs`` for a prefix ending in ``/``); the listing
continuation token is the last name returned, not Go's opaque token; bucket props are a subset;
a target's file I/O blocks the event loop briefly (local files).

Fault switches (:meth:`SimAis.set_faults`): ``delay`` (seconds before answering), ``stall``
(never answer), ``status`` (answer this HTTP status with an error body), ``drop`` (close without
a reply), ``truncate`` (close half-way through a body), each limited to ``routes`` (empty:
all) and to ``nodes`` (daemon ids, ``"proxy"`` or ``"targets"``; empty: all), and to the next
``count`` matching requests (0: until changed). Routes: ``smap``, ``health``, ``bucket-head``,
``list``, ``list-buckets``, ``prefetch``, ``evict``, ``delete-objects``, ``create-bucket``,
``destroy-bucket``, ``evict-bucket``, ``job``; objects ``get``, ``head``, ``put``, ``delete``
(at the proxy, which redirects, as at the target, which serves). :meth:`SimAis.stats`
counts requests by route (``get``), by node and route (``<daemon id>:get``), the redirects the
proxy sent (``redirect:get``) against requests served by targets directly (``direct:get``: a
target request that did not follow a redirect), and ``bytes_served`` (also per node).
:meth:`SimAis.requests` lists recent requests as ``"<daemon id> <METHOD> <target>"``. Listens on
127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import secrets
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import msgpack
import xxhash

MLCG32 = 1103515245  # cos.MLCG32: the seed of node and object digests
_MASK = (1 << 64) - 1
CHUNK = 1 << 20
_HEAD_LIMIT = 64 * 1024
_REQUEST_LOG = 1000
CLOUD_PROVIDERS = ("aws", "gcp", "azure", "oci", "ht")
_SCHEME = {"aws": "s3", "gcp": "gs", "azure": "az"}
_MAX_PAGE = {"ais": 10000, "aws": 1000, "gcp": 1000, "azure": 5000, "oci": 1000}
CHECKSUMS = ("xxhash", "xxhash2", "md5", "sha256", "sha512", "crc32c", "none")

# api/apc/lsmsg.go
LS_CACHED = 1 << 0
LS_NOT_CACHED = 1 << 9
LS_NO_RECURSION = 1 << 11
LS_NO_DIRS = 1 << 13
ENTRY_IS_CACHED = 1 << 6
ENTRY_IS_DIR = 1 << 8


def node_digest(daemon_id: str) -> int:
    return xxhash.xxh64_intdigest(daemon_id.encode(), seed=MLCG32)


def _xoshiro(seed: int) -> int:
    # cmn/xoshiro256.Hash: a splitmix64 step, then the xoshiro256** output scramble
    z = (seed + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z = ((z ^ (z >> 31)) + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z = ((z ^ (z >> 31)) * 5) & _MASK
    z = ((z << 7) | (z >> 57)) & _MASK
    return (z * 9) & _MASK


def hrw_target(daemon_ids: list[str], uname: str) -> str:
    """The target that owns ``uname`` among ``daemon_ids`` (meta.Smap.HrwName2T)."""
    digest = xxhash.xxh64_intdigest(uname.encode(), seed=MLCG32)
    best, best_w = "", -1
    for tid in daemon_ids:
        w = _xoshiro(node_digest(tid) ^ digest)
        if w > best_w:
            best, best_w = tid, w
    if not best:
        raise RuntimeError("no targets")
    return best


def uname(provider: str, bucket: str, name: str) -> str:
    return f"{provider}/@#/{bucket}/{name}"


def cname(provider: str, bucket: str, name: str = "") -> str:
    """``Bck.Cname``: ``ais://b/o``, ``s3://b/o``."""
    s = f"{_SCHEME.get(provider, provider)}://{bucket}"
    return f"{s}/{name}" if name else s


# --- checksums -----------------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


class _Crc32c:
    """CRC-32C (Castagnoli), reflected; slow but only tests use it."""

    _table: ClassVar[list[int]] = []

    def __init__(self) -> None:
        if not _Crc32c._table:
            _Crc32c._table = _crc32c_table()
        self._crc = 0xFFFFFFFF

    def update(self, data: bytes) -> None:
        crc, table = self._crc, self._table
        for b in data:
            crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
        self._crc = crc

    def hexdigest(self) -> str:
        return f"{self._crc ^ 0xFFFFFFFF:08x}"


class Hasher:
    """An incremental checksum of one AIStore type (``none``: no value)."""

    def __init__(self, kind: str) -> None:
        if kind not in CHECKSUMS:
            raise ValueError(f"checksum type {kind!r}")
        self.kind = kind
        self._h: Any
        if kind in ("xxhash", "xxhash2"):
            self._h = xxhash.xxh64(seed=0)
        elif kind == "md5":
            self._h = hashlib.md5()
        elif kind == "sha256":
            self._h = hashlib.sha256()  # cos/cksum.go: sha256.New()
        elif kind == "sha512":
            self._h = hashlib.sha512()
        elif kind == "crc32c":
            self._h = _Crc32c()
        else:
            self._h = None

    def update(self, data: bytes) -> None:
        if self._h is not None:
            self._h.update(data)

    def value(self) -> str:
        return "" if self._h is None else str(self._h.hexdigest())


def checksum(kind: str, data: bytes) -> str:
    h = Hasher(kind)
    h.update(data)
    return h.value()


# --- state ---------------------------------------------------------------------------


@dataclass
class ObjMeta:
    size: int
    version: str
    cksum_type: str
    cksum_value: str
    atime: int  # unix nanoseconds; 0 when never accessed in the cluster
    mtime: int = 0  # unix nanoseconds of the write


@dataclass
class Bucket:
    name: str
    provider: str
    checksum: str
    created: int


@dataclass
class Job:
    uuid: str
    kind: str
    provider: str
    bucket: str
    start: int
    end: int = 0
    objects: int = 0
    bytes: int = 0
    err: str = ""


@dataclass
class Faults:
    delay: float = 0.0
    stall: bool = False
    status: int = 0
    drop: bool = False
    truncate: bool = False
    routes: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # daemon ids, "proxy", "targets"; empty: all
    count: int = 0

    def applies(self, route: str, node: Node) -> bool:
        if self.routes and route not in self.routes:
            return False
        if not self.nodes:
            return True
        kind = "proxy" if node.kind == "proxy" else "targets"
        return node.daemon_id in self.nodes or kind in self.nodes

    def active(self) -> bool:
        return bool(self.delay or self.stall or self.status or self.drop or self.truncate)


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class Request:
    method: str
    target: str
    path: list[str]  # after /v1/
    query: dict[str, str]
    headers: dict[str, str]
    reader: asyncio.StreamReader
    remote: str
    body_read: bool = False
    msg: dict[str, Any] = field(default_factory=dict)  # the ActionMsg of a bucket or job call


class Node:
    """One HTTP server of the cluster: the proxy or a target."""

    def __init__(self, sim: SimAis, daemon_id: str, kind: str) -> None:
        self.sim = sim
        self.daemon_id = daemon_id
        self.kind = kind
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.conns: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def name(self) -> str:
        return f"{'p' if self.kind == 'proxy' else 't'}[{self.daemon_id}]"

    def snode(self) -> dict[str, Any]:
        net = {"node_hostname": "127.0.0.1", "daemon_port": str(self.port), "direct_url": self.url}
        return {"daemon_id": self.daemon_id, "daemon_type": self.kind, "public_net": net,
                "intra_control_net": net, "intra_data_net": net, "flags": 0,
                "id_digest": node_digest(self.daemon_id)}

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in list(self.conns):
            w.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.conns.add(writer)
        peer = writer.get_extra_info("peername")
        remote = f"{peer[0]}:{peer[1]}" if peer else ""
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                if len(head) > _HEAD_LIMIT:
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                url = urllib.parse.urlsplit(target)
                parts = [urllib.parse.unquote(p) for p in url.path.split("/")]
                if len(parts) < 2 or parts[1] != "v1":
                    path: list[str] = []
                else:
                    path = parts[2:]
                query = dict(urllib.parse.parse_qsl(url.query, keep_blank_values=True))
                req = Request(method, target, path, query, headers, reader, remote)
                keep = await self.sim._serve(self, req, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return
        finally:
            self.conns.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()


async def _body(req: Request) -> AsyncIterator[bytes]:
    """The request body in pieces (Content-Length or chunked)."""
    req.body_read = True
    if req.headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = await req.reader.readuntil(b"\r\n")
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while (await req.reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return
            async for piece in _pieces(req, size):
                yield piece
            await req.reader.readexactly(2)
    else:
        async for piece in _pieces(req, int(req.headers.get("content-length", "0") or 0)):
            yield piece


async def _pieces(req: Request, size: int) -> AsyncIterator[bytes]:
    """The next ``size`` bytes of the request, as they arrive."""
    left = size
    while left:
        piece = await req.reader.read(min(left, CHUNK))
        if not piece:
            raise ConnectionError("body cut short")
        left -= len(piece)
        yield piece


async def _read_all(req: Request, limit: int = 1 << 20) -> bytes:
    out = bytearray()
    async for piece in _body(req):
        out += piece
        if len(out) > limit:
            raise HTTPError(413, "request body too large")
    return bytes(out)


def _parse_range(spec: str, size: int) -> tuple[int, int] | None:
    """``bytes=a-b`` → (start, length); None: unsatisfiable. Raises HTTPError when malformed."""
    if not spec.startswith("bytes="):
        raise HTTPError(400, f"invalid range {spec!r}")
    ranges = spec[len("bytes="):].split(",")
    if len(ranges) > 1:
        raise HTTPError(416, "multi-range read is not supported")
    first, _, last = ranges[0].strip().partition("-")
    try:
        if first == "":
            n = int(last)
            if n <= 0 or size == 0:
                return None
            n = min(n, size)
            return size - n, n
        start = int(first)
        end = int(last) if last else size - 1
    except ValueError as e:
        raise HTTPError(400, f"invalid range {spec!r}") from e
    if start >= size or end < start:
        return None
    end = min(end, size - 1)
    return start, end - start + 1


def _expand_template(template: str) -> list[str] | None:
    """Bash-style ``{a..b[..step]}`` and ``{x,y}`` expansion; None when there are no braces."""
    m = re.search(r"\{([^{}]*)\}", template)
    if m is None:
        return None
    head, tail = template[:m.start()], template[m.end():]
    body = m.group(1)
    rng = re.fullmatch(r"(\d+)\.\.(\d+)(?:\.\.(\d+))?", body)
    if rng:
        a, b = int(rng.group(1)), int(rng.group(2))
        step = int(rng.group(3) or 1)
        width = len(rng.group(1))
        items = [str(i).zfill(width) for i in range(a, b + 1, step)]
    else:
        items = body.split(",")
    out: list[str] = []
    for item in items:
        rest = _expand_template(tail)
        out += [head + item + r for r in (rest if rest is not None else [tail])]
    return out


class SimAis:
    """The simulated cluster; a context manager. ``url`` is the proxy, ``targets`` maps
    daemon id → url."""

    def __init__(self, root: Path, targets: int = 3, checksum: str = "xxhash2") -> None:
        if checksum not in CHECKSUMS:
            raise ValueError(f"checksum type {checksum!r}")
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "remote").mkdir(exist_ok=True)
        self.default_checksum = checksum
        self.job_delay = 0.0  # seconds per object a prefetch or evict job takes
        self.smap_version = 1
        self.uuid = secrets.token_hex(5)
        self._lock = threading.RLock()
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._objs: dict[str, dict[str, ObjMeta]] = {}  # daemon id → uname → meta
        self._remote: dict[str, ObjMeta] = {}
        self._jobs: dict[str, Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()  # set at close: ends stalled requests
        self._faults = Faults()
        self._stats: Counter[str] = Counter()
        self._requests: deque[str] = deque(maxlen=_REQUEST_LOG)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.proxy = Node(self, "p" + secrets.token_hex(4), "proxy")
        self._run(self.proxy.start())
        self._targets: dict[str, Node] = {}
        for _ in range(targets):
            self._add_target()

    # --- lifecycle -----------------------------------------------------------------

    def _run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def __enter__(self) -> SimAis:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop every node (idempotent); open connections are cut."""
        if not self._thread.is_alive():
            return

        async def stop_all() -> None:
            self._closing.set()
            for node in [self.proxy, *self._targets.values()]:
                await node.stop()
            for task in self._tasks:
                task.cancel()
            # closed transports end their handlers; give them a turn to run
            await asyncio.sleep(0.05)

        with contextlib.suppress(Exception):
            self._run(stop_all(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def url(self) -> str:
        return self.proxy.url

    @property
    def targets(self) -> dict[str, str]:
        with self._lock:
            return {tid: node.url for tid, node in self._targets.items()}

    def _add_target(self) -> str:
        node = Node(self, "t" + secrets.token_hex(4), "target")
        self._run(node.start())
        (self.root / node.daemon_id).mkdir()
        with self._lock:
            self._targets[node.daemon_id] = node
            self._objs[node.daemon_id] = {}
        return node.daemon_id

    def add_target(self) -> str:
        """Join a new target; the smap version goes up and objects move to their new owners."""
        tid = self._add_target()
        with self._lock:
            self.smap_version += 1
            self._rebalance()
        return tid

    def remove_target(self, daemon_id: str) -> None:
        """Take a target out of the cluster; its objects move to their new owners first."""
        with self._lock:
            node = self._targets.pop(daemon_id)
            self.smap_version += 1
            self._rebalance(leaving=daemon_id)
            del self._objs[daemon_id]
        self._run(node.stop())

    def _rebalance(self, leaving: str = "") -> None:
        ids = list(self._targets)
        for tid, objs in list(self._objs.items()):
            for un, meta in list(objs.items()):
                dest = hrw_target(ids, un)
                if dest == tid and tid != leaving:
                    continue
                os.replace(self._fqn(tid, un), self._fqn(dest, un))
                self._objs[dest][un] = meta
                del objs[un]

    # --- faults, stats ------------------------------------------------------------------

    def set_faults(self, **faults: Any) -> None:
        with self._lock:
            self._faults = Faults(**faults)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def requests(self) -> list[str]:
        with self._lock:
            return list(self._requests)

    def _count(self, *keys: str, n: int = 1) -> None:
        with self._lock:
            for k in keys:
                self._stats[k] += n

    # --- direct access (what tests set up and check) -------------------------------------

    def _fqn(self, daemon_id: str, un: str) -> Path:
        return self.root / daemon_id / hashlib.sha1(un.encode()).hexdigest()

    def _remote_fqn(self, un: str) -> Path:
        return self.root / "remote" / hashlib.sha1(un.encode()).hexdigest()

    def create_bucket(self, name: str, provider: str = "ais", checksum: str | None = None) -> None:
        """An ais bucket, or a remote one (``aws``, ``gcp``, ...) with an empty remote store;
        ``checksum`` defaults to the cluster's."""
        kind = checksum or self.default_checksum
        if kind not in CHECKSUMS:
            raise ValueError(f"checksum type {kind!r}")
        with self._lock:
            self._buckets[(provider, name)] = Bucket(name, provider, kind, time.time_ns())

    def _bucket(self, provider: str, name: str) -> Bucket:
        with self._lock:
            bck = self._buckets.get((provider, name))
        if bck is None:
            quoted = json.dumps(cname(provider, name))
            if provider in CLOUD_PROVIDERS:  # ErrRemoteBckNotFound
                raise HTTPError(404, f"{provider} bucket {quoted} does not exist")
            raise HTTPError(404, f"bucket {quoted} does not exist")
        return bck

    def owner(self, bucket: str, name: str, provider: str = "ais") -> str:
        """The target HRW places the object on under the current smap (where the proxy
        redirects, a PUT through the proxy stores it and a rebalance moves it)."""
        with self._lock:
            return hrw_target(list(self._targets), uname(provider, bucket, name))

    def _where(self, un: str) -> str | None:
        """The target holding an in-cluster copy."""
        with self._lock:
            for tid, objs in self._objs.items():
                if un in objs:
                    return tid
        return None

    def holder(self, bucket: str, name: str, provider: str = "ais") -> str | None:
        """The target holding the in-cluster copy: the owner, unless a client wrote or
        cold-read it at another target directly."""
        return self._where(uname(provider, bucket, name))

    def put_object(self, bucket: str, name: str, data: bytes, provider: str = "ais") -> None:
        """Store an object as a client PUT leaves it (remote buckets: in the remote store too)."""
        bck = self._bucket(provider, bucket)
        un = uname(provider, bucket, name)
        tid = self.owner(bucket, name, provider)
        tmp = self.root / tid / f".tmp-{secrets.token_hex(6)}"
        tmp.write_bytes(data)
        self._commit_put(bck, un, tid, tmp, len(data), checksum(bck.checksum, data))

    def put_remote(self, bucket: str, name: str, data: bytes, provider: str) -> None:
        """Store an object only in the remote store of a remote bucket."""
        bck = self._bucket(provider, bucket)
        if bck.provider == "ais":
            raise ValueError("ais buckets have no remote store")
        un = uname(provider, bucket, name)
        self._remote_fqn(un).write_bytes(data)
        with self._lock:
            prev = self._remote.get(un)
            version = str(int(prev.version) + 1) if prev else "1"
            self._remote[un] = ObjMeta(len(data), version, "md5", checksum("md5", data), 0)

    def read_object(self, bucket: str, name: str, provider: str = "ais") -> bytes:
        """The in-cluster copy (or, for a remote bucket, the remote one when not cached)."""
        un = uname(provider, bucket, name)
        tid = self._where(un)
        if tid is not None:
            return self._fqn(tid, un).read_bytes()
        return self._remote_fqn(un).read_bytes()

    def is_cached(self, bucket: str, name: str, provider: str = "ais") -> bool:
        """Whether a target holds a copy (always, for an existing object of an ais bucket)."""
        return self._where(uname(provider, bucket, name)) is not None

    def meta(self, bucket: str, name: str, provider: str = "ais") -> ObjMeta | None:
        """A copy of the in-cluster copy's metadata (None when not in the cluster)."""
        un = uname(provider, bucket, name)
        with self._lock:
            tid = self._where(un)
            return None if tid is None else dataclasses.replace(self._objs[tid][un])

    def corrupt(self, bucket: str, name: str, provider: str = "ais") -> None:
        """Flip the first byte of the stored copy; the recorded checksum stays."""
        un = uname(provider, bucket, name)
        tid = self._where(un)
        if tid is None:
            raise FileNotFoundError(un)
        with open(self._fqn(tid, un), "r+b") as f:
            b = f.read(1)
            f.seek(0)
            f.write(bytes([b[0] ^ 0xFF]))

    def _commit_put(self, bck: Bucket, un: str, tid: str, tmp: Path, size: int,
                    value: str) -> ObjMeta:
        with self._lock:
            old = self._where(un)
            prev = self._objs[old][un] if old else None
            if bck.provider != "ais":
                prev_remote = self._remote.get(un)
                version = str(int(prev_remote.version) + 1) if prev_remote else "1"
            else:
                version = str(int(prev.version) + 1) if prev else "1"
            now = time.time_ns()
            meta = ObjMeta(size, version, bck.checksum, value, now, now)
            if old and old != tid:
                with contextlib.suppress(FileNotFoundError):
                    self._fqn(old, un).unlink()
                del self._objs[old][un]
            if bck.provider != "ais":
                # write-through: the remote store gets the data, then the cluster keeps it
                rtmp = self._remote_fqn(un).with_suffix(".tmp")
                with open(tmp, "rb") as src, open(rtmp, "wb") as dst:
                    while piece := src.read(CHUNK):
                        dst.write(piece)
                os.replace(rtmp, self._remote_fqn(un))
                md5 = Hasher("md5")
                with open(tmp, "rb") as src:
                    while piece := src.read(CHUNK):
                        md5.update(piece)
                self._remote[un] = ObjMeta(size, version, "md5", md5.value(), 0)
            os.replace(tmp, self._fqn(tid, un))
            self._objs[tid][un] = meta
            return meta

    def _cold_get(self, bck: Bucket, un: str, tid: str) -> ObjMeta | None:
        """Copy a remote object into target ``tid``; None when it is not in the remote store."""
        with self._lock:
            rmeta = self._remote.get(un)
        if rmeta is None:
            return None
        h = Hasher(bck.checksum)
        tmp = self.root / tid / f".tmp-{secrets.token_hex(6)}"
        size = 0
        with open(self._remote_fqn(un), "rb") as src, open(tmp, "wb") as dst:
            while piece := src.read(CHUNK):
                h.update(piece)
                dst.write(piece)
                size += len(piece)
        now = time.time_ns()
        meta = ObjMeta(size, rmeta.version, bck.checksum, h.value(), now, now)
        with self._lock:
            os.replace(tmp, self._fqn(tid, un))
            self._objs[tid][un] = meta
        return meta

    # --- serving -----------------------------------------------------------------------

    def _route(self, req: Request) -> str:
        p, m = req.path, req.method
        if not p:
            return "other"
        if p[0] == "daemon":
            return req.query.get("what", "daemon")
        if p[0] == "health":
            return "health"
        if p[0] == "cluster":
            return "job"
        if p[0] == "buckets":
            if m == "HEAD":
                return "bucket-head"
            action = str(req.msg.get("action", ""))
            if m == "GET":
                return "list" if len(p) > 1 and p[1] else "list-buckets"
            return _ACTION_ROUTES.get(action, "bucket-" + m.lower())
        if p[0] == "objects":
            return {"GET": "get", "HEAD": "head", "PUT": "put", "DELETE": "delete"}.get(m, "object")
        return "other"

    async def _serve(self, node: Node, req: Request, writer: asyncio.StreamWriter) -> bool:
        if req.path[:1] in (["buckets"], ["cluster"]) and req.method != "HEAD":
            try:  # a small JSON ActionMsg, which names the route
                body = await _read_all(req)
            except HTTPError as e:  # too large: answered, and the connection closed
                await self._send_error(node, req, writer, e)
                return False
            try:
                req.msg = json.loads(body) if body.strip() else {}
            except ValueError:
                req.msg = {"action": "?"}
        route = self._route(req)
        with self._lock:
            self._requests.append(f"{node.daemon_id} {req.method} {req.target}")
            self._stats[route] += 1
            self._stats[f"{node.daemon_id}:{route}"] += 1
            faults = self._faults
            hit = faults.active() and faults.applies(route, node)
            if hit and faults.count:
                faults.count -= 1
                if faults.count == 0:
                    self._faults = Faults()
        if hit:
            if faults.stall:
                await self._closing.wait()
                return False
            if faults.delay:
                await asyncio.sleep(faults.delay)
            if faults.drop:
                return False
            if faults.status:
                await self._drain(req)
                await self._send_error(node, req, writer,
                                       HTTPError(faults.status, f"{node.name}: injected fault"))
                return True
        try:
            return await self._dispatch(node, req, writer, route,
                                        truncate=hit and faults.truncate)
        except HTTPError as e:
            await self._drain(req)
            await self._send_error(node, req, writer, e)
            return True

    async def _drain(self, req: Request) -> None:
        if not req.body_read and req.method in ("PUT", "POST", "DELETE", "GET"):
            async for _ in _body(req):
                pass

    async def _send_error(self, node: Node, req: Request, writer: asyncio.StreamWriter,
                          e: HTTPError) -> None:
        body = {"message": e.message, "method": req.method,
                "url_path": urllib.parse.urlsplit(req.target).path, "remote_addr": req.remote,
                "caller": "", "node": node.name, "status": e.status}
        text = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        hdrs = {**e.headers, "Content-Type": "application/json",
                "X-Content-Type-Options": "nosniff"}
        if req.method == "HEAD":
            hdrs["Hdr-Error"] = text.decode().strip()
            await self._send(writer, e.status, hdrs, b"", head=True)
        else:
            await self._send(writer, e.status, hdrs, text)

    async def _send(self, writer: asyncio.StreamWriter, status: int, headers: dict[str, str],
                    body: bytes, *, head: bool = False, truncate: bool = False) -> None:
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
        hdrs = dict(headers)
        hdrs.setdefault("Content-Length", str(len(body)))
        hdrs["Date"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime())
        lines += [f"{k}: {v}" for k, v in hdrs.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            if truncate:
                writer.write(body[: len(body) // 2])
                await writer.drain()
                writer.close()
                raise ConnectionError("truncated")
            writer.write(body)
        await writer.drain()

    async def _send_json(self, writer: asyncio.StreamWriter, value: Any, status: int = 200,
                         truncate: bool = False) -> None:
        await self._send(writer, status, {"Content-Type": "application/json"},
                         json.dumps(value).encode(), truncate=truncate)

    def smap(self) -> dict[str, Any]:
        with self._lock:
            return {
                "tmap": {tid: n.snode() for tid, n in self._targets.items()},
                "pmap": {self.proxy.daemon_id: self.proxy.snode()},
                "proxy_si": self.proxy.snode(), "version": self.smap_version,
                "uuid": self.uuid, "creation_time": "",
            }

    async def _dispatch(self, node: Node, req: Request, writer: asyncio.StreamWriter, route: str,
                        *, truncate: bool) -> bool:
        p = req.path
        if route == "smap":
            await self._send_json(writer, self.smap(), truncate=truncate)
            return True
        if route == "health":
            await self._send(writer, 200, {}, b"")
            return True
        if p and p[0] == "buckets" and len(p) >= 2 and p[1]:
            return await self._bucket_req(node, req, writer, route, truncate)
        if p and p[0] == "buckets" and req.method == "GET":  # list buckets
            await self._drain(req)
            provider = req.query.get("provider", "")
            with self._lock:
                bcks = [{"name": b.name, "provider": b.provider,
                         "namespace": {"uuid": "", "name": ""}}
                        for b in self._buckets.values() if provider in ("", b.provider)]
            await self._send_json(writer, bcks, truncate=truncate)
            return True
        if p and p[0] == "objects" and len(p) >= 3:
            if node.kind == "proxy":
                return await self._redirect(node, req, writer, route)
            return await self._object_req(node, req, writer, route, truncate)
        if route == "job" and req.method == "GET":
            return await self._job_req(req, writer, truncate)
        raise HTTPError(400, f"invalid request {req.method} {req.target}")

    async def _redirect(self, node: Node, req: Request, writer: asyncio.StreamWriter,
                        route: str) -> bool:
        provider = req.query.get("provider", "ais")
        bck, name = req.path[1], "/".join(req.path[2:])
        self._bucket(provider, bck)
        tid = self.owner(bck, name, provider)
        # as Go's redirectURL: the same path and query plus the proxy's id and the send time
        sep = "&" if "?" in req.target else "?"
        url = f"{self.targets[tid]}{req.target}{sep}pid={node.daemon_id}&ptime={time.time_ns()}"
        await self._drain(req)
        self._count(f"redirect:{route}", f"{node.daemon_id}:redirect:{route}")
        await self._send(writer, 307, {"Location": url}, b"")
        return True

    # --- objects -----------------------------------------------------------------------

    async def _object_req(self, node: Node, req: Request, writer: asyncio.StreamWriter,
                          route: str, truncate: bool) -> bool:
        provider = req.query.get("provider", "ais")
        bucket, name = req.path[1], "/".join(req.path[2:])
        bck = self._bucket(provider, bucket)
        un = uname(provider, bucket, name)
        tid = node.daemon_id
        how = "redirected" if "pid" in req.query else "direct"
        self._count(f"{how}:{route}", f"{tid}:{how}:{route}")
        if req.method == "PUT":
            return await self._put(node, req, writer, bck, un)
        with self._lock:
            meta = self._objs[tid].get(un)
        if req.method == "DELETE":
            with self._lock:
                rmeta = self._remote.pop(un, None) if bck.provider != "ais" else None
                if meta is not None:
                    del self._objs[tid][un]
            if meta is None and rmeta is None:
                raise HTTPError(404, f"{node.name}: {cname(provider, bucket, name)} does not exist")
            with contextlib.suppress(FileNotFoundError):
                self._fqn(tid, un).unlink()
            with contextlib.suppress(FileNotFoundError):
                self._remote_fqn(un).unlink()
            await self._send(writer, 200, {}, b"")
            return True
        if req.method == "HEAD":
            return await self._head(node, req, writer, bck, un, meta)
        if req.method != "GET":
            raise HTTPError(405, f"method {req.method} not allowed")
        if meta is None and bck.provider != "ais":
            meta = await asyncio.to_thread(self._cold_get, bck, un, tid)
        if meta is None:
            raise HTTPError(404, f"{node.name}: {cname(provider, bucket, name)} does not exist")
        return await self._get(node, req, writer, un, meta, truncate)

    def _obj_headers(self, meta: ObjMeta) -> dict[str, str]:
        h = {}
        if meta.cksum_type != "none" and meta.cksum_value:
            h["Ais-Checksum-Type"] = meta.cksum_type
            h["Ais-Checksum-Value"] = meta.cksum_value
        if meta.atime:
            h["Ais-Atime"] = str(meta.atime)
        if meta.version:
            h["Ais-Version"] = meta.version
        return h

    async def _get(self, node: Node, req: Request, writer: asyncio.StreamWriter, un: str,
                   meta: ObjMeta, truncate: bool) -> bool:
        await self._drain(req)
        fqn = self._fqn(node.daemon_id, un)
        size = fqn.stat().st_size
        status, start, length = 200, 0, size
        hdrs: dict[str, str] = {"Content-Type": "application/octet-stream"}
        spec = req.headers.get("range", "")
        if spec:
            rng = _parse_range(spec, size)
            if rng is None:
                raise HTTPError(416, f"size={size}: not satisfiable range [{spec}]",
                                {"Content-Range": f"bytes */{size}"})
            start, length = rng
            status = 206
            hdrs["Accept-Ranges"] = "bytes"
            hdrs["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
        hdrs.update(self._obj_headers(meta))  # the atime of the access before this one
        hdrs["Content-Length"] = str(length)
        lines = [f"HTTP/1.1 {status} {_REASONS[status]}"] + [f"{k}: {v}" for k, v in hdrs.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        limit = length // 2 if truncate else length
        sent = 0
        # Counts and the atime change before the last byte goes out, with no await in
        # between: a client that has the body and asks again sees them (one event loop).
        # Local files: short blocking reads are fine in a simulator.
        with open(fqn, "rb") as f:  # noqa: ASYNC230
            f.seek(start)
            while True:
                piece = f.read(min(CHUNK, limit - sent)) if sent < limit else b""
                sent += len(piece)
                self._count("bytes_served", f"{node.daemon_id}:bytes_served", n=len(piece))
                last = not piece or sent >= limit
                if last and not truncate:
                    with self._lock:  # as Go's getOI.expostfacto: atime set once sent
                        meta.atime = time.time_ns()
                writer.write(piece)
                await writer.drain()
                if last:
                    break
        return not truncate

    async def _head(self, node: Node, req: Request, writer: asyncio.StreamWriter, bck: Bucket,
                    un: str, meta: ObjMeta | None) -> bool:
        name = un.split("/", 3)[3]
        present = meta is not None
        if meta is None:
            with self._lock:
                rmeta = self._remote.get(un) if bck.provider != "ais" else None
            if rmeta is None:
                raise HTTPError(404, f"{node.name}: {cname(bck.provider, bck.name, name)} "
                                "does not exist")
            meta = ObjMeta(rmeta.size, rmeta.version, rmeta.cksum_type, rmeta.cksum_value, 0)
        props = req.query.get("props", "")
        hdrs = {"Ais-Present": "true" if present else "false", "Content-Length": str(meta.size)}
        if not props:  # the v1 HEAD: every attribute
            hdrs.update(self._obj_headers(meta))
            hdrs["Ais-Name"] = name
            hdrs["Ais-Bucket-Name"] = bck.name
            hdrs["Ais-Bucket-Provider"] = bck.provider
        wanted = {s.strip() for s in props.split(",") if s.strip()}
        unknown = wanted - _HEAD_PROPS
        if unknown:
            raise HTTPError(400, f"invalid property {sorted(unknown)[0]!r} in props list")
        full = self._obj_headers(meta)
        if "checksum" in wanted:
            for k in ("Ais-Checksum-Type", "Ais-Checksum-Value"):
                if k in full:
                    hdrs[k] = full[k]
        if "atime" in wanted and "Ais-Atime" in full:
            hdrs["Ais-Atime"] = full["Ais-Atime"]
        if "version" in wanted and "Ais-Version" in full:
            hdrs["Ais-Version"] = full["Ais-Version"]
        if "location" in wanted and present:
            hdrs["Ais-Location"] = f"{node.name}:/mpath"
        if "copies" in wanted and present:
            hdrs["Ais-Mirror-Copies"] = "1"
            hdrs["Ais-Mirror-Paths"] = "[/mpath]"
        if "last-modified" in wanted and present:
            hdrs["Last-Modified"] = time.strftime("%a, %d %b %Y %H:%M:%S GMT",
                                                  time.gmtime(meta.mtime / 1e9))
        if "etag" in wanted and meta.cksum_type == "md5" and meta.cksum_value:
            hdrs["ETag"] = f'"{meta.cksum_value}"'
        await self._send(writer, 200, hdrs, b"", head=True)
        return True

    async def _put(self, node: Node, req: Request, writer: asyncio.StreamWriter, bck: Bucket,
                   un: str) -> bool:
        tid = node.daemon_id
        want_type = req.headers.get("ais-checksum-type", "")
        want_value = req.headers.get("ais-checksum-value", "")
        if want_type == "none":
            want_type = ""
        if want_type and want_type not in CHECKSUMS:
            await self._drain(req)
            raise HTTPError(400, f"unsupported checksum type {want_type!r}")
        h = Hasher(bck.checksum)
        hc = Hasher(want_type) if want_type and want_type != bck.checksum else None
        tmp = self.root / tid / f".tmp-{secrets.token_hex(6)}"
        size = 0
        try:
            with open(tmp, "wb") as f:  # noqa: ASYNC230 (as for reads)
                async for piece in _body(req):
                    f.write(piece)
                    h.update(piece)
                    if hc is not None:
                        hc.update(piece)
                    size += len(piece)
            value = h.value()
            if want_type:
                got = (hc or h).value()
                if got != want_value:
                    name = un.split("/", 3)[3]
                    raise HTTPError(400, f"BAD DATA CHECKSUM: ({want_type}[{want_value}] != "
                                         f"{want_type}[{got}]) (context: "
                                         f"{cname(bck.provider, bck.name, name)})")
                with self._lock:
                    old = self._objs[tid].get(un)
                if old is not None and old.cksum_type == want_type and old.cksum_value == got:
                    tmp.unlink()  # Go: identical checksum → the PUT is a no-op
                    await self._send(writer, 200, self._obj_headers(old), b"")
                    return True
            meta = await asyncio.to_thread(self._commit_put, bck, un, tid, tmp, size, value)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        await self._send(writer, 200, self._obj_headers(meta), b"")
        return True

    # --- buckets -------------------------------------------------------------------------

    def _props(self, bck: Bucket) -> dict[str, Any]:
        return {
            "provider": bck.provider,
            "backend_bck": {"name": "", "provider": ""},
            "checksum": {"type": bck.checksum, "validate_cold_get": False,
                         "validate_warm_get": False, "validate_obj_move": False,
                         "enable_read_range": False},
            "versioning": {"enabled": True, "validate_warm_get": False,
                           "synchronize": False},
            "mirror": {"copies": 1, "burst_buffer": 512, "enabled": False},
            "ec": {"enabled": False},
            "access": "0", "created": bck.created, "bid": 1,
        }

    async def _bucket_req(self, node: Node, req: Request, writer: asyncio.StreamWriter,
                          route: str, truncate: bool) -> bool:
        provider = req.query.get("provider", "ais")
        name = req.path[1]
        msg = req.msg
        action = msg.get("action", "")
        if req.method == "POST" and action == "create-bck":
            with self._lock:
                if (provider, name) in self._buckets:
                    raise HTTPError(409, f"bucket {json.dumps(cname(provider, name))} "
                                         "already exists")
            self.create_bucket(name, provider)
            await self._send(writer, 200, {}, b"")
            return True
        bck = self._bucket(provider, name)
        if req.method == "HEAD":
            await self._send(writer, 200, {"Ais-Bucket-Props": json.dumps(self._props(bck))},
                             b"", head=True)
            return True
        if req.method == "GET" and action == "list":
            return await self._list(req, writer, bck, msg.get("value") or {}, truncate)
        if req.method == "DELETE" and action in ("", "destroy-bck", "evict-remote-bck"):
            with self._lock:
                if action != "evict-remote-bck":  # evict keeps the bucket and the remote store
                    del self._buckets[(provider, name)]
                prefix = uname(provider, name, "")
                for tid, objs in self._objs.items():
                    for un in [u for u in objs if u.startswith(prefix)]:
                        del objs[un]
                        with contextlib.suppress(FileNotFoundError):
                            self._fqn(tid, un).unlink()
            await self._send(writer, 200, {}, b"")
            return True
        if action in ("prefetch-listrange", "evict-listrange", "delete-listrange"):
            if action == "prefetch-listrange" and bck.provider == "ais":
                raise HTTPError(400, f"{cname(provider, name)}: prefetch requires a remote bucket")
            job = self._start_job(action, bck, msg.get("value") or {})
            await self._send(writer, 200, {"Content-Type": "text/plain"}, job.uuid.encode())
            return True
        raise HTTPError(400, f"invalid bucket request {req.method} action {action!r}")

    def _names(self, bck: Bucket) -> dict[str, tuple[ObjMeta, str]]:
        """name → (metadata, target holding it or "") for a bucket's objects, as listed."""
        prefix = uname(bck.provider, bck.name, "")
        out: dict[str, tuple[ObjMeta, str]] = {}
        with self._lock:
            if bck.provider != "ais":
                for un, rm in self._remote.items():
                    if un.startswith(prefix):
                        out[un[len(prefix):]] = (rm, "")
            for tid, objs in self._objs.items():
                for un, m in objs.items():
                    if un.startswith(prefix):
                        out[un[len(prefix):]] = (m, tid)
        return out

    async def _list(self, req: Request, writer: asyncio.StreamWriter, bck: Bucket,
                    lso: dict[str, Any], truncate: bool) -> bool:
        prefix = str(lso.get("prefix") or "")
        flags = int(lso.get("flags") or 0)
        props = {s.strip() for s in str(lso.get("props") or "").split(",") if s.strip()}
        token = str(lso.get("continuation_token") or "")
        after = max(token, str(lso.get("start_after") or ""))
        maxpage = _MAX_PAGE.get(bck.provider, 1000)
        pagesize = int(lso.get("pagesize") or 0)
        pagesize = maxpage if pagesize <= 0 else min(pagesize, maxpage)
        time_format = str(lso.get("time_format") or "")
        entries: dict[str, dict[str, Any]] = {}
        base = prefix[: prefix.rfind("/") + 1] if flags & LS_NO_RECURSION else ""
        for name, (meta, tid) in self._names(bck).items():
            if not name.startswith(prefix):
                continue
            cached = bool(tid)
            if flags & LS_CACHED and not cached:
                continue
            if flags & LS_NOT_CACHED and cached:
                continue
            if flags & LS_NO_RECURSION:
                rest = name[len(base):]
                if "/" in rest:
                    if not flags & LS_NO_DIRS:
                        d = base + rest[: rest.index("/") + 1]
                        entries[d] = {"n": d, "f": ENTRY_IS_DIR}
                    continue
            e: dict[str, Any] = {"n": name}
            if "size" in props or not props:
                e["s"] = meta.size
            if "checksum" in props and meta.cksum_value and cached:
                e["cs"] = meta.cksum_value
            if "atime" in props and meta.atime:
                e["a"] = _fmt_time(meta.atime, time_format)
            if "version" in props and meta.version:
                e["v"] = meta.version
            if "location" in props and cached:
                e["t"] = f"t[{tid}]:/mpath"
            if "copies" in props and cached:
                e["c"] = 1
            if cached:  # wi_lso.go: every in-cluster object is listed as cached
                e["f"] = ENTRY_IS_CACHED
            entries[name] = e
        names = sorted(n for n in entries if n > after)
        page = names[:pagesize]
        more = len(names) > pagesize
        items = [entries[n] for n in page]
        res_token = page[-1] if more and page else ""
        uuid = str(lso.get("uuid") or "") or secrets.token_hex(5)
        if "msgpack" in req.headers.get("accept", ""):
            for it in items:  # msgp omitempty: zero values are left out
                for k in ("s", "f"):
                    if not it.get(k):
                        it.pop(k, None)
            body = msgpack.packb({"UUID": uuid, "ContinuationToken": res_token,
                                  "Entries": items, "Flags": 0})
            ctype = "application/msgpack"
        else:
            jitems = []
            for it in items:
                j: dict[str, Any] = {"name": it["n"]}
                for k, jk in (("cs", "checksum"), ("a", "atime"), ("v", "version"),
                              ("t", "location"), ("c", "copies"), ("f", "flags")):
                    if it.get(k):
                        j[jk] = it[k]
                if it.get("s"):
                    j["size"] = str(it["s"])
                jitems.append(j)
            body = json.dumps({"uuid": uuid, "continuation_token": res_token,
                               "entries": jitems, "flags": 0}).encode()
            ctype = "application/json"
        await self._send(writer, 200, {"Content-Type": ctype}, body, truncate=truncate)
        return True

    # --- jobs ---------------------------------------------------------------------------

    def _select(self, bck: Bucket, value: dict[str, Any]) -> list[str]:
        names = self._names(bck)
        if value.get("objnames") is not None:
            return [str(n) for n in value["objnames"]]
        template = str(value.get("template") or "")
        expanded = _expand_template(template)
        if expanded is not None:
            return expanded
        return sorted(n for n in names if n.startswith(template))

    def _start_job(self, action: str, bck: Bucket, value: dict[str, Any]) -> Job:
        job = Job(secrets.token_hex(5), action, bck.provider, bck.name, time.time_ns())
        with self._lock:
            self._jobs[job.uuid] = job
        names = self._select(bck, value)
        def start() -> None:
            task = self._loop.create_task(self._run_job(job, bck, names))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        self._loop.call_soon_threadsafe(start)
        return job

    async def _run_job(self, job: Job, bck: Bucket, names: list[str]) -> None:
        try:
            for name in names:
                if self.job_delay:
                    await asyncio.sleep(self.job_delay)
                un = uname(bck.provider, bck.name, name)
                if job.kind == "prefetch-listrange":
                    if self._where(un) is None:
                        meta = await asyncio.to_thread(
                            self._cold_get, bck, un, self.owner(bck.name, name, bck.provider))
                        if meta is None:
                            continue
                        job.bytes += meta.size
                    job.objects += 1
                else:
                    tid = self._where(un)
                    with self._lock:
                        if tid is not None:
                            meta = self._objs[tid].pop(un)
                            job.objects += 1
                            job.bytes += meta.size
                            with contextlib.suppress(FileNotFoundError):
                                self._fqn(tid, un).unlink()
                        if (job.kind == "delete-listrange" and bck.provider != "ais"
                                and self._remote.pop(un, None) is not None):
                            self._remote_fqn(un).unlink(missing_ok=True)
        except Exception as e:  # a job that fails reports it, as xactions do
            job.err = str(e)
        finally:
            job.end = time.time_ns()

    async def _job_req(self, req: Request, writer: asyncio.StreamWriter, truncate: bool) -> bool:
        uuid = str(req.msg.get("ID") or "")
        what = req.query.get("what", "")
        with self._lock:
            job = self._jobs.get(uuid)
        if job is None:
            raise HTTPError(404, f"{self.proxy.name}: job {uuid!r} not found")
        if what == "status":
            await self._send_json(writer, {"uuid": job.uuid, "err": job.err,
                                           "end_time": job.end, "aborted": False},
                                  truncate=truncate)
            return True
        if what == "qryxstats":
            snap = {"id": job.uuid, "kind": job.kind,
                    "bck": {"name": job.bucket, "provider": job.provider},
                    "start-time": _rfc3339(job.start),
                    "end-time": _rfc3339(job.end) if job.end else "0001-01-01T00:00:00Z",
                    "stats": {"loc-objs": job.objects, "loc-bytes": job.bytes,
                              "out-objs": 0, "out-bytes": 0, "in-objs": job.objects,
                              "in-bytes": job.bytes},
                    "aborted": False, "is_idle": bool(job.end)}
            with self._lock:
                tids = list(self._targets)
            await self._send_json(writer, {tid: [snap] for tid in tids}, truncate=truncate)
            return True
        raise HTTPError(400, f"invalid what={what!r}")


def _fmt_time(ns: int, fmt: str) -> str:
    t = time.gmtime(ns / 1e9)
    if fmt in ("", "02 Jan 06 15:04 MST"):  # time.RFC822, Go's default for listings
        return time.strftime("%d %b %y %H:%M UTC", t)
    return _rfc3339(ns)


def _rfc3339(ns: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


_ACTION_ROUTES = {"prefetch-listrange": "prefetch", "evict-listrange": "evict",
                  "delete-listrange": "delete-objects", "create-bck": "create-bucket",
                  "destroy-bck": "destroy-bucket", "evict-remote-bck": "evict-bucket"}

_HEAD_PROPS = {"name", "size", "version", "checksum", "atime", "copies", "ec", "custom",
               "location", "chunked", "last-modified", "etag"}

_REASONS = {200: "OK", 206: "Partial Content", 307: "Temporary Redirect", 400: "Bad Request",
            404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
            413: "Payload Too Large", 416: "Requested Range Not Satisfiable",
            500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}
