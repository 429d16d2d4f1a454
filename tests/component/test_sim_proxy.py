"""The Alluxio 2.x proxy simulator (tests/sim/proxy.py) held honest by the official client.

``alluxio==0.1.4`` (loaded as ``apy01``, tests/sim/apy01.py) is the Python client of the 2.x
proxy REST API. Whatever it sends must be understood, and whatever the simulator answers must
parse into its ``wire`` classes and map onto its exception classes, with the values the
under-storage directory implies. The rest (option-body validation, stream positions and expiry,
faults, names the client cannot carry) is checked with plain HTTP and the request log.
"""

from __future__ import annotations

import io
import json
import os
import socket
import stat
import time
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import requests

from tests.sim.apy01 import load_apy01
from tests.sim.cluster import write_tree
from tests.sim.proxy import GRPC_CODES, SimProxy, SimProxyProcess
from tests.support.needs import need

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20
AWKWARD = "a b+c%zz é&x=1.txt"  # space, +, % (not an escape), non-ASCII, & and =
FILES = {
    "empty": b"",
    "one": b"x",
    "dir/big.bin": os.urandom(3 * MiB + 17),
    "dir/sub/inner.txt": b"inner\n",
    f"dir/{AWKWARD}": b"awkward\n",
}
DIRS = ["dir", "dir/sub"]
REQUIRED_KEYS = {  # what apy01's wire.FileInfo.from_json reads (PROTOCOL.md 4.1)
    "blockIds", "blockSizeBytes", "cacheable", "completed", "creationTimeMs",
    "lastModificationTimeMs", "fileBlockInfos", "fileId", "folder", "owner", "group",
    "inMemoryPercentage", "length", "name", "path", "ufsPath", "pinned", "persisted",
    "persistenceState", "mode", "mountPoint", "ttl", "ttlAction"}
EXTRA_KEYS = {  # also present in 2.x (PROTOCOL.md 4.1)
    "inAlluxioPercentage", "lastAccessTimeMs", "replicationMax", "replicationMin", "mountId",
    "ufsFingerprint", "xattr", "pinnedMediumTypes", "acl", "defaultAcl", "fileInfo"}


@pytest.fixture(scope="module")
def apy01() -> ModuleType:
    return load_apy01()


@dataclass
class Env:
    sim: SimProxy
    ufs: Path
    a: ModuleType  # the apy01 package
    client: Any  # apy01.Client

    def mark(self) -> int:
        return len(self.sim.requests())

    def wire(self, since: int) -> list[dict[str, Any]]:
        return self.sim.requests()[since:]

    def url(self, path: str, op: str) -> str:
        """A ``paths`` URL with every byte of ``path`` but ``/`` percent-encoded."""
        return f"{self.sim.url}/api/v1/paths/{urllib.parse.quote(path, safe='/')}/{op}"

    def raw(self, op: str, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
        if body is not None:
            kwargs["content"] = json.dumps(body) if not isinstance(body, bytes) else body
            kwargs.setdefault("headers", {"Content-Type": "application/json"})
        return httpx.post(self.url(path, op), timeout=20, **kwargs)

    def stream(self, stream_id: int, op: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.sim.url}/api/v1/streams/{stream_id}/{op}", timeout=20,
                          **kwargs)

    def status(self, path: str) -> dict[str, Any]:
        reply = self.raw("get-status", path)
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def write_file(self, path: str, data: bytes, write_type: str = "CACHE_THROUGH") -> None:
        opt = self.a.option.CreateFile(write_type=self.a.wire.WriteType(write_type))
        with self.client.open(path, "w", opt) as writer:
            assert writer.write(data) == len(data)


@contextmanager
def started(ufs: Path, apy: ModuleType, **kwargs: Any) -> Iterator[Env]:
    sim = SimProxy(ufs, **kwargs).start_in_thread()
    client = apy.Client("127.0.0.1", sim.port, timeout=20)
    try:
        yield Env(sim, ufs, apy, client)
    finally:
        client.session.close()
        sim.stop()


@pytest.fixture
def env(tmp_path: Path, apy01: ModuleType) -> Iterator[Env]:
    with started(write_tree(tmp_path / "ufs", FILES), apy01) as e:
        yield e


def wait_for(check: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def mtime_ms(local: Path) -> int:
    return local.stat().st_mtime_ns // 1_000_000


# --- metadata, parsed by the client ------------------------------------------------------


def test_get_status_of_files_and_dirs_matches_the_ufs(env: Env) -> None:
    for rel in [*FILES, *DIRS]:
        local = env.ufs / rel
        info = env.client.get_status(f"/{rel}")
        is_dir = local.is_dir()
        assert info.path == f"/{rel}" and info.name == rel.rsplit("/", 1)[-1]
        assert info.folder is is_dir
        # A directory's length is its number of children (InodeDirectory in Alluxio 2.x).
        assert info.length == (len(os.listdir(local)) if is_dir else len(FILES[rel]))
        assert info.ufs_path == f"file://{local}"
        assert info.mode == stat.S_IMODE(local.stat().st_mode)
        assert info.last_modification_time_ms == mtime_ms(local)
        assert (info.persisted, info.persistence_state.name) == (True, "PERSISTED")
        assert info.completed is True and info.pinned is False and info.mount_point is False
        assert info.in_memory_percentage == (100 if rel in ("empty",) else 0)
        assert info.cacheable is not is_dir
        if not is_dir:
            blocks = -(-len(FILES[rel]) // info.block_size_bytes)
            assert len(info.block_ids) == len(info.file_block_infos) == blocks
            assert [b.block_info.block_id for b in info.file_block_infos] == info.block_ids
            assert sum(b.block_info.length for b in info.file_block_infos) == len(FILES[rel])
        assert info.file_id == env.client.get_status(f"/{rel}").file_id  # stable
    root = env.client.get_status("/")
    assert (root.folder, root.mount_point, root.path, root.name) == (True, True, "/", "")

    # PROTOCOL.md 4.1: the client's double slash; no options, so no body and no content type.
    mark = env.mark()
    env.client.get_status("/dir/big.bin")
    [sent] = env.wire(mark)
    assert (sent["method"], sent["target"]) == ("POST", "/api/v1/paths//dir/big.bin/get-status")
    assert sent["content_type"] is None and sent["body"] == ""


def test_status_json_has_every_key_with_its_type(env: Env) -> None:
    for rel in ("dir/big.bin", "dir"):
        info = env.status(f"/{rel}")
        assert set(info) >= REQUIRED_KEYS | EXTRA_KEYS, rel
        for key in ("mode", "length", "fileId", "blockSizeBytes", "ttl", "creationTimeMs",
                    "lastModificationTimeMs", "inAlluxioPercentage", "replicationMax"):
            assert type(info[key]) is int, (rel, key)
        for key in ("folder", "pinned", "persisted", "completed", "cacheable", "mountPoint"):
            assert type(info[key]) is bool, (rel, key)
        assert info["ttlAction"] == "DELETE" and info["ttl"] == -1
        assert info["fileInfo"]["path"] == f"/{rel}"
    # The wire FileInfo behind the getter shape: blocks with block ids in the file's container.
    info = env.status("/dir/big.bin")
    assert info["blockIds"] == [b["blockInfo"]["blockId"] for b in info["fileBlockInfos"]]
    assert all(b >> 24 == info["fileId"] >> 24 for b in info["blockIds"])


def test_list_status_lists_children_and_recursively(env: Env) -> None:
    for rel in ["", *DIRS]:
        infos = env.client.list_status(f"/{rel}")
        assert [i.name for i in infos] == sorted(os.listdir(env.ufs / rel)), rel
        for info in infos:
            assert info.path == f"/{rel}/{info.name}".replace("//", "/")
            assert info.length == ((env.ufs / rel / info.name).stat().st_size
                                   if not info.folder else len(os.listdir(env.ufs / rel /
                                                                          info.name)))
    assert env.client.ls("/dir") == sorted(os.listdir(env.ufs / "dir"))
    # On a file: the file itself.
    [info] = env.client.list_status("/dir/sub/inner.txt")
    assert info.path == "/dir/sub/inner.txt"
    everything = {i.path for i in env.client.list_status(
        "/", env.a.option.ListStatus(recursive=True))}
    assert everything == {f"/{rel}" for rel in [*FILES, *DIRS]}
    with pytest.raises(env.a.exceptions.NotFoundError):
        env.client.list_status("/missing")


def test_exists(env: Env) -> None:
    assert env.client.exists("/dir/big.bin") is True
    assert env.client.exists("/dir") is True
    assert env.client.exists("/dir/missing") is False
    assert env.client.exists("/one/below-a-file") is False
    dotted = httpx.post(f"{env.sim.url}/api/v1/paths//dir/%2E%2E/one/exists", timeout=10)
    assert dotted.json() == {"statusCode": "INVALID_ARGUMENT",
                             "message": "Path /dir/../one is invalid"}


# --- directories -------------------------------------------------------------------------


def test_create_directory_with_options(env: Env) -> None:
    a = env.a
    mode = a.wire.Mode(a.wire.BITS_ALL, a.wire.BITS_READ, a.wire.BITS_READ)
    mark = env.mark()
    env.client.create_directory("/made/deep/er", a.option.CreateDirectory(
        recursive=True, mode=mode, write_type=a.wire.WRITE_TYPE_CACHE_THROUGH))
    [sent] = env.wire(mark)
    assert sent["content_type"] == "application/json"
    assert json.loads(sent["body"]) == {"mode": {"ownerBits": "ALL", "groupBits": "READ",
                                                 "otherBits": "READ"},
                                        "recursive": True, "writeType": "CACHE_THROUGH"}
    local = env.ufs / "made/deep/er"
    assert local.is_dir() and stat.S_IMODE(local.stat().st_mode) == 0o744
    info = env.client.get_status("/made/deep/er")
    assert (info.folder, info.persisted, info.mode) == (True, True, 0o744)

    # MUST_CACHE: in Alluxio only, listed with the real entries.
    env.client.create_directory("/dir/cached", a.option.CreateDirectory(
        write_type=a.wire.WRITE_TYPE_MUST_CACHE))
    assert not (env.ufs / "dir/cached").exists()
    info = env.client.get_status("/dir/cached")
    assert (info.folder, info.persisted, info.persistence_state.name, info.mode) == (
        True, False, "NOT_PERSISTED", 0o755)
    assert "cached" in env.client.ls("/dir")
    # The default write type (ASYNC_THROUGH) makes a real directory at once.
    env.client.create_directory("/plain")
    assert (env.ufs / "plain").is_dir()

    with pytest.raises(a.exceptions.AlreadyExistsError):
        env.client.create_directory("/dir")
    env.client.create_directory("/dir", a.option.CreateDirectory(allow_exists=True))
    with pytest.raises(a.exceptions.AlreadyExistsError):  # a file is no directory
        env.client.create_directory("/one", a.option.CreateDirectory(allow_exists=True))
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.create_directory("/nope/child")
    assert not (env.ufs / "nope").exists()
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.create_directory("/one/child")


def test_a_file_written_under_a_cached_directory_persists_its_parents(env: Env) -> None:
    env.client.create_directory("/mc/sub", env.a.option.CreateDirectory(
        recursive=True, write_type=env.a.wire.WRITE_TYPE_MUST_CACHE))
    assert not (env.ufs / "mc").exists()
    env.write_file("/mc/sub/f", b"through", "THROUGH")
    assert (env.ufs / "mc/sub/f").read_bytes() == b"through"
    assert env.client.get_status("/mc").persisted is True


# --- writes ------------------------------------------------------------------------------


@pytest.mark.parametrize("write_type", ["THROUGH", "CACHE_THROUGH", "MUST_CACHE",
                                        "ASYNC_THROUGH"])
def test_write_types_land_in_the_ufs_when_they_should(
    tmp_path: Path, apy01: ModuleType, write_type: str,
) -> None:
    ufs = write_tree(tmp_path / "ufs", {"dir/x": b"x"})
    delay = 1.0  # ample: the state right after close is checked before it runs out
    with started(ufs, apy01, async_persist_delay=delay) as env:
        data = os.urandom(2 * MiB + 3)
        path, local = "/dir/new", ufs / "dir/new"
        opt = apy01.option.CreateFile(write_type=apy01.wire.WriteType(write_type))
        file_id = env.client.create_file(path, opt)
        writer = env.client.write(file_id)
        assert writer.write(data[:MiB]) == MiB
        assert writer.write(data[MiB:]) == len(data) - MiB  # appends
        assert not local.exists()
        env.client.close(file_id)
        info = env.client.get_status(path)
        in_ufs_at_close = local.exists()
        assert (info.completed, info.length) == (True, len(data))
        cached = write_type != "THROUGH"
        assert info.in_memory_percentage == (100 if cached else 0)
        with env.client.open(path, "r") as reader:
            assert reader.read() == data
        assert in_ufs_at_close is (write_type in ("THROUGH", "CACHE_THROUGH"))
        if write_type in ("THROUGH", "CACHE_THROUGH"):
            assert local.read_bytes() == data
            assert (info.persisted, info.persistence_state.name) == (True, "PERSISTED")
            assert info.last_modification_time_ms == mtime_ms(local)
        elif write_type == "MUST_CACHE":
            assert (info.persisted, info.persistence_state.name) == (False, "NOT_PERSISTED")
            time.sleep(delay + 0.5)
            assert not local.exists()
            assert env.client.get_status(path).persistence_state.name == "NOT_PERSISTED"
        else:
            assert (info.persisted, info.persistence_state.name) == (False, "TO_BE_PERSISTED")
            wait_for(lambda: local.exists())
            assert local.read_bytes() == data
            later = env.client.get_status(path)
            assert (later.persisted, later.persistence_state.name) == (True, "PERSISTED")
            assert (later.file_id, later.in_memory_percentage) == (info.file_id, 100)
        assert sorted(os.listdir(ufs / "dir")) == (["x"] if write_type == "MUST_CACHE"
                                                   else ["new", "x"])  # no temporary files
        assert env.sim.stats()["streams_open"] == 0


def test_the_default_write_type_is_async_through(env: Env) -> None:
    mark = env.mark()
    with env.client.open("/dir/default", "w") as writer:
        writer.write(b"default")
    assert env.wire(mark)[0]["content_type"] is None  # no options: no body at all
    assert env.client.get_status("/dir/default").persistence_state.name in (
        "TO_BE_PERSISTED", "PERSISTED")
    wait_for(lambda: (env.ufs / "dir/default").exists())
    assert (env.ufs / "dir/default").read_bytes() == b"default"


def test_writes_of_bytes_a_file_object_and_a_generator(env: Env, tmp_path: Path) -> None:
    """requests sends bytes and a file object with Content-Length, a generator chunked;
    the simulator appends all of them."""
    source = tmp_path / "source"
    source.write_bytes(os.urandom(MiB + 1))
    file_id = env.client.create_file("/dir/mixed", env.a.option.CreateFile(
        write_type=env.a.wire.WRITE_TYPE_THROUGH))
    writer = env.client.write(file_id)
    mark = env.mark()
    assert writer.write(b"head") == 4
    with open(source, "rb") as f:
        assert writer.write(f) == MiB + 1
    assert writer.write(io.BytesIO(b"bytesio")) == 7
    assert writer.write(iter([b"gen", b"erat", b"ed"])) == 9
    sent = env.wire(mark)
    assert [(s["content_length"], s["transfer_encoding"]) for s in sent] == [
        ("4", None), (str(MiB + 1), None), ("7", None), (None, "chunked")]
    assert all(s["content_type"] is None for s in sent)  # PROTOCOL.md 4.3
    assert sent[-1]["body"] == "generated"
    env.client.close(file_id)
    assert (env.ufs / "dir/mixed").read_bytes() == \
        b"head" + source.read_bytes() + b"bytesio" + b"generated"
    assert env.sim.stats()["bytes_written"] == 4 + MiB + 1 + 7 + 9


def test_a_file_being_written_is_listed_incomplete_and_cannot_be_opened(env: Env) -> None:
    a = env.a
    file_id = env.client.create_file("/dir/writing", a.option.CreateFile(
        write_type=a.wire.WRITE_TYPE_CACHE_THROUGH))
    env.client.write(file_id).write(b"partial")
    info = env.client.get_status("/dir/writing")
    assert (info.completed, info.length, info.persisted, info.block_ids) == (False, 0, False, [])
    assert "writing" in env.client.ls("/dir")
    with pytest.raises(a.exceptions.FailedPreconditionError, match="incomplete"):
        env.client.open_file("/dir/writing")
    with pytest.raises(a.exceptions.AlreadyExistsError):
        env.client.create_file("/dir/writing")
    env.client.close(file_id)
    assert env.client.get_status("/dir/writing").completed is True
    assert (env.ufs / "dir/writing").read_bytes() == b"partial"


def test_create_file_needs_its_parent_unless_recursive(env: Env) -> None:
    a = env.a
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.create_file("/new/dir/f")
    with pytest.raises(a.exceptions.AlreadyExistsError):
        env.client.create_file("/dir/big.bin")
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.create_file("/one/f")
    opt = a.option.CreateFile(recursive=True, write_type=a.wire.WRITE_TYPE_THROUGH,
                              block_size_bytes=MiB)
    with env.client.open("/new/dir/f", "w", opt) as writer:
        writer.write(b"z" * (3 * MiB + 1))
    assert (env.ufs / "new/dir/f").stat().st_size == 3 * MiB + 1
    info = env.client.get_status("/new/dir/f")
    assert (info.block_size_bytes, len(info.block_ids)) == (MiB, 4)


# --- reads -------------------------------------------------------------------------------


def test_reads_whole_and_in_pieces(env: Env) -> None:
    data = FILES["dir/big.bin"]
    with env.client.open("/dir/big.bin", "r") as reader:
        assert reader.read() == data
    with env.client.open("/dir/big.bin", "r") as reader:
        pieces = [reader.read(n) for n in (1, 10, 100_000, MiB)]
    assert b"".join(pieces) == data[:1 + 10 + 100_000 + MiB]
    for rel in ("empty", "one", f"dir/{AWKWARD}"):
        with env.client.open(f"/{rel}", "r") as reader:
            assert reader.read() == FILES[rel], rel
    wait_for(lambda: env.sim.stats()["streams_open"] == 0)

    # The stream read answers the rest from the stream's position: once more, nothing.
    file_id = env.client.open_file("/dir/sub/inner.txt")
    mark = env.mark()
    assert env.client.read(file_id).read() == b"inner\n"
    assert env.client.read(file_id).read() == b""
    env.client.close(file_id)
    assert [s["target"] for s in env.wire(mark)] == [
        f"/api/v1/streams/{file_id}/read", f"/api/v1/streams/{file_id}/read",
        f"/api/v1/streams/{file_id}/close"]


def test_a_read_cut_short_leaves_the_position_after_what_was_sent(
    tmp_path: Path, apy01: ModuleType,
) -> None:
    data = os.urandom(64 * MiB)
    with started(write_tree(tmp_path / "ufs", {"huge": data}), apy01) as env:
        file_id = env.client.open_file("/huge")
        with socket.create_connection(("127.0.0.1", env.sim.port), timeout=10) as sock:
            sock.sendall(f"POST /api/v1/streams/{file_id}/read HTTP/1.1\r\nHost: x\r\n"
                         "Content-Length: 0\r\n\r\n".encode())
            got = b""
            while len(got) < MiB:
                got += sock.recv(65536)
        wait_for(lambda: env.sim.stats()["read"] == 1 and env.sim.stats()["bytes_read"] > 0)
        time.sleep(0.2)  # let the simulator notice the client is gone
        sent = env.sim.stats()["bytes_read"]
        assert sent < len(data) // 2  # it stopped: no reading on into the void
        rest = env.stream(file_id, "read").content
        env.client.close(file_id)
        assert 0 < len(rest) < len(data) - MiB + 1
        assert data.endswith(rest)  # from the position on, whole
        # The position went as far as the socket took: at least what the client got (less
        # the response head and the chunk headers).
        assert len(data) - len(rest) >= len(got) - 200


def test_read_types_and_in_alluxio_percentage_and_free(
    tmp_path: Path, apy01: ModuleType,
) -> None:
    files = {"a": os.urandom(MiB), "b": os.urandom(MiB), "c": os.urandom(MiB),
             "huge": os.urandom(48 * MiB)}
    with started(write_tree(tmp_path / "ufs", files), apy01) as env:
        a = env.a

        def percent(rel: str) -> int:
            return int(env.client.get_status(f"/{rel}").in_memory_percentage)

        def read(rel: str, read_type: Any, n: int | None = None) -> bytes:
            with env.client.open(f"/{rel}", "r", a.option.OpenFile(read_type=read_type)) as r:
                return bytes(r.read(n))

        assert read("a", a.wire.READ_TYPE_NO_CACHE) == files["a"]
        assert percent("a") == 0
        assert read("b", a.wire.READ_TYPE_CACHE) == files["b"]
        assert percent("b") == 100
        assert env.status("/b")["inAlluxioPercentage"] == 100
        assert env.status("/b")["fileBlockInfos"][0]["blockInfo"]["locations"]  # on a worker
        assert read("c", a.wire.READ_TYPE_CACHE_PROMOTE) == files["c"]
        assert percent("c") == 100
        # A read that stops early caches nothing (the sim caches whole files only).
        assert read("huge", a.wire.READ_TYPE_CACHE, 1000) == files["huge"][:1000]
        assert percent("huge") == 0

        env.client.free("/b")
        assert percent("b") == 0
        with pytest.raises(a.exceptions.FailedPreconditionError, match="directory"):
            env.client.free("/")
        env.client.free("/", a.option.Free(recursive=True))
        assert (percent("b"), percent("c")) == (0, 0)
        assert all(env.status(f"/{r}")["fileBlockInfos"][0]["blockInfo"]["locations"] == []
                   for r in files)


def test_free_refuses_what_is_not_persisted_and_pinned_files(env: Env) -> None:
    a = env.a
    env.write_file("/dir/cached-only", b"mc", "MUST_CACHE")
    assert env.client.get_status("/dir/cached-only").in_memory_percentage == 100
    with pytest.raises(a.exceptions.FailedPreconditionError, match="not persisted"):
        env.client.free("/dir/cached-only")
    with pytest.raises(a.exceptions.FailedPreconditionError):  # a recursive free checks all
        env.client.free("/dir", a.option.Free(recursive=True))
    assert env.client.get_status("/dir/cached-only").in_memory_percentage == 100

    with env.client.open("/one", "r") as reader:
        reader.read()
    env.client.set_attribute("/one", a.option.SetAttribute(pinned=True))
    with pytest.raises(a.exceptions.FailedPreconditionError, match="pinned"):
        env.client.free("/one")
    assert env.raw("free", "/one", {"forced": True}).status_code == 200
    info = env.client.get_status("/one")
    assert (info.in_memory_percentage, info.pinned) == (0, False)
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.free("/missing")


def test_download_file(env: Env) -> None:
    reply = httpx.get(env.url("/dir/big.bin", "download-file"), timeout=20)
    assert reply.status_code == 200 and reply.content == FILES["dir/big.bin"]
    assert reply.headers["content-type"] == "application/octet-stream"
    assert reply.headers["content-disposition"] == "attachment; filename=big.bin"
    assert env.client.get_status("/dir/big.bin").in_memory_percentage == 100
    assert env.sim.stats()["streams_opened"] == 0  # no stream id for it
    assert httpx.post(env.url("/dir/big.bin", "download-file"), timeout=10).status_code == 405
    missing = httpx.get(env.url("/missing", "download-file"), timeout=10)
    assert (missing.status_code, missing.json()["statusCode"]) == (500, "NOT_FOUND")


# --- namespace changes -------------------------------------------------------------------


def test_delete(env: Env) -> None:
    a = env.a
    env.client.delete("/one")
    assert not (env.ufs / "one").exists()
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.get_status("/one")
    with pytest.raises(a.exceptions.FailedPreconditionError, match="not empty"):
        env.client.delete("/dir")
    assert (env.ufs / "dir/big.bin").exists()
    env.write_file("/dir/sub/cached", b"c", "MUST_CACHE")
    env.client.delete("/dir", a.option.Delete(recursive=True))
    assert not (env.ufs / "dir").exists()
    assert env.client.exists("/dir/sub/cached") is False
    env.client.create_directory("/empty-dir")
    env.client.delete("/empty-dir")
    assert not (env.ufs / "empty-dir").exists()
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.delete("/missing")
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.delete("/", a.option.Delete(recursive=True))
    assert sorted(os.listdir(env.ufs)) == ["empty"]


def test_a_path_recreated_gets_a_new_file_id(env: Env) -> None:
    first = env.client.get_status("/one").file_id
    env.client.delete("/one")
    env.write_file("/one", b"again")
    assert env.client.get_status("/one").file_id != first
    (env.ufs / "dir/sub/inner.txt").unlink()  # behind the proxy's back
    before = env.client.get_status("/dir/big.bin").file_id
    (env.ufs / "dir/sub/inner.txt").write_bytes(b"new")
    assert env.client.get_status("/dir/sub/inner.txt").length == 3
    assert env.client.get_status("/dir/big.bin").file_id == before


def test_rename(env: Env) -> None:
    a = env.a
    file_id = env.client.get_status("/dir/big.bin").file_id
    mark = env.mark()
    env.client.rename("/dir/big.bin", "/dir/sub/moved file+1.bin")
    # requests quote_plus-encodes the query: a space as "+", "+" as "%2B" (PROTOCOL.md 4.1).
    assert env.wire(mark)[0]["target"] == (
        "/api/v1/paths//dir/big.bin/rename?dst=%2Fdir%2Fsub%2Fmoved+file%2B1.bin")
    assert (env.ufs / "dir/sub/moved file+1.bin").read_bytes() == FILES["dir/big.bin"]
    assert not (env.ufs / "dir/big.bin").exists()
    assert env.client.get_status("/dir/sub/moved file+1.bin").file_id == file_id

    # A directory with a file only in Alluxio in it: both move.
    env.write_file("/dir/sub/cached", b"c", "MUST_CACHE")
    env.client.rename("/dir/sub", "/moved")
    assert sorted(env.client.ls("/moved")) == ["cached", "inner.txt", "moved file+1.bin"]
    assert (env.ufs / "moved/inner.txt").exists() and not (env.ufs / "moved/cached").exists()
    with env.client.open("/moved/cached", "r") as reader:
        assert reader.read() == b"c"

    with pytest.raises(a.exceptions.AlreadyExistsError):
        env.client.rename("/one", "/empty")
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.rename("/missing", "/x")
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.rename("/one", "/no/such/parent")
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.rename("/dir", "/dir/inside")
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.rename("/one", "relative")
    assert (env.ufs / "one").exists() and (env.ufs / "empty").exists()
    missing_dst = env.raw("rename", "/one")
    assert missing_dst.json() == {"statusCode": "INTERNAL",
                                  "message": "required 'dst' parameter is missing"}


def test_set_attribute(env: Env) -> None:
    a = env.a
    w = a.wire
    env.client.set_attribute("/dir/big.bin", a.option.SetAttribute(
        pinned=True, mode=w.Mode(w.BITS_READ_WRITE, w.BITS_READ, w.BITS_NONE),
        owner="alice", group="staff"))
    info = env.client.get_status("/dir/big.bin")
    assert (info.pinned, info.mode, info.owner, info.group) == (True, 0o640, "alice", "staff")
    assert stat.S_IMODE((env.ufs / "dir/big.bin").stat().st_mode) == 0o640  # chmod for real

    env.client.set_attribute("/dir", a.option.SetAttribute(
        recursive=True, pinned=True, mode=w.Mode(w.BITS_ALL, w.BITS_READ_EXECUTE, w.BITS_NONE)))
    for info in [env.client.get_status("/dir"),
                 *env.client.list_status("/dir", a.option.ListStatus(recursive=True))]:
        assert (info.pinned, info.mode) == (True, 0o750), info.path
    assert stat.S_IMODE((env.ufs / "dir/sub/inner.txt").stat().st_mode) == 0o750
    env.client.set_attribute("/dir", a.option.SetAttribute(pinned=False))
    assert env.client.get_status("/dir").pinned is False
    assert env.client.get_status("/dir/sub").pinned is True  # not recursive this time

    # TTL, replication and persisted, with the 2.x field names.
    reply = env.raw("set-attribute", "/one", {
        "commonOptions": {"ttl": 60000, "ttlAction": "FREE"}, "replicationMax": 3,
        "replicationMin": 1})
    assert reply.status_code == 200 and reply.content == b""
    info = env.client.get_status("/one")
    assert (info.ttl, info.ttl_action.name) == (60000, "FREE")
    assert (env.status("/one")["replicationMin"], env.status("/one")["replicationMax"]) == (1, 3)
    assert env.raw("set-attribute", "/one", {"replicationMax": 0}).json()["statusCode"] == \
        "INVALID_ARGUMENT"
    env.write_file("/cached", b"persist me", "MUST_CACHE")
    assert env.raw("set-attribute", "/cached", {"persisted": True}).status_code == 200
    assert (env.ufs / "cached").read_bytes() == b"persist me"
    assert env.client.get_status("/cached").persistence_state.name == "PERSISTED"
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.set_attribute("/missing", a.option.SetAttribute(pinned=True))


def test_mount_and_unmount(env: Env, tmp_path: Path) -> None:
    a = env.a
    other = write_tree(tmp_path / "other", {"o.txt": b"other", "od/deep": b"deep"})
    env.client.mount("/mnt", f"file://{other}")
    assert "mnt" in env.client.ls("/")
    info = env.client.get_status("/mnt")
    assert (info.folder, info.mount_point, info.ufs_path) == (True, True, f"file://{other}")
    assert env.status("/mnt")["mountId"] != env.status("/")["mountId"]
    assert env.client.ls("/mnt") == ["o.txt", "od"]  # the client sorts by name
    assert env.client.get_status("/mnt/od/deep").ufs_path == f"file://{other}/od/deep"
    with env.client.open("/mnt/o.txt", "r") as reader:
        assert reader.read() == b"other"
    env.write_file("/mnt/od/new", b"written", "THROUGH")
    assert (other / "od/new").read_bytes() == b"written"
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.rename("/mnt/o.txt", "/o.txt")  # across mount points
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.delete("/mnt", a.option.Delete(recursive=True))

    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.mount("/dir", f"file://{other}")  # the path exists
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.mount("/mnt2", f"file://{tmp_path}/missing")
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.mount("/mnt2", f"file://{env.ufs}/dir")  # inside the root's UFS
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.unmount("/dir")
    with pytest.raises(a.exceptions.InvalidArgumentError):
        env.client.unmount("/")
    with pytest.raises(a.exceptions.NotFoundError):
        env.client.unmount("/missing")

    env.client.unmount("/mnt")
    assert env.client.exists("/mnt") is False and "mnt" not in env.client.ls("/")
    assert sorted(p.name for p in other.iterdir()) == ["o.txt", "od"]  # left alone
    mark = env.mark()
    env.client.mount("/mnt", f"file://{other}", a.option.Mount(read_only=True))
    assert env.wire(mark)[0]["target"] == \
        f"/api/v1/paths//mnt/mount?src=file%3A%2F%2F{urllib.parse.quote(str(other), safe='')}"


# --- names -------------------------------------------------------------------------------


NAMES = ["sp ace", "pl+us", "per%cent", "per%41cent", "hash#tag", "que?ry", "amp&er=sand",
         "ünïcödé 名前", "tab\tchar", "a'quote\"", "semi;colon"]


def test_any_name_round_trips_over_http(env: Env) -> None:
    """Every character but ``/`` and NUL, percent-encoded as a careful client would."""
    for name in NAMES:
        path = f"/dir/{name}"
        stream_id = env.raw("create-file", path, {"writeType": "THROUGH"}).json()
        assert env.stream(stream_id, "write", content=name.encode()).json() == len(name.encode())
        assert env.stream(stream_id, "close").status_code == 200
        assert (env.ufs / "dir" / name).read_bytes() == name.encode(), name
        assert env.status(path)["name"] == name and env.status(path)["path"] == path
        renamed = httpx.post(env.url(path, "rename"), params={"dst": f"{path}.2"}, timeout=10)
        assert renamed.status_code == 200, (name, renamed.text)
        assert (env.ufs / "dir" / f"{name}.2").exists()
    listed = {i.name for i in env.client.list_status("/dir")}
    assert {f"{n}.2" for n in NAMES} <= listed
    assert env.raw("get-status", "/dir/nul\0byte").json()["statusCode"] == "INVALID_ARGUMENT"


def test_the_client_carries_spaces_plus_percent_and_unicode_but_not_hash_or_query(
    env: Env,
) -> None:
    """apy01 puts the path into the URL as it is; requests then quotes what must be quoted
    (a lone ``%`` included), which is enough for most names, not for ``#`` and ``?``."""
    for name in ("sp ace", "pl+us", "100%", "50%zz", "ünïcödé", "amp&er=sand"):
        path = f"/dir/{name}"
        with env.client.open(path, "w") as writer:
            writer.write(name.encode())
        with env.client.open(path, "r") as reader:
            assert reader.read() == name.encode(), name
        assert env.client.get_status(path).name == name
        env.client.rename(path, f"{path}-2")
        assert env.client.exists(f"{path}-2") is True, name
    assert env.client.get_status(f"/dir/{AWKWARD}").length == len(FILES[f"dir/{AWKWARD}"])

    # "#" starts a fragment: the request goes to ".../dir/hash" and Jersey finds no such op.
    mark = env.mark()
    with pytest.raises(requests.exceptions.JSONDecodeError):
        env.client.get_status("/dir/hash#tag")
    assert env.wire(mark)[0]["target"] == "/api/v1/paths//dir/hash"
    mark = env.mark()
    with pytest.raises(requests.exceptions.JSONDecodeError):
        env.client.get_status("/dir/que?ry")
    assert env.wire(mark)[0]["target"] == "/api/v1/paths//dir/que?ry/get-status"


def test_a_single_slash_and_invalid_paths(env: Env) -> None:
    reply = httpx.post(f"{env.sim.url}/api/v1/paths/dir/big.bin/get-status", timeout=10)
    assert reply.status_code == 200 and reply.json()["path"] == "/dir/big.bin"
    root = httpx.post(f"{env.sim.url}/api/v1/paths///get-status", timeout=10)
    assert root.json()["path"] == "/"
    for bad in ("/dir/%2E%2E/one", "/dir/%2E/one"):
        reply = httpx.post(f"{env.sim.url}/api/v1/paths/{bad}/get-status", timeout=10)
        assert (reply.status_code, reply.json()["statusCode"]) == (500, "INVALID_ARGUMENT")


# --- the wire: bodies, statuses, content types ------------------------------------------


def test_unknown_option_fields_are_rejected_with_400(env: Env) -> None:
    """PROTOCOL.md 4.1 and 5.9: apy01's options carry 1.x-era fields (``ttl`` at the top of
    CreateFile and SetAttribute, ``locationPolicyClass``) that the 2.x protobuf messages do
    not have; Jackson refuses them with a 400 and a text body, which the client cannot
    parse."""
    a = env.a
    with pytest.raises(requests.exceptions.JSONDecodeError):
        env.client.set_attribute("/one", a.option.SetAttribute(
            pinned=True, ttl=1000, ttl_action=a.wire.TTL_ACTION_FREE))
    assert env.client.get_status("/one").pinned is False  # refused before it ran
    with pytest.raises(requests.exceptions.JSONDecodeError):
        env.client.create_file("/dir/f", a.option.CreateFile(ttl=1000))
    assert env.client.exists("/dir/f") is False
    reply = env.raw("set-attribute", "/one", {"pinned": True, "ttl": 1000})
    assert reply.status_code == 400
    assert reply.headers["content-type"].startswith("text/plain")
    assert 'Unrecognized field "ttl" (class alluxio.grpc.SetAttributePOptions)' in reply.text


@pytest.mark.parametrize(("op", "body", "says"), [
    ("create-directory", {"writeType": "SOMETIMES"}, "not one of the values accepted"),
    ("create-directory", {"recursive": "yes"}, "`boolean`"),
    ("create-directory", {"mode": {"ownerBits": "ALL", "groupBits": "READ"}}, "otherBits"),
    ("create-directory", {"mode": {"ownerBits": "ALL", "groupBits": "READ",
                                   "otherBits": "rwx"}}, "not one of the values"),
    ("create-directory", {"commonOptions": {"ttlAction": "EXPLODE"}}, "TtlAction"),
    ("create-directory", {"commonOptions": {"ttl": 5, "mode": 7}}, 'Unrecognized field "mode"'),
    ("create-directory", {"locationPolicyClass": "x"}, "CreateDirectoryPOptions"),
    ("create-directory", [], "CreateDirectoryPOptions"),
    ("create-directory", b"{not json", "Unexpected character"),
    ("open-file", {"readType": "CACHE_ALL"}, "ReadPType"),
    ("set-attribute", {"replicationMax": 1 << 40}, "out of range"),
    ("set-attribute", {"owner": 5}, "String"),
    ("get-status", {"loadMetadataType": "SOMETIMES"}, "LoadMetadataPType"),
])
def test_bodies_are_checked_as_jackson_would(env: Env, op: str, body: Any, says: str) -> None:
    reply = env.raw(op, "/new-dir" if op == "create-directory" else "/one", body)
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    assert says in reply.text
    assert not (env.ufs / "new-dir").exists()


def test_bodies_that_mean_the_defaults(env: Env) -> None:
    for i, body in enumerate([b"", b"null", b"{}", {"recursive": None}]):
        reply = env.raw("create-directory", f"/d{i}", body)
        assert (reply.status_code, reply.content) == (200, b""), body
        assert (env.ufs / f"d{i}").is_dir()
    # Every field of every message is accepted (the lists of PROTOCOL.md 4.1).
    full = env.raw("create-file", "/full", {
        "blockSizeBytes": MiB, "recursive": False, "mode": {
            "ownerBits": "READ_WRITE", "groupBits": "READ", "otherBits": "NONE"},
        "replicationMax": 2, "replicationMin": 1, "replicationDurable": 1, "writeTier": 0,
        "writeType": "MUST_CACHE", "commonOptions": {
            "syncIntervalMs": -1, "ttl": 1000, "ttlAction": "DELETE",
            "operationId": {"mostSignificantBits": 1, "leastSignificantBits": 2}},
        "persistenceWaitTime": 0, "xattr": {"k": "dg=="}, "xattrPropStrat": "NEW_PATHS"})
    assert full.status_code == 200
    env.stream(full.json(), "close")
    assert env.status("/full")["mode"] == 0o640 and env.status("/full")["ttl"] == 1000


def test_void_and_value_replies(env: Env) -> None:
    deleted = env.raw("delete", "/one")
    assert (deleted.status_code, deleted.content) == (200, b"")
    assert deleted.headers["content-length"] == "0" and "content-type" not in deleted.headers
    exists = env.raw("exists", "/empty")
    assert (exists.content, exists.headers["content-type"]) == (b"true", "application/json")
    stream_id = env.raw("create-file", "/new").json()
    assert type(stream_id) is int and stream_id >= 1
    assert env.stream(stream_id, "close").content == b""
    info = httpx.get(f"{env.sim.url}/api/v1/proxy/info", timeout=10).json()
    assert set(info) == {"configuration", "startTimeMs", "uptimeMs", "version"}
    assert info["version"] == "2.9.0-sim" and info["uptimeMs"] >= 0


def test_errors_are_500_with_status_code_json(env: Env) -> None:
    reply = env.raw("get-status", "/missing")
    assert reply.status_code == 500
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {"statusCode": "NOT_FOUND", "message": 'Path "/missing" does not exist.'}
    opened = env.raw("open-file", "/dir")
    assert opened.json()["statusCode"] == "UNKNOWN"  # OpenDirectoryException, as the Java proxy


def test_content_types_and_methods_as_jersey(env: Env) -> None:
    assert env.raw("exists", "/one", b"{}",
                   headers={"Content-Type": "text/plain"}).status_code == 415
    assert env.raw("exists", "/one", b"{}", headers={
        "Content-Type": "application/json; charset=utf-8"}).status_code == 200
    stream_id = env.raw("create-file", "/w").json()
    assert env.stream(stream_id, "write", content=b"x",
                      headers={"Content-Type": "application/json"}).status_code == 415
    assert env.stream(stream_id, "write", content=b"x", headers={
        "Content-Type": "application/octet-stream"}).json() == 1
    assert httpx.get(env.url("/one", "get-status"), timeout=10).status_code == 405
    assert env.raw("no-such-op", "/one").status_code == 404
    assert httpx.post(f"{env.sim.url}/api/v1/streams/abc/read", timeout=10).status_code == 404


# --- streams -----------------------------------------------------------------------------


def test_unknown_and_closed_streams(env: Env) -> None:
    a = env.a
    with pytest.raises(a.exceptions.InternalError, match="stream does not exist"):
        env.client.read(999).read()
    with pytest.raises(a.exceptions.InternalError, match="stream does not exist"):
        env.client.close(999)
    read_id = env.client.open_file("/one")
    write_id = env.client.create_file("/w")
    assert (read_id, write_id) == (1, 2)  # a counter from 1
    with pytest.raises(a.exceptions.InternalError):  # a read stream takes no writes
        env.client.write(read_id).write(b"x")
    with pytest.raises(a.exceptions.InternalError):  # nor a write stream reads
        env.client.read(write_id).read()
    env.client.close(read_id)
    with pytest.raises(a.exceptions.InternalError):
        env.client.close(read_id)
    env.client.close(write_id)
    stats = env.sim.stats()
    assert (stats["streams_opened"], stats["streams_closed"], stats["streams_open"]) == (2, 2, 0)


def test_streams_expire_and_an_expired_write_is_committed(
    tmp_path: Path, apy01: ModuleType,
) -> None:
    ufs = write_tree(tmp_path / "ufs", {"r": b"read me"})
    with started(ufs, apy01, stream_timeout=1.0) as env:
        a = env.a
        write_id = env.client.create_file("/w", a.option.CreateFile(
            write_type=a.wire.WRITE_TYPE_CACHE_THROUGH))
        env.client.write(write_id).write(b"never closed")
        read_id = env.client.open_file("/r")
        assert env.client.get_status("/w").completed is False
        wait_for(lambda: env.sim.stats()["streams_expired"] == 2)
        assert (ufs / "w").read_bytes() == b"never closed"
        assert env.client.get_status("/w").completed is True
        with pytest.raises(a.exceptions.InternalError, match="stream does not exist"):
            env.client.write(write_id).write(b"more")
        with pytest.raises(a.exceptions.InternalError, match="stream does not exist"):
            env.client.read(read_id).read()
        assert env.sim.stats()["streams_open"] == 0

        # A stream in use is not expired: each call resets its clock.
        read_id = env.client.open_file("/r")
        for _ in range(4):
            time.sleep(0.3)
            env.client.read(read_id).read()
        env.client.close(read_id)


def test_writes_across_devices_spool_and_copy(tmp_path: Path, apy01: ModuleType) -> None:
    """When the spool directory is on another file system the data is copied into the
    under-storage under a temporary name and renamed: never half a file under its name."""
    shm = Path("/dev/shm")
    need(shm.is_dir() and shm.stat().st_dev != tmp_path.stat().st_dev,
         "/dev/shm on a file system of its own")
    spool = shm / f"simproxy-test-{os.getpid()}"
    ufs = write_tree(tmp_path / "ufs", {"x": b"x"})
    try:
        with started(ufs, apy01, spool_dir=spool, async_persist_delay=0.1) as env:
            data = os.urandom(MiB)
            env.write_file("/through", data, "THROUGH")
            env.write_file("/async", data, "ASYNC_THROUGH")
            wait_for(lambda: (ufs / "async").exists())
            assert (ufs / "through").read_bytes() == data == (ufs / "async").read_bytes()
            assert sorted(os.listdir(ufs)) == ["async", "through", "x"]
            assert os.listdir(spool) == []
    finally:
        for leftover in spool.glob("*"):
            leftover.unlink()
        spool.rmdir()


# --- errors and faults -------------------------------------------------------------------


CLIENT_CLASS = {  # apy01.exceptions._STATUS_TO_ERROR, for the gRPC spelling of each code
    "UNKNOWN": "UnknownError", "INVALID_ARGUMENT": "InvalidArgumentError",
    "DEADLINE_EXCEEDED": "DeadlineExceededError", "NOT_FOUND": "NotFoundError",
    "ALREADY_EXISTS": "AlreadyExistsError", "PERMISSION_DENIED": "PermissionDeniedError",
    "RESOURCE_EXHAUSTED": "ResourceExhaustedError",
    "FAILED_PRECONDITION": "FailedPreconditionError", "ABORTED": "AbortedError",
    "OUT_OF_RANGE": "OutOfRangeError", "UNIMPLEMENTED": "UnimplementedError",
    "INTERNAL": "InternalError", "UNAVAILABLE": "UnavailableError",
    "DATA_LOSS": "DataLossError", "UNAUTHENTICATED": "UnauthenticatedError",
    "CANCELED": "CanceledError",  # the client's one-L spelling
    "CANCELLED": "AlluxioError",  # gRPC's spelling: not in the client's table (PROTOCOL 4.3)
}


@pytest.mark.parametrize("code", [*GRPC_CODES, "CANCELED"])
def test_each_status_code_maps_to_the_clients_exception(env: Env, code: str) -> None:
    env.sim.set_faults(error=code, routes=["get-status"])
    with pytest.raises(env.a.exceptions.AlluxioError) as caught:
        env.client.get_status("/one")
    assert type(caught.value).__name__ == CLIENT_CLASS[code]
    assert (caught.value.status, caught.value.message) == (code, "simulated failure")
    assert env.client.exists("/one") is True  # another route: untouched


def test_fault_drop(env: Env) -> None:
    env.sim.set_faults(drop=True, routes=["get-status"], count=1)
    with pytest.raises(env.a.exceptions.HTTPError):
        env.client.get_status("/one")
    assert env.client.get_status("/one").length == 1  # count=1: once only
    assert env.sim.faults.active() is False
    assert env.sim.stats()["get-status"] == 2


def test_fault_status(env: Env) -> None:
    env.sim.set_faults(status=503, routes=["exists"])
    reply = env.raw("exists", "/one")
    assert (reply.status_code, reply.text) == (503, "simulated failure")
    with pytest.raises(requests.exceptions.JSONDecodeError):  # the client wants JSON
        env.client.exists("/one")
    env.sim.set_faults()
    assert env.client.exists("/one") is True


def test_fault_truncate(env: Env) -> None:
    env.sim.set_faults(truncate=True, routes=["read"])
    with pytest.raises(env.a.exceptions.HTTPError), env.client.open("/dir/big.bin", "r") as r:
        r.read()
    with socket.create_connection(("127.0.0.1", env.sim.port), timeout=10) as sock:
        read_id = env.client.open_file("/dir/sub/inner.txt")
        sock.sendall(f"POST /api/v1/streams/{read_id}/read HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        got = b""
        while chunk := sock.recv(65536):
            got += chunk
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head
    assert body == b"6\r\ninn"  # half the chunk, then the connection closed
    env.sim.set_faults(truncate=True, routes=["get-status"])
    with pytest.raises(env.a.exceptions.HTTPError):
        env.client.get_status("/dir/big.bin")


def test_fault_delay_and_stall_with_a_client_timeout(env: Env) -> None:
    impatient = env.a.Client("127.0.0.1", env.sim.port, timeout=0.3)
    try:
        env.sim.set_faults(delay=1.0, routes=["get-status"])
        with pytest.raises(env.a.exceptions.HTTPError):
            impatient.get_status("/one")
        started_at = time.monotonic()
        assert env.client.get_status("/one").length == 1  # a patient client waits
        assert time.monotonic() - started_at >= 1.0
        env.sim.set_faults(stall=True, routes=["exists"], count=1)
        with pytest.raises(env.a.exceptions.HTTPError):
            impatient.exists("/one")
        assert impatient.exists("/one") is True
    finally:
        impatient.session.close()


def test_fault_count_and_routes(env: Env) -> None:
    env.sim.set_faults(error="UNAVAILABLE", routes=["get-status", "list-status"], count=2)
    with pytest.raises(env.a.exceptions.UnavailableError):
        env.client.get_status("/one")
    assert env.client.exists("/one") is True  # not a chosen route: not counted
    with pytest.raises(env.a.exceptions.UnavailableError):
        env.client.list_status("/")
    assert env.client.get_status("/one").length == 1  # the faults cleared after two


# --- as a process ------------------------------------------------------------------------


def test_the_process_helper(tmp_path: Path, apy01: ModuleType) -> None:
    ufs = write_tree(tmp_path / "ufs", {"f": b"from a process"})
    with SimProxyProcess.start(ufs, stream_timeout=60, async_persist_delay=0.1) as proc:
        assert proc.url == f"http://127.0.0.1:{proc.port}"
        client = apy01.Client("127.0.0.1", proc.port, timeout=20)
        try:
            with client.open("/f", "r") as reader:
                assert reader.read() == b"from a process"
            proc.faults(error="NOT_FOUND", routes=["exists"], count=1)
            with pytest.raises(apy01.exceptions.NotFoundError):
                client.exists("/f")
            assert client.exists("/f") is True
            with client.open("/g", "w") as writer:
                writer.write(b"async")
            wait_for(lambda: (ufs / "g").exists())
        finally:
            client.session.close()
        stats = proc.stats()
        assert (stats["exists"], stats["streams_opened"], stats["bytes_read"]) == (2, 2, 14)
        assert proc.requests()[0]["target"] == "/api/v1/paths//f/open-file"
    assert proc.proc.poll() is not None
