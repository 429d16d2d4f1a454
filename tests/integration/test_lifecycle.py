"""The daemon's life: signals finish what is in flight and keep written bytes, SIGHUP
drops the caches, and a mount whose daemon was killed is cleared by ``alluxiofuse umount``."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.flakyfs import clear_failure, set_failure
from tests.support.mounts import (
    CLI,
    MountFactory,
    errno_of,
    fusermount_u,
    ismount,
    read_bytes,
    run,
    wait_until,
)

pytestmark = pytest.mark.integration


def waits_for_fuse(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in the kernel (state D: a read waiting for the page
    that a FUSE READ fills, or for the answer to a FUSE request)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "D"
    except OSError:
        return False


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_a_signal_lets_requests_in_flight_finish(
    mount: MountFactory, tmp_path: Path, signum: int,
) -> None:
    src, control = tmp_path / "src", str(tmp_path / "control.json")
    src.mkdir()
    data = os.urandom(4000)  # one READ request
    (src / "f").write_bytes(data)
    clear_failure(control)
    m = mount(f"flaky://{src}", f"--ufs-option=control={control}")
    # The read waits on the source: so does the fetch of the first page that the open
    # starts (set after the open, the fetch could be done before it took effect).
    set_failure(control, ["cat_file"], mode="hang")
    f = open(m.path / "f", "rb")  # noqa: SIM115 (closed below, after the daemon is gone)
    got: list[bytes] = []
    # One read(2) of exactly the file: one READ request. (A second read(2), at the end of
    # the file, would make the kernel ask for the attributes again: a new request, which
    # a stopping daemon no longer takes.)
    reader = threading.Thread(target=lambda: got.append(os.pread(f.fileno(), len(data), 0)),
                              daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: waits_for_fuse(reader), 10)  # the READ reached the daemon
        m.proc.send_signal(signum)
        time.sleep(0.5)
        assert m.proc.poll() is None  # waiting for the read it is serving
        clear_failure(control)
        reader.join(30)
        assert got == [data]
        assert m.proc.wait(30) == 0
        assert not ismount(m.path)
    finally:
        clear_failure(control)
        assert errno_of(f.close) in (None, errno.ENOTCONN)


def test_sigterm_commits_a_file_still_open_for_writing(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = mount(src)
    data = os.urandom(1_500_000)
    f = open(m.path / "open-file", "wb")  # noqa: SIM115 (held open across the signal)
    try:
        f.write(data)
        f.flush()  # into the daemon; not closed
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(30) == 0
    finally:
        assert errno_of(f.close) in (None, errno.ENOTCONN)
    assert (src / "open-file").read_bytes() == data
    assert not ismount(m.path)


def test_sighup_drops_the_metadata_cache(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"old")
    m = mount(src, "--attr-timeout", "300", "--entry-timeout", "300", "--dir-timeout", "300")
    assert os.listdir(m.path) == ["f"]
    assert (m.path / "f").stat().st_size == 3
    (src / "f").write_bytes(b"newer content")
    (src / "g").write_bytes(b"g")
    time.sleep(0.2)
    assert (m.path / "f").stat().st_size == 3  # cached for 300 s
    assert os.listdir(m.path) == ["f"]
    m.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "dropped the metadata and page caches" in m.log_text(), 10)
    assert (m.path / "f").stat().st_size == len(b"newer content")
    assert read_bytes(m.path / "f") == b"newer content"
    assert sorted(os.listdir(m.path)) == ["f", "g"]
    assert m.proc.poll() is None  # still serving


def test_umount_clears_a_dead_mount_after_kill_9(mount: MountFactory, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "f").write_bytes(b"f")
    m = mount(src)
    m.proc.send_signal(signal.SIGKILL)
    m.proc.wait(10)
    assert errno_of(lambda: os.listdir(m.path)) == errno.ENOTCONN
    assert wait_until(lambda: errno_of(lambda: os.stat(m.path)) == errno.ENOTCONN, 10)
    refused = run([*CLI, "mount", str(src), str(m.path)], check=False)
    assert refused.returncode == 1
    assert b"dead mount: run 'alluxiofuse umount" in refused.stderr
    assert run([*CLI, "umount", str(m.path)], check=False).returncode == 0
    assert errno_of(lambda: os.stat(m.path)) is None
    assert not ismount(m.path)
    # The same mountpoint takes a new mount.
    new = [*CLI, "mount", str(src), str(m.path), "--metrics-addr", "off",
           "--cache-dir", str(tmp_path / "cache-again"), "--log-file", str(tmp_path / "again.log")]
    assert run(new, check=False).returncode == 0
    try:
        assert read_bytes(m.path / "f") == b"f"
    finally:
        assert run([*CLI, "umount", str(m.path)], check=False).returncode == 0


def test_sigterm_after_an_outside_unmount_lets_uploads_drain(
    mount: MountFactory, tmp_path: Path,
) -> None:
    """What Kubernetes does: a preStop unmount, then SIGTERM while uploads are owed. The
    daemon notes the signal and goes on draining (it must not touch the closed session)."""
    src, control = tmp_path / "src", str(tmp_path / "control.json")
    src.mkdir()
    set_failure(control, ["open_write"], mode="hang")
    m = mount(f"flaky://{src}", f"--ufs-option=control={control}",
              "--write-type", "ASYNC_THROUGH")
    data = os.urandom(200_000)
    (m.path / "owed").write_bytes(data)
    fusermount_u(m.path)
    assert wait_until(lambda: "unmounted" in m.log_text() or not ismount(m.path), 10)
    time.sleep(0.5)
    m.proc.send_signal(signal.SIGTERM)
    m.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "SIGHUP: already stopping" in m.log_text(), 10), m.log_text()
    assert m.proc.poll() is None  # still draining
    clear_failure(control)
    assert m.proc.wait(60) == 0
    assert (src / "owed").read_bytes() == data
    assert "SIGTERM: already stopping" in m.log_text()
