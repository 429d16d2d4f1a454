"""systemd: the units pass ``systemd-analyze verify``, and the daemon speaks sd_notify to a
real ``NOTIFY_SOCKET`` in the right order (READY=1 only once the mount is live).

systemd is not PID 1 here, so the service manager's side is played by the test: it binds
the notification socket, starts the daemon as the unit would, and reads the datagrams.
"""

from __future__ import annotations

import itertools
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.checklogs import watch
from tests.support.flakyfs import clear_failure, set_failure
from tests.support.mounts import (
    CLI,
    DAEMON,
    REPO,
    START_TIMEOUT,
    MountFactory,
    _require_fuse,
    fusermount_u,
    ismount,
    read_bytes,
    run,
    wait_until,
)
from tests.support.needs import need

pytestmark = pytest.mark.integration

UNITS = REPO / "systemd"
SERVICE = "alluxiofuse@.service"
MOUNT_UNIT = "mnt-data.mount"
# Where the unit expects the command; verify checks that it exists in its root.
INSTALLED = "/usr/local/bin/alluxiofuse"
# Options every daemon started here gets, beyond those a test needs (e.g. a free port for
# an HTTP endpoint the daemon serves by default): one place for the integrator to extend.
DAEMON_OPTIONS: list[str] = ["--strict", "--metrics-addr", "off"]


# -- systemd-analyze verify


@pytest.fixture
def unit_root(tmp_path: Path) -> Path:
    """A root for ``systemd-analyze verify --root``: the host's own units (the targets ours
    are ordered against), ours in /etc/systemd/system, and an executable at each path our
    units run, as after an install."""
    need(shutil.which("systemd-analyze") and os.path.isdir("/usr/lib/systemd/system"),
         "systemd-analyze or systemd's units are not installed (apt install systemd)")
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (SERVICE, MOUNT_UNIT):
        shutil.copy(UNITS / unit, root / "etc/systemd/system" / unit)
    for program in (INSTALLED, "/bin/sh"):
        stub = root / program.lstrip("/")
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return root


def verify(root: Path, unit: str) -> subprocess.CompletedProcess[bytes]:
    # --recursive-errors=yes: without it verify exits 0 whatever it finds.
    return run(["systemd-analyze", "verify", f"--root={root}", "--recursive-errors=yes",
                "--man=no", unit], check=False, timeout=60)


@pytest.mark.parametrize("unit", ["alluxiofuse@mnt-data.service", SERVICE, MOUNT_UNIT])
def test_units_pass_systemd_analyze_verify(unit_root: Path, unit: str) -> None:
    result = verify(unit_root, unit)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == b"", result.stderr.decode()


BREAKAGES = {
    "type-misspelt": (SERVICE, "Type=notify", "Type=notiffy", "Failed to parse service type"),
    "directive-misspelt": (SERVICE, "NotifyAccess=main", "NotifyAcess=main", "Unknown key"),
    "bad-timespan": (SERVICE, "TimeoutStopSec=90s", "TimeoutStopSec=90x",
                     "Failed to parse time value"),
    "binary-elsewhere": (SERVICE, f"ExecStart={INSTALLED}", "ExecStart=/usr/bin/alluxiofuse",
                         "is not executable"),
    "where-not-the-name": (MOUNT_UNIT, "Where=/mnt/data", "Where=/mnt/other",
                           "doesn't match unit name"),
    "mount-section-misspelt": (MOUNT_UNIT, "[Mount]", "[Mnt]", "Unknown section"),
}


@pytest.mark.parametrize("case", list(BREAKAGES))
def test_verify_fails_on_a_broken_unit(unit_root: Path, case: str) -> None:
    """The verify above checks the files for real: each breakage makes it fail."""
    unit, good, bad, said = BREAKAGES[case]
    path = unit_root / "etc/systemd/system" / unit
    text = path.read_text()
    assert good in text
    path.write_text(text.replace(good, bad, 1))
    name = "alluxiofuse@mnt-data.service" if unit == SERVICE else unit
    result = verify(unit_root, name)
    assert result.returncode != 0, result
    assert said in result.stderr.decode(), result.stderr.decode()


def test_example_files_are_valid() -> None:
    """The example environment and config files work with the unit's command line."""
    from alluxiofuse.cli.main import config_from_args, parser

    env = read_env_file(UNITS / "mnt-data.env")
    assert env["SOURCE"]
    options = shlex.split(env["OPTIONS"])
    assert options[:2] == ["--config", "/etc/alluxiofuse/mnt-data.toml"]
    # The same file, where the test can read it.
    argv = expand_exec(exec_line("ExecStart"), {**env, "OPTIONS": "--config "
                       + str(UNITS / "mnt-data.toml")}, "/mnt/data")
    assert argv[0] == INSTALLED
    config = config_from_args(parser().parse_args(argv[1:]))
    assert (config.source, config.mountpoint) == ("s3://bucket/datasets", "/mnt/data")
    assert config.foreground and config.allow_other and config.write_type == "ASYNC_THROUGH"


# -- playing the service manager


@dataclass
class Message:
    lines: list[str]
    pid: int  # the sender, from the kernel's credentials (systemd checks NotifyAccess by it)
    at: float = field(default_factory=time.monotonic)


class NotifySocket:
    """The socket systemd would listen on: datagrams with their sender's credentials."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.received: list[Message] = []

    def receive(self, timeout: float) -> Message | None:
        """The next message, or None if none comes within ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
        except TimeoutError:
            return None
        pid = -1
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = struct.unpack("3i", value[:12])[0]
        assert data.endswith(b"\n"), data
        message = Message(data.decode().splitlines(), pid)
        self.received.append(message)
        return message

    def wait_for(self, line: str, timeout: float) -> Message:
        """Messages until one holding ``line``; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (message := self.receive(max(0.01, deadline - time.monotonic()))) is not None:
            if line in message.lines:
                return message
            if time.monotonic() > deadline:
                break
        pytest.fail(f"no {line} within {timeout}s; got {self.lines()}")

    def lines(self) -> list[str]:
        return [line for m in self.received for line in m.lines]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[
        tuple[NotifySocket, str]]:
    """A listening socket and the NOTIFY_SOCKET value naming it (a path, or '@name')."""
    if request.param == "abstract":
        name = f"alluxiofuse-test-{uuid.uuid4().hex}"
        listener, value = NotifySocket(b"\0" + name.encode()), "@" + name
    else:
        path = tmp_path / "notify"
        assert len(os.fsencode(path)) < 108, path  # sun_path's size
        listener, value = NotifySocket(str(path)), str(path)
    try:
        yield listener, value
    finally:
        listener.close()


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    mnt: Path
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


StartDaemon = Callable[..., Daemon]


@pytest.fixture
def start_daemon(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StartDaemon]:
    """``start_daemon(argv, mnt, notify_socket, **env)`` → a daemon started as systemd
    would (foreground, NOTIFY_SOCKET set); killed and its mount detached afterwards. As
    with the ``mount`` fixture, WARNING+ in its log fails the test unless declared."""
    _require_fuse()
    started: list[Daemon] = []

    def start(argv: list[str], mnt: Path, notify: str, **env: str) -> Daemon:
        log = tmp_path / f"daemon{len(started)}.log"
        full_env = {**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": notify, **env}
        proc = subprocess.Popen([*argv, "--log-file", str(log), *DAEMON_OPTIONS], cwd=REPO,
                                env=full_env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        daemon = Daemon(proc, mnt, log)
        started.append(daemon)
        watch(request.node, log)
        return daemon

    try:
        yield start
    finally:
        for d in started:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(10)
            fusermount_u(d.mnt)


# Every daemon here sets its mount's kernel read-ahead to this, right after the kernel's
# INIT is answered: how wait_ready tells that READY=1 came only then.
READ_AHEAD = ["--kernel-readahead", "1MiB"]


def wait_ready(listener: NotifySocket, d: Daemon) -> Message:
    """READY=1 from ``d``, checked to mean what it says: the mount is live.

    On READY=1 the daemon is frozen as it was when it said so, and the kernel is asked:
    is it mounted, and is the INIT reply processed (that resets the mount's read-ahead,
    and the daemon sets it only after)? A READY=1 sent early is caught when the daemon
    has not got that far by the time the test reacts: most times, so with every test
    here asking, a misplaced READY=1 fails the run.
    """
    ready = listener.wait_for("READY=1", START_TIMEOUT)
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        device = _mount_device(d.mnt)
        assert device is not None, "READY=1 before the mount"
        read_ahead = Path(f"/sys/class/bdi/{device}/read_ahead_kb").read_text().strip()
        assert read_ahead == "1024", "READY=1 before the kernel's INIT was answered"
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    return ready


def _mount_device(path: Path) -> str | None:
    """``major:minor`` of the mount at ``path``, dead or alive (a dead one fails every
    stat), from mountinfo: asking the mount itself would wait on its daemon."""
    with open("/proc/self/mountinfo") as f:
        devices = [line.split()[2] for line in f if line.split()[4] == str(path)]
    return devices[-1] if devices else None


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    (src / "hello").write_bytes(b"hello\n")
    mnt.mkdir()
    return src, mnt


def mount_argv(src: str | Path, mnt: Path, tmp_path: Path, *options: str) -> list[str]:
    return [*CLI, "mount", "-f", str(src), str(mnt), "--cache-dir", str(tmp_path / "cache"),
            *READ_AHEAD, *options]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("stop", ["SIGTERM", "SIGINT", "unmount"])
def test_notification_order(
    tmp_path: Path, notify_socket: tuple[NotifySocket, str], start_daemon: StartDaemon, stop: str,
) -> None:
    listener, address = notify_socket
    src, mnt = _tree(tmp_path)
    d = start_daemon(mount_argv(src, mnt, tmp_path), mnt, address)
    ready = wait_ready(listener, d)
    # Usable the moment systemd is told.
    assert ismount(mnt)
    assert read_bytes(mnt / "hello") == b"hello\n"
    assert [m.lines for m in listener.received] == [
        [f"STATUS=checking source {src}"],
        [f"STATUS=mounting at {mnt}"],
        ["READY=1", f"STATUS=serving {src} at {mnt}"],
    ]
    assert {m.pid for m in listener.received} == {d.proc.pid}  # NotifyAccess=main is enough
    assert ready.lines == ["READY=1", f"STATUS=serving {src} at {mnt}"]

    if stop == "unmount":
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True, timeout=30)
    else:
        d.proc.send_signal(getattr(signal, stop))
    stopping = listener.wait_for("STOPPING=1", 30)
    assert stopping.lines == ["STOPPING=1", "STATUS=unmounting"]
    assert d.proc.wait(30) == 0, d.log_text()
    assert not ismount(mnt)
    while listener.receive(0.2) is not None:  # what came after, if anything
        pass
    after = listener.received[listener.received.index(stopping) + 1:]
    # Nothing owed here, so no drain status; never READY again, never a failure.
    assert all(line.startswith("EXTEND_TIMEOUT_USEC=") for m in after for line in m.lines), after


@pytest.mark.timeout(90)
def test_watchdog_pings_keep_coming(
    tmp_path: Path, notify_socket: tuple[NotifySocket, str], start_daemon: StartDaemon,
) -> None:
    listener, address = notify_socket
    src, mnt = _tree(tmp_path)
    d = start_daemon(mount_argv(src, mnt, tmp_path), mnt, address,
                     WATCHDOG_USEC="200000", WATCHDOG_PID="")  # a ping every 0.1 s
    wait_ready(listener, d)
    start = time.monotonic()
    pings = []
    while time.monotonic() - start < 2:
        message = listener.receive(1)
        assert message is not None, "the watchdog pings stopped"
        if message.lines == ["WATCHDOG=1"]:
            pings.append(message.at)
        assert read_bytes(mnt / "hello") == b"hello\n"  # serving all the while
    assert len(pings) >= 8, pings  # 20 expected; a loaded machine may be late
    assert max(b - a for a, b in itertools.pairwise(pings)) < 1, pings  # no long silence
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0


def test_no_watchdog_pings_for_another_process(
    tmp_path: Path, notify_socket: tuple[NotifySocket, str], start_daemon: StartDaemon,
) -> None:
    listener, address = notify_socket
    src, mnt = _tree(tmp_path)
    d = start_daemon(mount_argv(src, mnt, tmp_path), mnt, address,
                     WATCHDOG_USEC="200000", WATCHDOG_PID="1")
    wait_ready(listener, d)
    assert listener.receive(1) is None
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0
    assert "WATCHDOG=1" not in listener.lines()


@pytest.mark.parametrize("notify_socket", ["path"], indirect=True)
@pytest.mark.expect_log(r"^source does not exist: ", count=1, level="ERROR")
def test_startup_failure_says_failed_and_exits_nonzero(
    tmp_path: Path, notify_socket: tuple[NotifySocket, str], start_daemon: StartDaemon,
) -> None:
    listener, address = notify_socket
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    missing = tmp_path / "no-such-source"
    d = start_daemon(mount_argv(missing, mnt, tmp_path), mnt, address)
    assert d.proc.wait(START_TIMEOUT) == 1
    assert d.proc.stderr is not None
    said = d.proc.stderr.read().decode().splitlines()
    assert said == [f"alluxiofuse: source does not exist: {missing}"]
    while listener.receive(0.5) is not None:
        pass
    assert listener.lines() == [
        f"STATUS=checking source {missing}",
        f"STATUS=failed: source does not exist: {missing}",
    ]
    assert not ismount(mnt)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("notify_socket", ["path"], indirect=True)
def test_stop_reports_the_drain_of_owed_uploads(
    tmp_path: Path, notify_socket: tuple[NotifySocket, str], start_daemon: StartDaemon,
) -> None:
    """STOPPING=1 and the count of owed uploads reach systemd while the daemon still runs."""
    listener, address = notify_socket
    src, mnt = _tree(tmp_path)
    control = str(tmp_path / "control")
    set_failure(control, ["open_write"], mode="hang")  # every upload stalls
    d = start_daemon(
        [*DAEMON, "mount", "-f", f"flaky://{src}", str(mnt), "--cache-dir",
         str(tmp_path / "cache"), "--write-type", "ASYNC_THROUGH", "--drain-timeout", "100",
         f"--ufs-option=control={control}", *READ_AHEAD], mnt, address)
    wait_ready(listener, d)
    for name in ("a", "b"):
        (mnt / name).write_bytes(name.encode() * 1000)  # journaled, upload owed
    d.proc.send_signal(signal.SIGTERM)
    stopping = listener.wait_for("STOPPING=1", 30)
    # 100 s of drain + 30 s to finish: more than the unit's TimeoutStopSec, so asked for.
    extend = listener.receive(10)
    assert extend is not None and extend.lines == ["EXTEND_TIMEOUT_USEC=130000000"]
    draining = listener.wait_for("STATUS=draining 2 owed uploads", 10)
    assert d.proc.poll() is None  # said while the daemon still works
    assert listener.received.index(stopping) < listener.received.index(draining)
    clear_failure(control)
    assert d.proc.wait(60) == 0, d.log_text()
    assert (src / "a").read_bytes() == b"a" * 1000
    assert not ismount(mnt)


# -- the unit's command lines, run as systemd would run them


def read_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= of plain ``NAME=value`` lines (all our examples use)."""
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            env[name.strip()] = value.strip()
    return env


def exec_line(key: str) -> str:
    """The value of ``key=`` in the service unit (one line each in ours)."""
    lines = [line for line in (UNITS / SERVICE).read_text().splitlines()
             if line.startswith(key + "=")]
    assert len(lines) == 1, lines
    return lines[0].removeprefix(key + "=").lstrip("-")


def expand_exec(line: str, env: dict[str, str], path: str) -> list[str]:
    """An Exec line as systemd expands it (systemd.service(5), "Command lines"): %i and %f
    from the instance for ``path``, ``$NAME`` as a word split at whitespace, ``${NAME}``
    as exactly one argument, ``$$`` a literal dollar."""
    instance = subprocess.run(["systemd-escape", "--path", path], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    argv: list[str] = []
    for word in shlex.split(line.replace("%i", instance).replace("%f", path)):
        if re.fullmatch(r"\$[A-Za-z_]\w*", word):
            argv += shlex.split(env.get(word[1:], ""))
        else:
            word = re.sub(r"(?<!\$)\$\{(\w+)\}", lambda m: env.get(m[1], ""), word)
            argv.append(word.replace("$$", "$"))
    return argv


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A stand-in for /usr/local/bin/alluxiofuse: this checkout's CLI."""
    path = tmp_path / "bin" / "alluxiofuse"
    path.parent.mkdir()
    path.write_text(f'#!/bin/sh\nexec {shlex.join(CLI)} "$@"\n')
    path.chmod(0o755)
    return path


@pytest.mark.timeout(90)
@pytest.mark.parametrize("notify_socket", ["path"], indirect=True)
def test_unit_exec_start_mounts_and_is_ready(
    tmp_path: Path, notify_socket: tuple[NotifySocket, str], start_daemon: StartDaemon,
    installed: Path,
) -> None:
    listener, address = notify_socket
    src, mnt = _tree(tmp_path)
    config = tmp_path / "mnt.toml"
    config.write_text(f'file_mode = "0600"\ncache_dir = "{tmp_path / "cache"}"\n'
                      'kernel_readahead = "1MiB"\n')  # as READ_AHEAD
    env_file = tmp_path / "mnt.env"
    env_file.write_text(f"SOURCE={src}\nOPTIONS=--config {config}\n")
    argv = expand_exec(exec_line("ExecStart"), read_env_file(env_file), str(mnt))
    assert argv[0] == INSTALLED
    d = start_daemon([str(installed), *argv[1:]], mnt, address)
    wait_ready(listener, d)
    assert read_bytes(mnt / "hello") == b"hello\n"
    assert os.stat(mnt / "hello").st_mode & 0o777 == 0o600
    d.proc.send_signal(signal.SIGTERM)  # KillSignal=
    assert d.proc.wait(30) == 0
    assert not ismount(mnt)


def test_unit_without_source_fails_clearly(tmp_path: Path, installed: Path) -> None:
    """An environment file that forgets SOURCE: ${SOURCE} is an empty argument, which must
    not mount the working directory (/ under systemd)."""
    _require_fuse()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    argv = expand_exec(exec_line("ExecStart"), {}, str(mnt))
    result = run([str(installed), *argv[1:]], check=False, cwd="/", timeout=60)
    assert result.returncode == 1
    assert result.stderr.decode().strip() == "alluxiofuse: missing SOURCE"
    assert not ismount(mnt)


def _in_mountinfo(path: Path) -> bool:
    return _mount_device(path) is not None


@pytest.mark.timeout(90)
def test_exec_stop_post_clears_only_a_dead_mount(
    mount: MountFactory, tmp_path: Path, installed: Path,
) -> None:
    src, _ = _tree(tmp_path)
    live, dead = mount(src), mount(src)

    def stop_post(mnt: Path, exit_code: str, exit_status: str) -> None:
        """ExecStopPost=, with the variables systemd sets for it (systemd.exec(5))."""
        argv = expand_exec(exec_line("ExecStopPost"), {}, str(mnt))
        env = {"SERVICE_RESULT": "exit-code" if exit_code == "exited" else "signal",
               "EXIT_CODE": exit_code, "EXIT_STATUS": exit_status}
        run([arg.replace(INSTALLED, str(installed)) for arg in argv], env=env, check=False)

    # The unit's daemon failed to start (exit 1: "already mounted"): the mount there is
    # someone else's, and live.
    stop_post(live.path, "exited", "1")
    assert ismount(live.path)
    assert read_bytes(live.path / "hello") == b"hello\n"

    dead.proc.send_signal(signal.SIGKILL)  # a crash: the mount is left dead
    dead.proc.wait(10)
    assert _in_mountinfo(dead.path)
    stop_post(dead.path, "killed", "KILL")
    assert wait_until(lambda: not _in_mountinfo(dead.path), 10)
    assert os.listdir(dead.path) == []  # ready for the restart
