"""``alluxiofuse status`` on a spool with owed uploads, and on targets that have none;
``alluxiofuse cache stats|clear`` on a disk page store, and on a directory that is none."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from alluxiofuse.cli import commands
from alluxiofuse.fs.diskpages import DiskPages
from alluxiofuse.writes.spool import Record, Spool, spool_dir


def test_owed_uploads_are_listed_with_their_sizes(tmp_path: Path) -> None:
    source, cache = str(tmp_path / "src"), str(tmp_path / "cache")
    (tmp_path / "src").mkdir()
    spool = Spool.open(cache, source)
    try:
        spool.journal(Record(data="1.data", path="a/big.bin", size=int(5.2 * (1 << 20))))
        spool.journal(Record(data="2.data", path="small", size=100))
    finally:
        spool.close()  # as after a daemon's end
    out = io.StringIO()
    assert commands.status(source, cache, out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0] == (f"{source}: 2 uploads pending (no daemon is running: they resume at "
                        f"the next mount; spool {spool_dir(cache, source)})")
    assert lines[1].startswith("  a/big.bin  5.2MiB  closed "), lines
    assert lines[2].startswith("  small  100B  closed "), lines


@pytest.mark.parametrize("what", ["missing", "no-spool"])
def test_a_target_with_no_spool_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str,
) -> None:
    """A path that does not exist, or a directory that is neither a mount (an unmounted
    mountpoint) nor a source with a spool: said on stderr, exit 1, no spool named."""
    target = tmp_path / "target"
    if what == "no-spool":
        target.mkdir()
    cache = tmp_path / "cache"
    assert commands.status(str(target), str(cache)) == 1
    said = capsys.readouterr()
    assert said.out == ""
    reason = ("no such file or directory" if what == "missing"
              else "is not an alluxiofuse mount, nor a source with a spool in")
    assert said.err.startswith(f"alluxiofuse: {target}") and reason in said.err, said.err
    assert len(said.err.splitlines()) == 1
    assert not cache.exists()


def test_cache_stats_and_clear_a_store_in_use(tmp_path: Path) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=4096)
    for i in range(3):
        assert store.put(b"page %d" % i, bytes(4000))
    out = io.StringIO()
    assert commands.cache("stats", str(tmp_path), out) == 0
    pages, size = out.getvalue().split(": ", 1)[1].split(";")[0].split(", ")
    assert pages == "3 pages"
    assert size.endswith("KiB") and 11.7 < float(size[:-3]) < 12.0  # three pages with headers
    out = io.StringIO()
    assert commands.cache("clear", str(tmp_path), out) == 0
    assert out.getvalue() == f"{tmp_path}: removed 3 pages\n"
    assert store.get(b"page 0") is None  # the daemon using it sees a miss, and goes on
    assert store.put(b"page 0", bytes(4000))
    assert store.used() == store.stats().used


def test_cache_of_a_directory_that_is_no_store_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    assert commands.cache("stats", str(tmp_path)) == 1
    assert commands.cache("clear", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.count("is not a disk page store") == 2
    assert list(tmp_path.iterdir()) == []  # nothing made there
