"""Reads of S3 through the fsspec backend (moto on loopback): one request per read, the
version checked by that request, read-ahead in ranged runs apart from waiting readers."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from functools import partial
from typing import Any

import fsspec.asyn
import pytest
import trio

from alluxiofuse.backends.base import run_on_loop
from alluxiofuse.backends.ufs import DEMAND_REQUESTS, READAHEAD_REQUESTS, UfsBackend, with_pool
from alluxiofuse.errors import BackendTimeout, StaleFile
from tests.support.s3server import S3Server, moto_s3

MiB = 1024 * 1024
ROOT = "root"


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with moto_s3() as s3:
        yield s3


class Sent:
    """The HTTP requests an s3fs filesystem sends (botocore's before-send event)."""

    def __init__(self, fs: Any) -> None:
        fs.connect()
        self.requests: list[tuple[str, str | None, str | None]] = []
        fs.s3.meta.events.register("before-send.s3", self._note)

    def _note(self, request: Any, **_: Any) -> None:
        def header(name: str) -> str | None:
            value = request.headers.get(name)
            return value.decode() if isinstance(value, bytes) else value

        self.requests.append((request.method, header("Range"), header("If-Match")))


def backend(s3: S3Server, fs: Any) -> UfsBackend:
    return UfsBackend(fs, f"{s3.bucket}/{ROOT}", trio.CapacityLimiter(4), 30.0,
                      description=s3.url(ROOT))


async def test_a_read_is_one_ranged_get_that_names_the_version(server: S3Server) -> None:
    fs = server.fs()
    data = os.urandom(3 * MiB + 5)
    fs.pipe_file(f"{server.bucket}/{ROOT}/f", data)
    ufs = backend(server, fs)
    version = (await ufs.stat("f")).version
    sent = Sent(fs)
    for page in range(4):
        got = await ufs.read("f", page * MiB, MiB, version)
        assert got == data[page * MiB:(page + 1) * MiB]
    # One GET per page, no HEAD: the ETag the handle pinned goes with each request.
    assert sent.requests == [
        ("GET", f"bytes={page * MiB}-{min((page + 1) * MiB, len(data)) - 1}", version.etag)
        for page in range(4)]


async def test_read_ahead_of_contiguous_pages_is_one_request(server: S3Server) -> None:
    fs = server.fs()
    data = os.urandom(10 * MiB)
    fs.pipe_file(f"{server.bucket}/{ROOT}/g", data)
    ufs = backend(server, fs)
    version = (await ufs.stat("g")).version
    sent = Sent(fs)
    pages = await ufs.read_many([("g", i * MiB, MiB, version) for i in range(10)])
    assert [bytes(p) for p in pages] == [data[i * MiB:(i + 1) * MiB] for i in range(10)]
    # 8 MiB at most in one request: the first eight pages, and the other two (side by
    # side: in either order).
    assert sorted(sent.requests) == [("GET", f"bytes=0-{8 * MiB - 1}", version.etag),
                                     ("GET", f"bytes={8 * MiB}-{10 * MiB - 1}", version.etag)]


@pytest.mark.parametrize("reported", [1, 1_000_000], ids=["etag", "mtime only (cluster)"])
async def test_a_change_after_the_open_is_stale_never_the_new_bytes(
    server: S3Server, reported: int,
) -> None:
    fs = server.fs()
    old = os.urandom(2 * MiB)
    fs.pipe_file(f"{server.bucket}/{ROOT}/h", old)
    ufs = UfsBackend(fs, f"{server.bucket}/{ROOT}", trio.CapacityLimiter(4), 30.0,
                     description=server.url(ROOT), mtime_unit_ns=reported)
    version = (await ufs.stat("h")).version
    assert await ufs.read("h", 0, MiB, version) == old[:MiB]
    await trio.sleep(1.1)  # a new second: the modification time differs too
    fs.pipe_file(f"{server.bucket}/{ROOT}/h", os.urandom(2 * MiB))  # same size
    with pytest.raises(StaleFile):
        await ufs.read("h", MiB, MiB, version)
    results = await ufs.read_many([("h", 0, MiB, version), ("h", MiB, MiB, version)])
    assert all(isinstance(r, StaleFile) for r in results), results
    fs.rm(f"{server.bucket}/{ROOT}/h")
    with pytest.raises(StaleFile):
        await ufs.read("h", 0, MiB, version)


async def test_a_timed_out_call_is_cancelled_on_its_loop() -> None:
    loop = fsspec.asyn.get_loop()
    cancelled = asyncio.Event()  # set on the loop's own thread
    started = trio.Event()
    token = trio.lowlevel.current_trio_token()

    async def hang() -> None:
        token.run_sync_soon(started.set)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with trio.fail_after(10):
        with pytest.raises(BackendTimeout):
            await run_on_loop(hang, loop, deadline=0.2, what="test")
        assert started.is_set()
        await trio.to_thread.run_sync(
            lambda: asyncio.run_coroutine_threadsafe(cancelled.wait(), loop).result(5))

        # And when the trio task is cancelled from outside.
        cancelled = asyncio.Event()
        started = trio.Event()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(partial(run_on_loop, hang, loop, deadline=60.0, what="test"))
                await started.wait()
                scope.cancel()
        await trio.to_thread.run_sync(
            lambda: asyncio.run_coroutine_threadsafe(cancelled.wait(), loop).result(5))


async def test_a_waiting_reader_is_not_queued_behind_read_ahead(server: S3Server) -> None:
    """Read-ahead holding every one of its requests does not hold a reader's: the reader
    has a bound of its own, and the pool has room for both."""
    fs = server.fs()
    fs.pipe_file(f"{server.bucket}/{ROOT}/small", b"x" * 1000)
    ufs = backend(server, fs)
    version = (await ufs.stat("small")).version
    release = trio.Event()
    real = ufs._read_run

    async def stuck(path: str, *args: Any) -> Any:
        if path != "small":
            await release.wait()
        return await real(path, *args)

    ufs._read_run = stuck  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        for i in range(2 * READAHEAD_REQUESTS):
            nursery.start_soon(ufs.read_many, [(f"other{i}", 0, MiB, version)])
        await trio.sleep(0.1)
        with trio.fail_after(5):
            assert await ufs.read("small", 0, 1000, version) == b"x" * 1000
        release.set()
        nursery.cancel_scope.cancel()


def test_the_pool_has_room_for_every_request_in_flight() -> None:
    assert with_pool({}, 96) == {"config_kwargs": {"max_pool_connections": 96}}
    mine = {"config_kwargs": {"max_pool_connections": 5, "read_timeout": 3}, "anon": True}
    assert with_pool(mine, 96) == mine  # the user's choice stands
    assert DEMAND_REQUESTS + READAHEAD_REQUESTS <= 96


async def test_a_listing_and_a_head_name_the_same_version(server: S3Server) -> None:
    """Many stores list LastModified to the millisecond, while HEAD and GET give it as an
    HTTP date, in whole seconds: one version must be the same whichever call named it
    (else a file read after a listing would look changed, and its pages never shared)."""
    fs = server.fs()
    fs.pipe_file(f"{server.bucket}/{ROOT}/f", b"data")
    listed = fs.ls

    def ls_in_milliseconds(path: str, detail: bool = True, **kwargs: Any) -> Any:
        entries = listed(path, detail=detail, **kwargs)
        for info in entries:  # as s3rver, MinIO and Ceph list them
            if info.get("LastModified") is not None:
                info["LastModified"] = info["LastModified"].replace(microsecond=123_000)
        return entries

    fs.ls = ls_in_milliseconds
    ufs = backend(server, fs)
    [entry] = [s for s in await ufs.list("") if s.name == "f"]
    assert entry.version == (await ufs.stat("f")).version
