"""A simulated Alluxio 3.x worker: the HTTP API of PROTOCOL.md section 1 over a local directory.

The under-storage is a local directory (``file://<ufs>``); the worker's page cache is a
directory of page files, ``<store>/<identity hex>/<file id>/<page index>``, shared by the
workers of one simulated cluster so that a load submitted to one worker fills the cache of
the worker that owns each file, as a real distributed load does. Two modes:

- ``oss``: pages are served only when cached (``/v1/load`` or a page write fills the cache);
  request bodies over 10 KiB get 413; every failure closes the connection without a reply.
- ``enterprise``: a page read with ``ufsFullPath`` reads through from the under-storage and
  caches the page; ``/v1/node`` names the owner of a path (``{"Host", "HttpServerPort"}``
  or, with ``node_shape="list"``, the older block-location list); failures are HTTP 500;
  file infos carry ``mContentHash`` (MD5 of the content, as an S3 ETag).

Fault switches (``POST /_sim/faults`` with a JSON object, or :meth:`SimWorker.set_faults`):
``delay`` (seconds before answering), ``stall`` (never answer), ``status`` (answer with
this HTTP status), ``drop`` (close without a reply), ``truncate`` (cut the body short),
``wrong_length`` (one byte too many), each limited to the routes in ``routes`` when given.
``GET /_sim/stats`` counts requests by route; ``GET /_sim/requests`` lists recent request
targets exactly as received. Listens on 127.0.0.1 only.

Run as a process: ``python -m tests.sim.worker --ufs DIR --store DIR [--etcd URL]``; it
prints ``listening <port> <identity hex>`` once it serves (and is registered).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import json
import os
import secrets
import threading
import time
import urllib.parse
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from alluxiofuse.backends.cluster.membership import (
    DEFAULT_CLUSTER,
    WorkerAddress,
    etcd_prefix,
    parse_worker_entity,
)
from alluxiofuse.backends.cluster.ring import HashRing, WorkerIdentity, path_id
from tests.support.etcdserver import b64, register

PAGE_SIZE = 1024 * 1024
BODY_LIMIT = 10 * 1024  # the OSS server's HttpObjectAggregator(1024 * 10)
_HEAD_LIMIT = 64 * 1024


class _Fail(Exception):
    """A request the worker fails (OSS: by closing the connection; Enterprise: 500)."""


@dataclass
class Faults:
    delay: float = 0.0
    stall: bool = False
    status: int = 0
    drop: bool = False
    truncate: bool = False
    wrong_length: bool = False
    routes: list[str] = field(default_factory=list)  # empty: every route

    def applies(self, route: str) -> bool:
        return not self.routes or route in self.routes


@dataclass
class _Job:
    state: str = "RUNNING"
    files: int = 0
    bytes: int = 0
    stop: bool = False
    error: str = ""


class SimWorker:
    """One simulated worker. ``members`` gives the cluster (identity → address), for
    distributing loads and answering ``/v1/node``."""

    def __init__(
        self, ufs: Path, store: Path, *, mode: str = "oss", identity: WorkerIdentity | None = None,
        members: Callable[[], dict[WorkerIdentity, WorkerAddress]] | None = None,
        vnodes: int = 5, page_size: int = PAGE_SIZE, node_shape: str = "object",
        load_delay: float = 0.0,
    ) -> None:
        if mode not in ("oss", "enterprise"):
            raise ValueError(f"mode {mode!r}")
        self.ufs = ufs.resolve()
        self.ufs_uri = f"file://{self.ufs}"
        self.store = store
        self.mode = mode
        self.identity = identity or WorkerIdentity(secrets.token_bytes(16), 1)
        self.members = members or (lambda: {self.identity: WorkerAddress("127.0.0.1", self.port)})
        self.vnodes = vnodes
        self.page_size = page_size
        self.node_shape = node_shape
        self.load_delay = load_delay  # seconds per file loaded, to watch a load in progress
        self.faults = Faults()
        self.stats: Counter[str] = Counter()
        self.requests: deque[str] = deque(maxlen=1000)
        self.port = 0
        self._jobs: dict[str, _Job] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}
        self._server: asyncio.base_events.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- running -------------------------------------------------------------------

    async def serve(self, port: int = 0, ready: Callable[[int], None] = lambda p: None) -> None:
        self._loop = asyncio.get_running_loop()
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        ready(self.port)
        async with self._server:
            await self._server.serve_forever()

    def start_in_thread(self) -> SimWorker:
        """Serve from a thread with its own event loop (for tests); returns self."""
        started = threading.Event()
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self._serve_until_closed(started)), daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("simulated worker did not start")
        return self

    async def _serve_until_closed(self, started: threading.Event) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self.serve(0, lambda port: started.set())

    def stop(self) -> None:
        """Stop serving (idempotent); open connections are cut."""
        if self._thread is None or not self._thread.is_alive():
            return
        server = self._server

        def shutdown() -> None:  # on the loop: it cannot close between the steps
            if server is not None:
                server.close()
            for task in asyncio.all_tasks():
                task.cancel()

        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)

    @property
    def address(self) -> WorkerAddress:
        return WorkerAddress("127.0.0.1", self.port)

    def set_faults(self, **faults: Any) -> None:
        self.faults = Faults(**faults)

    def entity(self) -> str:
        """This worker's etcd registration, as a real worker writes it."""
        ident = self.identity.identifier.hex()
        uuid = f"{ident[:8]}-{ident[8:12]}-{ident[12:16]}-{ident[16:20]}-{ident[20:]}"
        return json.dumps({
            "Identity": {"version": self.identity.version, "identifier": ident},
            "WorkerNetAddress": {"Host": "127.0.0.1", "ContainerHost": "", "RpcPort": 29999,
                                 "DataPort": 29997, "SecureRpcPort": 0, "NettyDataPort": 29997,
                                 "WebPort": 30000, "DomainSocketPath": "",
                                 "HttpServerPort": self.port},
            "State": "AUTHORIZED", "GenerationNumber": -1, "ServiceEntityName": f"worker-{uuid}",
        })

    # --- HTTP ------------------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _version = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip()
                           for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                length = int(headers.get("content-length", "0") or 0)
                if length > BODY_LIMIT and self.mode == "oss":
                    writer.write(b"HTTP/1.1 413 Request Entity Too Large\r\n"
                                 b"Content-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    return
                body = await reader.readexactly(length) if length else b""
                if not await self._answer(method, target, body, writer):
                    return
                if headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            return  # a client gone, or the worker stopping
        finally:
            writer.close()

    async def _answer(self, method: str, target: str, body: bytes,
                      writer: asyncio.StreamWriter) -> bool:
        """Answer one request; False when the connection must close."""
        self.requests.append(f"{method} {target}")
        path, _, query = target.partition("?")
        fields = path.split("/")
        route = fields[2] if len(fields) > 2 else ""
        if fields[1:2] == ["_sim"]:
            return await self._control(route, body, writer)
        self.stats[route] += 1
        faults = self.faults
        if faults.applies(route):
            if faults.stall:
                await asyncio.sleep(3600)
            if faults.delay:
                await asyncio.sleep(faults.delay)
            if faults.drop:
                return False
            if faults.status:
                self._send(writer, faults.status, b"simulated failure", "text/plain")
                await writer.drain()
                return True
        try:
            status, payload, ctype = await self._route(method, route, fields, _params(query), body)
        except (_Fail, OSError, ValueError, KeyError, IndexError) as e:
            if self.mode == "oss":
                return False  # as exceptionCaught: ctx.close(), no response
            status, payload, ctype = 500, str(e).encode(), "text/plain"
        if faults.applies(route) and faults.truncate and len(payload) > 1:
            writer.write(_head(status, len(payload), ctype) + payload[: len(payload) // 2])
            await writer.drain()
            return False
        if faults.applies(route) and faults.wrong_length:
            payload += b"X"
        self._send(writer, status, payload, ctype)
        await writer.drain()
        return True

    def _send(self, writer: asyncio.StreamWriter, status: int, payload: bytes, ctype: str) -> None:
        writer.write(_head(status, len(payload), ctype) + payload)

    async def _control(self, what: str, body: bytes, writer: asyncio.StreamWriter) -> bool:
        if what == "faults":
            self.set_faults(**json.loads(body or b"{}"))
            reply: Any = {"ok": True}
        elif what == "stats":
            reply = dict(self.stats)
        elif what == "requests":
            reply = list(self.requests)
        else:
            reply = {"error": f"unknown control {what!r}"}
        self._send(writer, 200, json.dumps(reply).encode(), "application/json")
        await writer.drain()
        return True

    async def _route(self, method: str, route: str, fields: list[str], params: dict[str, str],
                     body: bytes) -> tuple[int, bytes, str]:
        if route == "file" and len(fields) == 6 and fields[4] == "page":
            file_id, index = fields[3], int(fields[5])
            if method in ("POST", "PUT"):
                return self._write_page(file_id, index, body)
            return 200, await self._read_page(file_id, index, params), "text/plain"
        if route == "files":
            infos = [self._info(p) for p in sorted(self._local(params["path"]).iterdir())]
            return 200, json.dumps(infos).encode(), "application/json"
        if route == "info":
            return 200, json.dumps([self._info(self._local(params["path"]))]).encode(), \
                "application/json"
        if route == "load":
            return 200, json.dumps(self._load(params)).encode(), "text/plain"
        if route == "health":
            return 200, b"worker is active", "text/plain"
        if route == "node" and self.mode == "enterprise":
            # Sent raw and re-quoted, like ufsFullPath (not quote_plus, like path= elsewhere).
            node = self._node(urllib.parse.unquote(params["path"]))
            return 200, json.dumps(node).encode(), "application/json"
        raise _Fail(f"no route {route!r}")

    # --- pages -----------------------------------------------------------------------

    def _page_file(self, file_id: str, index: int, owner: WorkerIdentity | None = None) -> Path:
        if len(file_id) != 64 or any(c not in "0123456789abcdef" for c in file_id):
            raise _Fail(f"bad file id {file_id!r}")
        return self.store / (owner or self.identity).identifier.hex() / file_id / str(index)

    async def _read_page(self, file_id: str, index: int, params: dict[str, str]) -> bytes:
        offset = int(params.get("offset", "0"))
        if offset > self.page_size:
            raise _Fail("offset beyond the page")
        length = int(params.get("length", str(self.page_size - offset)))
        page = self._page_file(file_id, index)
        if not page.exists():
            ufs_full = params.get("ufsFullPath")
            if self.mode != "enterprise" or ufs_full is None:
                raise _Fail(f"page {index} of {file_id} is not cached")
            if path_id(ufs_full) != file_id:
                raise _Fail("ufsFullPath does not match the file id")
            data = self._ufs_page(self._local(ufs_full), index)
            if not data and index > 0:
                raise _Fail("page beyond the end of the file")
            _write_atomic(page, data)
        return _pread(page, offset, length)

    def _write_page(self, file_id: str, index: int, body: bytes) -> tuple[int, bytes, str]:
        if not body:
            reply = {"success": False, "message": "The HTTP request doesn't have body content"}
        else:
            _write_atomic(self._page_file(file_id, index), body)
            reply = {"success": True, "message": "Page written successfully"}
        return 200, json.dumps(reply).encode(), "application/json"

    def _ufs_page(self, local: Path, index: int) -> bytes:
        return _pread(local, index * self.page_size, self.page_size)

    # --- metadata --------------------------------------------------------------------

    def _local(self, path: str) -> Path:
        """A ``path=`` value (a URI under the root, or a path relative to it) as a file."""
        uri = path if "://" in path else f"{self.ufs_uri}/{path.lstrip('/')}"
        if not (uri == self.ufs_uri or uri.startswith(self.ufs_uri + "/")):
            raise _Fail(f"{path!r} is not under {self.ufs_uri}")
        local = Path(uri.removeprefix("file://"))
        if ".." in local.parts or not local.exists():
            raise _Fail(f"{path!r} does not exist")
        return local

    def _info(self, local: Path) -> dict[str, Any]:
        st = local.stat()
        is_dir = local.is_dir()
        rel = str(local.relative_to(self.ufs))
        info: dict[str, Any] = {
            "mType": "directory" if is_dir else "file", "mName": local.name,
            "mPath": "/" + ("" if rel == "." else rel), "mUfsPath": f"file://{local}",
            "mLastModificationTimeMs": st.st_mtime_ns // 1_000_000,
            "mLength": 0 if is_dir else st.st_size,
            "mHumanReadableFileSize": _human_size(0 if is_dir else st.st_size),
        }
        if self.mode == "enterprise" and not is_dir:
            info["mContentHash"] = self._md5(local, st)
        return info

    def _md5(self, local: Path, st: os.stat_result) -> str:
        key = (str(local), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = hashlib.md5(local.read_bytes(), usedforsecurity=False).hexdigest()
        return self._hashes[key]

    def _node(self, path: str) -> Any:
        owner = HashRing(self.members(), self.vnodes).owner(path)
        address = {"Host": owner.host, "HttpServerPort": owner.http_port}
        if self.node_shape == "list":
            return [{"mBlockInfo": {"mBlockInfo": {"mLocations": [{"mWorkerAddress": address}]}}}]
        return address

    # --- loads -----------------------------------------------------------------------

    def _load(self, params: dict[str, str]) -> dict[str, Any]:
        path, op = params["path"], params["opType"].lower()
        job = self._jobs.get(path)
        if op == "submit":
            if job is not None and job.state == "RUNNING":
                raise _Fail("a load of this path is running")  # as the OSS server's bug
            job = self._jobs[path] = _Job()
            threading.Thread(target=self._run_load, args=(path, job), daemon=True).start()
            return {"success": True, "jobId": secrets.token_hex(8), "path": path,
                    "message": "submitted"}
        if op == "stop":
            if job is None or job.state != "RUNNING":
                return {"success": False, "path": path, "message": "no running load"}
            job.stop = True
            return {"success": True, "path": path, "message": "stopped"}
        if op == "progress":
            if job is None:
                return {"jobState": "FAILED", "path": path,
                        "message": f"Load for path '{path}' cannot be found.",
                        "respProperties": {}}
            report = {"Job State": job.state, "Files Processed": str(job.files),
                      "Bytes Loaded": f"{job.bytes}B"}
            text = "".join(f"\t{k}: {v}\n" for k, v in report.items())
            return {"jobState": job.state, "path": path,
                    "message": f"Progress for loading path '{path}':\n{text}",
                    "respProperties": report}
        raise _Fail(f"opType {op!r}")

    def _run_load(self, path: str, job: _Job) -> None:
        try:
            ring = HashRing(self.members(), self.vnodes)
            root = self._local(path)
            files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
            for local in files:
                if job.stop:
                    job.state = "STOPPED"
                    return
                uri = f"file://{local}"
                owner = next(i for i, a in self.members().items() if a == ring.owner(uri))
                size = local.stat().st_size
                for index in range(max(1, -(-size // self.page_size))):
                    data = self._ufs_page(local, index)
                    _write_atomic(self._page_file(path_id(uri), index, owner), data)
                    job.bytes += len(data)
                job.files += 1
                time.sleep(self.load_delay)
            job.state = "SUCCEEDED"
        except Exception as e:  # reported through progress, as a real job's failure
            job.error = str(e)
            job.state = f"FAILED ({type(e).__name__}"


def _human_size(size: int) -> str:
    """As Alluxio's ``FormatUtils.getSizeFromBytes``: ``%dB`` up to 5 KiB, then ``%.2f``
    in the first unit that keeps the value at or under 5×1024."""
    if size <= 5 * 1024:
        return f"{size}B"
    value = float(size)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1024
        if value <= 5 * 1024:
            return f"{value:.2f}{unit}"
    return f"{value / 1024:.2f}PB"


def _head(status: int, length: int, ctype: str) -> bytes:
    reason = {200: "OK", 404: "Not Found", 413: "Request Entity Too Large", 429: "Too Many",
              500: "Internal Server Error", 503: "Service Unavailable"}.get(status, "Status")
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {length}\r\n\r\n").encode()


def _params(query: str) -> dict[str, str]:
    """The query as the OSS server splits it: on ``&``, then ``=`` (``kv[0]`` → ``kv[1]``);
    a piece without a value fails the request. Only ``path`` is (partly) decoded."""
    params = {}
    for piece in query.split("&") if query else ():
        kv = piece.split("=")
        if len(kv) < 2 or not kv[1]:
            raise _Fail(f"bad query piece {piece!r}")
        params[kv[0]] = kv[1]
    if "path" in params:
        params["path"] = (params["path"].replace("%2F", "/").replace("%3A", ":")
                          .replace("%3F", "?"))
    if "ufsFullPath" in params:  # sent re-quoted (a space as %20): an Enterprise worker decodes
        params["ufsFullPath"] = urllib.parse.unquote(params["ufsFullPath"])
    return params


def _pread(path: Path, offset: int, length: int) -> bytes:
    """Blocking, on the simulator's event loop: its files are local and small enough."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# --- etcd membership, as a real worker keeps it ---------------------------------------


def etcd_members(etcd: str, cluster: str) -> Callable[[], dict[WorkerIdentity, WorkerAddress]]:
    """The live workers registered in ``etcd`` (read on each call)."""
    prefix = etcd_prefix(cluster).encode()
    end = prefix[:-1] + bytes([prefix[-1] + 1])

    def members() -> dict[WorkerIdentity, WorkerAddress]:
        reply = httpx.post(f"{etcd}/v3/kv/range", timeout=5,
                           json={"key": b64(prefix), "range_end": b64(end)})
        reply.raise_for_status()
        return dict(parse_worker_entity(base64.b64decode(kv["value"]))
                    for kv in reply.json().get("kvs", []))
    return members


def register_in_etcd(etcd: str, cluster: str, worker: SimWorker, ttl: int) -> threading.Event:
    """Put the worker's registration under a lease and keep the lease alive from a
    thread, as a worker's heartbeat does; set the returned event to stop."""
    key = etcd_prefix(cluster) + "worker-" + worker.identity.identifier.hex()
    lease = register(etcd, key, worker.entity(), ttl)
    stop = threading.Event()

    def keepalive() -> None:
        while not stop.wait(max(0.5, ttl / 3)):
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{etcd}/v3/lease/keepalive", json={"ID": lease}, timeout=5)
    threading.Thread(target=keepalive, daemon=True).start()
    return stop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ufs", required=True, type=Path)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--mode", default="oss", choices=("oss", "enterprise"))
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--identity", help="hex identifier (default: random)")
    p.add_argument("--vnodes", type=int, default=5)
    p.add_argument("--etcd", help="etcd client URL: register there under a lease")
    p.add_argument("--cluster", default=DEFAULT_CLUSTER)
    p.add_argument("--lease-ttl", type=int, default=10)
    p.add_argument("--load-delay", type=float, default=0.0, help="seconds per file loaded")
    args = p.parse_args()
    identity = WorkerIdentity(bytes.fromhex(args.identity), 1) if args.identity else None
    members = etcd_members(args.etcd, args.cluster) if args.etcd else None
    worker = SimWorker(args.ufs, args.store, mode=args.mode, identity=identity, members=members,
                       vnodes=args.vnodes, load_delay=args.load_delay)

    def ready(port: int) -> None:
        if args.etcd:
            register_in_etcd(args.etcd, args.cluster, worker, args.lease_ttl)
        print(f"listening {port} {worker.identity.identifier.hex()}", flush=True)

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(worker.serve(args.port, lambda port: threading.Thread(
            target=ready, args=(port,), daemon=True).start()))


if __name__ == "__main__":
    main()
