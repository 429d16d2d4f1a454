"""Differential tests: random operation sequences on a mount and on a plain local directory.

Hypothesis drives the same sequence of system calls (create, write at offsets, append,
truncate, rename, unlink, mkdir, rmdir, read, listdir, stat, and a file kept open across
steps) into a writable mount and into a reference directory, and compares every result
and every errno after each step. Run over a local under-storage, over S3 (moto on
loopback, started by the test), over an AIStore bucket (tests/sim/ais.py) and over an
Alluxio 2.x proxy (tests/sim/proxy.py).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from tests.sim.ais import SimAis
from tests.support.mounts import MountFactory, ProxySimFactory
from tests.support.s3server import moto_s3

pytestmark = pytest.mark.integration

NAMES = ("a", "b", "c")
PATHS = st.sampled_from([*NAMES, "b/a", "b/b", "c/a"])
# Each sequence starts from this tree (on both sides), so most steps act on something.
SEED = {"a": bytes(range(256)) * 20, "b/a": b"x" * 100}
DATA = st.binary(max_size=3000)
OFFSETS = st.integers(min_value=0, max_value=5000)
SIZES = st.integers(min_value=0, max_value=5000)


def outcome(fn: Callable[[], Any]) -> tuple[str, Any]:
    """``("ok", result)`` or ``("errno", name)``: what a program would see."""
    try:
        return "ok", fn()
    except OSError as e:
        return "errno", errno.errorcode.get(e.errno or 0, str(e.errno))


def describe(path: str) -> Any:
    st_ = os.lstat(path)
    if stat.S_ISDIR(st_.st_mode):
        return "dir"
    return ("file", st_.st_size)


def write_file(path: str, data: bytes, flags: int, offset: int | None = None) -> int:
    fd = os.open(path, flags, 0o644)
    try:
        return os.pwrite(fd, data, offset) if offset is not None else os.write(fd, data)
    finally:
        os.close(fd)


def read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class Differential(RuleBasedStateMachine):
    """One sequence of steps on ``mount`` and ``reference``; every outcome must agree."""

    mount: Path
    reference: Path

    def __init__(self) -> None:
        super().__init__()
        for root in (self.mount, self.reference):
            for entry in os.listdir(root):
                target = root / entry
                if target.is_dir():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            for path, data in SEED.items():
                (root / path).parent.mkdir(exist_ok=True)
                (root / path).write_bytes(data)
        # One file kept open across steps: (fd on the mount, fd on the reference).
        self.handle: tuple[int, int] | None = None

    def both(self, fn: Callable[[Path], Any]) -> tuple[str, Any]:
        got = outcome(lambda: fn(self.mount))
        want = outcome(lambda: fn(self.reference))
        assert got == want, f"mount {got!r} != reference {want!r}"
        return got

    @rule(path=PATHS, data=DATA)
    def create(self, path: str, data: bytes) -> None:
        self.both(lambda r: write_file(str(r / path), data,
                                       os.O_WRONLY | os.O_CREAT | os.O_TRUNC))

    @rule(path=PATHS, data=DATA, offset=OFFSETS)
    def write_at(self, path: str, data: bytes, offset: int) -> None:
        self.both(lambda r: write_file(str(r / path), data, os.O_RDWR, offset))

    @rule(path=PATHS, data=DATA)
    def append(self, path: str, data: bytes) -> None:
        self.both(lambda r: write_file(str(r / path), data, os.O_WRONLY | os.O_APPEND))

    @rule(path=PATHS, size=SIZES)
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda r: os.truncate(r / path, size))

    @rule(src=PATHS, dst=PATHS)
    def rename(self, src: str, dst: str) -> None:
        self.both(lambda r: os.rename(r / src, r / dst))

    @rule(path=PATHS)
    def unlink(self, path: str) -> None:
        self.both(lambda r: os.unlink(r / path))

    @rule(path=PATHS)
    def mkdir(self, path: str) -> None:
        self.both(lambda r: os.mkdir(r / path))

    @rule(path=PATHS)
    def rmdir(self, path: str) -> None:
        self.both(lambda r: os.rmdir(r / path))

    @rule(path=PATHS)
    def read(self, path: str) -> None:
        self.both(lambda r: read_file(str(r / path)))

    @rule(path=st.sampled_from(["", *NAMES]))
    def listdir(self, path: str) -> None:
        self.both(lambda r: sorted(os.listdir(r / path)))

    @rule(path=PATHS)
    def stat(self, path: str) -> None:
        self.both(lambda r: describe(str(r / path)))

    @rule(path=PATHS)
    def open_handle(self, path: str) -> None:
        if self.handle is not None:
            return
        got = outcome(lambda: os.open(self.mount / path, os.O_RDWR))
        want = outcome(lambda: os.open(self.reference / path, os.O_RDWR))
        if got[0] == "ok" and want[0] == "ok":
            self.handle = (got[1], want[1])
            return
        for kind, fd in (got, want):
            if kind == "ok":
                os.close(fd)
        assert got == want

    @rule(data=DATA, offset=OFFSETS)
    def write_handle(self, data: bytes, offset: int) -> None:
        if self.handle is not None:
            fds = dict(zip((self.mount, self.reference), self.handle, strict=True))
            self.both(lambda r: os.pwrite(fds[r], data, offset))

    @rule()
    def read_handle(self) -> None:
        if self.handle is not None:
            fds = dict(zip((self.mount, self.reference), self.handle, strict=True))
            self.both(lambda r: os.pread(fds[r], 10_000, 0))

    @rule()
    def close_handle(self) -> None:
        if self.handle is not None:
            fds = dict(zip((self.mount, self.reference), self.handle, strict=True))
            self.handle = None
            self.both(lambda r: os.close(fds[r]))

    @invariant()
    def trees_agree(self) -> None:
        """After every step, both trees hold the same names, kinds, sizes and bytes."""
        assert tree_of(self.mount) == tree_of(self.reference)

    def teardown(self) -> None:
        if self.handle is not None:
            for fd in self.handle:
                os.close(fd)
            self.handle = None


def tree_of(root: Path) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in dirnames:
            found[os.path.normpath(os.path.join(rel, name))] = "dir"
        for name in filenames:
            found[os.path.normpath(os.path.join(rel, name))] = read_file(
                os.path.join(dirpath, name))
    return found


def run_differential(mount_path: Path, reference: Path, examples: int) -> None:
    machine = type("Run", (Differential,), {"mount": mount_path, "reference": reference})
    run_state_machine_as_test(machine, settings=settings(
        max_examples=examples, stateful_step_count=30, deadline=None,
        suppress_health_check=list(HealthCheck), database=None,
    ))


@pytest.mark.timeout(300)
def test_local_mount_behaves_like_a_local_directory(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src, ref = tmp_path / "src", tmp_path / "ref"
    src.mkdir()
    ref.mkdir()
    m = mount(src, "--attr-timeout", "0", "--entry-timeout", "0", "--negative-timeout", "0")
    run_differential(m.path, ref, examples=40)
    assert tree_of(src) == tree_of(ref)  # and the source holds it too


@pytest.mark.timeout(300)
def test_s3_mount_behaves_like_a_local_directory(mount: MountFactory, tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    ref.mkdir()
    with moto_s3() as s3:
        s3.fs().pipe_file(f"{s3.bucket}/tree/", b"")  # the mounted prefix, as a directory
        options = [f"--ufs-option={k}={_json(v)}" for k, v in s3.ufs_options.items()]
        m = mount(s3.url("tree"), *options, "--attr-timeout", "0", "--entry-timeout", "0",
                  "--negative-timeout", "0", "--dir-timeout", "0")
        # Fewer sequences than over the other sources: each step here costs S3 requests
        # to moto, and the invariant reads the whole tree back after every step.
        run_differential(m.path, ref, examples=6)


@pytest.mark.timeout(300)
def test_ais_mount_behaves_like_a_local_directory(mount: MountFactory, tmp_path: Path) -> None:
    ref, root = tmp_path / "ref", tmp_path / "ais"
    ref.mkdir()
    root.mkdir()
    with SimAis(root) as sim:
        sim.create_bucket("data")
        m = mount("ais://data", f"--ufs-option=endpoint={sim.url}", "--attr-timeout", "0",
                  "--entry-timeout", "0", "--negative-timeout", "0", "--dir-timeout", "0")
        run_differential(m.path, ref, examples=6)  # as over S3: the same object store code
        m.unmount()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("write_type", ["THROUGH", "MUST_CACHE"])
def test_alluxio_proxy_mount_behaves_like_a_local_directory(
    proxy_sim: ProxySimFactory, mount: MountFactory, tmp_path: Path, write_type: str,
) -> None:
    """Over an Alluxio 2.x proxy: persisted as it goes (THROUGH), or kept in Alluxio
    storage alone (MUST_CACHE: the under-storage never sees a file)."""
    ufs, ref = tmp_path / "ufs", tmp_path / "ref"
    ufs.mkdir()
    ref.mkdir()
    sim = proxy_sim(ufs)
    m = mount(sim.source(), "--write-type", write_type, "--attr-timeout", "0",
              "--entry-timeout", "0", "--negative-timeout", "0", "--dir-timeout", "0")
    run_differential(m.path, ref, examples=12)
    if write_type == "THROUGH":
        assert tree_of(ufs) == tree_of(ref)
    else:
        assert not [p for p in ufs.rglob("*") if p.is_file()]
    assert sim.stats()["streams_open"] == 0


def _json(value: Any) -> str:
    import json
    return json.dumps(value) if not isinstance(value, str) else value
