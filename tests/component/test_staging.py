"""Staged files over a base, and the uploader's order, retries and superseding."""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from alluxiofuse.errors import BackendUnavailable, FileTooLarge, NoSpace, StaleFile
from alluxiofuse.model import Commit, FileStatus, Kind
from alluxiofuse.writes.spool import Record, Spool
from alluxiofuse.writes.staging import (
    Committed,
    DiskIO,
    Owed,
    StagedFile,
    Unlinked,
    Written,
)
from alluxiofuse.writes.uploader import Uploader

BASE = bytes(range(256)) * 64  # 16 KiB of old content


@pytest.fixture
async def spool(tmp_path: Path) -> AsyncIterator[Spool]:
    spool = Spool.open(str(tmp_path), "src", limit=1 << 20)
    yield spool
    spool.close()


def io() -> DiskIO:
    return DiskIO(trio.CapacityLimiter(2), 10.0)


class Base:
    """The committed content, counting what is fetched."""

    def __init__(self) -> None:
        self.fetched: list[tuple[int, int]] = []

    async def __call__(self, offset: int, length: int) -> bytes:
        self.fetched.append((offset, length))
        return BASE[offset:offset + length]


def staged_over_base(spool: Spool) -> StagedFile:
    name, fd = spool.create()
    os.ftruncate(fd, len(BASE))
    status = FileStatus(name="f", kind=Kind.FILE, size=len(BASE), mtime_ns=1, mode=0o644)
    return StagedFile(spool, io(), name, fd, "f", base=status, mode=0o644, uid=0, gid=0,
                      mtime_ns=1)


def new_staged(spool: Spool, path: str) -> StagedFile:
    """A new file (no base) staged in ``spool``."""
    name, fd = spool.create()
    return StagedFile(spool, io(), name, fd, path, base=None, mode=0o644, uid=0, gid=0,
                      mtime_ns=1)


def journaled(spool: Spool, path: str) -> Record:
    """An owed upload of an empty file to ``path``, journaled."""
    name, fd = spool.create()
    os.close(fd)
    record = Record(data=name, path=path, size=0)
    spool.journal(record)
    return record


async def test_only_the_ranges_read_are_fetched(spool: Spool) -> None:
    staged, base = staged_over_base(spool), Base()
    await staged.write(100, b"NEW")
    assert await staged.read(90, 20, base) == BASE[90:100] + b"NEW" + BASE[103:110]
    assert base.fetched == [(90, 10), (103, 7)]  # never the written range, never the rest
    assert await staged.read(90, 20, base) == BASE[90:100] + b"NEW" + BASE[103:110]
    assert len(base.fetched) == 2  # held now
    assert not staged.complete
    async with staged.lock:
        await staged.fill_locked(base)
    assert staged.complete
    expected = bytearray(BASE)
    expected[100:103] = b"NEW"
    assert os.pread(staged.fd, len(BASE) + 1, 0) == bytes(expected)
    staged.close()


async def test_truncate_then_extend_reads_zeros_not_the_old_bytes(spool: Spool) -> None:
    staged, base = staged_over_base(spool), Base()
    await staged.truncate(10)
    await staged.truncate(30)
    assert await staged.read(0, 100, base) == BASE[:10] + bytes(20)
    await staged.write(40, b"x")  # a hole, then a byte
    assert await staged.read(0, 100, base) == BASE[:10] + bytes(30) + b"x"
    assert staged.size == 41 and staged.life == Written()
    staged.close()


async def test_fork_leaves_the_old_data_file_as_it_was(spool: Spool) -> None:
    staged, base = staged_over_base(spool), Base()
    async with staged.lock:
        await staged.fill_locked(base)
    old_name = staged.name
    staged.journaled(Record(data=old_name, path="f", size=len(BASE)))
    assert staged.shared
    await staged.fork()
    await staged.write(0, b"changed")
    assert Path(spool.data_path(old_name)).read_bytes() == BASE  # noqa: ASYNC240
    assert staged.name != old_name and staged.record is None and not staged.shared
    staged.close()


async def test_the_life_of_a_staged_file(spool: Spool) -> None:
    """Each transition says what happened; a data file someone else holds is changed
    only in a copy, and its name is kept only for whoever may still read it."""
    staged = staged_over_base(spool)
    assert staged.life == Committed() and not staged.shared  # opened over its base
    await staged.write(0, b"new")
    assert staged.life == Written()
    status = FileStatus(name="f", kind=Kind.FILE, size=len(BASE), mtime_ns=2)
    staged.landed(status, linked=False, durable=False)  # committed by a close(2)
    assert staged.life == Committed(durable=False) and not staged.shared
    staged.synced()
    assert staged.life == Committed()
    staged.landed(status, linked=True)  # the data file became the under-storage's file
    assert staged.shared
    linked_name = staged.name
    await staged.fork()
    assert staged.life == Committed() and not staged.shared
    assert linked_name not in os.listdir(f"{spool.root}/data")  # the source has its own link
    await staged.write(0, b"x")
    staged.abandon()  # a commit timed out: still Written, its data file held
    assert staged.life == Written() and staged.shared and staged.abandoned
    record = Record(data=staged.name, path="f", size=staged.size)
    staged.journaled(record)
    assert staged.life == Owed(record) and staged.record is record
    staged.unlink()  # the upload, superseded, may still be reading the data file
    assert staged.life == Unlinked() and staged.record is None and staged.shared
    owed_name = staged.name
    await staged.fork()
    await staged.write(0, b"y")
    assert owed_name in os.listdir(f"{spool.root}/data")  # left to the upload's end
    assert staged.life == Unlinked() and not staged.shared and not staged.abandoned
    staged.close()


@pytest.mark.expect_log(r"^n: a write to the spool failed \(NoSpace: the spool .* is full")
async def test_spool_bound_refuses_writes_past_it(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), "small", limit=1000)
    staged = new_staged(spool, "n")
    await staged.write(0, b"x" * 900)
    with pytest.raises(NoSpace):
        await staged.write(900, b"x" * 200)
    assert staged.size == 900
    # The content lacks what the program wrote: no commit of it, until a truncate
    # drops everything from the refused write on.
    with pytest.raises(NoSpace, match="not committed"):
        staged.check_whole()
    await staged.truncate(900)
    staged.check_whole()
    staged.close()
    assert spool.used == 0
    spool.close()


def _make_sized(path: Path, size: int) -> None:
    path.touch()
    os.truncate(path, size)


async def test_a_sparse_extension_is_charged_nothing_and_a_size_too_large_is_efbig(
    tmp_path: Path,
) -> None:
    spool = Spool.open(str(tmp_path), "sparse", limit=1 << 20)
    staged = new_staged(spool, "n")
    # 100 GiB of hole, then 4 KiB written far past the end: the spool holds 4 KiB.
    await staged.truncate(100 << 30)
    await staged.write(200 << 30, b"y" * 4096)
    assert staged.size == (200 << 30) + 4096
    assert 4096 <= spool.used < 1 << 20
    assert await staged.read((200 << 30) - 2, 4, Base()) == b"\0\0yy"
    # A size the spool's file system cannot hold is EFBIG, as there (not EIO); a file
    # system that takes it (tmpfs) takes it through the spool too.
    huge = 1 << 62
    try:
        _make_sized(tmp_path / "probe", huge)
    except OSError as e:
        assert e.errno == errno.EFBIG
        with pytest.raises(FileTooLarge):
            await staged.truncate(huge)
    else:
        await staged.truncate(huge)
        assert staged.size == huge
    staged.close()
    assert spool.used == 0
    spool.close()


@pytest.mark.expect_log(r"^upload of a failed \(BackendUnavailable: store down\)", count=2)
async def test_uploader_retries_orders_and_drops_superseded_records(spool: Spool) -> None:
    attempts: list[tuple[str, int]] = []
    failures = {"a": 2}

    async def upload(record: Record) -> Commit:
        attempts.append((record.path, record.seq))
        if failures.get(record.path):
            failures[record.path] -= 1
            raise BackendUnavailable("store down")
        await trio.sleep(0.01)
        return Commit(FileStatus(name=record.path, kind=Kind.FILE, size=record.size))

    done: list[int] = []
    uploader = Uploader(spool, io(), 2, upload, lambda r, s: done.append(r.seq) or False)

    a, b1, b2 = journaled(spool, "a"), journaled(spool, "b"), journaled(spool, "b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        for r in (a, b1, b2):
            uploader.submit(r)
        assert uploader.busy("a") and uploader.busy("") and not uploader.busy("c")
        await uploader.wait("", 100)
        nursery.cancel_scope.cancel()
    assert sorted(done) == [a.seq, b2.seq]  # b1 was superseded by b2: never sent
    assert ("b", b1.seq) not in attempts
    assert attempts.count(("a", a.seq)) == 3  # two failures, then success
    assert spool.records() == []


async def test_an_upload_waited_for_goes_before_the_queue(tmp_path: Path) -> None:
    """A rename waits for the upload owed under its name: that one is sent next, not
    after every upload queued before it (under faults a rename waited out its drain
    timeout behind hundreds)."""
    spool = Spool.open(str(tmp_path), "urgent", limit=1 << 20)
    order: list[str] = []
    gate = trio.Event()

    async def upload(record: Record) -> Commit:
        await gate.wait()
        order.append(record.path)
        await trio.sleep(0.01)
        return Commit(FileStatus(name=record.path, kind=Kind.FILE, size=record.size))

    uploader = Uploader(spool, io(), 1, upload, lambda r, s: False)
    records = [journaled(spool, f"d/f{i}") for i in range(8)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        for r in records:
            uploader.submit(r)
        await trio.testing.wait_all_tasks_blocked()  # f0 taken first, held at the gate

        async def rename_waits() -> None:
            await uploader.wait("d/f6", 10)
            assert "d/f6" in order and "d/f5" not in order

        nursery.start_soon(rename_waits)
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
        await uploader.wait("", 10)
        nursery.cancel_scope.cancel()
    assert order[:2] == ["d/f0", "d/f6"]
    assert sorted(order) == sorted(r.path for r in records)


async def test_reads_past_the_base_limit_are_the_data_files_own(tmp_path: Path) -> None:
    # A new file (no base at all) and a file truncated below its old size: a read that
    # starts at or past base_limit fetches nothing and returns the written bytes and zeros.
    spool = Spool.open(str(tmp_path), "sparse", limit=4 << 30)
    new = new_staged(spool, "n")
    await new.write(0, b"head")
    await new.truncate(3 << 30)  # sparse: no disk space
    await new.write((2 << 30) + 2, b"tail")
    nothing = Base()
    assert await new.read((2 << 30) + 1, 8, nothing) == b"\0tail\0\0\0"
    assert await new.read(1 << 30, 4, nothing) == bytes(4)
    assert await new.read(2, 4, nothing) == b"ad\0\0"
    assert nothing.fetched == []
    new.close()
    staged, base = staged_over_base(spool), Base()
    await staged.truncate(100)
    await staged.truncate(200)
    assert await staged.read(150, 10, base) == bytes(10)
    assert await staged.read(100, 10, base) == bytes(10)
    assert await staged.read(95, 10, base) == BASE[95:100] + bytes(5)
    assert base.fetched == [(95, 5)]
    staged.close()
    spool.close()


@pytest.mark.expect_log(r"^upload of stuck failed \(BackendUnavailable: never lands\); retrying")
async def test_superseded_records_leave_the_journal_while_every_worker_is_busy(
    spool: Spool,
) -> None:
    # The one upload thread retries an upload that never lands; the owed uploads of the
    # paths removed or committed anew meanwhile must leave the journal all the same, or
    # status counts them for ever and the next mount sends them again (a removed file
    # back from the dead).
    started = trio.Event()

    async def upload(record: Record) -> Commit:
        started.set()
        raise BackendUnavailable("never lands")

    uploader = Uploader(spool, io(), 1, upload, lambda r, s: False)

    stuck, b1, b2 = journaled(spool, "stuck"), journaled(spool, "b"), journaled(spool, "b")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        for r in (stuck, b1, b2):
            uploader.submit(r)
        await started.wait()
        await uploader.supersede("b")  # as an unlink of b does
        await uploader.wait("b", 10)
        assert [r.path for r in spool.records()] == ["stuck"]
        assert os.listdir(f"{spool.root}/data") == [stuck.data]  # b's bytes are dropped
        nursery.cancel_scope.cancel()


@pytest.mark.expect_log(r"^n: a write to the spool failed \(NoSpace")
async def test_an_overwrite_takes_no_new_space_and_a_sparse_file_forks_sparse(
    tmp_path: Path,
) -> None:
    spool = Spool.open(str(tmp_path), "dense", limit=62_000)
    staged = new_staged(spool, "n")
    await staged.write(0, b"a" * 61_440)  # 15 blocks of 4 KiB: near the bound
    await staged.write(0, b"b" * 4096)  # rewrites what the file holds already
    with pytest.raises(NoSpace):
        await staged.write(61_440, b"c" * 4096)  # new space past the bound
    staged.close()
    spool.close()
    # A sparse file's copy (a fork, when its data file became the source's file) keeps
    # its holes: 1 GiB that holds 8 KiB takes 8 KiB again, not 1 GiB of zeros.
    spool = Spool.open(str(tmp_path), "sparse", limit=1 << 20)
    staged = new_staged(spool, "s")
    await staged.write(0, b"b" * 4096)
    await staged.truncate(1 << 30)
    await staged.write((1 << 30) - 4096, b"d" * 4096)
    await staged.fork()
    assert spool.used < 1 << 20
    assert await staged.read((1 << 30) - 4097, 2, Base()) == b"\0d"
    assert await staged.read(0, 2, Base()) == b"bb"
    staged.close()
    spool.close()


async def test_an_upload_superseded_while_it_runs_ends_quietly(spool: Spool) -> None:
    """An upload under way when a newer commit of its path begins is refused its landing
    (the commit fence): it is dropped, neither a failure nor retried."""
    started, refuse = trio.Event(), trio.Event()

    async def upload(record: Record) -> Commit:
        started.set()
        await refuse.wait()
        raise StaleFile("a newer commit of the path began")

    uploader = Uploader(spool, io(), 1, upload, lambda record, done: False)
    record = journaled(spool, "f")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(uploader.run)
        uploader.submit(record)
        await started.wait()
        await uploader.supersede("f")
        refuse.set()
        await uploader.wait("f", 5)
        with trio.fail_after(5):
            while spool.records():  # noqa: ASYNC110 (the journal is a directory)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert uploader.failures == 0
