"""--immutable: a data set that does not change while mounted. A second epoch (walk, stat
and read of every file) reaches the daemon with no lookup: the kernel keeps names and
attributes for the mount's life. SIGHUP still shows what changed."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.support.mounts import Mount, MountFactory, Scrape, read_bytes, with_timeout

pytestmark = pytest.mark.integration

FILES = {f"d{d}/f{f:03d}": os.urandom(100 + d * 37 + f) for d in range(3) for f in range(100)}


def epoch(m: Mount) -> int:
    """Every file stat-ed and read whole by its path (as a data loader does from an index),
    then os.walk with a stat of every entry."""
    for name, content in FILES.items():
        assert (m.path / name).stat().st_size == len(content)
        assert read_bytes(m.path / name) == content
    seen = 0
    for top, dirs, files in os.walk(m.path):
        for name in dirs + files:
            os.stat(os.path.join(top, name))
        seen += len(files)
    return seen


def requests(s: Scrape, op: str) -> float:
    return s.get("alluxiofuse_fuse_op_seconds_count", 0.0, op=op)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for name, content in FILES.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(content)
    return src


@pytest.mark.parametrize("immutable", [True, False])
def test_a_second_epoch_asks_the_daemon_for_no_name(
    mount: MountFactory, data: Path, immutable: bool,
) -> None:
    """Past the timeouts a mount would otherwise use (the control: 0.5 s, which makes the
    second epoch look every name up again), an immutable mount's second epoch sends no
    LOOKUP; the only GETATTRs are the root's, which the kernel keeps for 1 s
    (so that a dead daemon shows). Opens and directory reads still reach the daemon."""
    options = (["--immutable"] if immutable else
               ["--attr-timeout", "0.5", "--entry-timeout", "0.5", "--dir-timeout", "0.5"])
    m = mount(data, *options)
    assert with_timeout(lambda: epoch(m), 60) == len(FILES)
    time.sleep(1.5)
    before, start = m.scrape(), time.monotonic()
    assert with_timeout(lambda: epoch(m), 60) == len(FILES)
    after, seconds = m.scrape(), time.monotonic() - start
    lookups = requests(after, "lookup") - requests(before, "lookup")
    getattrs = requests(after, "getattr") - requests(before, "getattr")
    # READs are not asserted: pages are kept by version with or without --immutable, and
    # the kernel reclaims some of them on a busy machine (1 to 7 of the 300 files were read
    # again in about 1 run in 5: exactly those whose pages it had reclaimed).
    if immutable:
        assert lookups == 0
        assert getattrs <= 2 + seconds  # the root's, at most once a second
    else:
        assert lookups >= len(FILES)


def test_sighup_shows_what_changed_under_an_immutable_mount(
    mount: MountFactory, data: Path,
) -> None:
    m = mount(data, "--immutable")
    assert epoch(m) == len(FILES)
    (data / "d0" / "f000").write_bytes(b"changed")
    (data / "d0" / "new").write_bytes(b"new")
    time.sleep(0.2)
    assert read_bytes(m.path / "d0" / "f000") == FILES["d0/f000"]  # kept, as promised
    assert not (m.path / "d0" / "new").exists()
    m.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "dropped the metadata and page caches" not in m.log_text():
        assert time.monotonic() < deadline, m.log_text()
        time.sleep(0.05)
    assert read_bytes(m.path / "d0" / "f000") == b"changed"
    assert read_bytes(m.path / "d0" / "new") == b"new"
