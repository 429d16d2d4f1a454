"""What the benchmark scripts share: processes, mounts, CPU accounting and report tables."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import os
import platform
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Protocol, TypeVar

MiB = 1 << 20
REPO_ROOT = Path(__file__).resolve().parent.parent
MOUNT_TIMEOUT = 60.0
UMOUNT = shutil.which("fusermount3") or shutil.which("fusermount") or "fusermount3"


class BenchError(Exception):
    """The benchmark itself failed (as opposed to a target being missed)."""


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def on_sigterm(signum: int, frame: object) -> None:
    """A SIGTERM handler that runs the clean-ups, as Ctrl-C does."""
    raise KeyboardInterrupt(f"signal {signum}")


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log, indented to follow an error message."""
    with contextlib.suppress(OSError):
        return "\n    ".join(path.read_text(errors="replace").rstrip().splitlines()[-lines:])
    return ""


def log_findings(logfile: Path, mark: str | None = None) -> tuple[int, list[str]]:
    """How many lines of a log hold ``mark`` (0 without one), and its WARNING, ERROR and
    CRITICAL lines."""
    n, bad = 0, []
    with contextlib.suppress(OSError), open(logfile, errors="replace") as f:
        for line in f:
            if mark is not None and mark in line:
                n += 1
            if " WARNING " in line or " ERROR " in line or " CRITICAL " in line:
                bad.append(line.rstrip())
    return n, bad


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------ processes


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (not idle, not waiting on I/O)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def self_cpu() -> float:
    t = os.times()
    return t.user + t.system


def vm_hwm_mib(pid: int) -> float | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return None


def proc_counters(pid: int) -> tuple[int, float]:
    """Minor page faults and CPU seconds (user + system) of process ``pid`` so far, all
    its threads, from /proc/PID/stat (fields 10, 14 and 15)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0, 0.0
    return int(fields[7]), (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of process ``pid`` so far."""
    return proc_counters(pid)[1]


@dataclass
class Snapshot:
    """CPU and requests at one moment of a pass, to subtract from the next."""

    t: float
    sims: list[float]
    proc: float
    me: float
    busy: float
    stats: Counter[str]


def wait_quiet(max_other: float, wait: float) -> None:
    """Before a pass: wait (up to ``wait`` seconds) until the rest of the machine uses
    less than ``max_other`` cores, measured over one second while this run is idle."""
    deadline, said = time.monotonic() + wait, False
    while True:
        b0 = machine_busy()
        time.sleep(1.0)
        if (busy := machine_busy() - b0) < max_other:
            return
        if time.monotonic() > deadline:
            log(f"  the machine is still busy ({busy:.2f} cores elsewhere): going on")
            return
        if not said:
            log(f"  waiting for the machine to be idle ({busy:.2f} cores busy elsewhere)")
            said = True


def add_quiet_options(p: argparse.ArgumentParser) -> None:
    """The options of :func:`quiet_pass`: how busy the rest of the machine may be."""
    p.add_argument("--max-other", type=float, default=0.15,
                   help="cores the rest of the machine may use during a pass: a pass over it "
                        "is run again; also the idle level waited for before each pass")
    p.add_argument("--attempts", type=int, default=6, help="tries per pass (see --max-other)")
    p.add_argument("--quiet-wait", type=float, default=600,
                   help="seconds to wait, before each pass, for the machine to be idle")


class CpuPass(Protocol):
    """A timed pass that knows the cores the rest of the machine used meanwhile."""

    @property
    def cpu(self) -> dict[str, float]: ...  # "other": cores used by the rest of the machine


P = TypeVar("P", bound=CpuPass)


def quiet_pass(fn: Callable[[], P], args: argparse.Namespace, check_alive: Callable[[], None],
               what: str, said: Callable[[P], str], problems: list[str]) -> tuple[P, int]:
    """Run one pass, ``fn()``; one during which the rest of the machine used more than
    --max-other cores (another job) is discarded and run again, up to --attempts times in
    all (``add_quiet_options``). The pass kept, and how many were discarded; a pass kept
    busy is a note in ``problems`` (``what`` names it). ``said(pass)`` starts the
    progress line of a discarded one."""
    discarded = 0
    for attempt in range(1, args.attempts + 1):
        check_alive()
        wait_quiet(args.max_other, args.quiet_wait)
        p = fn()
        if p.cpu["other"] <= args.max_other or attempt == args.attempts:
            break
        discarded += 1
        log(f"{said(p)}discarded: {p.cpu['other']:.2f} cores used elsewhere during the pass")
    if p.cpu["other"] > args.max_other:
        problems.append(f"{what} kept after {attempt} attempts with {p.cpu['other']:.2f} "
                        f"cores used elsewhere")
    return p, discarded


def print_notes(problems: list[str], max_other: float, discarded: int) -> None:
    """A report's notes, and how many passes were run again (``quiet_pass``)."""
    for note in problems:
        print(f"note: {note}")
    print(f"passes discarded and run again (another job used more than "
          f"{max_other} cores meanwhile): {discarded}")


def end(proc: subprocess.Popen[bytes]) -> None:
    """A helper process (a simulator, a server): SIGTERM, then SIGKILL; reaped."""
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def run_quiet(cmd: list[str]) -> None:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=15, check=False)


class LineReader:
    """Lines from a child's stdout, each with a deadline."""

    def __init__(self, proc: subprocess.Popen[bytes], who: str = "official client") -> None:
        assert proc.stdout is not None
        self.fd, self.buf, self.who = proc.stdout.fileno(), b"", who

    def readline(self, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"{self.who}: no {what} after {timeout:g}s")
            if select.select([self.fd], [], [], left)[0]:
                chunk = os.read(self.fd, 1 << 16)
                if not chunk:
                    raise BenchError(f"{self.who} exited before {what}")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


# ------------------------------------------------------------------------ mounts


@dataclass
class Mount:
    target: str
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    errlog: Path | None = None
    peak_rss_mib: float | None = None

    def counters(self) -> tuple[int, float]:
        """The daemon's minor page faults and CPU seconds so far (0, 0.0 without one)."""
        return (0, 0.0) if self.proc is None else proc_counters(self.proc.pid)

    def tail(self, lines: int = 20) -> str:
        if self.errlog is None:
            return ""
        with contextlib.suppress(OSError):
            text = self.errlog.read_text(errors="replace").rstrip().splitlines()[-lines:]
            return "\n    ".join([f"--- output tail of {self.target} ({self.errlog}):", *text])
        return ""


def is_mounted(path: Path) -> bool:
    """Unlike os.path.ismount, also true for a dead (ENOTCONN) FUSE mount."""
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == str(path) for line in f)


@contextlib.contextmanager
def watchdog(m: Mount, seconds: float, what: str) -> Iterator[None]:
    """Kill the daemon if `what` overruns: the kernel then aborts the FUSE connection,
    so readers blocked on the mount get ENOTCONN instead of hanging forever."""
    if m.proc is None:
        yield
        return
    proc, fired = m.proc, threading.Event()

    def fire() -> None:
        fired.set()
        proc.kill()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    err: OSError | None = None
    try:
        yield
    except OSError as exc:
        err = exc
    finally:
        timer.cancel()
    if fired.is_set() or err:
        why = f"timed out after {seconds:g}s (daemon killed)" if fired.is_set() else repr(err)
        raise BenchError(f"{m.target} {what}: {why}\n    {m.tail()}") from err


def stop(proc: subprocess.Popen[bytes], mnt: Path) -> None:
    """Unmount and reap; SIGTERM, SIGKILL and a lazy unmount are the fallbacks."""
    if is_mounted(mnt):
        run_quiet([UMOUNT, "-u", str(mnt)])
    for action, wait in ((None, 20), (proc.terminate, 10), (proc.kill, 10)):
        if action is not None:
            log(f"warning: daemon on {mnt} still running; {action.__name__}()")
            action()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            break
    if is_mounted(mnt):
        log(f"warning: {mnt} still mounted; lazy unmount")
        run_quiet([UMOUNT, "-uz", str(mnt)])
    with contextlib.suppress(OSError):
        mnt.rmdir()


@contextlib.contextmanager
def daemon_mount(target: str, command: Callable[[Path], list[str]]) -> Iterator[Mount]:
    """Run ``command(mountpoint)`` (with this checkout first on PYTHONPATH) on a fresh
    mountpoint, yield once it is mounted; always unmount and reap. Its output goes to a
    log kept only if it failed."""
    mnt = Path(os.path.realpath(tempfile.mkdtemp(prefix=f"bench-{target}-mnt-")))
    fd, errname = tempfile.mkstemp(prefix=f"bench-{target}-", suffix=".log")
    cmd = command(mnt)
    pypath = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    with os.fdopen(fd, "wb") as errf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                stdout=errf, stderr=subprocess.STDOUT, cwd=REPO_ROOT,
                                env=dict(os.environ, PYTHONPATH=pypath), start_new_session=True)
    m, clean = Mount(target, mnt, proc, Path(errname)), False
    try:
        deadline = time.monotonic() + MOUNT_TIMEOUT
        with watchdog(m, MOUNT_TIMEOUT + 10, "mount"):
            while not os.path.ismount(mnt):
                if proc.poll() is not None:
                    raise BenchError(f"{target} exited ({proc.returncode}) before mounting"
                                     f"\n    {m.tail()}")
                if time.monotonic() > deadline:
                    raise BenchError(f"{target} not mounted after {MOUNT_TIMEOUT:.0f}s"
                                     f"\n    {m.tail()}")
                time.sleep(0.05)
        yield m
        m.peak_rss_mib = vm_hwm_mib(proc.pid)
        clean = True
    finally:
        stop(proc, mnt)
        if clean and proc.returncode != 0:
            log(f"warning: {target} exited with {proc.returncode}\n    {m.tail()}")
        elif clean:
            Path(errname).unlink(missing_ok=True)


def drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------ report


def environment() -> str:
    info = {k.strip(): v.strip() for k, _, v in (
        line.partition(":") for line in Path("/proc/meminfo").read_text().splitlines())}
    cpu = next((line.split(":")[1].strip() for line in Path("/proc/cpuinfo").read_text()
                .splitlines() if line.startswith("model name")), "?")
    out = [f"python {platform.python_version()}"]
    for pkg in ("alluxiofuse", "fsspec", "fusepy", "pyfuse3", "trio"):
        try:
            out.append(f"{pkg} {metadata.version(pkg)}")
        except metadata.PackageNotFoundError:
            out.append(f"{pkg} (not installed)")
    with contextlib.suppress(OSError, TypeError, AttributeError):
        v = ctypes.CDLL(ctypes.util.find_library("fuse")).fuse_version()
        out.append(f"libfuse2 API {v // 10}.{v % 10}")
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        r = subprocess.run([UMOUNT, "-V"], capture_output=True, text=True, timeout=10, check=False)
        out.append((r.stdout or r.stderr).strip())
    return (f"machine: nproc={len(os.sched_getaffinity(0))} MemTotal={info.get('MemTotal')} "
            f"kernel={platform.release()} cpu={cpu}\nversions: " + ", ".join(out))


def chosen(p: argparse.ArgumentParser, only: str, aliases: dict[str, str],
           order: tuple[str, ...]) -> list[str]:
    """The targets a comma-separated ``--only`` names (``aliases``: name -> target), in
    ``order``; an unknown name is a usage error."""
    names = [t.strip() for t in only.split(",") if t.strip()]
    if bad := [t for t in names if t not in aliases]:
        p.error(f"unknown target(s) {bad}; choose from {', '.join(aliases)}")
    return [t for t in order if t in {aliases[n] for n in names}]


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 1000 else f"{v:,.1f}"


def ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}x"


def summary(vals: list[float]) -> str:
    """The median, and the range when there are several: "1,234 (1,200–1,300)"."""
    if not vals:
        return "–"
    med = fmt(statistics.median(vals))
    if len(vals) == 1:
        return med
    return f"{med} ({fmt(min(vals))}–{fmt(max(vals))})"


def print_table(rows: list[list[str]], markdown: bool,
                left: tuple[int, ...] | None = None) -> None:
    """``rows`` (the first is the header) as Markdown or as aligned text; in text, the
    columns in ``left`` (all when None) are left-aligned, the others right-aligned."""
    if markdown:
        for i, row in enumerate(rows):
            print("| " + " | ".join(row) + " |" + ("\n|" + "---|" * len(row) if i == 0 else ""))
        return
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) if left is None or i in left else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))))
