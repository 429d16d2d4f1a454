"""The Alluxio 2.x proxy client and backend against the simulated proxy (tests/sim/proxy.py):
what goes on the wire, how each error comes back, retries, deadlines, streams and commits."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client import CollectorRegistry

from alluxiofuse.backends.proxy.backend import ProxyBackend, ProxySource, parse_source
from alluxiofuse.backends.proxy.client import ProxyClient, mode_json
from alluxiofuse.errors import (
    AlreadyExists,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ConnectionDropped,
    DirectoryNotEmpty,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ProtocolError,
    Refused,
    ServerError,
    StaleFile,
)
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import RENAME_NOREPLACE, Attrs, Kind
from tests.sim.proxy import SimProxy

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def ufs(tmp_path: Path) -> Path:
    root = tmp_path / "ufs"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f.bin").write_bytes(bytes(range(256)) * 1000)
    (root / "small").write_bytes(b"hello")
    return root


@pytest.fixture
def sim(ufs: Path) -> Iterator[SimProxy]:
    proxy = SimProxy(ufs, async_persist_delay=0.05).start_in_thread()
    try:
        yield proxy
    finally:
        proxy.stop()


def client_of(sim: SimProxy, *, timeout: float = 5, metrics: Metrics | None = None,
              ) -> ProxyClient:
    return ProxyClient("127.0.0.1", sim.port, timeout=timeout, metrics=metrics)


def backend_of(sim: SimProxy, root: str = "/", write_type: str = "THROUGH",
               fresh_for: float = 1.0) -> ProxyBackend:
    return ProxyBackend(client_of(sim), ProxySource("127.0.0.1", sim.port, root),
                        description="proxy", read_type="CACHE", write_type=write_type,
                        limiter=trio.CapacityLimiter(4), fresh_for=fresh_for)


def sent(sim: SimProxy, op: str) -> list[dict[str, object]]:
    return [r for r in sim.requests() if str(r.get("target", "")).endswith(op)
            or f"/{op}?" in str(r.get("target", ""))]


async def test_option_bodies_are_the_protobuf_json_and_paths_are_escaped(sim: SimProxy) -> None:
    client = client_of(sim)
    name = "/d/a b+c%#?&日"
    stream = await client.create_file(name, mode=0o640, write_type="MUST_CACHE")
    assert await client.write(stream, b"xyz", 3) == 3
    await client.close(stream)
    await client.set_attribute(name, pinned=True, ttl_ms=1000, ttl_action="FREE")
    await client.rename(name, "/d/x+y z")
    assert (await client.get_status("/d/x+y z")).status.size == 3
    [create] = sent(sim, "create-file")
    # The Alluxio path starts with "/": the double slash is what the official client sends.
    assert create["target"] == ("/api/v1/paths//d/a%20b%2Bc%25%23%3F%26%E6%97%A5/create-file")
    assert create["content_type"] == "application/json"
    assert json.loads(str(create["body"])) == {
        "recursive": False, "writeType": "MUST_CACHE",
        "mode": {"ownerBits": "READ_WRITE", "groupBits": "READ", "otherBits": "NONE"}}
    [setattr_] = sent(sim, "set-attribute")
    assert json.loads(str(setattr_["body"])) == {
        "pinned": True, "commonOptions": {"ttl": 1000, "ttlAction": "FREE"}}
    [rename] = sent(sim, "rename")
    assert str(rename["target"]).endswith("/rename?dst=/d/x%2By%20z")  # not "+": a space
    [write] = sent(sim, "write")
    assert write["content_type"] == "application/octet-stream"
    await client.aclose()


def test_mode_json_names_each_class_of_bits() -> None:
    assert mode_json(0o754) == {"ownerBits": "ALL", "groupBits": "READ_EXECUTE",
                                "otherBits": "READ"}
    assert mode_json(0o123) == {"ownerBits": "EXECUTE", "groupBits": "WRITE",
                                "otherBits": "WRITE_EXECUTE"}


@pytest.mark.parametrize(("code", "error"), [
    ("NOT_FOUND", NotFound), ("ALREADY_EXISTS", AlreadyExists),
    ("PERMISSION_DENIED", PermissionDenied), ("UNAUTHENTICATED", PermissionDenied),
    ("INVALID_ARGUMENT", InvalidArgument), ("FAILED_PRECONDITION", Refused),
    ("CANCELLED", ServerError), ("CANCELED", ServerError), ("INTERNAL", ServerError),
    ("SOMETHING_NEW", ServerError),
])
async def test_each_status_code_is_the_error_it_stands_for(
    sim: SimProxy, code: str, error: type[Exception],
) -> None:
    client = client_of(sim)
    sim.set_faults(error=code, routes=["get-status"])
    with pytest.raises(error) as raised:
        await client.get_status("/small")
    assert type(raised.value) is error
    assert code in str(raised.value)
    await client.aclose()


async def test_replies_that_cannot_be_right_are_protocol_errors(sim: SimProxy) -> None:
    registry = CollectorRegistry()
    client = client_of(sim, metrics=Metrics(registry))
    for status in (400, 404, 418):  # 400: the proxy's JSON mapping refused the body
        sim.set_faults(status=status, routes=["get-status"])
        with pytest.raises(ProtocolError, match=f"HTTP {status}"):
            await client.get_status("/small")
    sim.set_faults(status=500, routes=["list-status"])  # a 500 without the JSON error
    with pytest.raises(ProtocolError, match="without a status"):
        await client.list_status("/")
    sim.set_faults(drop=True, routes=["exists"])
    with pytest.raises(ConnectionDropped):
        await client.exists("/small")
    sim.set_faults(truncate=True, routes=["get-status"])
    with pytest.raises(ProtocolError, match="cut short"):
        await client.get_status("/small")
    assert registry.get_sample_value("alluxiofuse_worker_bad_replies_total",
                                     {"kind": "bad_status"}) == 3
    await client.aclose()


async def test_unavailable_is_retried_for_calls_that_change_nothing(sim: SimProxy) -> None:
    registry = CollectorRegistry()
    client = client_of(sim, metrics=Metrics(registry))
    sim.set_faults(error="UNAVAILABLE", routes=["get-status"], count=2)
    assert (await client.get_status("/small")).status.size == 5
    assert registry.get_sample_value("alluxiofuse_worker_retries_total",
                                     {"method": "get-status"}) == 2
    sim.set_faults(error="UNAVAILABLE", routes=["create-file"], count=1)
    with pytest.raises(ServerError, match="UNAVAILABLE"):  # not idempotent: said at once
        await client.create_file("/new")
    assert len(sent(sim, "create-file")) == 1
    sim.set_faults(error="UNAVAILABLE", routes=["get-status"])  # more than the retries
    with pytest.raises(ServerError):
        await client.get_status("/small")
    await client.aclose()


async def test_a_stalled_proxy_costs_one_deadline(sim: SimProxy) -> None:
    client = client_of(sim, timeout=0.5)
    sim.set_faults(stall=True, routes=["list-status"])
    started = trio.current_time()
    with pytest.raises(BackendTimeout):
        await client.list_status("/")
    assert trio.current_time() - started < 2
    sim.set_faults()
    assert [s.status.name for s in await client.list_status("/")] == ["d", "small"]
    await client.aclose()


async def test_a_proxy_that_is_not_there_is_unavailable() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        client = ProxyClient("127.0.0.1", port, timeout=2, retries=1)
        with pytest.raises(BackendUnavailable, match="cannot connect"):
            await client.get_status("/")
        await client.aclose()


async def test_statuses_and_listings(sim: SimProxy, ufs: Path) -> None:
    client = client_of(sim)
    root = await client.get_status("/")
    assert root.status.kind is Kind.DIRECTORY and root.path == "/"
    f = await client.get_status("/d/f.bin")
    assert (f.status.kind, f.status.size, f.persisted) == (Kind.FILE, 256_000, True)
    assert f.status.mtime_ns == int((ufs / "d" / "f.bin").stat().st_mtime * 1000) * 1_000_000
    assert f.status.etag == str(f.file_id) and f.status.mode == 0o644
    assert [s.status.name for s in await client.list_status("/d")] == ["f.bin"]
    assert await client.exists("/d/f.bin") and not await client.exists("/nope")
    info = await client.info()
    assert isinstance(info, dict) and "version" in info
    await client.aclose()


async def test_a_stream_reads_the_rest_and_a_truncated_one_is_dropped(sim: SimProxy) -> None:
    client = client_of(sim)
    data = bytes(range(256)) * 1000
    stream_id = await client.open_file("/d/f.bin", read_type="NO_CACHE")
    body = await client.read(stream_id)
    first = await body.read(1000)
    # Received into a buffer of its own, handed on without a copy, and not to be changed.
    assert isinstance(first, memoryview) and first.readonly and first == data[:1000]
    assert await body.skip(100_000) == 100_000
    assert await body.read(len(data)) == data[101_000:]  # fewer: the end of the file
    assert body.at_end and await body.read(1) == b""
    await body.aclose()
    await client.close(stream_id)
    assert json.loads(str(sent(sim, "open-file")[0]["body"])) == {"readType": "NO_CACHE"}
    sim.set_faults(truncate=True, routes=["read"])
    stream_id = await client.open_file("/d/f.bin")
    body = await client.read(stream_id)
    with pytest.raises(ConnectionDropped):
        await body.read(len(data))
    await body.aclose()
    await client.close(stream_id)
    sim.set_faults()
    with pytest.raises(ServerError, match="stream does not exist"):  # closed: gone
        await client.read(stream_id)
    await client.aclose()


async def test_open_stream_checks_the_version_it_reads(sim: SimProxy) -> None:
    fresh = backend_of(sim)
    status = await fresh.stat("small")
    stream = await fresh.open_stream("small", 2, status.version)
    assert await stream.read(10) == b"llo"
    await stream.aclose()
    assert len(sent(sim, "get-status")) == 1, "the status just asked for was the check"
    await fresh.aclose()
    backend = backend_of(sim, fresh_for=0)  # every stream checked
    # Made again at the same path: a new file id, so a new version, even with equal bytes.
    await backend.client.delete("/small")
    stream_id = await backend.client.create_file("/small", write_type="THROUGH")
    await backend.client.write(stream_id, b"hello", 5)
    await backend.client.close(stream_id)
    with pytest.raises(StaleFile):
        await backend.open_stream("small", 0, status.version)
    await backend.client.delete("/small")
    with pytest.raises(StaleFile, match="removed"):
        await backend.read("small", 0, 5, status.version)
    await trio.sleep(0.1)
    assert sim.stats()["streams_open"] == 0, "every stream opened was closed"
    await backend.aclose()


async def test_commit_replaces_whole_and_a_failed_one_leaves_the_old_file(
    sim: SimProxy, ufs: Path, tmp_path: Path,
) -> None:
    backend = backend_of(sim, root="/d")
    staged = tmp_path / "staged"
    staged.write_bytes(b"new content" * 100_000)
    done = await backend.commit("f.bin", str(staged), mode=0o600, size=1_100_000)
    assert done.status.size == 1_100_000 and done.status.mode == 0o600
    assert (ufs / "d" / "f.bin").read_bytes() == staged.read_bytes()
    sim.set_faults(drop=True, routes=["write"])
    with pytest.raises(ConnectionDropped):
        await backend.commit("f.bin", str(staged), size=1_100_000)
    sim.set_faults()
    assert (ufs / "d" / "f.bin").read_bytes() == staged.read_bytes(), "the old file stays"
    assert sorted(p.name for p in (ufs / "d").iterdir()) == ["f.bin"], "no temporary left"
    assert [s.name for s in await backend.list("")] == ["f.bin"]
    await backend.aclose()


async def test_directory_changes_and_renames(sim: SimProxy, ufs: Path) -> None:
    backend = backend_of(sim)
    made = await backend.mkdir("new", 0o750, None)
    assert made.kind is Kind.DIRECTORY and made.mode == 0o750 and (ufs / "new").is_dir()
    with pytest.raises(AlreadyExists):
        await backend.mkdir("new", 0o750, None)
    with pytest.raises(DirectoryNotEmpty):
        await backend.rmdir("d")
    await backend.rename("small", "d/f.bin", 0)  # replaces: Alluxio alone never does
    assert (ufs / "d" / "f.bin").read_bytes() == b"hello" and not (ufs / "small").exists()
    (ufs / "other").write_bytes(b"o")
    with pytest.raises(AlreadyExists):
        await backend.rename("other", "d/f.bin", RENAME_NOREPLACE)
    await backend.unlink("d/f.bin")
    await backend.rmdir("d")
    changed = await backend.setattr("other", Attrs(mode=0o604))
    assert changed.mode == 0o604 and (ufs / "other").stat().st_mode & 0o777 == 0o604
    with pytest.raises(InvalidArgument, match="not UTF-8"):
        await backend.stat("bad\udcff")
    await backend.aclose()


@pytest.mark.parametrize(("source", "where"), [
    ("alluxio-proxy://h", ProxySource("h", 39999, "/")),
    ("alluxio-proxy://h:1234/", ProxySource("h", 1234, "/")),
    ("alluxio-proxy://h/a//b/", ProxySource("h", 39999, "/a/b")),
    ("alluxio-proxy://[::1]:5/x%20y", ProxySource("::1", 5, "/x y")),
])
def test_proxy_sources(source: str, where: ProxySource) -> None:
    assert parse_source(source) == where
    assert where.path("") == where.root
    assert where.path("c") == ("/c" if where.root == "/" else f"{where.root}/c")


@pytest.mark.parametrize("source", [
    "alluxio-proxy://", "alluxio-proxy://h:99999/", "alluxio-proxy://u:p@h/",
    "alluxio-proxy://h/a?b", "alluxio-proxy://h/../x", "http://h/",
])
def test_bad_proxy_sources(source: str) -> None:
    with pytest.raises(ConfigError):
        parse_source(source)


async def test_whole_file_reads_give_their_connection_back(
    sim: SimProxy, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Directory read-ahead reads first pages of small files one stream each: a reply read
    to its end keeps its connection, so many files cost few connections."""
    connects = []
    open_tcp_stream = trio.open_tcp_stream

    async def counted(host: str, port: int) -> trio.SocketStream:
        connects.append((host, port))
        return await open_tcp_stream(host, port)

    monkeypatch.setattr(trio, "open_tcp_stream", counted)
    backend = backend_of(sim)
    status = await backend.stat("small")
    for _ in range(20):
        assert await backend.read("small", 0, 1 << 20, status.version) == b"hello"
    assert len(connects) <= 3, f"{len(connects)} connections for 20 reads"
    await backend.aclose()
