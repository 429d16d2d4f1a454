"""The ``alluxiofuse`` command as users run it: start, stop, signals, errors, config files."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from alluxiofuse.config import default_log_file
from alluxiofuse.writes.spool import Record, Spool
from tests.support.flakyfs import clear_failure, set_failure
from tests.support.mounts import (
    CLI,
    DAEMON,
    REPO,
    MountFactory,
    _require_fuse,
    daemon_pids,
    errno_of,
    fusermount_u,
    ismount,
    read_bytes,
    run,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def cleanup() -> Iterator[list[Path]]:
    """Mountpoints used by background mounts: unmounted and their daemons ended afterwards."""
    _require_fuse()
    mountpoints: list[Path] = []
    yield mountpoints
    for mnt in mountpoints:
        fusermount_u(mnt)
        for pid in daemon_pids(mnt):  # started by this test through the CLI
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def cli(
    *args: str | Path, flaky: bool = False, timeout: float = 60,
) -> subprocess.CompletedProcess[bytes]:
    """``alluxiofuse ARGS``; with ``flaky`` the test-only ``flaky://`` protocol is registered."""
    base = DAEMON if flaky else CLI
    return run([*base, *map(str, args)], check=False, timeout=timeout, cwd=REPO)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello").write_bytes(b"hello\n")
    (src / "sub" / "inner").write_bytes(b"inner\n")
    return src


def _own_files(tmp_path: Path) -> list[str]:
    """Options that keep a mount's spool and log in the test's tmp_path."""
    return ["--cache-dir", str(tmp_path / "cache"), "--log-file", str(tmp_path / "daemon.log")]


def _gone(mnt: Path, timeout: float = 5.0) -> bool:
    return wait_until(lambda: not daemon_pids(mnt), timeout)


# -- (a) background mode


def test_background_mount_is_live_on_return_and_umount_ends_daemon(
    tmp_path: Path, cleanup: list[Path],
) -> None:
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    log = tmp_path / "daemon.log"
    result = cli("mount", src, mnt, "--log-file", log, "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    # Live the moment the command returns: no polling.
    assert sorted(os.listdir(mnt)) == ["hello", "sub"]
    assert read_bytes(mnt / "sub" / "inner") == b"inner\n"
    assert result.stderr == b""
    assert ismount(mnt)
    pids = daemon_pids(mnt)
    assert len(pids) == 1, pids
    assert os.getsid(pids[0]) == pids[0]  # detached into its own session

    link = tmp_path / "link"  # named through a symbolic link, as users may
    link.symlink_to(mnt)
    result = cli("umount", link)
    assert result.returncode == 0, result.stderr
    assert not ismount(mnt)
    assert _gone(mnt), f"daemon still running: {daemon_pids(mnt)}"
    assert os.listdir(mnt) == []
    assert "WARNING" not in log.read_text() and "ERROR" not in log.read_text()

    again = cli("umount", mnt)  # nothing mounted any more
    assert again.returncode == 1
    lines = again.stderr.decode().splitlines()
    assert lines == [f"alluxiofuse: cannot unmount {mnt}: not mounted"], lines
    missing = cli("umount", tmp_path / "no-such-dir")
    assert missing.returncode == 1
    assert missing.stderr.decode() == (
        f"alluxiofuse: cannot unmount {tmp_path}/no-such-dir: no such file or directory\n")


def _remove_default_log(mnt: Path, dir_existed: bool) -> None:
    """Remove what a background mount without --log-file wrote, and its directory if it
    was made for the test and holds nothing else (other mounts may be writing there)."""
    path = Path(default_log_file(str(mnt)))
    for log in (path, path.with_name(path.name + ".1")):
        log.unlink(missing_ok=True)
    if not dir_existed:
        with contextlib.suppress(OSError):
            path.parent.rmdir()


def test_background_mount_logs_to_a_file_it_names(tmp_path: Path, cleanup: list[Path]) -> None:
    """Without --log-file, a daemon in the background logs to a file of its mountpoint
    (with or without syslog on the host), and `mount` says which."""
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    log = Path(default_log_file(str(mnt)))
    assert log.parent == Path("/var/log/alluxiofuse")  # as root
    assert log.name == str(mnt).strip("/").replace("-", "\\x2d").replace("/", "-") + ".log"
    dir_existed = log.parent.exists()
    try:
        result = cli("mount", src, mnt, "--cache-dir", tmp_path / "cache",
                     "--metrics-addr", "off")
        assert (result.returncode, result.stderr) == (0, b""), result.stderr
        assert result.stdout.decode() == f"alluxiofuse: the daemon logs to {log}\n"
        assert read_bytes(mnt / "hello") == b"hello\n"
        assert cli("umount", mnt).returncode == 0
        assert _gone(mnt)
        text = log.read_text()
        assert f"INFO alluxiofuse.daemon.process: mounted {src} at {mnt}" in text, text
        assert f"INFO alluxiofuse.daemon.process: unmounted {mnt}" in text, text
    finally:
        _remove_default_log(mnt, dir_existed)


def test_no_worker_answers_at_mount(tmp_path: Path, cleanup: list[Path]) -> None:
    """Workers named, none of them answering: the mount works through the under-storage,
    and says so on stderr."""
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "daemon.log"
    result = cli("mount", src, mnt, "--workers", f"127.0.0.1:{port}", "--worker-timeout", "2",
                 "--log-file", log, "--cache-dir", tmp_path / "cache", "--metrics-addr", "off")
    assert result.returncode == 0, result.stderr
    assert result.stderr.decode() == (
        f"alluxiofuse: warning: no worker of workers 127.0.0.1:{port} answers "
        f"(http://127.0.0.1:{port}): reading from the under-storage until one does\n")
    assert read_bytes(mnt / "sub" / "inner") == b"inner\n"
    assert cli("umount", mnt).returncode == 0
    assert _gone(mnt)
    assert "WARNING alluxiofuse.daemon.process: no worker of" in log.read_text()


@contextlib.contextmanager
def _default_metrics_port_held() -> Iterator[None]:
    """127.0.0.1:9847, the default metrics address, taken while the block runs: held here,
    or already held by someone else (another mount on this host), which is the same."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(socket.create_server(("127.0.0.1", 9847)))
        except OSError as e:
            assert e.errno == errno.EADDRINUSE, e
        yield


def test_default_metrics_port_taken(tmp_path: Path, cleanup: list[Path]) -> None:
    """A mount with the defaults, while another mount holds the default metrics port: it
    mounts without a warning, serves its metrics on a port of its own and logs where."""
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    log = tmp_path / "daemon.log"
    with _default_metrics_port_held():
        result = cli("mount", src, mnt, "--log-file", log, "--cache-dir", tmp_path / "cache")
        assert (result.returncode, result.stderr) == (0, b"")
        text = log.read_text()
        assert "WARNING" not in text, text
        found = re.search(r"serving metrics at (http://127\.0\.0\.1:(\d+))/metrics", text)
        assert found and found.group(2) != "9847", text
        assert b"alluxiofuse_open_handles" in httpx.get(found.group(1) + "/metrics",
                                                        timeout=10).content
    assert cli("umount", mnt).returncode == 0
    assert _gone(mnt)


def test_background_mount_waits_for_a_slow_source(tmp_path: Path, cleanup: list[Path]) -> None:
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    control = str(tmp_path / "control.json")
    set_failure(control, ["info"], "hang")
    timer = threading.Timer(1.5, clear_failure, args=(control,))
    timer.start()
    try:
        start = time.monotonic()
        result = cli("mount", f"flaky://{src}", mnt, "--ufs-option", f"control={control}",
                     "--io-timeout", "20", *_own_files(tmp_path), flaky=True)
        elapsed = time.monotonic() - start
    finally:
        timer.cancel()
        clear_failure(control)
    assert result.returncode == 0, result.stderr
    assert elapsed >= 1.4
    assert sorted(os.listdir(mnt)) == ["hello", "sub"]
    assert cli("umount", mnt).returncode == 0
    assert _gone(mnt)


def test_sigterm_to_background_daemon_unmounts(tmp_path: Path, cleanup: list[Path]) -> None:
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    assert cli("mount", src, mnt, *_own_files(tmp_path)).returncode == 0
    (pid,) = daemon_pids(mnt)
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not ismount(mnt), 10)
    assert _gone(mnt)
    assert os.listdir(mnt) == []


# -- (b), (c) the foreground daemon


def test_foreground_daemon_exits_0_when_unmounted_from_outside(
    mount: MountFactory, tmp_path: Path,
) -> None:
    m = mount(_source(tmp_path))
    assert read_bytes(m.path / "hello") == b"hello\n"
    assert m.unmount() == 0
    assert not ismount(m.path)
    assert "unmounted" in m.log_text()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_to_foreground_daemon_unmounts_and_exits_0(
    mount: MountFactory, tmp_path: Path, signum: int,
) -> None:
    m = mount(_source(tmp_path))
    assert sorted(os.listdir(m.path)) == ["hello", "sub"]
    m.proc.send_signal(signum)
    assert m.proc.wait(15) == 0
    assert not ismount(m.path)
    assert os.listdir(m.path) == []
    assert f"{signal.Signals(signum).name}: unmounting" in m.log_text()


def test_signal_while_a_file_is_open(mount: MountFactory, tmp_path: Path) -> None:
    """A busy mount does not keep the daemon from stopping, nor leave a dead mount behind."""
    m = mount(_source(tmp_path))
    f = open(m.path / "hello", "rb")  # noqa: SIM115 (held open across the signal)
    try:
        assert f.read() == b"hello\n"
        m.proc.send_signal(signal.SIGTERM)
        assert m.proc.wait(15) == 0
    finally:
        # The daemon is gone: closing may report that (ENOTCONN), nothing else.
        assert errno_of(f.close) in (None, errno.ENOTCONN)
    assert not ismount(m.path)
    assert os.listdir(m.path) == []


# -- (d) errors: one line on stderr, non-zero exit, nothing left mounted or running

Case = Callable[[Path, Path], list[str]]


def _missing_mountpoint(src: Path, tmp: Path) -> list[str]:
    return ["mount", str(src), str(tmp / "no-such-dir")]


def _file_mountpoint(src: Path, tmp: Path) -> list[str]:
    (tmp / "afile").write_bytes(b"x")
    return ["mount", str(src), str(tmp / "afile")]


def _with(*extra: str, source: str | None = None) -> Case:
    def case(src: Path, tmp: Path) -> list[str]:
        mnt = tmp / "mnt"
        mnt.mkdir(exist_ok=True)
        s = source.format(tmp=tmp) if source else str(src)
        return ["mount", s, str(mnt), *[e.format(tmp=tmp) for e in extra]]
    return case


def _failing_flaky(src: Path, tmp: Path) -> list[str]:
    control = str(tmp / "control.json")
    set_failure(control, ["info"], "oserror")
    mnt = tmp / "mnt"
    mnt.mkdir(exist_ok=True)
    return ["mount", f"flaky://{src}", str(mnt), "--ufs-option", f"control={control}"]


def _bad_config(text: str) -> Case:
    def case(src: Path, tmp: Path) -> list[str]:
        (tmp / "bad.toml").write_text(text)
        return _with("--config", "{tmp}/bad.toml")(src, tmp)
    return case


ERROR_CASES: dict[str, tuple[Case, str]] = {
    "missing-mountpoint": (_missing_mountpoint, "does not exist"),
    "mountpoint-is-file": (_file_mountpoint, "not a directory"),
    "missing-source": (_with(source="{tmp}/no-such-source"), "source does not exist"),
    "source-is-file": (_with(source="{tmp}/src/hello"), "not a directory"),
    "page-size-3000": (_with("--page-size", "3000"), "--page-size"),
    "attr-timeout-negative": (_with("--attr-timeout", "-1"), "--attr-timeout"),
    "log-level-loud": (_with("--log-level", "loud"), "--log-level"),
    "page-cache-too-small": (_with("--page-cache-size", "1MiB"), "--page-cache-size"),
    "io-timeout-zero": (_with("--io-timeout", "0"), "--io-timeout"),
    "unknown-protocol": (_with(source="nosuch://x"), "nosuch"),
    "ufs-option-without-equals": (_with("--ufs-option", "novalue"), "key=value"),
    "ufs-option-for-local": (_with("--ufs-option", "a=b"), "local"),
    "failing-source": (_failing_flaky, "injected failure"),
    "missing-config": (_with("--config", "{tmp}/no-such.toml"), "config file not found"),
    "config-unknown-key": (_bad_config("no_such_option = 1\n"), "no_such_option"),
    "config-not-toml": (_bad_config("this is [not toml\n"), "bad.toml"),
}


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_errors_exit_nonzero_with_one_line(
    tmp_path: Path, cleanup: list[Path], case: str, foreground: bool,
) -> None:
    make_args, expected = ERROR_CASES[case]
    src = _source(tmp_path)
    args = make_args(src, tmp_path)
    mnt = Path(args[2])
    cleanup.append(mnt)
    args += _own_files(tmp_path)  # a foreground daemon's log too: stderr holds only what
    if foreground:  # the command says
        args.append("-f")
    result = cli(*args, flaky=case == "failing-source", timeout=60)
    lines = result.stderr.decode(errors="replace").splitlines()
    assert result.returncode == 1, (result.returncode, lines)
    assert len(lines) == 1, lines
    assert lines[0].startswith("alluxiofuse: "), lines
    assert expected in lines[0], lines
    assert not (mnt.is_dir() and ismount(mnt))
    assert _gone(mnt, 2), daemon_pids(mnt)
    if mnt.is_dir():
        assert os.listdir(mnt) == []


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_already_mounted_mountpoint(
    mount: MountFactory, tmp_path: Path, foreground: bool,
) -> None:
    m = mount(_source(tmp_path))
    other = tmp_path / "other"
    other.mkdir()
    (other / "x").write_bytes(b"x")
    args = ["mount", str(other), str(m.path)] + (["-f"] if foreground else [])
    result = cli(*args)
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert len(lines) == 1 and lines[0].startswith("alluxiofuse: "), lines
    assert "already mounted" in lines[0]
    # The first mount is untouched and still the only daemon there.
    assert daemon_pids(m.path) == [m.proc.pid]
    assert sorted(os.listdir(m.path)) == ["hello", "sub"]
    assert m.proc.poll() is None


@pytest.mark.parametrize("source", ["{tmp}/no-such-source", "nosuch://x"])
def test_foreground_error_without_log_file_is_one_line(tmp_path: Path, source: str) -> None:
    """Without --log-file the foreground logs to stderr: the failure must still be said once."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = cli("mount", source.format(tmp=tmp_path), mnt, "-f")
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 1
    assert lines and lines[-1].startswith("alluxiofuse: "), lines
    reason = lines[-1].removeprefix("alluxiofuse: ")
    said = [line for line in lines if reason in line]
    assert len(said) == 1, f"the start-up failure is reported {len(said)} times: {lines}"
    assert not [line for line in lines if " INFO " not in line and line != lines[-1]], lines
    assert not ismount(mnt)


def test_mount_over_a_non_empty_directory(tmp_path: Path, cleanup: list[Path]) -> None:
    """As `mount --help` says: any existing directory; what it holds is hidden meanwhile."""
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    (mnt / "underneath").write_bytes(b"u")
    result = cli("mount", src, mnt, "--log-file", tmp_path / "daemon.log",
                 "--cache-dir", tmp_path / "cache")
    assert (result.returncode, result.stderr) == (0, b"")
    assert sorted(os.listdir(mnt)) == ["hello", "sub"]
    assert cli("umount", mnt).returncode == 0
    assert _gone(mnt)
    assert os.listdir(mnt) == ["underneath"]


@pytest.mark.parametrize("args", [[], ["mount"], ["mount", "/tmp"], ["mount", "--bogus", "a", "b"],
                                  ["frobnicate"], ["umount"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = cli(*args)
    assert result.returncode == 2, result
    assert b"usage:" in result.stderr


@pytest.mark.parametrize("command", ["mount", "umount", "status", "locate", "load", "free",
                                     "setattr", "install-mount-helper"])
def test_an_unknown_option_prints_the_commands_usage(command: str) -> None:
    result = cli(command, "--bogus", "a", "b")
    lines = result.stderr.decode().splitlines()
    assert result.returncode == 2, lines
    assert lines[0].startswith(f"usage: alluxiofuse {command} "), lines
    assert lines[-1].startswith(f"alluxiofuse {command}: error: unrecognized arguments: "
                                "--bogus"), lines


def test_version_and_help() -> None:
    assert cli("--version").stdout.startswith(b"alluxiofuse ")
    helped = cli("mount", "--help")
    assert helped.returncode == 0
    assert b"--page-cache-size" in helped.stdout


# -- (e) config file


@pytest.mark.expect_log(r"^\w+: BackendError: \[Errno 5\] injected failure in (info|ls)$")
def test_config_file_options_and_ufs_options(mount: MountFactory, tmp_path: Path) -> None:
    src = _source(tmp_path)
    (src / "later").write_bytes(b"later\n")
    control = str(tmp_path / "control.json")
    clear_failure(control)
    config = tmp_path / "alluxiofuse.toml"
    config.write_text(
        'attr_timeout = "500ms"\n'
        "entry-timeout = 0.5\n"
        'dir_timeout = "500ms"\n'
        'file_mode = "0600"\n'
        'dir-mode = "0700"\n'
        "io_timeout = 2\n"
        'page_size = "64KiB"\n'
        "\n[ufs_options]\n"
        f'control = "{control}"\n'
    )
    m = mount(f"flaky://{src}", "--config", str(config))
    assert stat.S_IMODE(os.stat(m.path / "hello").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(m.path / "sub").st_mode) == 0o700
    assert os.stat(m.path / "hello").st_blksize == 64 * 1024
    assert read_bytes(m.path / "sub" / "inner") == b"inner\n"
    # The control file named in [ufs_options] reaches the under-storage.
    set_failure(control, ["info", "ls"], "oserror")  # lookups may be answered by a listing
    time.sleep(1.2)  # past the attribute, entry and listing timeouts (0.5 s)
    assert errno_of(lambda: os.stat(m.path / "later")) == errno.EIO
    clear_failure(control)
    assert read_bytes(m.path / "later") == b"later\n"
    # The command line wins over the file.
    m2 = mount(f"flaky://{src}", "--config", str(config), "--file-mode", "0640")
    assert stat.S_IMODE(os.stat(m2.path / "hello").st_mode) == 0o640
    assert stat.S_IMODE(os.stat(m2.path / "sub").st_mode) == 0o700


def test_config_file_in_background_mode(tmp_path: Path, cleanup: list[Path]) -> None:
    src = _source(tmp_path)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    log = tmp_path / "daemon.log"
    config = tmp_path / "c.toml"
    config.write_text(f'file_mode = "0444"\nlog_file = "{log}"\nlog_level = "debug"\n'
                      f'cache_dir = "{tmp_path}/cache"\n')
    result = cli("mount", src, mnt, "--config", config)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(mnt / "hello").st_mode) == 0o444
    assert errno_of(lambda: os.stat(mnt / ("n" * 256))) == errno.ENAMETOOLONG  # logs at DEBUG
    assert read_bytes(mnt / "hello") == b"hello\n"
    assert cli("umount", mnt).returncode == 0
    assert _gone(mnt)
    text = log.read_text()
    assert "INFO alluxiofuse.daemon.process: mounted" in text
    assert "DEBUG alluxiofuse.ops: lookup: NameTooLong" in text


def test_umount_of_a_busy_mount(mount: MountFactory, tmp_path: Path) -> None:
    """``umount`` refuses a mount in use, saying so; ``umount -z`` detaches it at once and
    the daemon exits when the last user lets go."""
    m = mount(_source(tmp_path))
    f = open(m.path / "hello", "rb")  # noqa: SIM115 (held open across the unmounts)
    try:
        busy = cli("umount", m.path)
        lines = busy.stderr.decode().splitlines()
        assert busy.returncode == 1
        assert len(lines) == 1 and lines[0].startswith("alluxiofuse: cannot unmount"), lines
        assert ismount(m.path)
        assert m.proc.poll() is None
        assert read_bytes(m.path / "sub" / "inner") == b"inner\n"

        lazy = cli("umount", "-z", m.path)
        assert lazy.returncode == 0, lazy.stderr
        assert not ismount(m.path)
        assert f.read() == b"hello\n"  # the open file still reads
    finally:
        f.close()
    assert m.proc.wait(15) == 0


def test_presentation_options(mount: MountFactory, tmp_path: Path) -> None:
    src = _source(tmp_path)
    (src / "link").symlink_to("hello")
    m = mount(src, "--uid", "1234", "--gid", "4321", "--file-mode", "0640",
              "--dir-mode", "0750", "--attr-timeout", "250ms", "--page-size", "256KiB")
    for rel, mode in (("hello", 0o640), ("sub", 0o750), ("sub/inner", 0o640)):
        st = os.stat(m.path / rel)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 4321, mode), rel
    root = os.stat(m.path)
    assert (root.st_uid, root.st_gid, stat.S_IMODE(root.st_mode)) == (1234, 4321, 0o750)
    link = os.lstat(m.path / "link")
    assert stat.S_ISLNK(link.st_mode) and link.st_uid == 1234
    assert os.stat(m.path / "hello").st_blksize == 256 * 1024
    assert read_bytes(m.path / "link") == b"hello\n"


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_kernel_refusing_the_mount_is_reported(
    tmp_path: Path, cleanup: list[Path], foreground: bool,
) -> None:
    """The source checks out but mount(2) fails (here: the source, which becomes the mount's
    fsname, is longer than the kernel takes). The user must hear why, in one line."""
    path = str(tmp_path / "s")
    while len(path) < 4090:  # a directory path just under PATH_MAX ...
        path += "/" + "d" * min(200, 4090 - len(path) - 1)
    os.makedirs(path)
    source = "file://" + path + "/" * 8  # ... in a URL just over it
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    cleanup.append(mnt)
    args = ["mount", source, str(mnt), *_own_files(tmp_path)]
    if foreground:
        args.append("-f")
    result = cli(*args)
    lines = result.stderr.decode(errors="replace").splitlines()
    assert result.returncode == 1, lines
    assert not ismount(mnt)
    assert _gone(mnt, 2)
    # libfuse may print its own "fuse: ..." line first; ours must be there, and last.
    ours = [line for line in lines if not line.startswith("fuse: ")]
    assert len(ours) == 1, lines
    assert ours[0].startswith(f"alluxiofuse: cannot mount at {mnt}"), lines


# -- status


def test_status_of_a_read_only_mount(mount: MountFactory, tmp_path: Path) -> None:
    """A live --read-only mount has no spool: status says it is mounted, owes nothing."""
    m = mount(_source(tmp_path), "--read-only")
    result = cli("status", m.path, "--cache-dir", tmp_path / "unused-cache")
    assert (result.returncode, result.stderr) == (0, b""), result
    assert result.stdout.decode() == (
        f"{m.source}: no uploads pending (mounted read-only at {m.path})\n")
    assert not (tmp_path / "unused-cache").exists()


def test_status_of_a_read_only_mount_shows_what_an_earlier_mount_owes(
    mount: MountFactory, tmp_path: Path,
) -> None:
    """Uploads an earlier writable mount of the source owes are still owed while it is
    mounted read-only (which uploads nothing): status lists them."""
    src, cache = _source(tmp_path), tmp_path / "cache"
    spool = Spool.open(str(cache), str(src))
    spool.journal(Record(data="1.data", path="owed", size=5))
    spool.close()
    m = mount(src, "--read-only", "--cache-dir", str(cache))
    result = cli("status", m.path, "--cache-dir", cache)
    assert (result.returncode, result.stderr) == (0, b""), result
    assert result.stdout.decode().startswith(
        f"{m.source}: 1 uploads pending (mounted read-only: they resume at the next "
        "writable mount; spool ")
    assert "  owed  5B  closed" in result.stdout.decode()


def test_status_of_a_mountpoint_after_unmount(mount: MountFactory, tmp_path: Path) -> None:
    m = mount(_source(tmp_path))
    cache = m.args[m.args.index("--cache-dir") + 1]
    live = cli("status", m.path, "--cache-dir", cache)
    assert live.returncode == 0 and b"0 uploads pending (its daemon is running" in live.stdout
    assert m.unmount() == 0
    result = cli("status", m.path, "--cache-dir", cache)
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.decode() == (
        f"alluxiofuse: {m.path} is not an alluxiofuse mount, nor a source with a spool in "
        f"{cache} (a mount with another --cache-dir: give it)\n")
