"""The disk page store through real mounts of an S3 source (moto on loopback): kill -9
during page writes, two daemons sharing one store, a remount, a store that fails, and a
file changed behind the mount (issue 19)."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from tests.integration.test_s3_posix import ROOT, mount_s3
from tests.support.disks import fill
from tests.support.mounts import (
    Mount,
    MountFactory,
    fusermount_u,
    read_bytes,
    wait_until,
)
from tests.support.s3server import S3Server, moto_s3

pytestmark = pytest.mark.integration

KiB, MiB = 1 << 10, 1 << 20
PAGE = 64 * KiB  # small pages: many of them per file
# The page file format of alluxiofuse/fs/diskpages.py, restated here so that the test reads
# the files as an outsider would: magic, format, key length, data length, CRC-32.
HEADER = struct.Struct("<4sB3xIQI")
MAGIC, FORMAT = b"AFPG", 1


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        server.fs().pipe_file(f"{server.bucket}/{ROOT}/", b"")
        yield server


@pytest.fixture
def gets(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """The GetObject requests moto serves from now on (it runs in this process), by key."""
    from moto.s3.responses import S3Response

    seen: Counter[str] = Counter()
    lock = threading.Lock()
    original = S3Response.get_object

    def counted(self: Any) -> Any:
        # Path-style requests (the endpoint is an address): /<bucket>/<key>.
        key = unquote(self.path).split("/", 2)[2]
        with lock:
            seen[key] += 1
        return original(self)

    monkeypatch.setattr(S3Response, "get_object", counted)
    return seen


def put_objects(s3: S3Server, sizes: dict[str, int], seed: int) -> dict[str, bytes]:
    """Objects of random bytes under ROOT, by name (relative to the mount)."""
    rng = random.Random(seed)
    content = {name: rng.randbytes(size) for name, size in sizes.items()}
    fs = s3.fs()
    for name, data in content.items():
        fs.pipe_file(f"{s3.bucket}/{ROOT}/{name}", data)
    return content


def mount_store(mount: MountFactory, s3: S3Server, store: Path, *options: str) -> Mount:
    return mount_s3(mount, s3, "--page-size", f"{PAGE // KiB}KiB",
                    "--disk-cache-dir", str(store), *options)


def disk_metrics(m: Mount) -> dict[str, float]:
    """The daemon's disk page store counters, by name (hits, misses, hit_bytes, ...)."""
    scrape = m.scrape()
    return {name: scrape(f"alluxiofuse_disk_cache_{name}_total")
            for name in ("hits", "misses", "hit_bytes", "written_bytes", "skipped_bytes",
                         "corrupt_pages", "errors")}


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before[k] for k in after}


@dataclass(frozen=True)
class PageFile:
    """One page file of the store, as read from disk."""

    file: Path
    verified: bool  # header, lengths and CRC all check
    path: str = ""  # the fields of its key, when it verified
    size: int = 0
    mtime_ns: int = 0
    etag: str = ""
    index: int = 0
    data: bytes = b""


def parse_key(key: bytes) -> list[str]:
    """The fields of a page key: b"t" then netstrings ``<length>:<bytes>,``."""
    assert key[:1] == b"t", key
    fields, rest = [], key[1:]
    while rest:
        length, rest = rest.split(b":", 1)
        n = int(length)
        assert rest[n:n + 1] == b",", key
        fields.append(rest[:n].decode("utf-8", "surrogateescape"))
        rest = rest[n + 1:]
    return fields


def read_page_file(file: Path) -> PageFile:
    raw = file.read_bytes()
    if len(raw) < HEADER.size:
        return PageFile(file, False)
    magic, fmt, key_len, data_len, crc = HEADER.unpack_from(raw)
    body = raw[HEADER.size:]
    if magic != MAGIC or fmt != FORMAT or len(body) != key_len + data_len:
        return PageFile(file, False)
    key, data = body[:key_len], body[key_len:]
    if zlib.crc32(data, zlib.crc32(key)) != crc:
        return PageFile(file, False)
    # source digest, path, size, mtime_ns, etag ("-" or "e..."), index
    _, path, size, mtime_ns, etag, index = parse_key(key)
    return PageFile(file, True, path, int(size), int(mtime_ns), etag, int(index), data)


def page_files(store: Path) -> tuple[list[PageFile], list[Path]]:
    """Every page file under ``store``/pages, read; and the temporary files there."""
    pages, tmps = [], []
    for file in sorted((store / "pages").glob("*/*")):
        if file.name.startswith(".tmp-"):
            tmps.append(file)
        else:
            pages.append(read_page_file(file))
    return pages, tmps


def name_of(path: str) -> str:
    """The name under the mount of a key's path (the daemon's path, from the source's root)."""
    return path.strip("/").removeprefix(f"{ROOT}/")


def check_pages(pages: list[PageFile], content: dict[str, bytes]) -> None:
    """Every page file verifies and holds the bytes of its file at its index."""
    torn = [p.file for p in pages if not p.verified]
    assert not torn, f"page files under their final names that do not verify: {torn}"
    for p in pages:
        data = content[name_of(p.path)]
        assert p.size == len(data), f"{p.file}: size {p.size} in its key, not {len(data)}"
        want = data[p.index * PAGE:(p.index + 1) * PAGE]
        assert p.data == want, (
            f"{p.file}: page {p.index} of {p.path} holds other bytes than the file's "
            f"({len(p.data)} bytes, {len(want)} wanted)")


def pages_of(store: Path, name: str) -> set[int]:
    """The indexes of ``name``'s pages the store holds, verified."""
    return {p.index for p in page_files(store)[0] if p.verified and name_of(p.path) == name}


def pages_in(size: int) -> int:
    return -(-size // PAGE)


def wait_written(store: Path, content: dict[str, bytes], timeout: float = 20.0) -> None:
    """Until every page of ``content`` is in the store (pages are written behind reads)."""
    def done() -> bool:
        return all(pages_of(store, name) == set(range(pages_in(len(data))))
                   for name, data in content.items())

    assert wait_until(done, timeout, interval=0.1), (
        f"not every page in the store after {timeout}s: "
        + ", ".join(f"{n}: {len(pages_of(store, n))}/{pages_in(len(d))}"
                    for n, d in content.items()))


def read_all(root: Path, content: dict[str, bytes]) -> None:
    for name, data in content.items():
        assert read_bytes(root / name) == data, f"{name}: wrong bytes"


def key_gets(gets: Counter[str], names: list[str]) -> int:
    return sum(gets[f"{ROOT}/{name}"] for name in names)


# -- kill -9 during page writes (issue 19, points 2 and 6)

ROUNDS = 5


def read_until_gone(path: Path, want: bytes, done: list[str], bad: list[str]) -> None:
    """Read ``path`` in 128 KiB chunks until it is read (then noted in ``done``) or the
    mount is gone; a chunk with wrong bytes is noted in ``bad``."""
    try:
        with open(path, "rb") as f:
            offset = 0
            while chunk := f.read(128 * KiB):
                if chunk != want[offset:offset + len(chunk)]:
                    bad.append(f"{path.name} at {offset}")
                offset += len(chunk)
        done.append(path.name)
    except OSError:  # the daemon was killed: ENOTCONN, ECONNABORTED; the read just ends
        return


def files_in(store: Path) -> int:
    """The files in the store's pages directory: pages and temporary files."""
    return sum(1 for _ in (store / "pages").glob("*/*"))


def has_files(store: Path, count: int) -> bool:
    return files_in(store) >= count


@pytest.mark.timeout(120)
def test_kill_9_during_page_writes_leaves_no_page_that_verifies_wrongly(
    s3: S3Server, mount: MountFactory, tmp_path: Path,
) -> None:
    """Daemons killed at a random moment while reads write pages behind them: every page
    file left verifies and holds its file's bytes at its index; a new daemon serves from
    them, and reads every file right."""
    store = tmp_path / "store"
    # Files of their own for each round, so that every round has pages to write.
    names = {r: [f"r{r}/f{i}" for i in range(3)] for r in range(ROUNDS)}
    content = put_objects(s3, {n: 2 * MiB + r * 4099 + i
                               for r, ns in names.items() for i, n in enumerate(ns)}, seed=1)
    rng = random.Random(2)
    bad: list[str] = []
    interrupted = 0  # rounds whose kill came before every read was done
    for r in range(ROUNDS):
        m = mount_store(mount, s3, store)
        before = files_in(store)
        done: list[str] = []
        readers = [threading.Thread(target=read_until_gone, daemon=True,
                                    args=(m.path / n, content[n], done, bad))
                   for n in names[r]]
        for t in readers:
            t.start()
        # A random moment while pages are being written: once this many more are there.
        more = rng.randint(1, 80)
        wait_until(partial(has_files, store, before + more), 10, interval=0.005)
        m.proc.send_signal(signal.SIGKILL)
        m.proc.wait(10)
        fusermount_u(m.path)  # the dead daemon's mount: ENOTCONN to whoever still reads
        for t in readers:
            t.join(10)
        assert not any(t.is_alive() for t in readers), "a reader hung on a dead mount"
        interrupted += len(done) < len(readers)
    pages, _ = page_files(store)  # temporary files left by the kills are allowed
    check_pages(pages, content)
    assert pages, "no page was written before the kills: nothing was tested"
    assert interrupted, "every read was done before its kill: no kill came mid-read"
    assert not bad, f"reads returned wrong bytes before the kills: {bad}"
    m = mount_store(mount, s3, store)
    read_all(m.path, content)
    assert disk_metrics(m)["hits"] >= len(pages)  # every page left is served


# -- a torn, truncated or corrupted page is dropped, counted and fetched again (point 2)


def test_a_corrupt_page_is_never_served(
    s3: S3Server, mount: MountFactory, tmp_path: Path, gets: Counter[str],
) -> None:
    store = tmp_path / "store"
    content = put_objects(s3, {"f": 8 * PAGE}, seed=3)
    m = mount_store(mount, s3, store)
    read_all(m.path, content)
    wait_written(store, content)
    assert m.unmount() == 0
    pages = sorted(page_files(store)[0], key=lambda p: p.index)
    # A flipped bit in the data, one in the header's lengths, a truncated file, a zeroed one.
    flipped = bytearray(pages[1].file.read_bytes())
    flipped[-100] ^= 0x01
    pages[1].file.write_bytes(flipped)
    header = bytearray(pages[2].file.read_bytes())
    header[12] ^= 0x01  # the data length
    pages[2].file.write_bytes(header)
    os.truncate(pages[3].file, pages[3].file.stat().st_size - 1)
    pages[4].file.write_bytes(bytes(pages[4].file.stat().st_size))
    m = mount_store(mount, s3, store)
    gets.clear()
    read_all(m.path, content)
    counted = disk_metrics(m)
    assert counted["corrupt_pages"] == 4
    assert counted["hits"] == len(pages) - 4
    assert gets[f"{ROOT}/f"] > 0


# -- two daemons sharing one store (point 4)


def read_checked(path: Path, want: bytes, bad: list[str]) -> None:
    try:
        got = read_bytes(path)
    except (OSError, TimeoutError) as e:
        bad.append(f"{path}: {e!r}")
        return
    if got != want:
        bad.append(f"{path}: wrong bytes")


@pytest.mark.timeout(120)
def test_two_daemons_share_a_store(
    s3: S3Server, mount: MountFactory, tmp_path: Path, gets: Counter[str],
) -> None:
    """Concurrent readers on two mounts of one source, one store: every byte right; then a
    file one daemon has read is served to the other from the store, not fetched again."""
    store = tmp_path / "store"
    shared = put_objects(s3, {f"shared/f{i}": 1 * MiB + i * 1000 for i in range(4)}, seed=4)
    # In a directory of its own: no directory read-ahead brings in a neighbour's pages.
    solo = put_objects(s3, {"solo/x": 2 * MiB + 17}, seed=5)
    a = mount_store(mount, s3, store)
    b = mount_store(mount, s3, store)
    bad: list[str] = []
    readers = []
    for i, m in enumerate((a, b, a, b)):
        order = list(shared)
        random.Random(i).shuffle(order)
        for name in order:
            readers.append(threading.Thread(target=read_checked, daemon=True,
                                            args=(m.path / name, shared[name], bad)))
    for t in readers:
        t.start()
    for t in readers:
        t.join(60)
    assert not any(t.is_alive() for t in readers)
    assert not bad
    wait_written(store, shared)
    check_pages(page_files(store)[0], shared)

    read_all(a.path, solo)
    wait_written(store, solo)
    before, gets_before = disk_metrics(b), key_gets(gets, ["solo/x"])
    read_all(b.path, solo)
    served = delta(disk_metrics(b), before)
    assert key_gets(gets, ["solo/x"]) == gets_before, "b fetched what a had stored"
    assert served["hit_bytes"] == len(solo["solo/x"])
    assert served["misses"] == 0


# -- a remount serves from the store (point 4)


def test_a_remount_serves_from_the_store(
    s3: S3Server, mount: MountFactory, tmp_path: Path, gets: Counter[str],
) -> None:
    store = tmp_path / "store"
    content = put_objects(s3, {"d/a": 1 * MiB, "d/b": 3 * PAGE + 5, "e/c": 100}, seed=6)
    m = mount_store(mount, s3, store)
    read_all(m.path, content)
    wait_written(store, content)
    assert m.unmount() == 0
    again = mount_store(mount, s3, store)
    gets.clear()
    read_all(again.path, content)
    served = disk_metrics(again)
    assert key_gets(gets, list(content)) == 0
    assert served["hit_bytes"] == sum(map(len, content.values()))
    assert served["misses"] == 0


# -- a file changed behind the mount is read anew, never from its old pages (point 1)


def stored_object(s3: S3Server, name: str) -> Any:
    """moto's own record of the object (moto runs in this process)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    return s3_backends[DEFAULT_ACCOUNT_ID]["global"].get_object(s3.bucket, f"{ROOT}/{name}")


@pytest.mark.parametrize("new_size", [4 * PAGE, 6 * PAGE + 3])
def test_a_file_changed_behind_the_mount_is_not_served_its_old_pages(
    s3: S3Server, mount: MountFactory, tmp_path: Path, gets: Counter[str], new_size: int,
) -> None:
    """The object overwritten: the mount that read it, and a new one, read the new bytes
    though the old version's pages are still on disk. Of the same size, it keeps its
    Last-Modified too (two writes within a second): only its etag tells the versions apart."""
    store = tmp_path / "store"
    old = put_objects(s3, {"f": 4 * PAGE}, seed=7)
    m = mount_store(mount, s3, store, "--attr-timeout", "0")
    read_all(m.path, old)
    wait_written(store, old)
    old_versions = {(p.size, p.mtime_ns, p.etag) for p in page_files(store)[0]}
    when = stored_object(s3, "f").last_modified
    new = put_objects(s3, {"f": new_size}, seed=8)
    if new_size == len(old["f"]):
        stored_object(s3, "f").last_modified = when
    # SIGHUP drops the daemon's memory page cache too: the old pages are only on disk.
    m.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "dropped the metadata and page caches" in m.log_text(), 10)
    gets.clear()
    read_all(m.path, new)
    assert gets[f"{ROOT}/f"] > 0
    again = mount_store(mount, s3, store)
    read_all(again.path, new)
    pages = page_files(store)[0]
    left = [p for p in pages if (p.size, p.mtime_ns, p.etag) in old_versions]
    assert len(left) == 4, "the old version's pages were not on disk: nothing was tested"
    check_pages([p for p in pages if p not in left], new)


# -- store trouble never fails a read (point 2)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 1 MiB mounted for the test (root's writes are refused only by the file
    system itself: read-only, or full)."""
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(where)],
                   check=True, timeout=30, capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30,
                       capture_output=True)


def make_read_only(disk: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True, timeout=30,
                   capture_output=True)


TROUBLE = {
    "read-only": (make_read_only, r"^disk page store .*: cannot reserve room: .*Read-only"),
    "full": (fill, r"^disk page store .*: the disk is nearly full"),
}


@pytest.mark.parametrize("trouble", TROUBLE)
def test_a_store_that_cannot_be_written_never_fails_a_read(
    s3: S3Server, small_disk: Path, mount: MountFactory, gets: Counter[str],
    expect_log: Any, trouble: str,
) -> None:
    make_trouble, warning = TROUBLE[trouble]
    expect_log(warning, count=1)
    content = put_objects(s3, {f"f{i}": 512 * KiB + i for i in range(4)}, seed=9)
    store = small_disk / "store"
    m = mount_store(mount, s3, store)
    make_trouble(small_disk)
    read_all(m.path, content)
    assert key_gets(gets, list(content)) >= len(content)
    counted = disk_metrics(m)
    assert counted["hits"] == 0
    assert counted["written_bytes"] == 0
