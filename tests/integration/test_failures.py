"""Under-storage failures become EIO for the calling program; the daemon lives on and recovers.

The source is ``flaky://`` (the generic fsspec path) with a control file that makes
``info``, ``ls`` or ``cat_file`` fail while the mount is live. Every metadata timeout is 0,
so each system call reaches the under-storage.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.checklogs import ExpectLog
from tests.support.flakyfs import clear_failure, set_failure
from tests.support.mounts import Mount, MountFactory, errno_of, read_bytes, with_timeout

pytestmark = pytest.mark.integration

MiB = 1 << 20
IO_TIMEOUT = 2.0
NO_CACHE = ("--attr-timeout", "0", "--entry-timeout", "0", "--dir-timeout", "0",
            "--negative-timeout", "0")


def _flaky_mount(mount: MountFactory, tmp_path: Path, *, strict: bool = True,
                 ) -> tuple[Mount, str, dict[str, bytes]]:
    src = tmp_path / "src"
    (src / "dir").mkdir(parents=True)
    content = {
        "top": b"top level\n",
        "dir/small": b"small file\n",
        "dir/big": os.urandom(3 * MiB + 5),
        "dir/cold-small": b"read only after the failure\n",
        "dir/cold-big": os.urandom(2 * MiB + 7),
    }
    for rel, data in content.items():
        (src / rel).write_bytes(data)
    control = str(tmp_path / "control.json")
    clear_failure(control)
    m = mount(f"flaky://{src}", "--ufs-option", f"control={control}",
              "--io-timeout", str(IO_TIMEOUT), *NO_CACHE, strict=strict)
    return m, control, content


def _drop_kernel_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _read(path: Path) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(path, "rb", buffering=0) as f:
            return f.read()
    return read


def _syscalls_under(op: str, m: Mount) -> dict[str, Callable[[], object]]:
    """The system calls that must fail when ``op`` of the under-storage fails."""
    p = m.path
    if op == "info":
        return {
            "stat file": lambda: os.stat(p / "dir" / "small"),
            "stat dir": lambda: os.stat(p / "dir"),
            "stat root": lambda: os.stat(p),
            "open": lambda: open(p / "top", "rb").close(),
        }
    if op == "ls":
        return {
            "listdir dir": lambda: os.listdir(p / "dir"),
            "listdir root": lambda: os.listdir(p),
        }
    return {  # files whose pages no cache holds yet
        "read small": _read(p / "dir" / "cold-small"),
        "read big": _read(p / "dir" / "cold-big"),
    }


DIR = ["big", "cold-big", "cold-small", "small"]


def _check_recovered(m: Mount, content: dict[str, bytes], *, cold: bool = True) -> None:
    """Everything lists and reads right (the cold files too, unless told otherwise)."""
    assert sorted(with_timeout(lambda: os.listdir(m.path), 10)) == ["dir", "top"]
    assert sorted(os.listdir(m.path / "dir")) == DIR
    for rel, data in content.items():
        if "cold" in rel and not cold:
            continue
        _drop_kernel_cache(m.path / rel)
        assert read_bytes(m.path / rel) == data, rel
        assert os.stat(m.path / rel).st_size == len(data)


@pytest.mark.parametrize("op", ["info", "ls", "cat_file"])
@pytest.mark.parametrize("mode", ["oserror", "unexpected"])
def test_backend_errors_become_eio(
    mount: MountFactory, tmp_path: Path, op: str, mode: str, expect_log: ExpectLog,
) -> None:
    if mode == "oserror":
        expect_log(rf"^\w+: BackendError: \[Errno 5\] injected failure in {op}$")
    else:
        expect_log(rf"^\w+: unexpected RuntimeError: injected unexpected failure in {op}",
                   level="ERROR")
        if op == "cat_file":  # the pages of the big file are read at once (read_many)
            expect_log(r"^read: unexpected ExceptionGroup: Exceptions from Trio nursery",
                       level="ERROR")
    # An unmapped library error is re-raised under --strict: this one runs without it.
    m, control, content = _flaky_mount(mount, tmp_path, strict=mode == "oserror")
    _check_recovered(m, content, cold=False)
    calls = _syscalls_under(op, m)
    set_failure(control, [op], mode)
    for what, call in calls.items():
        assert errno_of(call) == errno.EIO, what
        assert m.proc.poll() is None, f"daemon died after {what}"
    if op == "ls":  # other calls are unaffected
        assert read_bytes(m.path / "top") == content["top"]
    if op == "cat_file":
        assert sorted(os.listdir(m.path / "dir")) == DIR
    clear_failure(control)
    _check_recovered(m, content)
    assert m.proc.poll() is None
    expected = "WARNING" if mode == "oserror" else "ERROR"
    assert expected in m.log_text()


@pytest.mark.parametrize("op", ["cat_file", "info"])
@pytest.mark.expect_log(r"^\w+: BackendTimeout: flaky://.* no answer within 2s$")
def test_hung_backend_times_out_with_eio(mount: MountFactory, tmp_path: Path, op: str) -> None:
    m, control, content = _flaky_mount(mount, tmp_path)
    _check_recovered(m, content, cold=False)
    if op == "cat_file":
        call = _read(m.path / "dir" / "cold-big")
    else:
        def call() -> object:
            return os.stat(m.path / "dir" / "small")
    set_failure(control, [op], "hang")
    try:
        result: dict[str, object] = {}

        def hung_call() -> None:
            start = time.monotonic()
            result["errno"] = errno_of(call, timeout=30)
            result["elapsed"] = time.monotonic() - start

        caller = threading.Thread(target=hung_call, daemon=True)
        caller.start()
        time.sleep(0.3)
        # Meanwhile the daemon answers what does not need the hung call.
        if op == "cat_file":
            start = time.monotonic()
            assert sorted(with_timeout(lambda: os.listdir(m.path / "dir"), 5)) == DIR
            assert time.monotonic() - start < IO_TIMEOUT
        caller.join(20)
        assert not caller.is_alive(), "the call hung past the io timeout"
        assert result["errno"] == errno.EIO
        elapsed = result["elapsed"]
        assert isinstance(elapsed, float)
        assert IO_TIMEOUT * 0.8 <= elapsed < 15, elapsed
        assert m.proc.poll() is None
    finally:
        clear_failure(control)
    _check_recovered(m, content)
    assert "BackendTimeout" in m.log_text()
