"""WorkerClient against simulated Alluxio 3.x workers (tests/sim/worker.py), in-process.

Replies are parsed to statuses, pages come back byte-exact, the wire carries exactly what
PROTOCOL.md sections 1.1-1.6 say the official clients send, and every fault the simulator
can inject (or a canned server can answer) ends in the documented error, retried or not
as the method's idempotence says, and counted.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from functools import partial
from pathlib import Path

import pytest
import requests
import trio

from alluxiofuse.backends.cluster.client import (
    LoadProgress,
    WorkerClient,
    oss_expressible,
    raw_expressible,
    requote,
)
from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.cluster.ring import HashRing, WorkerIdentity, path_id
from alluxiofuse.errors import (
    BackendTimeout,
    BackendUnavailable,
    ConnectionDropped,
    NotFound,
    ProtocolError,
    ServerError,
)
from alluxiofuse.metrics import Metrics, new_registry
from alluxiofuse.model import Kind
from tests.sim.cluster import write_tree
from tests.sim.worker import SimWorker

PAGE = 64 * 1024
VNODES = 5
RETRIES = 2
MTIME_NS = 1_700_000_000_123_456_789  # on the wire as ms: 1_700_000_000_123

FILES = {
    "small.txt": b"hello worker\n",
    "empty": b"",
    "dir/three-pages.bin": os.urandom(3 * PAGE - 5),
    "dir/exact.bin": os.urandom(2 * PAGE),
    "dir/sub/inner.txt": b"inner\n",
}


# --- fixtures and helpers --------------------------------------------------------------


@pytest.fixture
def ufs(tmp_path: Path) -> Path:
    root = write_tree(tmp_path / "ufs", FILES)
    # The expected wire encodings below are spelled out by hand for such paths.
    assert re.fullmatch(r"[A-Za-z0-9_./-]+", str(root)), root
    return root


@pytest.fixture
def oss(ufs: Path, tmp_path: Path) -> Iterator[SimWorker]:
    sim = SimWorker(ufs, tmp_path / "store", mode="oss", page_size=PAGE).start_in_thread()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def enterprise(ufs: Path, tmp_path: Path) -> Iterator[SimWorker]:
    sim = SimWorker(ufs, tmp_path / "store", mode="enterprise", page_size=PAGE).start_in_thread()
    try:
        yield sim
    finally:
        sim.stop()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(new_registry())


@pytest.fixture
async def client(metrics: Metrics) -> AsyncIterator[WorkerClient]:
    c = WorkerClient(timeout=5.0, retries=RETRIES, metrics=metrics)
    try:
        yield c
    finally:
        await c.aclose()


def uri(ufs: Path, rel: str = "") -> str:
    return f"file://{ufs}/{rel}" if rel else f"file://{ufs}"


def plus_encoded(value: str) -> str:
    """``quote_plus`` spelled out for the characters our paths use (PROTOCOL.md 1.3)."""
    return (value.replace("%", "%25").replace(":", "%3A").replace("/", "%2F")
            .replace("?", "%3F").replace(" ", "+"))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def retries(metrics: Metrics, method: str) -> float:
    return sample(metrics, "alluxiofuse_worker_retries_total", method=method)


def bad(metrics: Metrics, kind: str) -> float:
    return sample(metrics, "alluxiofuse_worker_bad_replies_total", kind=kind)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


async def load(client: WorkerClient, worker: WorkerAddress, target: str) -> LoadProgress:
    """Submit a load and poll its progress until the job ends."""
    assert await client.load_submit(worker, target)
    return await finish(client, worker, target)


async def finish(client: WorkerClient, worker: WorkerAddress, target: str) -> LoadProgress:
    """Poll a load's progress until the job ends."""
    with trio.fail_after(20):
        while True:
            progress = await client.load_progress(worker, target)
            if progress.finished:
                return progress
            await trio.sleep(0.01)


def pages_of(data: bytes) -> list[bytes]:
    return [data[i:i + PAGE] for i in range(0, len(data), PAGE)] or [b""]


# --- metadata ---------------------------------------------------------------------------


async def test_info_and_files_are_parsed_to_statuses(
    oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    os.utime(ufs / "small.txt", ns=(MTIME_NS, MTIME_NS))
    os.utime(ufs / "empty", ns=(0, 0))  # 0 ms on the wire: the time is unknown

    small = await client.info(oss.address, uri(ufs, "small.txt"))
    assert small.status.name == "small.txt"
    assert small.status.kind is Kind.FILE
    assert small.status.size == len(FILES["small.txt"])
    assert small.status.mtime_ns == 1_700_000_000_123_000_000  # ms -> ns, no more precision
    assert small.ufs_path == uri(ufs, "small.txt")
    assert small.content_hash is None  # the OSS worker has no content hash

    directory = await client.info(oss.address, uri(ufs, "dir"))
    assert (directory.status.name, directory.status.kind, directory.status.size) == (
        "dir", Kind.DIRECTORY, 0)
    assert directory.status.mtime_ns == (ufs / "dir").stat().st_mtime_ns // 10**6 * 10**6
    assert (await client.info(oss.address, uri(ufs, "empty"))).status.mtime_ns is None

    listing = {e.status.name: e for e in await client.files(oss.address, uri(ufs, "dir"))}
    assert sorted(listing) == ["exact.bin", "sub", "three-pages.bin"]
    assert listing["exact.bin"].status.size == 2 * PAGE
    assert listing["three-pages.bin"].status.size == 3 * PAGE - 5
    assert listing["sub"].status.kind is Kind.DIRECTORY and listing["sub"].status.size == 0
    assert listing["exact.bin"].ufs_path == uri(ufs, "dir/exact.bin")
    root = {e.status.name: e.status for e in await client.files(oss.address, uri(ufs))}
    assert sorted(root) == ["dir", "empty", "small.txt"]
    assert root["small.txt"].mtime_ns == 1_700_000_000_123_000_000

    assert sample(metrics, "alluxio_http_server_result_total", method="info",
                  state="success") == 3
    assert sample(metrics, "alluxio_http_server_result_total", method="files",
                  state="success") == 2

    # The OSS worker fails a stat of a missing path by closing the connection.
    with pytest.raises(ConnectionDropped):
        await client.info(oss.address, uri(ufs, "missing"))


async def test_enterprise_infos_carry_the_content_hash(
    enterprise: SimWorker, client: WorkerClient, ufs: Path,
) -> None:
    info = await client.info(enterprise.address, uri(ufs, "dir/exact.bin"))
    assert info.content_hash == hashlib.md5(FILES["dir/exact.bin"]).hexdigest()
    assert info.status.size == 2 * PAGE


async def test_health(oss: SimWorker, client: WorkerClient) -> None:
    assert await client.health(oss.address) == "worker is active"
    assert list(oss.requests) == ["GET /v1/health"]


# --- pages ------------------------------------------------------------------------------


async def test_loaded_pages_read_whole_and_in_part(
    oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    rel = "dir/three-pages.bin"
    data, fid = FILES[rel], path_id(uri(ufs, rel))
    assert (await load(client, oss.address, uri(ufs, rel))).state == "SUCCEEDED"

    pages = [await client.read_page(oss.address, fid, i, expected=len(p))
             for i, p in enumerate(pages_of(data))]
    assert [len(p) for p in pages] == [PAGE, PAGE, PAGE - 5]
    assert b"".join(pages) == data
    assert await client.read_page(oss.address, fid, 1, expected=100, offset=10,
                                  length=100) == data[PAGE + 10:PAGE + 110]
    assert await client.read_page(oss.address, fid, 2, expected=5, offset=PAGE - 10,
                                  length=5) == data[3 * PAGE - 10:3 * PAGE - 5]
    assert await client.read_page(oss.address, fid, 0, expected=PAGE, offset=0,
                                  length=PAGE) == data[:PAGE]

    # PROTOCOL.md 1.3: a whole page has no query; a part has offset, then length.
    reads = [r for r in oss.requests if "/v1/file/" in r]
    assert reads == [
        f"GET /v1/file/{fid}/page/0", f"GET /v1/file/{fid}/page/1",
        f"GET /v1/file/{fid}/page/2", f"GET /v1/file/{fid}/page/1?offset=10&length=100",
        f"GET /v1/file/{fid}/page/2?offset={PAGE - 10}&length=5",
        f"GET /v1/file/{fid}/page/0?offset=0&length={PAGE}",
    ]

    # The last page is short: a reader who expected a whole one must not get it as data.
    with pytest.raises(ProtocolError, match="bytes where"):
        await client.read_page(oss.address, fid, 2, expected=PAGE)
    assert bad(metrics, "wrong_length") == 1


async def test_an_uncached_page_on_oss_is_a_dropped_connection(
    oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    with pytest.raises(ConnectionDropped):
        await client.read_page(oss.address, path_id(uri(ufs, "small.txt")), 0,
                               expected=len(FILES["small.txt"]))
    # ... and even with ufsFullPath: the OSS worker never reads through.
    with pytest.raises(ConnectionDropped):
        await client.read_page(oss.address, path_id(uri(ufs, "small.txt")), 0,
                               expected=len(FILES["small.txt"]),
                               ufs_full_path=uri(ufs, "small.txt"))
    assert oss.stats["file"] == 2  # not retried
    assert retries(metrics, "page") == 0


async def test_enterprise_reads_through_with_ufs_full_path_and_caches(
    enterprise: SimWorker, client: WorkerClient, ufs: Path,
) -> None:
    rel = "dir/three-pages.bin"
    full, data = uri(ufs, rel), FILES[rel]
    fid = path_id(full)
    with pytest.raises(ServerError):  # not cached, and no ufsFullPath to read it from
        await client.read_page(enterprise.address, fid, 0, expected=PAGE)

    pages = [await client.read_page(enterprise.address, fid, i, expected=len(p),
                                    ufs_full_path=full)
             for i, p in enumerate(pages_of(data))]
    assert b"".join(pages) == data
    assert await client.read_page(enterprise.address, fid, 1, expected=7, offset=5, length=7,
                                  ufs_full_path=full) == data[PAGE + 5:PAGE + 12]
    # Cached by the read-through: now served without ufsFullPath.
    assert await client.read_page(enterprise.address, fid, 2, expected=PAGE - 5) == data[2 * PAGE:]

    # PROTOCOL.md 1.4: ufsFullPath last, raw (only re-quoted), after offset and length.
    assert f"GET /v1/file/{fid}/page/0?ufsFullPath={full}" in enterprise.requests
    assert f"GET /v1/file/{fid}/page/1?offset=5&length=7&ufsFullPath={full}" in enterprise.requests


# --- /v1/node ---------------------------------------------------------------------------


@contextmanager
def enterprise_trio(ufs: Path, store: Path, shape: str = "object") -> Iterator[list[SimWorker]]:
    """Three Enterprise workers that know each other (for /v1/node)."""
    members: dict[WorkerIdentity, WorkerAddress] = {}
    sims = [SimWorker(ufs, store, mode="enterprise", members=lambda: members, vnodes=VNODES,
                      page_size=PAGE, node_shape=shape) for _ in range(3)]
    try:
        for sim in sims:
            sim.start_in_thread()
            members[sim.identity] = sim.address
        yield sims
    finally:
        for sim in sims:
            sim.stop()


def ring_of(sims: list[SimWorker]) -> HashRing[WorkerAddress]:
    return HashRing({s.identity: s.address for s in sims}, VNODES)


@pytest.mark.parametrize("shape", ["object", "list"])
async def test_node_names_the_owner_in_both_reply_shapes(
    shape: str, ufs: Path, tmp_path: Path, client: WorkerClient,
) -> None:
    with enterprise_trio(ufs, tmp_path / "store", shape) as sims:
        ring = ring_of(sims)
        keys = [uri(ufs, f"data/file-{i:02d}.bin") for i in range(12)]
        for key in keys:
            assert await client.node(sims[0].address, key) == ring.owner(key), key
        # PROTOCOL.md 1.4: the path goes raw, not quote_plus-encoded as for /v1/info.
        assert sims[0].requests[0] == f"GET /v1/node?path={keys[0]}"


async def test_node_paths_are_requoted_as_requests_does(
    ufs: Path, tmp_path: Path, client: WorkerClient,
) -> None:
    with enterprise_trio(ufs, tmp_path / "store") as sims:
        await client.node(sims[0].address, uri(ufs, "dir/with space.bin"))
        await client.node(sims[0].address, "s3://bucket/ünï/a+b?.txt")
        assert list(sims[0].requests) == [
            f"GET /v1/node?path={uri(ufs, 'dir/with%20space.bin')}",
            "GET /v1/node?path=s3://bucket/%C3%BCn%C3%AF/a+b?.txt",
        ]


async def test_node_owner_of_a_path_that_needs_requoting(
    ufs: Path, tmp_path: Path, client: WorkerClient,
) -> None:
    with enterprise_trio(ufs, tmp_path / "store") as sims:
        ring = ring_of(sims)
        # A name whose owner differs from the owner of its re-quoted spelling.
        key = next(k for k in (uri(ufs, f"dir/with space {i}.bin") for i in range(1000))
                   if ring.owner(k) != ring.owner(requote(k)))
        assert await client.node(sims[0].address, key) == ring.owner(key)


async def test_node_on_an_oss_worker_is_dropped(
    oss: SimWorker, client: WorkerClient, ufs: Path,
) -> None:
    with pytest.raises(ConnectionDropped):  # /v1/node is Enterprise-only
        await client.node(oss.address, uri(ufs, "small.txt"))


# --- loads ------------------------------------------------------------------------------


async def test_load_submit_progress_and_stop(
    oss: SimWorker, client: WorkerClient, ufs: Path,
) -> None:
    target = uri(ufs, "dir")
    job = await client.load_submit(oss.address, target)
    assert job
    progress = await finish(client, oss.address, target)
    assert progress.state == "SUCCEEDED"
    assert progress.properties["Job State"] == "SUCCEEDED"
    assert progress.properties["Files Processed"] == "3"
    assert progress.properties["Bytes Loaded"] == f"{3 * PAGE - 5 + 2 * PAGE + 6}B"
    assert progress.message.startswith(f"Progress for loading path '{target}':")
    # The pages are cached now: an OSS worker serves them.
    fid = path_id(uri(ufs, "dir/exact.bin"))
    assert await client.read_page(oss.address, fid, 1, expected=PAGE) == \
        FILES["dir/exact.bin"][PAGE:]
    assert await client.load_stop(oss.address, target) is False  # nothing running

    unknown = await client.load_progress(oss.address, uri(ufs, "small.txt"))
    assert unknown.state == "FAILED" and unknown.finished

    # PROTOCOL.md 1.3/1.4: path= is quote_plus-encoded; verbose on submit and progress.
    encoded = plus_encoded(target)
    assert encoded.startswith("file%3A%2F%2F%2F")
    loads = [r for r in oss.requests if r.startswith("GET /v1/load")]
    assert loads[0] == f"GET /v1/load?path={encoded}&opType=submit&verbose=true"
    assert set(loads[1:-2]) == {f"GET /v1/load?path={encoded}&opType=progress&verbose=true"}
    assert loads[-2] == f"GET /v1/load?path={encoded}&opType=stop"


async def test_a_running_load_can_be_stopped_and_a_second_submit_is_dropped(
    ufs: Path, tmp_path: Path, client: WorkerClient, metrics: Metrics,
) -> None:
    gate = threading.Event()  # holds the load job until the test lets it go
    identity = WorkerIdentity(os.urandom(16), 1)
    sim: SimWorker | None = None

    def members() -> dict[WorkerIdentity, WorkerAddress]:
        gate.wait(10)
        assert sim is not None
        return {identity: sim.address}

    sim = SimWorker(ufs, tmp_path / "store", identity=identity, members=members,
                           page_size=PAGE).start_in_thread()
    try:
        target = uri(ufs, "dir")
        await client.load_submit(sim.address, target)
        running = await client.load_progress(sim.address, target)
        assert (running.state, running.finished) == ("RUNNING", False)
        # The OSS server's bug: a submit while a job runs closes the connection. Not retried.
        with pytest.raises(ConnectionDropped):
            await client.load_submit(sim.address, target)
        assert sim.stats["load"] == 3
        assert await client.load_stop(sim.address, target) is True
        gate.set()
        progress = await finish(client, sim.address, target)
        assert progress.state == "STOPPED"
        assert retries(metrics, "load") == 0
    finally:
        gate.set()
        sim.stop()


# --- names ------------------------------------------------------------------------------

# name -> (oss_expressible, raw_expressible, requote of the name)
NAMES = {
    "plain-name_1.txt": (True, True, "plain-name_1.txt"),
    "q?.txt": (True, True, "q?.txt"),
    "a:b.txt": (True, True, "a:b.txt"),
    "a b.txt": (False, True, "a%20b.txt"),
    "a+b.txt": (False, True, "a+b.txt"),
    "100%.txt": (False, True, "100%25.txt"),
    "ünï.txt": (False, True, "%C3%BCn%C3%AF.txt"),
    "a&b.txt": (False, False, "a&b.txt"),
    "a=b.txt": (False, False, "a=b.txt"),
    "a#b.txt": (False, False, "a#b.txt"),
    # An escape already in a name would be decoded by the worker into another name.
    "a%20b.txt": (False, False, "a%20b.txt"),
}


@pytest.mark.parametrize("name", list(NAMES))
def test_expressibility_and_requoting_of_tricky_names(name: str) -> None:
    oss_ok, raw_ok, quoted = NAMES[name]
    full = f"s3://bucket/dir/{name}"
    assert oss_expressible(full) is oss_ok
    assert raw_expressible(full) is raw_ok
    assert requote(full) == f"s3://bucket/dir/{quoted}"


@pytest.mark.parametrize("name", [
    "a b.txt", "a+b.txt", "q?.txt", "100%.txt", "%zz", "a%4 b", "ünï/файл.txt", "😀.png",
    "a~b!$'()*,;@", 'a"b<c>|^`{}',
    "[x]",
    # Not "a%41b": requests decodes escapes of unreserved characters, but a name with an
    # escape is never sent raw (raw_expressible is False for it: see NAMES).
])
def test_requote_matches_what_requests_puts_on_the_wire(name: str) -> None:
    full = f"s3://bucket/{name}"
    prepared = requests.Request("GET", f"http://h:1/v1/node?path={full}").prepare().url
    assert prepared is not None
    assert requote(full) == prepared.split("?path=", 1)[1]


@pytest.mark.parametrize("name", [
    "q?.txt", "a:b.txt", "a b.txt", "a+b.txt", "100%.txt", "ünï.txt",
])
async def test_expressible_names_reach_the_right_file(
    name: str, ufs: Path, tmp_path: Path, client: WorkerClient,
) -> None:
    """What the predicates promise, held against the workers: an OSS-expressible name is
    found by /v1/info; a raw-expressible one is read through by ufsFullPath."""
    data = name.encode() * 3
    (ufs / name).write_bytes(data)
    if name == "a b.txt":
        (ufs / "a+b.txt").write_bytes(b"the decoy")  # what an OSS worker finds instead
    full = uri(ufs, name)
    oss = SimWorker(ufs, tmp_path / "oss", mode="oss", page_size=PAGE).start_in_thread()
    ent = SimWorker(ufs, tmp_path / "ent", mode="enterprise", page_size=PAGE).start_in_thread()
    try:
        if oss_expressible(full):
            info = await client.info(oss.address, full)
            assert (info.status.name, info.status.size) == (name, len(data))
            assert oss.requests[-1] == f"GET /v1/info?path={plus_encoded(full)}"
        elif name == "a b.txt":  # why it is not: the OSS worker keeps the "+" of quote_plus
            info = await client.info(oss.address, full)
            assert info.status.name == "a+b.txt"
        assert raw_expressible(full)
        assert await client.read_page(ent.address, path_id(full), 0, expected=len(data),
                                      ufs_full_path=full) == data
        assert ent.requests[-1].endswith(f"?ufsFullPath={requote(full)}")
    finally:
        oss.stop()
        ent.stop()


# --- faults -----------------------------------------------------------------------------


@asynccontextmanager
async def canned(body: bytes, status: int = 200) -> AsyncIterator[WorkerAddress]:
    """A worker on 127.0.0.1 that answers every request with ``body``."""

    async def handler(stream: trio.SocketStream) -> None:
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            request += chunk
        await stream.send_all(
            b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%s" % (status, len(body), body))
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield WorkerAddress("127.0.0.1", listeners[0].socket.getsockname()[1])
        nursery.cancel_scope.cancel()


FILE_INFO = b'{"mType": "file", "mName": "a", "mPath": "/a", "mUfsPath": "s3://b/a", ' \
    b'"mLastModificationTimeMs": 1, "mLength": 3}'
Call = Callable[[WorkerClient, WorkerAddress], Awaitable[object]]
CALLS: dict[str, Call] = {
    "info": lambda c, w: c.info(w, "s3://b/a"),
    "files": lambda c, w: c.files(w, "s3://b"),
    "node": lambda c, w: c.node(w, "s3://b/a"),
    "submit": lambda c, w: c.load_submit(w, "s3://b"),
    "progress": lambda c, w: c.load_progress(w, "s3://b"),
    "stop": lambda c, w: c.load_stop(w, "s3://b"),
}


@pytest.mark.parametrize(("call", "body"), [
    ("info", b"<html>not json"),
    ("info", b"{}"),
    ("info", b"[]"),
    ("info", b"[" + FILE_INFO + b", " + FILE_INFO + b"]"),
    ("info", b'[{"mType": "symlink", "mLength": 3}]'),
    ("info", b'[{"mType": "file", "mLength": -1}]'),
    ("info", b'[{"mType": "file", "mLength": true}]'),
    ("info", b'[{"mType": "file", "mLength": 3, "mLastModificationTimeMs": "1"}]'),
    ("files", b'{"mType": "file"}'),
    ("files", b"[" + FILE_INFO + b', {"mType": "file"}]'),
    ("node", b'{"Host": "h"}'),
    ("node", b'{"Host": "", "HttpServerPort": 28080}'),
    ("node", b'{"Host": "h", "HttpServerPort": true}'),
    ("node", b'{"Host": "h", "HttpServerPort": 70000}'),
    ("node", b'[{"mBlockInfo": {}}]'),
    ("submit", b'{"jobId": "1"}'),
    ("progress", b'{"message": "no state"}'),
    ("stop", b'{"success": "yes"}'),
])
async def test_replies_that_are_not_the_documented_json_are_protocol_errors(
    call: str, body: bytes, client: WorkerClient, metrics: Metrics,
) -> None:
    async with canned(body) as worker:
        with pytest.raises(ProtocolError):
            await CALLS[call](client, worker)
    assert bad(metrics, "bad_json") == 1


async def test_the_canned_worker_is_understood_when_the_reply_is_right(
    client: WorkerClient,
) -> None:
    """The other side of the test above: the same server, documented replies."""
    async with canned(b"[" + FILE_INFO + b"]") as worker:
        info = await client.info(worker, "s3://b/a")
    assert (info.status.name, info.status.size, info.status.mtime_ns) == ("a", 3, 1_000_000)
    async with canned(b'{"Host": "10.0.0.9", "HttpServerPort": 28081}') as worker:
        assert await client.node(worker, "s3://b/a") == WorkerAddress("10.0.0.9", 28081)
    async with canned(b'{"success": false, "message": "busy"}') as worker:
        with pytest.raises(BackendUnavailable, match="busy") as refused:
            await client.load_submit(worker, "s3://b")
    assert not isinstance(refused.value, ProtocolError)


async def test_a_page_of_the_wrong_length_is_rejected_and_counted(
    oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    await load(client, oss.address, uri(ufs, "dir/exact.bin"))
    oss.set_faults(wrong_length=True, routes=["file"])
    with pytest.raises(ProtocolError):
        await client.read_page(oss.address, path_id(uri(ufs, "dir/exact.bin")), 0,
                               expected=PAGE)
    assert bad(metrics, "wrong_length") == 1
    assert oss.stats["file"] == 1
    # Limited to the page route: metadata still answers.
    assert (await client.info(oss.address, uri(ufs, "small.txt"))).status.size == 13


@pytest.mark.parametrize("route", ["file", "info"])
async def test_a_body_cut_short_is_a_protocol_error(
    route: str, oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    await load(client, oss.address, uri(ufs, "dir/exact.bin"))
    oss.set_faults(truncate=True, routes=[route])
    with pytest.raises(ProtocolError) as cut:
        if route == "file":
            await client.read_page(oss.address, path_id(uri(ufs, "dir/exact.bin")), 0,
                                   expected=PAGE)
        else:
            await client.info(oss.address, uri(ufs, "small.txt"))
    assert "cut short" in str(cut.value)
    assert bad(metrics, "truncated") == 1
    assert oss.stats[route] == 1


async def test_a_dropped_connection_is_connection_dropped_and_not_retried(
    oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    oss.set_faults(drop=True)
    with pytest.raises(ConnectionDropped):
        await client.info(oss.address, uri(ufs, "small.txt"))
    with pytest.raises(ConnectionDropped):
        await client.health(oss.address)
    assert (oss.stats["info"], oss.stats["health"]) == (1, 1)
    assert retries(metrics, "info") == retries(metrics, "health") == 0


@pytest.mark.parametrize("status", [503, 429])
async def test_busy_statuses_are_retried_then_a_server_error(
    status: int, oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    oss.set_faults(status=status, routes=["info"])
    with pytest.raises(ServerError, match=f"HTTP {status}"):
        await client.info(oss.address, uri(ufs, "small.txt"))
    assert oss.stats["info"] == RETRIES + 1
    assert retries(metrics, "info") == RETRIES
    assert sample(metrics, "alluxio_http_server_result_total", method="info",
                  state="retryable") == RETRIES + 1
    # Once the worker recovers, the same client gets through.
    oss.set_faults()
    assert (await client.info(oss.address, uri(ufs, "small.txt"))).status.name == "small.txt"


@pytest.mark.parametrize(("status", "error"), [
    (500, ServerError), (404, NotFound), (400, ProtocolError)])
async def test_other_statuses_are_not_retried(
    status: int, error: type[Exception], oss: SimWorker, client: WorkerClient, ufs: Path,
    metrics: Metrics,
) -> None:
    oss.set_faults(status=status)
    with pytest.raises(error, match=f"HTTP {status}"):
        await client.info(oss.address, uri(ufs, "small.txt"))
    assert oss.stats["info"] == 1
    assert retries(metrics, "info") == 0
    assert bad(metrics, "bad_status") == (1 if status == 400 else 0)


@pytest.mark.parametrize("route", ["info", "file"])
async def test_a_stalled_worker_costs_one_deadline(
    route: str, oss: SimWorker, ufs: Path, metrics: Metrics,
) -> None:
    timeout = 0.5
    client = WorkerClient(timeout=timeout, retries=RETRIES, metrics=metrics)
    oss.set_faults(stall=True, routes=[route])
    started = time.monotonic()
    try:
        with pytest.raises(BackendTimeout):
            if route == "info":
                await client.info(oss.address, uri(ufs, "small.txt"))
            else:
                await client.read_page(oss.address, path_id(uri(ufs, "small.txt")), 0,
                                       expected=13)
    finally:
        await client.aclose()
    assert time.monotonic() - started < timeout * 3
    assert oss.stats[route] == 1  # a timeout is not retried
    assert retries(metrics, "info") == retries(metrics, "page") == 0


async def test_connection_refused_is_unavailable_after_retries(
    client: WorkerClient, metrics: Metrics,
) -> None:
    nobody = WorkerAddress("127.0.0.1", closed_port())
    with pytest.raises(BackendUnavailable, match="cannot connect") as refused:
        await client.info(nobody, "s3://b/a")
    assert not isinstance(refused.value, ServerError)
    assert retries(metrics, "info") == RETRIES
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await client.read_page(nobody, path_id("s3://b/a"), 0, expected=1)
    assert retries(metrics, "page") == RETRIES


async def test_load_submit_and_stop_are_never_retried(
    oss: SimWorker, client: WorkerClient, ufs: Path, metrics: Metrics,
) -> None:
    oss.set_faults(status=503, routes=["load"])
    target = uri(ufs, "dir")
    with pytest.raises(ServerError):
        await client.load_submit(oss.address, target)
    assert oss.stats["load"] == 1
    with pytest.raises(ServerError):
        await client.load_stop(oss.address, target)
    assert oss.stats["load"] == 2
    assert retries(metrics, "load") == 0
    # Progress is a read: it is retried.
    with pytest.raises(ServerError):
        await client.load_progress(oss.address, target)
    assert oss.stats["load"] == 2 + RETRIES + 1
    assert retries(metrics, "load") == RETRIES

    nobody = WorkerAddress("127.0.0.1", closed_port())
    with pytest.raises(BackendUnavailable):
        await client.load_submit(nobody, target)
    with pytest.raises(BackendUnavailable):
        await client.load_stop(nobody, target)
    assert retries(metrics, "load") == RETRIES  # unchanged
