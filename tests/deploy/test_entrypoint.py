"""docker/entrypoint.sh, run directly (no container engine runs here) on real FUSE mounts.

The script finds ``alluxiofuse`` on PATH, as in the image; here that is a wrapper running
this worktree's package. SOURCE and MOUNTPOINT are given through the environment, as the
Kubernetes example does, so that the daemon is the only process naming the mountpoint.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.checklogs import watch
from tests.support.mounts import (
    REPO,
    _require_fuse,
    daemon_pids,
    errno_of,
    fusermount_u,
    read_bytes,
    wait_until,
)
from tests.support.needs import need

ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
TIMEOUT = 30.0


def mount_ids(path: Path) -> list[bytes]:
    """IDs of the mounts at ``path``, live or dead, read without touching it (a stat of a
    dead mount fails)."""
    target = os.fsencode(path).replace(b"\\", b"\\134").replace(b" ", b"\\040")
    with open("/proc/self/mountinfo", "rb") as f:
        return [fields[0] for fields in map(bytes.split, f) if fields[4] == target]


def in_mountinfo(path: Path) -> bool:
    return bool(mount_ids(path))


@dataclass
class Env:
    tmp: Path
    src: Path
    mnt: Path
    log: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]]

    def options(self) -> list[str]:
        return ["--cache-dir", str(self.tmp / "cache"), "--log-file", str(self.log),
                "--metrics-addr", "127.0.0.1:0"]  # never the host's default port

    def start(self, *args: str, env: dict[str, str] | None = None,
              prefix: tuple[str, ...] = ()) -> subprocess.Popen[bytes]:
        """The entrypoint, running; its stderr goes to ``entrypoint.err``."""
        with open(self.tmp / "entrypoint.err", "ab") as err:
            proc = subprocess.Popen([*prefix, str(ENTRYPOINT), *args, *self.options()],
                                    env={**self.env, **(env or {})}, cwd=self.tmp,
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        self.procs.append(proc)
        return proc

    def wait_mounted(self, proc: subprocess.Popen[bytes]) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"entrypoint exited with {proc.returncode}:\n{self.errors()}")
            return in_mountinfo(self.mnt) and errno_of(lambda: os.stat(self.mnt)) is None
        assert wait_until(up, TIMEOUT), f"no mount in {TIMEOUT}s:\n{self.errors()}"

    def errors(self) -> str:
        err = self.tmp / "entrypoint.err"
        text = err.read_text(errors="replace") if err.exists() else ""
        return text + (self.log.read_text(errors="replace") if self.log.exists() else "")

    def assert_clean(self) -> None:
        """Nothing mounted, no daemon left."""
        assert not in_mountinfo(self.mnt), self.errors()
        assert wait_until(lambda: not daemon_pids(self.mnt), 10), daemon_pids(self.mnt)


@pytest.fixture(autouse=True)
def sigint_default() -> Iterator[None]:
    """Start the entrypoint with SIGINT at its default, as tini does in the image.

    A test run in the background of a non-interactive shell (``.ci/run ... &``) has SIGINT
    ignored; children inherit that, and a shell cannot trap a signal ignored when it
    started: the SIGINT test then waited 30 s for a daemon that was never told to stop.
    """
    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to SIG_DFL at exec
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    _require_fuse()
    src = tmp_path / "src"
    (src / "train").mkdir(parents=True)
    (src / "train" / "part-0.bin").write_bytes(bytes(range(256)) * 4096)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "alluxiofuse"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m alluxiofuse "$@"\n')
    wrapper.chmod(0o755)
    mnt = tmp_path / "data"  # not created: the entrypoint makes it
    environ = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}",
               "PYTHONPATH": str(REPO), "ALLUXIOFUSE_SOURCE": str(src),
               "ALLUXIOFUSE_MOUNTPOINT": str(mnt)}
    environ.pop("ALLUXIOFUSE_CONFIG", None)
    e = Env(tmp_path, src, mnt, tmp_path / "daemon.log", environ, [])
    watch(request.node, e.log)  # as for every mount in these tests
    try:
        yield e
    finally:
        for proc in e.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for pid in daemon_pids(mnt):  # only ours: the mountpoint is under tmp_path
            os.kill(pid, signal.SIGKILL)
        fusermount_u(mnt)


def stop_and_wait(env: Env, proc: subprocess.Popen[bytes], sig: int) -> int:
    proc.send_signal(sig)
    try:
        return proc.wait(TIMEOUT)
    except subprocess.TimeoutExpired:  # say where the daemon stood (seen once in CI)
        pytest.fail(f"still running {TIMEOUT}s after {signal.Signals(sig).name}; "
                    f"processes: {daemon_pids(env.mnt)}\n{env.errors()}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_mounts_then_a_signal_unmounts_and_exits_0(env: Env, sig: int) -> None:
    proc = env.start()
    env.wait_mounted(proc)
    assert read_bytes(env.mnt / "train" / "part-0.bin") == bytes(range(256)) * 4096

    assert stop_and_wait(env, proc, sig) == 0, env.errors()
    env.assert_clean()
    assert "unmounted" in env.log.read_text()


def test_stop_subcommand_is_the_prestop_hook(env: Env) -> None:
    """``alluxiofuse-entrypoint stop`` detaches the mount; the daemon and the script exit 0."""
    proc = env.start()
    env.wait_mounted(proc)
    stop = subprocess.run([str(ENTRYPOINT), "stop"], env=env.env, capture_output=True,
                          timeout=TIMEOUT, check=False)
    assert stop.returncode == 0, stop.stderr
    assert proc.wait(TIMEOUT) == 0, env.errors()
    env.assert_clean()
    # Nothing mounted: stop is a no-op that succeeds (a preStop hook that fails is logged
    # as an event for nothing).
    again = subprocess.run([str(ENTRYPOINT), "stop"], env=env.env, capture_output=True,
                           timeout=TIMEOUT, check=False)
    assert again.returncode == 0, again.stderr


def test_a_dead_mount_is_cleared_at_start(env: Env) -> None:
    """A daemon killed with SIGKILL leaves a dead mount; the next start detaches it."""
    env.mnt.mkdir()
    daemon = subprocess.Popen(
        ["alluxiofuse", "mount", "-f", str(env.src), str(env.mnt), *env.options()],
        env=env.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    env.procs.append(daemon)
    env.wait_mounted(daemon)
    daemon.kill()
    daemon.wait(TIMEOUT)
    assert in_mountinfo(env.mnt)
    # Dead, though a plain stat would still be answered from the kernel's attribute cache
    # for a second (--attr-timeout): the script must not be fooled by that.
    dead = subprocess.run(["stat", "--cached=never", str(env.mnt)], capture_output=True,
                          env={**env.env, "LC_ALL": "C"}, timeout=TIMEOUT, check=False)
    assert b"Transport endpoint is not connected" in dead.stderr

    proc = env.start()
    # Only the daemon's word tells the new mount from the dead one: a stat of the dead one
    # may be answered from the cache, and mount IDs are reused.
    assert wait_until(lambda: env.log.read_text().count("INFO alluxiofuse.daemon.process: mounted")
                      == 2, TIMEOUT), env.errors()
    env.wait_mounted(proc)
    assert len(mount_ids(env.mnt)) == 1
    assert read_bytes(env.mnt / "train" / "part-0.bin")[:4] == bytes(range(4))
    assert "is a dead mount" in env.errors()
    assert stop_and_wait(env, proc, signal.SIGTERM) == 0, env.errors()
    env.assert_clean()


@pytest.mark.expect_log(r"^source does not exist: ", count=1, level="ERROR")
def test_a_daemon_that_fails_to_start_fails_the_script(env: Env) -> None:
    proc = env.start(env={"ALLUXIOFUSE_SOURCE": str(env.tmp / "missing")})
    assert proc.wait(TIMEOUT) == 1  # the daemon's exit code
    assert "source does not exist" in env.errors()
    env.assert_clean()


def test_no_source_is_a_usage_error(env: Env) -> None:
    proc = env.start(env={"ALLUXIOFUSE_SOURCE": ""})
    assert proc.wait(TIMEOUT) == 2
    assert "no source" in env.errors()


def test_a_killed_daemon_leaves_nothing_mounted(env: Env) -> None:
    """The daemon dies (SIGKILL, as the OOM killer does): the script exits with its status
    and detaches the dead mount, so that a restart finds a clean mountpoint."""
    proc = env.start()
    env.wait_mounted(proc)
    (pid,) = daemon_pids(env.mnt)
    os.kill(pid, signal.SIGKILL)
    assert proc.wait(TIMEOUT) == 128 + signal.SIGKILL
    env.assert_clean()
    assert "left" in env.errors()


def test_under_tini_as_pid_1(env: Env) -> None:
    """The image's ENTRYPOINT chain: tini is PID 1 of a new PID namespace, as in a
    container, and a SIGTERM to it (what the runtime sends) reaches the daemon."""
    tini = shutil.which("tini")
    need(tini, "tini is not installed (quickstart.sh installs it for the tests)")
    assert tini is not None
    # --kill-child: if unshare dies, so does everything under it.
    proc = env.start(prefix=("unshare", "--pid", "--fork", "--kill-child", tini, "--"))
    env.wait_mounted(proc)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    assert len(children) == 1
    init = int(children[0])
    assert Path(f"/proc/{init}/status").read_text().count("NSpid:") == 1
    nspid = next(line for line in Path(f"/proc/{init}/status").read_text().splitlines()
                 if line.startswith("NSpid:"))
    assert nspid.split()[-1] == "1", nspid  # tini is PID 1 in its namespace

    os.kill(init, signal.SIGTERM)
    assert proc.wait(TIMEOUT) == 0, env.errors()
    env.assert_clean()
