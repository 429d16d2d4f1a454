"""Memory: the budget holds while reading far more than it, comes from the cgroup limit by
default, and the page cache shrinks when the process nears that limit."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.checklogs import watch
from tests.support.mounts import (
    DAEMON,
    REPO,
    Mount,
    MountFactory,
    ismount,
    with_timeout,
)

pytestmark = pytest.mark.integration

MiB = 1 << 20


def _dataset(root: Path, files: int, size: int) -> list[Path]:
    """``files`` distinct files of ``size`` bytes, cheap to make: a random block, varied."""
    root.mkdir()
    block = os.urandom(MiB)
    paths = []
    for i in range(files):
        path = root / f"shard-{i:03d}.bin"
        with open(path, "wb") as f:
            for j in range(size // MiB):
                f.write(i.to_bytes(4, "little") + j.to_bytes(4, "little") + block[8:])
        paths.append(path)
    return paths


def _read_all(mount: Path, source: Path, names: list[str], *, scattered: int) -> None:
    """Read the first half of ``names`` in order, one thread each, and ``scattered`` reads
    of 64 KiB at random offsets of the other half from 4 threads; check every byte against
    ``source``. Pages a sequential reader has read through leave the page cache (the kernel
    holds them); the scattered reads' pages stay, so they are what fills the cache."""
    half = len(names) // 2
    errors: list[BaseException] = []

    def sequential(name: str) -> None:
        try:
            with open(mount / name, "rb") as f, open(source / name, "rb") as g:
                while chunk := f.read(4 * MiB):
                    assert chunk == g.read(len(chunk)), name
        except BaseException as e:  # reported by the caller
            errors.append(e)

    def scatter(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(scattered // 4):
                name = rng.choice(names[half:])
                offset = rng.randrange(0, (source / name).stat().st_size - 65536)
                with open(mount / name, "rb") as f, open(source / name, "rb") as g:
                    f.seek(offset)
                    g.seek(offset)
                    assert f.read(65536) == g.read(65536), (name, offset)
        except BaseException as e:  # reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=sequential, args=(name,)) for name in names[:half]]
    threads += [threading.Thread(target=scatter, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive()
    assert not errors, errors


def _peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_peak_rss_stays_within_budget_reading_eight_times_the_budget(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    names = [p.name for p in _dataset(src, 8, 64 * MiB)]  # 512 MiB through a 64 MiB budget
    m = mount(src, "--memory-budget", "64MiB")
    assert m.scrape()("alluxiofuse_memory_budget_bytes") == 64 * MiB
    with_timeout(lambda: _read_all(m.path, src, names, scattered=400), 300)
    scrape = m.scrape()
    peak = _peak_rss(m.proc.pid)
    assert peak <= 64 * MiB + 150 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    # Every byte went through the cache, which filled and stayed within its bound.
    through = (scrape("alluxiofuse_page_cache_miss_bytes_total")
               + scrape("alluxiofuse_readahead_used_bytes_total"))
    assert through >= 256 * MiB + 100 * MiB
    assert scrape("alluxiofuse_page_cache_evicted_bytes_total") >= 64 * MiB
    assert scrape("alluxiofuse_page_cache_bytes") <= 64 * MiB


# -- under a cgroup memory limit


class MemoryCgroup:
    """A memory cgroup of our own with a limit, v1 or v2, whichever this kernel mounts."""

    def __init__(self, name: str, limit: int) -> None:
        v2_root = Path("/sys/fs/cgroup")
        if "memory" in _read(v2_root / "cgroup.controllers").split():
            self.path = v2_root / name
            limit_file, self._events = "memory.max", "memory.events"
        else:  # v1: the memory hierarchy, below the cgroup this test runs in
            own = next(line.split(":", 2)[2] for line in _read(Path("/proc/self/cgroup"))
                       .splitlines() if "memory" in line.split(":")[1].split(","))
            self.path = Path("/sys/fs/cgroup/memory") / own.strip("/") / name
            limit_file, self._events = "memory.limit_in_bytes", "memory.oom_control"
        self.path.mkdir()
        try:
            (self.path / limit_file).write_text(str(limit))
        except OSError:
            self.path.rmdir()
            raise

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer has killed in this cgroup."""
        for line in (self.path / self._events).read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == "oom_kill":
                return int(value)
        raise AssertionError(f"no oom_kill count in {self.path / self._events}")

    def enter(self) -> None:
        """Move the calling process in (run in the child, before exec)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def remove(self) -> None:
        deadline = time.monotonic() + 10
        while True:
            try:
                self.path.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


@pytest.fixture
def cgroup_mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[object]:
    cleanup = contextlib.ExitStack()  # each step undone, even if an earlier undo fails

    def start(src: Path, limit: int, *options: str) -> tuple[Mount, MemoryCgroup]:
        n = len(list(tmp_path.glob("mnt*")))
        group = MemoryCgroup(f"alluxiofuse-test-{os.getpid()}-{n}", limit)
        cleanup.callback(group.remove)
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        log = tmp_path / f"daemon{n}.log"
        args = ["mount", str(src), str(mnt), "-f", "--log-file", str(log), "--metrics-addr",
                "127.0.0.1:0", "--cache-dir", str(tmp_path / "cache"), "--strict", *options]
        proc = subprocess.Popen([*DAEMON, *args], cwd=REPO, preexec_fn=group.enter,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        m = Mount(mnt, str(src), proc, log)
        cleanup.callback(m.close)
        watch(request.node, log)
        deadline = time.monotonic() + 30
        while not ismount(mnt):
            assert proc.poll() is None, m.log_text()
            assert time.monotonic() < deadline, m.log_text()
            time.sleep(0.05)
        return m, group

    with cleanup:
        yield start


def test_default_budget_is_half_the_cgroup_limit(cgroup_mount: object, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m, _ = cgroup_mount(src, 700 * MiB)  # type: ignore[operator]
    scrape = m.scrape()
    assert scrape("alluxiofuse_memory_budget_bytes") == 350 * MiB
    assert scrape("alluxiofuse_page_cache_capacity_bytes") == 350 * MiB


@pytest.mark.expect_log(r"^memory budget 200 MiB .* exceeds 90% of the cgroup memory", count=1)
def test_near_the_cgroup_limit_the_cache_shrinks_instead(
    cgroup_mount: object, tmp_path: Path,
) -> None:
    """A budget too large for the cgroup: the process keeps under 90% of the limit by
    giving up cache, instead of growing into the kernel's reclaim and OOM killer."""
    src = tmp_path / "src"
    names = [p.name for p in _dataset(src, 6, 64 * MiB)]
    limit = 224 * MiB
    m, group = cgroup_mount(src, limit, "--memory-budget", "200MiB")  # type: ignore[operator]
    # The scattered reads alone bring more pages than the cache may hold here.
    with_timeout(lambda: _read_all(m.path, src, names, scattered=600), 300)
    scrape = m.scrape()
    assert m.proc.poll() is None  # not OOM-killed
    assert scrape("alluxiofuse_memory_pressure_shrinks_total") >= 1
    assert scrape("alluxiofuse_page_cache_capacity_bytes") < 200 * MiB
    assert scrape("alluxiofuse_page_cache_evicted_bytes_total") > 0  # it was full
    peak = _peak_rss(m.proc.pid)
    assert peak <= limit * 9 // 10 + 16 * MiB, f"peak RSS {peak / MiB:.0f} MiB"
    assert m.proc.poll() is None
    assert group.oom_kills() == 0  # the OOM killer never had to act
