"""Real mounts: the daemon runs in a subprocess, in the foreground, as users run it.

Every mount is lazily unmounted and its daemon reaped in teardown, whatever happened. A
missing /dev/fuse (or not being root) skips these tests on a workstation but fails them
under CI=true: integration tests must never silently not run in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.checklogs import watch
from tests.support.needs import need

REPO = Path(__file__).resolve().parents[2]
# The daemon's command line: the real CLI, with the test-only flaky:// protocol registered.
DAEMON = [
    sys.executable, "-c",
    "import sys, tests.support.flakyfs; from alluxiofuse.cli.main import main; "
    "sys.exit(main(sys.argv[1:]))",
]
START_TIMEOUT = 30.0


def _require_fuse() -> None:
    need(os.path.exists("/dev/fuse"), "/dev/fuse is missing")
    need(os.geteuid() == 0, "integration tests mount as root")


def with_timeout(fn: Callable[[], object], timeout: float) -> object:
    """``fn()`` in a thread, so that a hung mount fails the test instead of hanging it."""
    result: list[object] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as e:  # handed to the caller
            error.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout}s")
    if error:
        raise error[0]
    return result[0]


def ismount(path: Path, timeout: float = 10.0) -> bool:
    return bool(with_timeout(lambda: os.path.ismount(path), timeout))


def fusermount_u(path: Path) -> None:
    subprocess.run(["fusermount3", "-u", "-z", "-q", str(path)], check=False, timeout=30,
                   capture_output=True)


@dataclass
class Mount:
    path: Path
    source: str
    proc: subprocess.Popen[bytes]
    log: Path
    args: list[str] = field(default_factory=list)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def metrics_url(self) -> str:
        """Where the daemon serves /metrics, /healthz and /readyz (from its log)."""
        deadline = time.monotonic() + 10
        while not (found := _SERVING.search(self.log_text())):
            if time.monotonic() > deadline:
                raise AssertionError(f"no metrics address in the log:\n{self.log_text()}")
            time.sleep(0.05)
        return found.group(1)

    def scrape(self) -> Scrape:
        """The daemon's metrics now, by (name, sorted labels)."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.metrics_url() + "/metrics", timeout=10).text
        return Scrape({(s.name, tuple(sorted(s.labels.items()))): s.value
                       for family in text_string_to_metric_families(text)
                       for s in family.samples})

    def unmount(self, timeout: float = 30.0) -> int:
        """Unmount from outside (as a user would) and return the daemon's exit code."""
        subprocess.run(["fusermount3", "-u", str(self.path)], check=True, timeout=30,
                       capture_output=True)
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            fusermount_u(self.path)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
        fusermount_u(self.path)


MountFactory = Callable[..., Mount]
_SERVING = re.compile(r"serving metrics at (http://\S+)/metrics")


@dataclass
class Scrape:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]

    def __call__(self, name: str, **labels: str) -> float:
        """A sample's value; an AssertionError if the daemon does not export it."""
        key = (name, tuple(sorted(labels.items())))
        if key not in self.samples:
            raise AssertionError(f"no sample {name}{labels or ''} in the scrape")
        return self.samples[key]

    def get(self, name: str, default: float, **labels: str) -> float:
        """A sample's value, or ``default`` (a labelled counter not incremented yet)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), default)

    def sum(self, name: str, **labels: str) -> float:
        """The sum over every sample of ``name`` whose labels include ``labels``."""
        return sum(v for (n, ls), v in self.samples.items()
                   if n == name and set(labels.items()) <= set(ls))


@pytest.fixture
def mount(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MountFactory]:
    """``mount(source, *options, strict=True)`` → a live :class:`Mount`, whose daemon log
    the log check reads (tests/support/checklogs.py)."""
    _require_fuse()
    mounts: list[Mount] = []

    def start(source: str | Path, *options: str, strict: bool = True) -> Mount:
        n = len(mounts)
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        log = tmp_path / f"daemon{n}.log"
        args = ["mount", str(source), str(mnt), "-f", "--log-file", str(log), *options]
        if "--cache-dir" not in options:
            args += ["--cache-dir", str(tmp_path / f"cache{n}")]
        if not any(o.startswith("--metrics-addr") for o in options):
            args += ["--metrics-addr", "127.0.0.1:0"]  # mounts at once: one port each
        if strict:
            args.append("--strict")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([*DAEMON, *args], cwd=REPO, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        m = Mount(mnt, str(source), proc, log, args)
        mounts.append(m)
        watch(request.node, log)
        deadline = time.monotonic() + START_TIMEOUT
        while not ismount(mnt):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"daemon exited with {proc.returncode}: {err}{m.log_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"mount did not come up in {START_TIMEOUT}s:\n{m.log_text()}")
            time.sleep(0.05)
        return m

    try:
        yield start
    finally:
        for m in mounts:
            m.close()


@pytest.fixture(autouse=True)
def _leaves_no_spool_or_log(tmp_path: Path) -> Iterator[None]:
    """Fail a test that leaves, outside its tmp_path, a spool (the default --cache-dir)
    or a daemon log (the default log file of a background mount) for a source or a
    mountpoint inside its tmp_path; and remove them. Other tests may be writing there at
    the same time: only what names this test's tmp_path is its own."""
    yield
    from alluxiofuse.config import default_cache_dir, default_log_file, escape_path

    left: list[Path] = []
    cache = Path(default_cache_dir())
    for spool in cache.iterdir() if cache.is_dir() else ():
        try:
            source = (spool / "lock").read_text(errors="replace").strip()
        except OSError:
            continue
        if str(tmp_path) in source:
            left.append(spool)
            shutil.rmtree(spool, ignore_errors=True)
    logs = Path(default_log_file(str(tmp_path))).parent
    prefix = escape_path(str(tmp_path)) + "-"
    for log in logs.iterdir() if logs.is_dir() else ():
        if log.name.startswith(prefix):
            left.append(log)
            log.unlink(missing_ok=True)
    if left:
        pytest.fail("the test left (now removed): " + ", ".join(map(str, left)))


def make_tree(root: Path, *, files: int = 200, seed: int = 1) -> dict[str, bytes]:
    """A deterministic tree of nested dirs, varied sizes (0 B to 3 MiB) and awkward names."""
    import random

    rng = random.Random(seed)
    names = ["plain", "with space", "uni-ü-日本", "pct%41", "plus+", "hash#", "q?mark",
             "amp&", "x" * 200]
    content: dict[str, bytes] = {}
    for i in range(files):
        depth = rng.randint(0, 3)
        parts = [f"{rng.choice(names)}-d{rng.randint(0, 4)}" for _ in range(depth)]
        name = f"{rng.choice(names)}-{i}.bin"
        rel = "/".join([*parts, name])
        size = rng.choice([0, 1, 100, 4096, 65536, 1 << 20, (1 << 20) + 1, 3 * (1 << 20) - 7])
        data = rng.randbytes(size)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        content[rel] = data
    return content


# -- helpers shared by the integration test modules

CLI = [sys.executable, "-m", "alluxiofuse"]
SUBPROCESS_TIMEOUT = 90.0


def run(cmd: list[str], *, check: bool = True, timeout: float = SUBPROCESS_TIMEOUT,
        cwd: str | Path | None = None, env: dict[str, str] | None = None,
        ) -> subprocess.CompletedProcess[bytes]:
    """A tool run to completion, bounded in time, in the C locale so that outputs compare."""
    full_env = {**os.environ, "LC_ALL": "C", "TZ": "UTC", "PYTHONPATH": str(REPO), **(env or {})}
    result = subprocess.run(cmd, capture_output=True, timeout=timeout, env=full_env, cwd=cwd,
                            check=False)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{cmd} exited {result.returncode}:\n{result.stderr.decode(errors='replace')}"
        )
    return result


def errno_of(fn: Callable[[], object], timeout: float = 20.0) -> int | None:
    """The errno ``fn()`` fails with (None if it succeeds), bounded in time."""
    try:
        with_timeout(fn, timeout)
    except OSError as e:
        return e.errno
    return None


def read_bytes(path: str | bytes | Path, timeout: float = 30.0) -> bytes:
    def read() -> bytes:
        with open(path, "rb") as f:
            return f.read()
    return with_timeout(read, timeout)  # type: ignore[return-value]


def daemon_pids(mountpoint: str | Path) -> list[int]:
    """Live (non-zombie) processes whose command line names ``mountpoint``."""
    target = os.fsencode(os.path.abspath(mountpoint))
    me = os.getpid()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if target in argv:
            pids.append(int(entry))
    return pids


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


# -- the Alluxio 2.x proxy simulator, as a process of its own (tests/sim/proxy.py)


@dataclass
class ProxySim:
    """A running ``python -m tests.sim.proxy`` over ``ufs``."""

    proc: subprocess.Popen[str]
    port: int
    ufs: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def source(self, path: str = "") -> str:
        """The mount source for Alluxio path ``/path``."""
        return f"alluxio-proxy://127.0.0.1:{self.port}/{path}"

    def stats(self) -> dict[str, int]:
        import httpx

        return dict(httpx.get(f"{self.url}/_sim/stats", timeout=10).json())

    def faults(self, **faults: object) -> None:
        import httpx

        httpx.post(f"{self.url}/_sim/faults", json=faults, timeout=10).raise_for_status()

    def stop(self) -> None:
        """SIGTERM (the simulator then removes its spool), SIGKILL if it lingers."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)


ProxySimFactory = Callable[..., ProxySim]


@pytest.fixture
def proxy_sim(tmp_path: Path) -> Iterator[ProxySimFactory]:
    """``proxy_sim(ufs, *options)`` → a simulated Alluxio 2.x proxy over directory ``ufs``,
    killed at the end of the test."""
    sims: list[ProxySim] = []

    def start(ufs: Path, *options: str) -> ProxySim:
        log = tmp_path / f"proxy{len(sims)}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.sim.proxy", "--ufs", str(ufs), *options],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout is not None
        line = with_timeout(proc.stdout.readline, START_TIMEOUT)  # "listening <port>"
        if not isinstance(line, str) or not line.startswith("listening "):
            proc.kill()
            raise AssertionError(f"the proxy simulator did not start: {log.read_text()}")
        sim = ProxySim(proc, int(line.split()[1]), ufs, log)
        sims.append(sim)
        return sim

    try:
        yield start
    finally:
        for sim in sims:
            sim.stop()
