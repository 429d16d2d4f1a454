"""Reads through the mount return the source's bytes: concurrent, random, sequential, large.

Each test runs on a local source and on the same directory behind a simulated Alluxio 2.x
proxy (an ``alluxio-proxy://`` source: every read a stream of the proxy's).
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.mounts import MountFactory, ProxySimFactory, with_timeout

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture(params=["local", "proxy"])
def served(request: pytest.FixtureRequest, proxy_sim: ProxySimFactory) -> Callable[[Path], str]:
    """How a test's source directory is mounted: as it is, or through an Alluxio proxy."""
    if request.param == "local":
        return str
    return lambda src: proxy_sim(src).source()


def test_concurrent_random_reads_with_eviction(
    served: Callable[[Path], str], mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    rng = random.Random(7)
    sizes = {"a.bin": 3 * MiB + 13, "b.bin": 7 * MiB + 1, "c.bin": 12 * MiB - 5,
             "d.bin": 20 * MiB}
    content = {}
    for name, size in sizes.items():
        content[name] = rng.randbytes(size)
        (src / name).write_bytes(content[name])
    # 42 MiB of files over a 16 MiB page cache: pages are evicted and fetched again.
    m = mount(served(src), "--page-size", "1MiB", "--page-cache-size", "16MiB")

    errors: list[str] = []
    reads_done = [0]
    lock = threading.Lock()

    def worker(seed: int) -> None:
        r = random.Random(seed)
        fds = {name: os.open(m.path / name, os.O_RDONLY) for name in sizes}
        try:
            for i in range(120):
                name = r.choice(list(sizes))
                size = sizes[name]
                if r.random() < 0.5:  # straddle a page boundary
                    boundary = r.randint(1, size // MiB) * MiB
                    offset = max(0, boundary - r.randint(1, 64 * 1024))
                    length = r.randint(boundary - offset + 1, boundary - offset + 2 * MiB)
                else:
                    offset = r.randint(0, size - 1)
                    length = r.randint(1, 3 * MiB)
                if r.random() < 0.05:  # sometimes read past the end
                    offset = size - r.randint(0, 100)
                got = os.pread(fds[name], length, offset)
                want = content[name][offset:offset + length]
                if got != want:
                    same = next((i for i, (a, b) in enumerate(zip(got, want, strict=False))
                                 if a != b), min(len(got), len(want)))
                    errors.append(f"{name}[{offset}:+{length}]: {len(got)} bytes, "
                                  f"want {len(want)}, first difference at {same}")
                    return
                if i % 10 == 0:  # drop the kernel's copy so reads reach the daemon again
                    os.posix_fadvise(fds[name], 0, 0, os.POSIX_FADV_DONTNEED)
                with lock:
                    reads_done[0] += 1
        except OSError as e:
            errors.append(f"{type(e).__name__}: {e}")
        finally:
            for fd in fds.values():
                os.close(fd)

    threads = [threading.Thread(target=worker, args=(seed,), daemon=True) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "reads hung"
    assert not errors, errors[:5]
    assert reads_done[0] == 8 * 120
    assert m.proc.poll() is None


def test_sequential_read_of_50mib_file(
    served: Callable[[Path], str], mount: MountFactory, tmp_path: Path,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = random.Random(3).randbytes(50 * MiB)
    (src / "big.bin").write_bytes(data)
    m = mount(served(src), "--page-cache-size", "16MiB")

    def read_sha(path: Path, chunk: int) -> tuple[int, str]:
        h = hashlib.sha256()
        total = 0
        with open(path, "rb", buffering=0) as f:
            while block := f.read(chunk):
                h.update(block)
                total += len(block)
        return total, h.hexdigest()

    want = (len(data), hashlib.sha256(data).hexdigest())
    assert with_timeout(lambda: read_sha(m.path / "big.bin", 128 * 1024), 60) == want
    # Once more in odd-sized chunks, the kernel's copy dropped first.
    fd = os.open(m.path / "big.bin", os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.close(fd)
    assert with_timeout(lambda: read_sha(m.path / "big.bin", 1_000_003), 60) == want
    assert os.stat(m.path / "big.bin").st_size == len(data)
