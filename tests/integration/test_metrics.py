"""The metrics endpoint of a live mount: known reads and writes move the numbers by known
amounts; /healthz and /readyz follow the mount and its backend."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.support.flakyfs import clear_failure, set_failure
from tests.support.mounts import Mount, MountFactory, Scrape, with_timeout

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _read(path: Path, limit: int = -1) -> bytes:
    """Read ``path`` (at most ``limit`` bytes) after dropping the kernel's cached copy, so
    that every byte is asked of the daemon."""
    def go() -> bytes:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            with os.fdopen(os.dup(fd), "rb") as f:
                return f.read(limit)
        finally:
            os.close(fd)
    return with_timeout(go, 30)  # type: ignore[return-value]


def _delta(before: Scrape, after: Scrape, name: str, **labels: str) -> float:
    """How far a sample moved; it must be exported afterwards (before, it may not be yet)."""
    return after(name, **labels) - before.get(name, 0.0, **labels)


def _eventually(m: Mount, check: Callable[[Scrape], bool], timeout: float = 20) -> Scrape:
    deadline = time.monotonic() + timeout
    while not check(scrape := m.scrape()):
        if time.monotonic() > deadline:
            raise AssertionError(f"metrics never got there: {scrape.samples}")
        time.sleep(0.1)
    return scrape


def _files(src: Path, sizes: dict[str, int]) -> None:
    src.mkdir()
    for name, size in sizes.items():
        (src / name).write_bytes(os.urandom(size))


def test_page_cache_hits_and_misses_move_by_the_bytes_read(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    size = 3 * MiB + 100  # three whole pages and a short one
    _files(src, {"a.bin": size})
    m = mount(src, "--memory-budget", "64MiB", "--max-readahead", "0", "--dir-readahead", "0")
    s0 = m.scrape()
    assert _read(m.path / "a.bin") == (src / "a.bin").read_bytes()
    s1 = m.scrape()
    assert _delta(s0, s1, "alluxiofuse_page_cache_miss_bytes_total") == size
    assert _delta(s0, s1, "alluxiofuse_fuse_op_seconds_count", op="open") == 1
    assert _delta(s0, s1, "alluxiofuse_fuse_op_seconds_count", op="read") >= 1
    assert _read(m.path / "a.bin") == (src / "a.bin").read_bytes()
    s2 = m.scrape()
    assert _delta(s1, s2, "alluxiofuse_page_cache_miss_bytes_total") == 0
    assert _delta(s1, s2, "alluxiofuse_page_cache_hit_bytes_total") == size
    assert _delta(s1, s2, "alluxiofuse_fuse_op_seconds_count", op="open") == 1
    # Gauges: the budget as given, and what the cache holds now.
    assert s2("alluxiofuse_memory_budget_bytes") == 64 * MiB
    assert s2("alluxiofuse_page_cache_capacity_bytes") == 64 * MiB
    assert s2("alluxiofuse_page_cache_bytes") == size
    assert s2("alluxiofuse_memory_used_bytes") == size  # nothing in flight at rest
    assert s2("alluxiofuse_readahead_used_bytes_total") == 0
    assert s2("process_resident_memory_bytes") > 20 * MiB


def test_readahead_used_wasted_evictions_and_sighup(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    _files(src, {"b.bin": 8 * MiB, "c.bin": 16 * MiB, "d.bin": 24 * MiB})
    m = mount(src, "--page-cache-size", "64MiB", "--dir-readahead", "0")
    s0 = m.scrape()
    _read(m.path / "b.bin")
    s1 = m.scrape()
    # Every page was fetched once: on demand (a miss) or ahead of the reader (used).
    used = _delta(s0, s1, "alluxiofuse_readahead_used_bytes_total")
    assert used > 0
    assert used + _delta(s0, s1, "alluxiofuse_page_cache_miss_bytes_total") == 8 * MiB

    # Read-ahead past where the reader stops is wasted once dropped: SIGHUP drops it.
    assert len(_read(m.path / "c.bin", 3 * MiB)) == 3 * MiB
    s2 = _eventually(m, lambda s: s("alluxiofuse_readahead_used_bytes_total") > used
                     and s.get("alluxiofuse_fuse_op_seconds_count", 0, op="read") > 0)
    held = s2("alluxiofuse_page_cache_bytes")
    assert held > 0  # pages of c fetched ahead (b and the start of c, read through, left)
    m.proc.send_signal(signal.SIGHUP)
    s3 = _eventually(m, lambda s: s("alluxiofuse_cache_drops_total") == 1)
    assert s3("alluxiofuse_page_cache_bytes") == 0
    wasted = _delta(s2, s3, "alluxiofuse_readahead_wasted_bytes_total")
    assert 0 < wasted <= 16 * MiB - 3 * MiB
    assert _delta(s2, s3, "alluxiofuse_page_cache_evicted_bytes_total") == 0  # dropped, not evicted
    # After the drop, the bytes read are fetched from the source again.
    _read(m.path / "b.bin", 1 * MiB)
    s4 = m.scrape()
    assert (_delta(s3, s4, "alluxiofuse_page_cache_miss_bytes_total")
            + _delta(s3, s4, "alluxiofuse_readahead_used_bytes_total")) >= 1 * MiB

    # A file larger than a small cache, read backwards (so that no page is read through in
    # order and dropped), evicts what it read first.
    small = mount(src, "--page-cache-size", "8MiB", "--dir-readahead", "0")
    before = small.scrape()
    _read_backwards(small.path / "d.bin")
    after = small.scrape()
    fetched = (_delta(before, after, "alluxiofuse_page_cache_miss_bytes_total")
               + _delta(before, after, "alluxiofuse_readahead_used_bytes_total"))
    assert fetched == 24 * MiB
    assert after("alluxiofuse_page_cache_bytes") <= 8 * MiB
    assert _delta(before, after, "alluxiofuse_page_cache_evicted_bytes_total") >= 24 * MiB - 8 * MiB


def _read_backwards(path: Path) -> None:
    def go() -> None:
        with open(path, "rb") as f:
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            for offset in reversed(range(0, os.fstat(f.fileno()).st_size, MiB)):
                f.seek(offset)
                f.read(MiB)
    with_timeout(go, 30)


def test_errors_by_op_and_errno_and_the_handle_gauges(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "full").mkdir(parents=True)
    (src / "full" / "x").write_bytes(b"x")
    (src / "f").write_bytes(b"f")
    m = mount(src)
    s0 = m.scrape()
    assert not os.path.exists(m.path / "missing")  # a negative entry: not an error
    with pytest.raises(OSError, match="not supported"):
        os.setxattr(m.path / "f", "user.x", b"1")
    with pytest.raises(OSError, match="not empty"):
        os.rmdir(m.path / "full")
    files = [open(m.path / "f", "rb") for _ in range(3)]  # noqa: SIM115
    try:
        s1 = m.scrape()
        assert _delta(s0, s1, "alluxiofuse_fuse_errors_total", op="setxattr", errno="ENOTSUP") == 1
        assert _delta(s0, s1, "alluxiofuse_fuse_errors_total", op="rmdir", errno="ENOTEMPTY") == 1
        errors = "alluxiofuse_fuse_errors_total"
        assert s1.sum(errors) - s0.sum(errors) == 2
        assert _delta(s0, s1, "alluxiofuse_open_handles") == 3
        assert s1("alluxiofuse_inodes") >= 3  # the root, full/ and f at least
    finally:
        for f in files:
            f.close()
    # The kernel sends RELEASE after close returns.
    _eventually(m, lambda s: s("alluxiofuse_open_handles") == s0("alluxiofuse_open_handles"))


@pytest.mark.expect_log(r"^upload of one failed \(BackendError: .*injected failure in open_write\)")
@pytest.mark.expect_log(r"^upload of two failed \(BackendError: .*injected failure in open_write\)")
def test_pending_uploads_and_upload_failures(mount: MountFactory, tmp_path: Path) -> None:
    src, control = tmp_path / "src", str(tmp_path / "control.json")
    src.mkdir()
    set_failure(control, ["open_write"])
    m = mount(f"flaky://{src}", f"--ufs-option=control={control}",
              "--write-type", "ASYNC_THROUGH")
    (m.path / "one").write_bytes(b"1" * 1000)
    (m.path / "two").write_bytes(b"2" * 5000)
    s = _eventually(m, lambda s: s("alluxiofuse_upload_failures_total") >= 2)
    assert s("alluxiofuse_pending_uploads") == 2
    assert s("alluxiofuse_pending_upload_bytes") == 6000
    clear_failure(control)
    _eventually(m, lambda s: s("alluxiofuse_pending_uploads") == 0, timeout=30)
    assert (src / "two").read_bytes() == b"2" * 5000


@pytest.mark.expect_log(r"^backend flaky://\S+: BackendError: .*injected failure in info$", count=1)
def test_healthz_and_readyz_follow_the_backend(mount: MountFactory, tmp_path: Path) -> None:
    src, control = tmp_path / "src", str(tmp_path / "control.json")
    src.mkdir()
    clear_failure(control)
    m = mount(f"flaky://{src}", f"--ufs-option=control={control}")
    url = m.metrics_url()
    assert httpx.get(url + "/readyz", timeout=10).status_code == 200
    set_failure(control, ["info"])
    deadline = time.monotonic() + 30  # the backend is probed every 10 s
    while (r := httpx.get(url + "/readyz", timeout=10)).status_code == 200:
        assert time.monotonic() < deadline, "never reported the backend failing"
        time.sleep(0.2)
    assert r.status_code == 503
    assert "backend unreachable" in r.text and "injected failure" in r.text
    assert httpx.get(url + "/healthz", timeout=10).status_code == 200
    clear_failure(control)
    deadline = time.monotonic() + 30
    while httpx.get(url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "never became ready again"
        time.sleep(0.2)
    assert "backend flaky" in m.log_text() and "reachable again" in m.log_text()
