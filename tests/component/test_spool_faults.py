"""The spool under disk faults: journal records written whole or not at all, unreadable
ones skipped and set aside, and staged files the disk refused never committed."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from alluxiofuse.errors import BackendError, NoSpace
from alluxiofuse.writes.spool import Record, Spool, owed_uploads
from alluxiofuse.writes.staging import DiskIO, StagedFile, Written


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool.open(str(tmp_path), "src", limit=1 << 30)
    yield spool
    spool.close()


def failing(
    real: Callable[..., Any], code: int, *, when: Callable[..., bool],
) -> Callable[..., Any]:
    """``real``, failing with errno ``code`` for the arguments ``when`` picks."""
    def call(*args: Any, **kwargs: Any) -> Any:
        if when(*args):
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)
    return call


@pytest.mark.parametrize("step", ["write", "fsync", "rename", "fsync_dir"])
def test_a_journal_record_that_cannot_be_written_leaves_nothing(
    spool: Spool, monkeypatch: pytest.MonkeyPatch, step: str,
) -> None:
    journal = os.path.join(spool.root, "journal")
    record = Record(data="5.data", path="f", size=3)
    if step == "write":  # a full disk: the record's bytes do not fit
        monkeypatch.setattr(json, "dump", failing(json.dump, errno.ENOSPC, when=lambda *a: True))
    elif step == "fsync":  # the record's fsync; the data directory's goes through
        monkeypatch.setattr(os, "fsync", failing(
            os.fsync, errno.EIO, when=lambda fd: _name(fd).endswith(".tmp")))
    elif step == "rename":
        monkeypatch.setattr(os, "rename", failing(os.rename, errno.EIO, when=lambda *a: True))
    else:  # the journal directory's fsync, after the rename
        monkeypatch.setattr(os, "fsync", failing(
            os.fsync, errno.EIO,
            when=lambda fd: _name(fd) == journal))
    with pytest.raises(OSError) as failed:
        spool.journal(record)
    assert failed.value.errno == (errno.ENOSPC if step == "write" else errno.EIO)
    monkeypatch.undo()
    assert os.listdir(journal) == []  # no record, whole or half
    spool.journal(record)  # and the next attempt writes it
    assert spool.records() == [record]


def _name(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


TORN = {
    "empty": b"",
    "cut short": b'{"data": "3.data", "path": "f", "si',
    "zeros": b"\0" * 4096,
    "not an object": b'["3.data", "f", 3]',
    "a field missing": b'{"data": "3.data", "size": 3}',
    "an unknown field": b'{"data": "3.data", "path": "f", "size": 3, "x": 1}',
    "a wrong type": b'{"data": "3.data", "path": "f", "size": "3"}',
    "a boolean size": b'{"data": "3.data", "path": "f", "size": true}',
    "a negative size": b'{"data": "3.data", "path": "f", "size": -1}',
    "another file's data": b'{"data": "4.data", "path": "f", "size": 3}',
    "not UTF-8": b'{"data": "3.data", "path": "\xff", "size": 3}',
}


@pytest.mark.parametrize("content", TORN.values(), ids=TORN.keys())
def test_an_unreadable_record_is_skipped_then_set_aside(
    tmp_path: Path, content: bytes,
) -> None:
    spool = Spool.open(str(tmp_path), "src")
    good = Record(data="2.data", path="g", size=1)
    spool.journal(good)
    journal = Path(spool.root) / "journal"
    (journal / "3.json").write_bytes(content)
    assert spool.records() == [good]
    assert [r for r, _ in owed_uploads(spool.root)] == [good]
    moved = spool.set_aside_unreadable()
    assert [path for path, _ in moved] == [str(journal / "3.unreadable")]
    assert sorted(os.listdir(journal)) == ["2.json", "3.unreadable"]
    assert spool.set_aside_unreadable() == []
    spool.close()
    # A new daemon never gives a data file the number of a record set aside.
    again = Spool.open(str(tmp_path), "src")
    assert again.create()[0] == "4.data"
    again.close()


def staged(spool: Spool, path: str = "f") -> StagedFile:
    name, fd = spool.create()
    return StagedFile(spool, DiskIO(trio.CapacityLimiter(2), 10.0), name, fd, path,
                      base=None, mode=0o644, uid=0, gid=0, mtime_ns=1)


@pytest.mark.expect_log(r"^f: a write to the spool failed \(NoSpace: .*No space", count=1)
async def test_a_write_the_disk_refuses_is_cut_off_and_keeps_the_file_uncommitted(
    spool: Spool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    f = staged(spool)
    await f.write(0, b"a" * 8192)
    real = os.pwrite

    def half(fd: int, data: Any, offset: int) -> int:  # the disk fills part-way
        if offset >= 8192 and offset < 12288:
            return real(fd, bytes(data)[:4096 - offset % 4096], offset)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, "pwrite", half)
    with pytest.raises(NoSpace):
        await f.write(8192, b"b" * 65536)
    monkeypatch.undo()
    assert f.size == 8192
    assert os.fstat(f.fd).st_size == 8192  # what it appended is cut off again
    assert isinstance(f.life, Written)
    with pytest.raises(NoSpace, match="f: not committed"):
        f.check_whole()
    await f.write(8192, b"c" * 10)  # room again: writes go on, the file stays incomplete
    with pytest.raises(NoSpace):
        f.check_whole()
    await f.truncate(0)  # nothing of the failed write is left
    f.check_whole()
    f.close()


@pytest.mark.expect_log(r"^f: a write to the spool failed \(BackendError: .*Input/output",
                        count=1)
async def test_a_failed_fsync_makes_the_whole_content_doubtful(
    spool: Spool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    f = staged(spool)
    await f.write(0, b"a" * 100)
    monkeypatch.setattr(os, "fsync", failing(os.fsync, errno.EIO, when=lambda fd: True))
    with pytest.raises(BackendError):
        await f.sync()
    monkeypatch.undo()
    await f.sync()
    with pytest.raises(BackendError, match="not committed"):
        f.check_whole()
    await f.truncate(50)
    with pytest.raises(BackendError):
        f.check_whole()
    await f.truncate(0)
    f.check_whole()
    f.close()
