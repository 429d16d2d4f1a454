"""Writes through ops.Operations without a kernel: owed uploads and attribute changes."""

from __future__ import annotations

import os
import stat
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from alluxiofuse.backends.base import temp_name
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.config import build_config
from alluxiofuse.errors import BackendUnavailable
from alluxiofuse.fs.inodes import ROOT_INODE
from alluxiofuse.model import Commit
from alluxiofuse.writes.spool import Record, Spool
from alluxiofuse.writes.staging import DiskIO
from alluxiofuse.writes.writes import Writes
from tests.component.test_ops import make


class Gate:
    """Holds every commit until opened."""

    def __init__(self, commit: Any) -> None:
        self.open = trio.Event()
        self.reached = trio.Event()
        self._commit = commit

    async def __call__(self, *args: Any, **kwargs: Any) -> Commit:
        self.reached.set()
        await self.open.wait()
        return await self._commit(*args, **kwargs)  # type: ignore[no-any-return]


async def test_chmod_of_a_file_still_uploading_keeps_content_and_mode(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = await make(src, nursery, write_type="ASYNC_THROUGH", drain_timeout=30)
    gate = Gate(m.fs.backend.commit)
    m.fs.backend.commit = gate  # type: ignore[method-assign]
    fi, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, None)
    await m.ops.write(fi.fh, 0, b"content")
    await m.ops.flush(fi.fh)  # journaled; its upload waits at the gate
    await m.ops.release(fi.fh)
    await gate.reached.wait()
    new = pyfuse3.EntryAttributes()
    new.st_mode = stat.S_IFREG | 0o600
    fields = SimpleNamespace(update_mode=True, update_uid=False, update_gid=False,
                             update_atime=False, update_mtime=False, update_size=False)
    changed = await m.ops.setattr(attrs.st_ino, new, fields, None, None)
    assert stat.S_IMODE(changed.st_mode) == 0o600
    assert await m.read_all("f") == b"content"
    gate.open.set()
    await m.fs.writes.uploader.wait("", 30)  # type: ignore[union-attr]
    assert (src / "f").read_bytes() == b"content"
    assert stat.S_IMODE(os.stat(src / "f").st_mode) == 0o600
    assert m.fs.writes.spool.records() == []  # type: ignore[union-attr]


async def test_a_write_during_a_commit_never_reaches_the_committed_file(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = await make(src, nursery)
    gate = Gate(m.fs.backend.commit)
    m.fs.backend.commit = gate  # type: ignore[method-assign]
    fi, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, os.O_RDWR | os.O_CREAT, None)
    await m.ops.write(fi.fh, 0, b"A" * 10)
    async with trio.open_nursery() as inner:
        inner.start_soon(m.ops.flush, fi.fh)
        await gate.reached.wait()
        inner.start_soon(m.ops.write, fi.fh, 0, b"B" * 5)  # waits for the commit
        await trio.sleep(0.05)
        gate.open.set()
    assert (src / "f").read_bytes() == b"A" * 10
    await m.ops.flush(fi.fh)
    await m.ops.release(fi.fh)
    assert (src / "f").read_bytes() == b"B" * 5 + b"A" * 5


async def test_listing_shows_the_size_of_a_file_being_written(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "log").write_bytes(b"x" * 100)
    m = await make(src, nursery)
    ino = (await m.lookup_path("log")).st_ino
    fi = await m.ops.open(ino, os.O_WRONLY, None)
    await m.ops.write(fi.fh, 100, b"y" * 2000)
    dh = await m.ops.opendir(ROOT_INODE, None)
    sizes: dict[str, int] = {}

    def reply(name: str, attrs: Any, next_id: int) -> bool:
        sizes[name] = attrs.st_size
        return True

    await m.fs.readdir(dh, 0, reply)
    assert sizes == {"log": 2100}
    await m.ops.flush(fi.fh)
    await m.ops.release(fi.fh)


async def test_concurrent_opens_share_one_staged_file(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"old")
    m = await make(src, nursery)
    ino = (await m.lookup_path("f")).st_ino
    handles: list[int] = []

    async def open_rw() -> None:
        handles.append((await m.ops.open(ino, os.O_RDWR, None)).fh)

    async with trio.open_nursery() as inner:
        inner.start_soon(open_rw)
        inner.start_soon(open_rw)
    staged = {id(m.fs._handles.get(fh).staged) for fh in handles}  # type: ignore[union-attr]
    assert len(staged) == 1
    await m.ops.write(handles[0], 0, b"new")
    assert await m.ops.read(handles[1], 0, 10) == b"new"
    for fh in handles:
        await m.ops.flush(fh)
        await m.ops.release(fh)


@pytest.mark.expect_log(r"^flush: BackendUnavailable: store down$", count=1)
@pytest.mark.expect_log(r"^f: upload owed after a failed commit", count=1)
@pytest.mark.expect_log(r"^upload of f failed \(BackendUnavailable: store down\)", count=1)
async def test_an_owed_upload_never_lands_after_a_newer_commit(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = await make(src, nursery)
    real = m.fs.backend.commit
    failures = [1]

    async def commit(*args: Any, **kwargs: Any) -> Commit:
        if failures[0]:
            failures[0] -= 1
            raise BackendUnavailable("store down")
        return await real(*args, **kwargs)  # type: ignore[no-any-return]

    m.fs.backend.commit = commit  # type: ignore[method-assign]
    fi, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, None)
    await m.ops.write(fi.fh, 0, b"v1")
    with pytest.raises(pyfuse3.FUSEError):
        await m.ops.flush(fi.fh)
    failures[0] = 1  # the background retry fails once more, then would succeed
    await m.ops.release(fi.fh)  # v1 is owed now
    assert m.fs.writes.spool.records() != []  # type: ignore[union-attr]
    fi = await m.ops.open(attrs.st_ino, os.O_WRONLY | os.O_TRUNC, None)
    await m.ops.write(fi.fh, 0, b"v2")
    await m.ops.flush(fi.fh)  # committed directly: the owed v1 is dropped
    await m.ops.release(fi.fh)
    await trio.sleep(2.5)  # past the retry of v1
    assert (src / "f").read_bytes() == b"v2"
    assert m.fs.writes.spool.records() == []  # type: ignore[union-attr]


async def test_a_new_empty_file_keeps_the_times_of_its_create(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = await make(src, nursery)
    writes = m.fs.writes
    assert writes is not None
    before = time.time_ns()
    fi, attrs = await m.ops.create(ROOT_INODE, b"empty", 0o644, os.O_WRONLY | os.O_CREAT, None)
    after = time.time_ns()
    assert before <= attrs.st_mtime_ns <= after
    assert attrs.st_ctime_ns == attrs.st_mtime_ns
    staged = writes.get("empty")
    assert staged is not None
    os.utime(staged.fd, ns=(10**18, 10**18))  # its data file was made long before
    await m.ops.flush(fi.fh)
    await m.ops.release(fi.fh)
    assert os.stat(src / "empty").st_mtime_ns == attrs.st_mtime_ns  # the committed file's
    m.fs.meta.clear()  # as once the attribute cache expires
    assert (await m.lookup_path("empty")).st_mtime_ns == attrs.st_mtime_ns


async def test_a_journal_record_is_written_only_once_its_data_file_is_durable(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A power loss cannot be tested here; what can be is that every fsync the journal's
    # promise needs happens, in order, before the record exists.
    src = tmp_path / "src"
    src.mkdir()
    m = await make(src, nursery, write_type="ASYNC_THROUGH")
    gate = Gate(m.fs.backend.commit)  # the upload waits: only the journal's I/O is seen
    m.fs.backend.commit = gate  # type: ignore[method-assign]
    fi, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, None)
    await m.ops.write(fi.fh, 0, b"content")
    staged = m.fs.writes.get("f")  # type: ignore[union-attr]
    assert staged is not None
    spool = m.fs.writes.spool  # type: ignore[union-attr]
    events: list[tuple[str, str]] = []
    fsync, rename = os.fsync, os.rename

    def record_fsync(fd: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_rename(old: str, new: str, **kwargs: Any) -> None:
        events.append(("rename", os.fspath(new)))
        rename(old, new, **kwargs)

    monkeypatch.setattr(os, "fsync", record_fsync)
    monkeypatch.setattr(os, "rename", record_rename)
    await m.ops.flush(fi.fh)  # journaled
    monkeypatch.undo()
    record = os.path.join(spool.root, "journal", f"{staged.record.seq}.json")  # type: ignore[union-attr]
    assert events == [
        ("fsync", spool.data_path(staged.name)),  # the bytes
        ("fsync", os.path.join(spool.root, "data")),  # the data file's name
        ("fsync", record + ".tmp"),  # the record
        ("rename", record),
        ("fsync", os.path.join(spool.root, "journal")),  # the record's name
    ]
    gate.open.set()
    await m.ops.release(fi.fh)
    await m.fs.writes.uploader.wait("", 30)  # type: ignore[union-attr]
    assert (src / "f").read_bytes() == b"content"


async def test_files_made_ahead_leave_with_the_daemon(tmp_path: Path) -> None:
    """A shutdown while data files are being made ahead leaves none of them behind: the
    next mount would take one for a file a crash left open (and its fd leaked)."""
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    config = build_config({"source": str(src), "mountpoint": "/unused",
                           "cache_dir": str(cache)}, {})
    spool = Spool.open(config.cache_dir, config.source, config.cache_size)
    data = Path(spool.root) / "data"
    making = trio.Event()
    create_many = spool.create_many

    def slow_create_many(count: int) -> list[tuple[str, int]]:
        trio.from_thread.run_sync(making.set)
        time.sleep(0.3)  # the shutdown comes while the thread makes the files
        return create_many(count)

    spool.create_many = slow_create_many  # type: ignore[method-assign]
    backend = open_ufs(config.source, {}, trio.CapacityLimiter(2), 10)
    writes = Writes(config, backend, spool, DiskIO(trio.CapacityLimiter(2), 10.0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writes.run)
        await making.wait()
        nursery.cancel_scope.cancel()
    await trio.sleep(0.5)  # an abandoned thread would have made its files by now
    try:
        assert list(data.iterdir()) == []
    finally:
        spool.close()


@pytest.mark.expect_log(r"^an owed upload of lost[12] has lost its data", count=2, level="ERROR")
@pytest.mark.expect_log(r"^upload of stuck failed \(BackendUnavailable: the store is down", count=1)
@pytest.mark.expect_log(r"^3 uploads still owed after 0\.5s", count=1, level="ERROR")
async def test_a_drain_that_runs_out_counts_what_the_journal_owes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """The drain's last word counts the uploads that resume at the next mount, as `status`
    and the metrics do: the journal's records, queued here or not (a lost data file)."""
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    config = build_config({"source": str(src), "mountpoint": "/unused",
                           "cache_dir": str(cache), "drain_timeout": "0.5s"}, {})
    earlier = Spool.open(config.cache_dir, config.source, config.cache_size)
    for seq in (1, 2):  # their data files are lost: owed, never queued
        earlier.journal(Record(data=f"{seq}.data", path=f"lost{seq}", size=10))
    _write(earlier.data_path("3.data"), b"abc")
    earlier.journal(Record(data="3.data", path="stuck", size=3))
    earlier.close()
    spool = Spool.open(config.cache_dir, config.source, config.cache_size)
    backend = open_ufs(config.source, {}, trio.CapacityLimiter(2), 10)

    async def never(*args: Any, **kwargs: Any) -> Commit:
        raise BackendUnavailable("the store is down")

    backend.commit = never  # type: ignore[method-assign]
    writes = Writes(config, backend, spool, DiskIO(trio.CapacityLimiter(2), 10.0))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writes.run)
            await writes.recover(tidy=partial(backend.note_commits, spool.commits))
            await writes.shutdown()
            nursery.cancel_scope.cancel()
    finally:
        spool.close()
    assert "3 uploads still owed after 0.5s" in caplog.text


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


@pytest.mark.expect_log(r"^a file being written when the last daemon stopped was never", count=1)
async def test_a_crash_between_the_link_and_the_rename_keeps_the_bytes(tmp_path: Path) -> None:
    """A local commit links the data file to a temporary name beside the target, then
    renames it into place. A crash in between leaves a data file with two links that is
    committed nowhere: recovery removes the temporary file first, then keeps the bytes as
    an orphan (its link count would otherwise pass it off as committed, and drop it)."""
    src, cache = tmp_path / "src", tmp_path / "cache"
    src.mkdir()
    config = build_config({"source": str(src), "mountpoint": "/unused",
                           "cache_dir": str(cache)}, {})
    earlier = Spool.open(config.cache_dir, config.source, config.cache_size)
    name, fd = earlier.create()
    os.write(fd, b"never committed")
    os.close(fd)
    temp = temp_name()
    os.link(earlier.data_path(name), src / temp)
    _write(os.path.join(earlier.commits, temp), temp.encode())
    earlier.close()
    spool = Spool.open(config.cache_dir, config.source, config.cache_size)
    backend = open_ufs(config.source, {}, trio.CapacityLimiter(2), 10)
    writes = Writes(config, backend, spool, DiskIO(trio.CapacityLimiter(2), 10.0))
    try:
        await writes.recover(tidy=partial(backend.note_commits, spool.commits))
    finally:
        spool.close()
    assert list(src.iterdir()) == []
    kept = list((Path(spool.root) / "orphaned").iterdir())
    assert [p.read_bytes() for p in kept] == [b"never committed"]
