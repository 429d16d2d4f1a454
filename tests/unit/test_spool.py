"""The spool: its lock, its bound, and a journal that survives a restart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from alluxiofuse.errors import ConfigError, NoSpace
from alluxiofuse.writes.spool import Record, Spool, read_journal, spool_dir, spool_in_use


def test_one_daemon_per_source_and_cache_dir(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), "s3://b/data", limit=1000)
    assert spool.root == spool_dir(str(tmp_path), "s3://b/data")
    assert spool_in_use(spool.root)
    with pytest.raises(ConfigError, match="another alluxiofuse daemon"):
        Spool.open(str(tmp_path), "s3://b/data")
    other = Spool.open(str(tmp_path), "s3://b/other")  # another source: its own spool
    other.close()
    spool.close()
    assert not spool_in_use(spool.root)
    Spool.open(str(tmp_path), "s3://b/data").close()  # free again once closed


def test_unusable_cache_dir_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ConfigError, match="cannot use --cache-dir"):
        Spool.open(str(tmp_path / "file"), "src")


def test_reserve_is_bounded(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), "src", limit=100)
    spool.reserve(60)
    with pytest.raises(NoSpace):
        spool.reserve(41)
    spool.reserve(40)
    spool.reserve(-100)
    assert spool.used == 0
    spool.close()


def test_journal_records_survive_a_restart_in_order(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), "src")
    names = []
    for i in range(3):
        name, fd = spool.create()
        os.write(fd, b"x" * i)
        os.close(fd)
        names.append(name)
    first = Record(data=names[0], path="a/b", size=0, mode=0o640, closed_ns=1)
    second = Record(data=names[2], path="c", size=2, mtime_ns=5, closed_ns=2)
    spool.journal(second)
    spool.journal(first)
    spool.note_error(second, "BackendTimeout: slow")
    spool.close()

    again = Spool.open(str(tmp_path), "src")
    assert again.records() == [first, second]  # by creation order, whatever the journal order
    assert list(read_journal(again.root)) == [(first, None), (second, "BackendTimeout: slow")]
    # The unrecorded data file with bytes is set aside; made-ahead empty ones are removed.
    moved = again.set_aside_orphans()
    assert [Path(p).name for p in moved] == [names[1]]
    assert sorted(os.listdir(Path(again.root) / "data")) == sorted([names[0], names[2]])
    # New data files never reuse a recorded name.
    name, fd = again.create()
    os.close(fd)
    assert int(name.partition(".")[0]) > max(r.seq for r in again.records())
    again.settle(second)
    assert again.records() == [first]
    assert not (Path(again.root) / "data" / names[2]).exists()
    again.settle(first, keep_data=True)
    assert (Path(again.root) / "data" / names[0]).exists()
    again.close()


def test_copy_is_a_separate_file(tmp_path: Path) -> None:
    spool = Spool.open(str(tmp_path), "src")
    name, fd = spool.create()
    os.write(fd, b"hello world")
    copy_name, copy_fd = spool.copy(fd, 5)
    os.pwrite(fd, b"J", 0)
    assert os.pread(copy_fd, 100, 0) == b"hello"
    assert copy_name != name
    os.close(fd)
    os.close(copy_fd)
    spool.close()


def test_a_record_settled_while_the_journal_is_read_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`status` and the metrics read the journal while a daemon settles records: a record
    gone between the listing and its reading is owed no more, not an unreadable one."""
    spool = Spool.open(str(tmp_path), "src")
    spool.journal(Record(data="1.data", path="kept", size=1))
    listdir = os.listdir

    def with_a_settled_record(path: str) -> list[str]:
        names = listdir(path)
        return [*names, "0000000000000099.json"] if path.endswith("journal") else names

    monkeypatch.setattr(os, "listdir", with_a_settled_record)
    try:
        assert [r.path for r, _ in read_journal(spool.root)] == ["kept"]
    finally:
        monkeypatch.undo()
        spool.close()
