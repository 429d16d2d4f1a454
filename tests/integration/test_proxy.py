"""An Alluxio 2.x namespace mounted through its proxy (``alluxio-proxy://``), for real.

The proxy is tests/sim/proxy.py in a process of its own, over a directory that stands for
the cluster's under-storage: what it holds after a write says what was persisted.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.test_names import AWKWARD
from tests.support.mounts import (
    CLI,
    MountFactory,
    ProxySimFactory,
    errno_of,
    read_bytes,
    run,
    with_timeout,
)

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _utf8(name: bytes) -> bool:
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


UTF8_NAMES = [n for n in AWKWARD if _utf8(n)]
NOT_UTF8 = [n for n in AWKWARD if not _utf8(n)]


def prefixed(prefix: bytes, name: bytes) -> bytes:
    """``prefix + name``, whole characters of ``name`` dropped to stay within 255 bytes."""
    text = name.decode()
    while len(prefix) + len(text.encode()) > 255:
        text = text[:-1]
    return prefix + text.encode()


def wait_for(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s: {check}")
        time.sleep(0.05)


def drop_kernel_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_a_sequential_read_is_one_stream_and_every_stream_is_closed(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    data = random.Random(1).randbytes(20 * MiB + 77)
    (ufs / "big.bin").write_bytes(data)
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--dir-readahead", "0")
    before = sim.stats()

    def read_all() -> bytes:
        with open(m.path / "big.bin", "rb", buffering=0) as f:
            return f.read()

    assert with_timeout(read_all, 60) == data
    after = sim.stats()
    # One stream carried the whole file, read-ahead and the kernel's requests included.
    assert after["streams_opened"] - before["streams_opened"] == 1
    assert after["bytes_read"] - before["bytes_read"] == len(data)
    wait_for(lambda: sim.stats()["streams_open"] == 0)


def test_random_reads_reopen_and_advance_and_leave_no_stream_open(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    data = random.Random(2).randbytes(6 * MiB + 3)
    (ufs / "f.bin").write_bytes(data)
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--max-readahead", "1MiB")
    rng = random.Random(3)
    fd = os.open(m.path / "f.bin", os.O_RDONLY)
    try:
        for _ in range(40):
            offset, length = rng.randrange(len(data)), rng.randrange(1, 300_000)
            got = with_timeout(lambda o=offset, n=length: os.pread(fd, n, o), 30)
            assert got == data[offset:offset + length], (offset, length)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert sim.stats()["streams_opened"] > 1, "going back takes a new stream"
    finally:
        os.close(fd)
    wait_for(lambda: sim.stats()["streams_open"] == 0)


def test_a_stream_the_proxy_expired_is_reopened(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    data = random.Random(4).randbytes(8 * MiB)
    (ufs / "f.bin").write_bytes(data)
    sim = proxy_sim(ufs, "--stream-timeout", "1")
    m = mount(sim.source(), "--max-readahead", "1MiB", "--page-cache-size", "4MiB",
              "--kernel-readahead", "0")
    with open(m.path / "f.bin", "rb", buffering=0) as f:
        assert with_timeout(lambda: f.read(MiB), 30) == data[:MiB]
        time.sleep(2.5)  # the proxy expires the stream under the open file
        rest = with_timeout(f.read, 60)
    assert rest == data[MiB:]
    assert sim.stats()["streams_expired"] >= 1


def test_names_round_trip_and_names_alluxio_cannot_hold_are_einval(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    (ufs / "files").mkdir(parents=True)
    for i, name in enumerate(UTF8_NAMES):
        (ufs / "files" / os.fsdecode(name)).write_bytes(b"%d:" % i + name)
    sim = proxy_sim(ufs)
    m = mount(sim.source())
    mnt = os.fsencode(m.path)
    listed = with_timeout(lambda: os.listdir(os.path.join(mnt, b"files")), 30)
    assert sorted(listed) == sorted(UTF8_NAMES)  # type: ignore[type-var]
    for i, name in enumerate(UTF8_NAMES):
        assert read_bytes(os.path.join(mnt, b"files", name)) == b"%d:" % i + name
        new = os.path.join(mnt, prefixed(b"new-", name))
        with open(new, "wb") as f:
            f.write(name)
        os.rename(new, os.path.join(mnt, prefixed(b"moved-", name)))
    for name in UTF8_NAMES:
        assert (ufs / os.fsdecode(prefixed(b"moved-", name))).read_bytes() == name
        os.unlink(os.path.join(mnt, prefixed(b"moved-", name)))
    for name in NOT_UTF8:
        assert errno_of(lambda n=name: open(os.path.join(mnt, n), "wb").close()) == errno.EINVAL
    assert sorted(os.listdir(ufs)) == ["files"]


@pytest.mark.parametrize("write_type", ["THROUGH", "CACHE_THROUGH", "MUST_CACHE",
                                        "ASYNC_THROUGH"])
def test_write_types_land_where_they_say(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path, write_type: str,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--write-type", write_type, "--attr-timeout", "0",
              "--entry-timeout", "0", "--negative-timeout", "0", "--dir-timeout", "0")
    data = random.Random(5).randbytes(3 * MiB + 11)
    (m.path / "d").mkdir()
    with open(m.path / "d" / "f.bin", "wb") as f:
        f.write(data)
    # Cached by every write type but THROUGH (asked before anything reads it back).
    status = json.loads(run([*CLI, "setattr", sim.source("d/f.bin"), "--pin"]).stdout)
    assert status["in_alluxio_percent"] == (0 if write_type == "THROUGH" else 100)
    os.chmod(m.path / "d" / "f.bin", 0o600)
    drop_kernel_cache(m.path / "d" / "f.bin")
    assert read_bytes(m.path / "d" / "f.bin") == data
    assert os.stat(m.path / "d" / "f.bin").st_mode & 0o777 == 0o600
    persisted = ufs / "d" / "f.bin"
    if write_type in ("THROUGH", "CACHE_THROUGH"):
        assert persisted.read_bytes() == data, "persisted by the time close returned"
    elif write_type == "ASYNC_THROUGH":
        wait_for(lambda: persisted.exists() and persisted.read_bytes() == data)
    else:
        assert not persisted.exists(), "MUST_CACHE: in Alluxio storage alone"
    # A fresh mount of the namespace reads it back (MUST_CACHE: from Alluxio storage).
    m2 = mount(sim.source())
    assert read_bytes(m2.path / "d" / "f.bin") == data
    assert not list(ufs.rglob(".alluxiofuse-*")), "no temporary file left behind"


@pytest.mark.expect_log(r"^read: ServerError: simulated failure \(INTERNAL\)$")
@pytest.mark.expect_log(r"^read: ConnectionDropped: \S+/streams/\d+/read: closed without a reply")
@pytest.mark.expect_log(r"^getattr: BackendTimeout: \S+/get-status: no answer within 3s$", count=1)
def test_a_proxy_error_is_the_errno_it_stands_for_and_the_mount_lives_on(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    (ufs / "f").write_bytes(b"hello")
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--attr-timeout", "0", "--entry-timeout", "0",
              "--negative-timeout", "0", "--dir-timeout", "0", "--io-timeout", "3",
              strict=False)
    sim.faults(error="PERMISSION_DENIED", routes=["get-status"])
    assert errno_of(lambda: os.stat(m.path / "f")) == errno.EACCES
    sim.faults(error="UNAVAILABLE", routes=["get-status"], count=2)  # retried: it passes
    assert os.stat(m.path / "f").st_size == 5
    sim.faults(error="INTERNAL", routes=["open-file"])
    assert errno_of(lambda: read_bytes(m.path / "f")) == errno.EIO
    sim.faults(drop=True, routes=["read"])
    assert errno_of(lambda: read_bytes(m.path / "f")) == errno.EIO
    sim.faults(stall=True, routes=["get-status"])
    started = time.monotonic()
    assert errno_of(lambda: os.stat(m.path / "f"), timeout=30) == errno.EIO
    assert time.monotonic() - started < 15, "bounded by --io-timeout"
    sim.faults()
    assert read_bytes(m.path / "f") == b"hello"
    assert m.proc.poll() is None


@pytest.mark.expect_log(r"^fsync: BackendUnavailable: \S+/create-file: cannot connect", count=1)
@pytest.mark.expect_log(r"^flush: BackendUnavailable: \S+/create-file: cannot connect", count=1)
def test_a_proxy_that_goes_away_costs_eio_and_the_bytes_written_are_kept(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--io-timeout", "3", strict=False)
    fd = os.open(m.path / "kept.bin", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"precious")
    sim.stop()
    assert errno_of(lambda: os.fsync(fd)) == errno.EIO
    sim2 = proxy_sim(ufs, "--port", str(sim.port))
    os.fsync(fd)  # the next fsync tries again, now that the proxy is back
    os.close(fd)
    assert (ufs / "kept.bin").read_bytes() == b"precious"
    assert sim2.port == sim.port


def test_free_and_setattr_act_on_the_namespace(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    (ufs / "d").mkdir(parents=True)
    for name in ("a", "b"):
        (ufs / "d" / name).write_bytes(name.encode() * 1000)
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--write-type", "MUST_CACHE")
    for name in ("a", "b"):  # CACHE reads: cached in Alluxio afterwards
        assert read_bytes(m.path / "d" / name) == name.encode() * 1000

    def cli(*args: str, check: bool = True) -> list[dict[str, object]]:
        out = run([*CLI, *args], check=check).stdout.decode()
        return [json.loads(line) for line in out.splitlines()]

    a_uri = f"{sim.source('d/a')}"
    [a] = cli("setattr", a_uri, "--pin", "--ttl", "1h", "--ttl-action", "free")
    assert (a["pinned"], a["ttl_ms"], a["ttl_action"]) == (True, 3_600_000, "FREE")
    assert a["in_alluxio_percent"] == 100
    # Pinned: free refuses without --forced; a path inside the mount names the same file.
    refused = run([*CLI, "free", str(m.path / "d" / "a")], check=False)
    assert refused.returncode == 1 and b"pinned" in refused.stderr.lower()
    [a] = cli("free", str(m.path / "d" / "a"), "--forced")
    assert a["in_alluxio_percent"] == 0
    [d] = cli("free", str(m.path / "d"), "--recursive")
    assert d["folder"] is True
    [b] = cli("setattr", str(m.path / "d" / "b"), "--ttl", "none", "--unpin")
    assert (b["in_alluxio_percent"], b["pinned"], b["ttl_ms"]) == (0, False, -1)
    # A file only Alluxio holds cannot be freed: the proxy says why, exit 1.
    (m.path / "cached-only").write_bytes(b"x")
    failed = run([*CLI, "free", str(m.path / "cached-only")], check=False)
    assert failed.returncode == 1 and b"persist" in failed.stderr.lower()
    assert read_bytes(m.path / "d" / "a") == b"a" * 1000  # freed, still readable
    usage = run([*CLI, "setattr", str(m.path / "d" / "b")], check=False)
    assert usage.returncode == 1 and b"nothing to set" in usage.stderr
    elsewhere = run([*CLI, "free", str(tmp_path)], check=False)
    assert elsewhere.returncode == 1 and b"alluxio-proxy://" in elsewhere.stderr


def test_sigterm_drains_async_through_uploads_to_the_proxy(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--write-type", "ASYNC_THROUGH")
    files = {f"f{i}": os.urandom(100_000 + i) for i in range(10)}
    for name, data in files.items():
        (m.path / name).write_bytes(data)
    m.proc.send_signal(signal.SIGTERM)
    assert m.proc.wait(60) == 0
    for name, data in files.items():
        wait_for(lambda n=name, d=data: (ufs / n).exists() and
                 hashlib.sha256((ufs / n).read_bytes()).digest() == hashlib.sha256(d).digest())
