"""The disk page store: a page comes back only whole and only for its key, within the
capacity and the disk's free-space floor, shared by several daemons, and I/O errors never
reach the caller."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from alluxiofuse.fs import diskpages
from alluxiofuse.fs.diskpages import DiskKey, DiskPages, encode_key
from alluxiofuse.model import Version

REPO = Path(__file__).resolve().parents[2]
PAGE = 1000
FILE = 24 + 4 + PAGE  # header, b"b" + a three-byte key, a full page
KEY = ("s3://bucket/data", "/dir/f.bin", Version(4096, 1_700_000_000_000_000_000, "abc"), 3)


def page_file(root: Path, key: DiskKey) -> Path:
    name = hashlib.sha256(encode_key(key)).hexdigest()
    return root / "pages" / name[:2] / name


def content(key: DiskKey) -> bytes:
    """Bytes that belong to ``key`` alone, of a length that depends on it."""
    seed = repr(key).encode()
    return (seed * (PAGE // len(seed) + 1))[: 200 + zlib.crc32(seed) % (PAGE - 200)]


def full(i: int) -> tuple[bytes, bytes]:
    """The i-th of a series of full pages: its key and its data."""
    return b"k%02d" % i, bytes([i]) * PAGE


def age(root: Path, key: DiskKey, seconds_ago: float) -> None:
    t = int((time.time() - seconds_ago) * 1e9)
    os.utime(page_file(root, key), ns=(t, t))


def counted(root: Path) -> int:
    """The bytes the daemons' shared counter (the lock file's first 8 bytes) says are used."""
    return int.from_bytes((root / "lock").read_bytes()[:8], "little")


def files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "pages").rglob("*") if p.is_file())


def test_round_trip_and_a_new_store_object_finds_the_pages(tmp_path: Path) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    assert store.get(KEY) is None
    assert store.put(KEY, content(KEY))
    assert store.put(b"raw key", memoryview(b"x" * PAGE))
    assert store.get(KEY) == content(KEY)
    assert store.get(b"raw key") == b"x" * PAGE
    other = (*KEY[:2], Version(4096, KEY[2].mtime_ns, None), 3)  # the etag is in the key
    assert store.get(other) is None
    assert (store.counters.hits, store.counters.misses, store.counters.corrupt) == (2, 2, 0)
    restarted = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    assert restarted.get(KEY) == content(KEY)
    stats = restarted.stats()
    assert stats.pages == 2
    assert stats.used == store.counters.written_bytes
    with pytest.raises(ValueError, match="at most"):
        store.put(b"big", b"x" * (PAGE + 1))


def test_distinct_keys_encode_distinctly() -> None:
    version = Version(1, 2, None)
    keys: list[DiskKey] = [
        ("a", "b", version, 1), ("a", "b", Version(1, 2, ""), 1), ("a", "b", Version(1, 2, "-"), 1),
        ("ab", "", version, 1), ("a", "b", version, 11), ("a", "b\udcff", version, 1),
        b"", b"t", b"t1:a,1:b,1:1,1:2,1:-,1:1,",
    ]
    assert len({encode_key(k) for k in keys}) == len(keys)


def test_a_page_under_another_keys_name_is_refused(tmp_path: Path) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    a, b = full(1), full(2)
    store.put(*a)
    store.put(*b)
    os.replace(page_file(tmp_path, a[0]), page_file(tmp_path, b[0]))
    assert store.get(b[0]) is None
    assert store.counters.corrupt == 1
    assert not page_file(tmp_path, b[0]).exists()
    assert store.get(a[0]) is None  # moved away: a plain miss
    assert store.counters.corrupt == 1


def truncate(data: bytes) -> bytes:
    return data[:-1]


def flip_data(data: bytes) -> bytes:
    return data[:-10] + bytes([data[-10] ^ 1]) + data[-9:]


def flip_header(at: int) -> Callable[[bytes], bytes]:
    def flip(data: bytes) -> bytes:
        return data[:at] + bytes([data[at] ^ 0x10]) + data[at + 1:]
    return flip


DAMAGES: dict[str, Callable[[bytes], bytes]] = {
    "truncated": truncate,
    "flipped data byte": flip_data,
    "flipped magic": flip_header(0),
    "flipped format": flip_header(4),
    "flipped key length": flip_header(8),
    "flipped data length": flip_header(12),
    "flipped checksum": flip_header(20),
    "flipped key byte": flip_header(25),
    "empty": lambda data: b"",
    "garbage": lambda data: os.urandom(len(data)),
    "only a header": lambda data: data[:24],
    "longer": lambda data: data + b"\0",
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=DAMAGES.keys())
def test_a_damaged_page_is_removed_counted_and_never_served(
    tmp_path: Path, damage: Callable[[bytes], bytes],
) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    store.put(KEY, content(KEY))
    path = page_file(tmp_path, KEY)
    path.write_bytes(damage(path.read_bytes()))
    assert store.get(KEY) is None
    assert not path.exists()
    assert (store.counters.corrupt, store.counters.misses, store.counters.hits) == (1, 1, 0)
    assert store.put(KEY, content(KEY))  # fetched again, stored again
    assert store.get(KEY) == content(KEY)


def test_a_write_cut_short_is_never_served_and_cleaned_once_old(tmp_path: Path) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    store.put(KEY, content(KEY))
    final = page_file(tmp_path, KEY)
    left = final.parent / ".tmp-999-dead-0"  # what a daemon killed before its rename leaves
    left.write_bytes(final.read_bytes()[:-100])
    final.unlink()
    assert store.get(KEY) is None
    assert store.counters.corrupt == 0
    DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    assert left.exists()  # young: perhaps a live daemon's write in progress
    old = time.time() - 120
    os.utime(left, (old, old))
    DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    assert not left.exists()


def test_capacity_evicts_the_least_recently_read_first(tmp_path: Path) -> None:
    store = DiskPages.open(str(tmp_path), 10 * FILE, page_size=PAGE)
    for i in range(10):
        assert store.put(*full(i))
        age(tmp_path, full(i)[0], 1000 - i)  # written in order, long ago
    assert store.counters.evicted_pages == 0
    assert store.get(full(0)[0]) == full(0)[1]  # read now: the most recent
    assert store.get(full(1)[0]) == full(1)[1]
    assert store.put(*full(10))
    # down to the low-water mark (nine tenths) with the new page: two pages go
    assert store.counters.evicted_pages == 2
    assert store.counters.evicted_bytes == 2 * FILE
    gone = [i for i in range(11) if not page_file(tmp_path, full(i)[0]).exists()]
    assert gone == [2, 3]
    for i in range(11, 40):
        assert store.put(*full(i))
        assert store.stats().used <= 10 * FILE
    assert store.put(b"big", b"x" * PAGE)
    assert not DiskPages.open(str(tmp_path), FILE - 1, page_size=PAGE).put(*full(50))


def test_a_lower_capacity_applies_at_open(tmp_path: Path) -> None:
    store = DiskPages.open(str(tmp_path), 10 * FILE, page_size=PAGE)
    for i in range(10):
        store.put(*full(i))
    smaller = DiskPages.open(str(tmp_path), 5 * FILE, page_size=PAGE)
    assert smaller.stats().used <= 5 * FILE * 0.9


def test_two_daemons_share_pages_and_the_capacity(tmp_path: Path) -> None:
    a = DiskPages.open(str(tmp_path), 10 * FILE, page_size=PAGE)
    b = DiskPages.open(str(tmp_path), 10 * FILE, page_size=PAGE)
    a.put(*full(0))
    assert b.get(full(0)[0]) == full(0)[1]  # fetched by one, served to the other
    assert b.put(*full(0))  # already there: kept as it is
    for i in range(1, 40):
        assert (a if i % 2 else b).put(*full(i))
        assert a.stats().used <= 10 * FILE
    assert a.counters.evicted_pages + b.counters.evicted_pages >= 30
    assert a.get(full(0)[0]) is None
    assert a.counters.corrupt == b.counters.corrupt == 0
    held = len(files(tmp_path))
    assert a.clear() == held
    assert b.stats().pages == 0


def test_clear_removes_every_page(tmp_path: Path) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    for i in range(5):
        store.put(*full(i))
    assert store.clear() == 5
    assert files(tmp_path) == []
    assert store.stats().used == 0
    assert store.put(*full(1))
    assert store.get(full(1)[0]) == full(1)[1]


# Puts and gets of a few keys, each of two versions, in a store small enough to evict all
# the time: every page read must be its key's own bytes.
STRESS = """
import random, sys
from alluxiofuse.fs.diskpages import DiskPages
from alluxiofuse.model import Version
from tests.unit.test_diskpages import PAGE, content
store = DiskPages.open(sys.argv[1], 12 * PAGE, page_size=PAGE)
rnd = random.Random(int(sys.argv[2]))
for _ in range(300):
    key = ("src", "/f%d" % rnd.randrange(3), Version(rnd.randrange(2), 5, None), rnd.randrange(4))
    got = store.get(key)
    if got is not None and got != content(key):
        sys.exit("wrong bytes for %r" % (key,))
    store.put(key, content(key))
c = store.counters
if c.corrupt or c.errors:
    sys.exit("corrupt or errors: %r" % (c,))
print(c.hits)
"""


def test_daemons_and_threads_sharing_a_store_read_only_right_bytes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", STRESS, str(tmp_path), str(seed)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for seed in (1, 2)
    ]
    stores = [DiskPages.open(str(tmp_path), 12 * PAGE, page_size=PAGE) for _ in range(2)]
    wrong: list[str] = []

    def work(store: DiskPages, seed: int) -> None:
        keys = [("src", f"/f{f}", Version(v, 5, None), i)
                for f in range(3) for v in range(2) for i in range(4)]
        for n in range(300):
            key = keys[(seed * 7 + n * 13) % len(keys)]
            got = store.get(key)
            if got is not None and got != content(key):
                wrong.append(repr(key))
            store.put(key, content(key))

    threads = [threading.Thread(target=work, args=(stores[n % 2], n)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    hits = sum(s.counters.hits for s in stores)
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        hits += int(out)
    assert not wrong
    assert hits > 0
    assert all(s.counters.corrupt == s.counters.errors == 0 for s in stores)
    assert stores[0].stats().used <= 12 * PAGE


def statvfs(free: int, total: int = 1_000_000) -> Callable[[str], SimpleNamespace]:
    return lambda path: SimpleNamespace(f_blocks=total, f_frsize=1, f_bavail=free)


def test_a_disk_near_its_floor_makes_a_put_evict(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    for i in range(12):
        store.put(*full(i))
        age(tmp_path, full(i)[0], 1000 - i)
    # The floor is 5% of the disk, 50,000 bytes, plus room for 8 pages being written (of
    # 1,001 bytes with the block rounding): the page would go 600 bytes under that.
    monkeypatch.setattr(diskpages.os, "statvfs", statvfs(50_000 + 8 * 1001 + FILE - 600))
    assert store.put(*full(20))
    gone = [i for i in range(12) if not page_file(tmp_path, full(i)[0]).exists()]
    # The oldest first, the 600 bytes and 8 pages' room more (so that the next puts do not
    # each evict one): 8,600 bytes are 9 files of 1,028.
    assert gone == list(range(9))


@pytest.mark.expect_log(r"disk is nearly full", count=1)
def test_a_full_disk_skips_the_put_when_eviction_cannot_help(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    store.put(*full(0))
    monkeypatch.setattr(diskpages.os, "statvfs", statvfs(40_000))  # others filled the disk
    assert not store.put(*full(1))
    assert not store.put(*full(2))
    assert store.counters.evicted_pages == 0  # evicting would not have made the room
    assert store.get(full(0)[0]) == full(0)[1]
    assert files(tmp_path) == [page_file(tmp_path, full(0)[0]).name]


def fail_rename(src: str, dst: str) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fail_write(fd: int, data: object) -> int:
    raise OSError(errno.EIO, os.strerror(errno.EIO))


@pytest.mark.parametrize(
    ("name", "fail", "message"),
    [("rename", fail_rename, "No space left"), ("writev", fail_write, "Input/output error")],
)
def test_a_failing_disk_makes_put_return_false_and_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expect_log: Callable[..., None],
    name: str, fail: Callable[..., object], message: str,
) -> None:
    expect_log(rf"cannot write a page: .*{message}", count=1)
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    store.put(*full(0))
    monkeypatch.setattr(diskpages.os, name, fail)
    assert not store.put(*full(1))
    assert not store.put(*full(2))
    assert store.counters.errors == 2
    monkeypatch.undo()
    assert files(tmp_path) == [page_file(tmp_path, full(0)[0]).name]  # no temporary left
    assert store.get(full(0)[0]) == full(0)[1]
    assert store.stats().used == FILE
    assert counted(tmp_path) == FILE  # what the failed puts reserved is given back
    assert store.put(*full(1))


@pytest.mark.expect_log(r"cannot reserve room: .*Read-only", count=1)
def test_a_read_only_store_still_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DiskPages.open(str(tmp_path), 1 << 20, page_size=PAGE)
    store.put(*full(0))
    age(tmp_path, full(0)[0], 1000)
    real_open = os.open

    def read_only(path: str, flags: int, *args: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_open(path, flags, *args)

    monkeypatch.setattr(diskpages.os, "open", read_only)
    assert not store.put(*full(1))
    assert not store.put(*full(2))
    assert store.get(full(0)[0]) == full(0)[1]


def test_a_store_removed_under_its_daemon_is_made_again(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = DiskPages.open(str(root), 1 << 20, page_size=PAGE)
    assert store.put(*full(0))
    shutil.rmtree(root)
    assert store.get(full(0)[0]) is None
    assert store.put(*full(1))
    assert store.get(full(1)[0]) == full(1)[1]
    assert counted(root) == FILE
