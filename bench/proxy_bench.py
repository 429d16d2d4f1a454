#!/usr/bin/env python3
"""Proxy benchmark: alluxiofuse on an Alluxio 2.x namespace (``alluxio-proxy://``) against
the official Alluxio 0.x Python client (``alluxio`` 0.1.4), both through the same simulated
Alluxio 2.x proxy (tests/sim/proxy.py) in the same run.

One simulator process serves localenv.py's dataset (the same cached directory under
--data-dir: ``full/`` = 1 GiB big.bin + 10,000 files of 4-64 KiB in 100 directories,
``quick/`` = 256 MiB + 2,000 files) for the whole run. Every file is read once before
measuring and never dropped from the kernel's page cache: the simulator then serves from
memory, as a proxy over a warm Alluxio cache would.

Two targets; every pass starts a fresh daemon or a fresh client process:
  alluxiofuse  ``python -m alluxiofuse mount alluxio-proxy://127.0.0.1:PORT/ MNT -f``,
               the daemon's defaults (read type CACHE); a fresh
               mount per pass, so its page cache and the kernel's cache of the mount are
               cold. The readers are threads of this driver (localenv's read_seq and read_small).
  official     the official 0.x client, ``alluxio`` 0.1.4 (requests), loaded under the
               module name ``apy01`` from --apy01-dir (``alluxio`` 1.0.0, the 3.x client,
               takes the name in this venv), in a subprocess of its own so that its CPU and
               RSS are measurable and it shares no GIL with this driver; read type CACHE too
Workloads (for each, the two targets run back to back, in an order that rotates from one
repetition to the next, so that each ratio compares passes close in time):
  seq       big.bin, sequentially. Mount: 1 MiB ``readinto`` calls (localenv's read_seq).
            Client: ``open_file`` + ``read(id)``, the reader consumed in 1 MiB ``read(n)``
            calls, what a user of that API does with a large file. Also, not compared:
            ``official.whole``, the reader's ``read()`` of the whole file in memory. MiB/s
  small_1t  every small file read whole by one thread, in listing order (directory by
            directory, names sorted: what cp -r, tar or a loader walking the tree does).
            Mount: ``open().read()``; client: ``with client.open(path, 'r') as f:
            f.read()``. files/s
  small_4t  the same with 4 threads (client: a 4-thread pool, one ``Client`` per thread, as
            a requests Session is not thread-safe). files/s
Memory: this machine is a VM whose host takes back free guest memory a few seconds after
it is freed, and the first write to such a page is then 3 times as slow; a mount fills
the kernel's page cache (1 GiB of new pages per seq pass), the client allocates next to
nothing. So that the host's state does not decide the ratio, --prewarm-gib (3) GiB are
touched and freed just before every timed pass (``prewarm``; 0 turns it off), and the
``official.whole`` pass, which frees 2 GiB, runs after both compared seq passes.

Every pass records its rate; the CPU (in cores: CPU seconds / wall seconds) of the
simulator, of the daemon or client process, of this driver's reader threads and of the
rest of the machine; the peak RSS (VmHWM) of the daemon or client right after the pass;
and the requests the simulator got, by route. Before each pass the run waits for the
machine to be idle; a pass during which other jobs used more than --max-other cores is
discarded and run again.

Checks: byte counts on every pass; on the first repetition, an extra untimed pass per
workload and target compares sha256 of big.bin and of the small files (concatenated in
listing order) with the source. Through the mount that pass reads the file(s) from the
kernel's cache of the mount, i.e. the bytes the timed pass got. Proxy streams still open
after a pass's process has gone are reported.

Exit status non-zero if the benchmark failed (a process did not start, a timeout, wrong
bytes); whether the targets are met is printed, not judged.

Run as root (/dev/fuse; needs fusermount3):
  .venv/bin/python -m bench.proxy_bench --quick --repeat 1       # smoke run
  .venv/bin/python -m bench.proxy_bench --repeat 3 --markdown    # full run
  .venv/bin/python -m bench.proxy_bench --repeat 9 --workloads seq
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from bench import localenv
from bench.harness import (
    REPO_ROOT,
    BenchError,
    LineReader,
    MiB,
    Snapshot,
    add_quiet_options,
    end,
    environment,
    fmt,
    log,
    log_findings,
    machine_busy,
    on_sigterm,
    print_notes,
    print_table,
    proc_counters,
    proc_cpu,
    quiet_pass,
    ratio,
    self_cpu,
    summary,
    tail,
    vm_hwm_mib,
    watchdog,
)

TARGETS = ("alluxiofuse", "official")
MOUNT_TARGET = "alluxiofuse-proxy"  # localenv.mounted() would replace an "alluxiofuse" command
# workload -> (unit, required ratio alluxiofuse / official)
WORKLOADS = {"seq": ("MiB/s", 1.0), "small_1t": ("files/s", 1.0), "small_4t": ("files/s", 1.0)}
THREADS = {"small_1t": 1, "small_4t": 4}
APY01_VERSION = "0.1.4"
START_TIMEOUT = 60.0
HTTP_TIMEOUT = 10.0
# Counters of /_sim/stats that are not requests; streams_open is a level, not a count.
NOT_ROUTES = ("streams_opened", "streams_closed", "streams_expired", "streams_open",
              "bytes_read", "bytes_written")



# ------------------------------------------------------------------------ the simulator


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def stats(self) -> Counter[str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/_sim/stats",
                                        timeout=HTTP_TIMEOUT) as reply:
                return Counter(json.loads(reply.read()))
        except (OSError, ValueError) as e:
            raise BenchError(f"simulated proxy: stats: {e!r}\n    {tail(self.log)}") from e

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"simulated proxy exited ({self.proc.returncode}): "
                             f"{tail(self.log)}")


@contextlib.contextmanager
def sim_proxy(ufs: Path, port: int, logfile: Path) -> Iterator[Sim]:
    """``python -m tests.sim.proxy --ufs UFS`` for the whole run; it prints ``listening
    PORT`` once it serves."""
    with open(logfile, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.sim.proxy", "--ufs", str(ufs), "--port", str(port)],
            cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), start_new_session=True)
    try:
        try:
            line = LineReader(proc).readline(START_TIMEOUT, "'listening PORT'")
        except BenchError as e:  # its message names the official client: say who it was
            raise BenchError(f"simulated proxy: {e}\n    {tail(logfile)}") from None
        if not line.startswith("listening "):
            raise BenchError(f"simulated proxy said {line!r}\n    {tail(logfile)}")
        yield Sim(proc, int(line.split()[1]), logfile)
    finally:
        end(proc)
        if proc.stdout is not None:
            proc.stdout.close()


def warm_source(root: Path) -> int:
    """Read every file of the dataset once: the simulator then serves from the kernel's
    page cache (1.4 GiB for the full dataset), as a proxy over a warm Alluxio cache would."""
    n = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while chunk := f.read(8 * MiB):
                    n += len(chunk)
    return n


def prewarm(gib: float) -> None:
    """Touch and free ``gib`` GiB of memory, just before a timed pass.

    This machine is a VM whose host takes back the guest's free memory a few seconds after
    it is freed (virtio_balloon free page reporting): the first write to such a page then
    costs the host a fault. Touching 256 MiB of fresh memory took 352-357 ms after 25 s
    idle and 113-118 ms right after 2 GiB had been freed; the do-nothing pyfuse3 daemon
    (floor_fs.py) read 1 GiB at 330-547 MiB/s in the first state and 3,384-3,601 MiB/s in
    the second. A mount fills the kernel's page cache (1 GiB of fresh pages per seq pass)
    and its own page cache, the client process allocates next to nothing: left alone, the
    state of the host would decide the seq ratio. Freed here, the pages are backed again
    for both targets alike."""
    if gib > 0:
        block = bytearray(int(gib * (1 << 30)))  # zero-filled: every page written
        del block


# ------------------------------------------------------------------------ measuring


@dataclass
class Pass:
    """One timed pass: its rate and what it cost."""

    value: float
    secs: float
    cpu: dict[str, float]  # cores: sim, proc, readers, other
    requests: Counter[str]  # simulator counters over the pass (routes, streams, bytes)
    rss_mib: float | None = None
    minflt: int | None = None  # the daemon's minor page faults during the pass


@dataclass
class Context:
    args: argparse.Namespace
    ds: localenv.Dataset
    sim: Sim
    logs: Path
    small: list[tuple[str, int]]  # the small files in listing order
    small_sha256: str = ""
    results: dict[tuple[str, str], list[Pass]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    discarded: int = 0

    def snapshot(self, pid: int | None) -> Snapshot:
        return Snapshot(time.perf_counter(), [proc_cpu(self.sim.proc.pid)],
                           proc_cpu(pid) if pid else 0.0, self_cpu(), machine_busy(),
                           self.sim.stats())

    def cost(self, a: Snapshot, b: Snapshot) -> tuple[float, dict[str, float],
                                                            Counter[str]]:
        """Wall seconds, CPU in cores, and simulator counters between two snapshots."""
        wall = b.t - a.t
        cpu = {"sim": (b.sims[0] - a.sims[0]) / wall, "proc": (b.proc - a.proc) / wall,
               "readers": (b.me - a.me) / wall}
        # The rest of the machine's busy time: the kernel's own threads, and other jobs.
        cpu["other"] = max(0.0, (b.busy - a.busy) / wall - cpu["sim"] - cpu["proc"]
                           - cpu["readers"])
        counts = b.stats - a.stats
        counts.pop("streams_open", None)
        return wall, cpu, counts

    def streams_left(self, before: int, who: str) -> None:
        """Proxy streams the pass's process left open once it is gone (they would live
        on in the proxy until they expire, an hour by default)."""
        left = self.sim.stats()["streams_open"] - before
        if left > 0:
            self.problems.append(f"{who}: {left} proxy stream(s) still open after the "
                                 f"process ended")

    def record(self, work: str, target: str, rep: int, p: Pass) -> None:
        self.results.setdefault((work, target), []).append(p)
        unit = WORKLOADS[work][0]
        log(f"  [{rep + 1}/{self.args.repeat}] {target:<15} {work:<8} {p.value:>9,.1f} "
            f"{unit:<7} {p.secs:6.2f}s  cores: sim {p.cpu['sim']:.2f} proc "
            f"{p.cpu['proc']:.2f} readers {p.cpu['readers']:.2f} other {p.cpu['other']:.2f}"
            f"  {requests(p.requests)}" + (f"  RSS {p.rss_mib:.0f} MiB" if p.rss_mib else "")
            + (f"  minflt {p.minflt:,}" if p.minflt is not None else ""))


# ------------------------------------------------------------------------ alluxiofuse


def read_files(paths: list[str], threads: int) -> int:
    """Every file read whole (``open().read()``), by ``threads`` threads."""
    if threads == 4:
        return localenv.read_small(paths)  # the local benchmarks' 4-thread reader
    assert threads == 1
    total = 0
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            total += len(f.read())
    return total


def mount_command(port: int, extra: str, mnt: Path) -> list[str]:
    return [sys.executable, "-m", "alluxiofuse", "mount", f"alluxio-proxy://127.0.0.1:{port}/",
            str(mnt), "-f", "--log-level", "warning", *shlex.split(extra)]


def fuse_pass(ctx: Context, work: str, rep: int) -> Pass:
    ds, args = ctx.ds, ctx.args
    open_before = ctx.sim.stats()["streams_open"]
    command = partial(mount_command, ctx.sim.port, args.alluxiofuse_args)
    with localenv.mounted(MOUNT_TARGET, ds.root, "", command=command) as m:
        assert m.proc is not None and m.errlog is not None
        pid = m.proc.pid
        big = m.root / "big.bin"
        paths = [str(m.root / rel) for rel, _ in ctx.small]
        fn: Callable[[], int]
        if work == "seq":
            fn, want = partial(localenv.read_seq, big), ds.big_size
        else:
            fn, want = partial(read_files, paths, THREADS[work]), ds.small_bytes
        prewarm(args.prewarm_gib)
        a = ctx.snapshot(pid)
        f0 = proc_counters(pid)[0]
        with watchdog(m, args.timeout, work):
            got = fn()
        minflt = proc_counters(pid)[0] - f0
        b = ctx.snapshot(pid)
        rss = vm_hwm_mib(pid)
        if got != want:
            raise BenchError(f"alluxiofuse {work}: read {got} bytes, expected {want}")
        if rep == 0:  # from the kernel's cache of the mount: the bytes the pass got
            with watchdog(m, args.timeout, f"{work} check"):
                if work == "seq":
                    with open(big, "rb", buffering=0) as f:
                        digest = hashlib.file_digest(f, "sha256").hexdigest()
                    expect = ds.big_sha256
                else:
                    digest, expect = localenv.small_digest(paths), ctx.small_sha256
            if digest != expect:
                raise BenchError(f"alluxiofuse {work}: sha256 through the mount is {digest}, "
                                 f"not {expect}")
            ctx.checked.append(f"alluxiofuse {work}")
        _n, bad = log_findings(m.errlog)
        if bad:
            ctx.problems.append(f"alluxiofuse {work} (repetition {rep + 1}): {len(bad)} "
                                "warning(s)" + "".join(f"\n    {x}" for x in bad[:5]))
    ctx.streams_left(open_before, f"alluxiofuse {work} (repetition {rep + 1})")
    secs, cpu, reqs = ctx.cost(a, b)
    value = got / MiB / secs if work == "seq" else len(ctx.small) / secs
    return Pass(value, secs, cpu, reqs, rss, minflt)


# ------------------------------------------------------------------------ official client


def apy01_dir() -> Path:
    """Where alluxio 0.1.4 is unpacked: $ALLUXIOFUSE_APY01_DIR, else <venv>/alluxio-0.1.4."""
    return Path(os.environ.get("ALLUXIOFUSE_APY01_DIR") or Path(sys.prefix) / "alluxio-0.1.4")


def load_apy01(where: Path) -> ModuleType:
    """The official 0.x client as module ``apy01`` (its modules import each other
    relatively, so the package loads whole under that name)."""
    spec = importlib.util.spec_from_file_location(
        "apy01", where / "alluxio" / "__init__.py",
        submodule_search_locations=[str(where / "alluxio")])
    if spec is None or spec.loader is None:
        raise ImportError(f"no alluxio package in {where}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["apy01"] = module
    spec.loader.exec_module(module)
    return module


def client_main() -> int:
    """Child mode: one official-client pass. stdin: a JSON config line, then "go", then
    "check" (the digest pass, after the driver's snapshot)."""
    conf = json.loads(sys.stdin.readline())
    apy = load_apy01(Path(conf["apy01_dir"]))
    opt = apy.option.OpenFile(read_type=apy.wire.READ_TYPE_CACHE)
    local = threading.local()

    def client() -> Any:
        """One Client per thread: a requests Session is not thread-safe."""
        if not hasattr(local, "client"):
            local.client = apy.Client("127.0.0.1", conf["port"])
        return local.client

    def read_whole(path: str) -> bytes:
        with client().open(path, "r", opt) as f:
            return bytes(f.read())

    def read_stream(path: str, sink: Callable[[bytes], object]) -> int:
        """open_file + read(id), consumed 1 MiB at a time."""
        c = client()
        file_id = c.open_file(path, opt)
        total = 0
        try:
            reader = c.read(file_id)
            try:
                while chunk := reader.read(MiB):
                    total += len(chunk)
                    sink(chunk)
            finally:
                reader.close()
        finally:
            c.close(file_id)
        return total

    paths: list[str] = conf["paths"]
    work = conf["work"]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    c0, t0 = time.process_time(), time.perf_counter()
    data = b""
    if work == "seq":
        got = read_stream(paths[0], lambda chunk: None)
    elif work == "seq.whole":
        data = read_whole(paths[0])
        got = len(data)
    elif work == "small_1t":
        got = sum(len(read_whole(p)) for p in paths)
    else:
        with ThreadPoolExecutor(max_workers=4) as ex:
            got = sum(len(b) for b in ex.map(read_whole, paths))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = vm_hwm_mib(os.getpid())
    print(json.dumps({"bytes": got, "secs": secs, "cpu": cpu, "rss": rss}), flush=True)
    digest = ""
    if sys.stdin.readline().strip() == "check" and conf["verify"]:
        h = hashlib.sha256()
        if work == "seq":
            read_stream(paths[0], h.update)
        elif work == "seq.whole":
            h.update(data)
        else:
            for p in paths:
                h.update(read_whole(p))
        digest = h.hexdigest()
    print(json.dumps({"digest": digest}), flush=True)
    return 0


def client_pass(ctx: Context, work: str, rep: int, whole: bool = False) -> Pass:
    ds, args = ctx.ds, ctx.args
    target = "official.whole" if whole else "official"
    mode = "seq.whole" if whole else work
    errlog = ctx.logs / f"{target}-{work}-{rep + 1}.log"
    paths = ["/big.bin"] if work == "seq" else [f"/{rel}" for rel, _ in ctx.small]
    conf = {"apy01_dir": str(args.apy01_dir), "port": ctx.sim.port, "work": mode,
            "paths": paths, "verify": rep == 0}
    open_before = ctx.sim.stats()["streams_open"]
    with open(errlog, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.proxy_bench", "--client-pass"],
                                cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err)
    try:
        assert proc.stdin is not None
        lines = LineReader(proc)
        proc.stdin.write(json.dumps(conf).encode() + b"\n")
        proc.stdin.flush()
        if (ready := lines.readline(START_TIMEOUT, "ready")) != "ready":
            raise BenchError(f"official client: {ready!r} instead of ready")
        prewarm(args.prewarm_gib)
        a = ctx.snapshot(None)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        try:
            reply = json.loads(lines.readline(args.timeout, "result"))
        finally:
            b = ctx.snapshot(None)
        proc.stdin.write(b"check\n")
        proc.stdin.flush()
        reply.update(json.loads(lines.readline(args.timeout, "digest")))
        proc.wait(timeout=60)
    except (BenchError, OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise BenchError(f"{target} {work}: {e}\n    {tail(errlog)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    localenv.check_reply(f"{target} {work}", work, reply, ds, ctx.small_sha256, rep == 0,
                         ctx.checked)
    ctx.streams_left(open_before, f"{target} {work} (repetition {rep + 1})")
    wall, cpu, reqs = ctx.cost(a, b)
    secs = reply["secs"]
    # The driver's snapshots bracket the child's own timing: per second of the child's.
    cpu = {k: v * wall / secs for k, v in cpu.items()}
    cpu["proc"], cpu["readers"] = reply["cpu"] / secs, 0.0
    cpu["other"] = max(0.0, cpu["other"] - cpu["proc"])
    errlog.unlink(missing_ok=True)
    value = reply["bytes"] / MiB / secs if work == "seq" else len(paths) / secs
    return Pass(value, secs, cpu, reqs, reply["rss"])


# ------------------------------------------------------------------------ the run


def measured(ctx: Context, work: str, target: str, rep: int, fn: Callable[[], Pass]) -> None:
    """Run one pass while the machine is quiet (``quiet_pass``) and record it."""
    step = f"  [{rep + 1}/{ctx.args.repeat}] {target:<15} {work:<8} "
    what = f"{target} {work} (repetition {rep + 1})"
    p, discarded = quiet_pass(fn, ctx.args, ctx.sim.check_alive, what,
                              lambda p: f"{step}{p.value:>9,.1f} ", ctx.problems)
    ctx.discarded += discarded
    ctx.record(work, target, rep, p)


def run_pass(ctx: Context, work: str, target: str, rep: int) -> None:
    if target == "alluxiofuse":
        measured(ctx, work, target, rep, partial(fuse_pass, ctx, work, rep))
    elif target == "official":
        measured(ctx, work, target, rep, partial(client_pass, ctx, work, rep))
    else:
        measured(ctx, work, target, rep, partial(client_pass, ctx, work, rep, True))


def warm_sim(ctx: Context) -> None:
    """Read big.bin once through the simulator, unmeasured, before a seq pair.

    Without it, the simulator's first large read after the small-file passes cost it
    1.75-1.93 ms of CPU per MiB instead of about 0.7 (two runs of --repeat 5: the first
    seq pass of repetitions 2 and 3, whichever target it was), and those pairs' ratios
    were 0.33-0.38 or 2.0-2.29. With it, every seq pass of a --repeat 5 run cost the
    simulator 0.64-0.92 ms/MiB, and the ratios were 0.66-0.92."""
    apy = sys.modules["apy01"]  # loaded by main()
    client = apy.Client("127.0.0.1", ctx.sim.port)
    file_id = client.open_file("/big.bin", apy.option.OpenFile(read_type=apy.wire.READ_TYPE_CACHE))
    reader = client.read(file_id)
    try:
        while reader.read(8 * MiB):
            pass
    finally:
        reader.close()
        client.close(file_id)


def run(args: argparse.Namespace, ds: localenv.Dataset, logs: Path) -> Context:
    t0 = time.monotonic()
    warmed = warm_source(ds.root)
    log(f"read the dataset once ({warmed / MiB:,.0f} MiB in {time.monotonic() - t0:.0f}s): "
        "the simulator serves it from the page cache")
    with sim_proxy(ds.root, args.sim_port, logs / "sim-proxy.log") as sim:
        log(f"simulated proxy on port {sim.port} (pid {sim.proc.pid})")
        small = sorted(ds.small)  # listing order: directory by directory, names sorted
        ctx = Context(args, ds, sim, logs, small)
        ctx.small_sha256 = localenv.small_digest([str(ds.root / rel) for rel, _ in small])
        for rep in range(args.repeat):
            # Each workload's two passes back to back, their order rotating: a ratio then
            # compares passes close in time on this noisy machine.
            order = TARGETS[rep % 2:] + TARGETS[:rep % 2]
            for work in args.workloads:
                if work == "seq":
                    warm_sim(ctx)
                # official.whole (not compared) after both: the 2 GiB it frees would make
                # the next pass's fresh memory cheap (see prewarm)
                extra = ("official.whole",) if work == "seq" and not args.no_whole else ()
                for target in order + extra:
                    if target.partition(".")[0] in ctx.failed:
                        continue
                    try:
                        run_pass(ctx, work, target, rep)
                    except BenchError as exc:
                        ctx.failed[target.partition(".")[0]] = str(exc)
                        log(f"  {target}: FAILED: {exc}")
        sim.check_alive()
        return ctx


# ------------------------------------------------------------------------ report


def requests(c: Counter[str], per: int = 0) -> str:
    """Simulator requests by route (per file when ``per``), and the streams opened."""
    routes = {k: v for k, v in c.items() if k not in NOT_ROUTES and v}
    keys = sorted(routes, key=lambda k: (-routes[k], k))
    if per:
        text = " + ".join(f"{routes[k] / per:.2f} {k}" for k in keys) or "0"
        return f"{text} per file"
    text = " + ".join(f"{routes[k]:,} {k}" for k in keys) or "0"
    return f"{text}; {c['streams_opened']:,} streams, {c['bytes_read'] / MiB:,.0f} MiB"


def report(ctx: Context, markdown: bool) -> None:
    def vals(work: str, target: str, what: Callable[[Pass], float | None]) -> list[float]:
        return [v for p in ctx.results.get((work, target), []) if (v := what(p)) is not None]

    def med(work: str, target: str) -> float | None:
        v = vals(work, target, lambda p: p.value)
        return statistics.median(v) if v else None

    n_small = len(ctx.small)
    names = {"seq": f"seq, {ctx.ds.big_size // MiB:,} MiB file (MiB/s)",
             "small_1t": f"small_1t, {n_small:,} files, 1 thread (files/s)",
             "small_4t": f"small_4t, {n_small:,} files, 4 threads (files/s)"}
    rows = [["workload", "alluxiofuse", "official client", "alluxiofuse / official", "target",
             "met", "official, reader.read() whole"]]
    for work in ctx.args.workloads:
        need = WORKLOADS[work][1]
        a, o = med(work, "alluxiofuse"), med(work, "official")
        r = a / o if a and o else None
        rows.append([names[work], summary(vals(work, "alluxiofuse", lambda p: p.value)),
                     summary(vals(work, "official", lambda p: p.value)), ratio(r),
                     f"≥ {need}x", "n/a" if r is None else "yes" if r >= need else "**no**",
                     summary(vals(work, "official.whole", lambda p: p.value))])
    for work in ctx.args.workloads:
        rows.append([f"peak RSS, {work} (MiB)",
                     summary(vals(work, "alluxiofuse", lambda p: p.rss_mib)),
                     summary(vals(work, "official", lambda p: p.rss_mib)),
                     "–", "–", "–",
                     summary(vals(work, "official.whole", lambda p: p.rss_mib))])
    if faults := vals("seq", "alluxiofuse", lambda p: p.minflt):
        rows.append(["daemon minor faults, seq", summary(faults), "–", "–",
                     f"≤ {localenv.FAULTS_TARGET:,}",
                     "yes" if statistics.median(faults) <= localenv.FAULTS_TARGET
                     else "**no**", "–"])
    print()
    print_table(rows, markdown)
    print()
    # The two passes of a repetition ran back to back: their ratio compares like moments.
    for work in ctx.args.workloads:
        ours = ctx.results.get((work, "alluxiofuse"), [])
        theirs = ctx.results.get((work, "official"), [])
        pairs = [a.value / o.value for a, o in zip(ours, theirs, strict=False)]
        if pairs:
            print(f"{work}: alluxiofuse / official per repetition: "
                  f"{', '.join(f'{r:.2f}' for r in pairs)} (median {statistics.median(pairs):.2f})")

    rows = [["pass", "rate", "wall (s)", "sim CPU (cores)", "daemon / client CPU (cores)",
             "daemon / client CPU per unit", "reader threads CPU (cores)",
             "rest of the machine (cores)", "simulator requests (last repetition)"]]
    for work in ctx.args.workloads:
        unit = WORKLOADS[work][0]
        for target in ("alluxiofuse", "official", "official.whole"):
            ps = ctx.results.get((work, target))
            if not ps:
                continue

            def cpu(key: str, ps: list[Pass] = ps) -> str:
                return f"{statistics.median(p.cpu[key] for p in ps):.2f}"

            # CPU seconds of the daemon / client per MiB (seq) or per file (small).
            units = ctx.ds.big_size / MiB if work == "seq" else n_small
            per = statistics.median(p.cpu["proc"] * p.secs / units for p in ps)
            per_text = f"{per * 1e3:.2f} ms/MiB" if work == "seq" else f"{per * 1e6:,.0f} µs/file"
            last = ps[-1].requests
            rows.append([f"{work}: {target}",
                         f"{fmt(statistics.median(p.value for p in ps))} {unit}",
                         f"{statistics.median(p.secs for p in ps):.2f}", cpu("sim"), cpu("proc"),
                         per_text, "–" if target.startswith("official") else cpu("readers"),
                         cpu("other"),
                         requests(last) if work == "seq" else
                         f"{requests(last, n_small)} ({requests(last)})"])
    print_table(rows, markdown)
    print()
    print_notes(ctx.problems, ctx.args.max_other, ctx.discarded)
    checked = ", ".join(dict.fromkeys(ctx.checked)) or "nothing"
    print(f"checked (sha256 against the source, first repetition): {checked}")
    for t in TARGETS:
        print(f"{t}: {'FAILED: ' + ctx.failed[t] if t in ctx.failed else 'ok'}")


def main() -> int:
    if "--client-pass" in sys.argv[1:]:
        return client_main()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("/var/tmp/alluxiofuse-bench/data"))
    p.add_argument("--work-dir", type=Path, default=Path("/var/tmp/alluxiofuse-bench"),
                   help="where the run's logs go (kept only if something failed)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="256 MiB big file, 2,000 small files")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                   help="the workloads to run (default: all)")
    p.add_argument("--apy01-dir", type=Path, default=apy01_dir(),
                   help="the unpacked alluxio 0.1.4 wheel (holds alluxio/__init__.py); "
                        "default $ALLUXIOFUSE_APY01_DIR, else <venv>/alluxio-0.1.4")
    p.add_argument("--sim-port", type=int, default=0, help="simulator port (0: a free one)")
    p.add_argument("--alluxiofuse-args", default="",
                   help="extra daemon arguments (one string); the mount already gets "
                        "-f --log-level warning")
    p.add_argument("--prewarm-gib", type=float, default=3.0,
                   help="GiB of memory touched and freed just before each timed pass, so "
                        "that the pages it takes are backed by the host (see prewarm); 0: "
                        "off")
    p.add_argument("--no-whole", action="store_true",
                   help="skip the official client's reader.read() of the whole big file")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per pass")
    add_quiet_options(p)
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = p.parse_args()
    args.alluxiofuse_args = " ".join(shlex.quote(a) for a in shlex.split(args.alluxiofuse_args))
    signal.signal(signal.SIGTERM, on_sigterm)  # run the clean-ups, as on Ctrl-C
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    try:  # fail before anything starts if the official client is not there
        version = load_apy01(args.apy01_dir).__version__
    except (ImportError, OSError, AttributeError) as e:
        log(f"FAILED: the official 0.x client does not load from {args.apy01_dir}: {e!r}")
        return 1
    if version != APY01_VERSION:
        log(f"warning: {args.apy01_dir} holds alluxio {version}, not {APY01_VERSION}")

    ds = localenv.plan_dataset(args.data_dir.resolve(), args.quick)
    localenv.ensure_dataset(ds)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="proxy-logs-", dir=args.work_dir))
    ctx: Context | None = None
    try:
        ctx = run(args, ds, logs)
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        if ctx is not None and not ctx.failed:
            (logs / "sim-proxy.log").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                logs.rmdir()  # only if empty: a failed pass's log stays
        else:
            log(f"logs kept in {logs}")

    print(environment())
    print(f"load average before the run: {' '.join(load_before)}, after: "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"official client: alluxio {version} (requests) from {args.apy01_dir}, read type "
          f"CACHE; simulated Alluxio 2.x proxy (tests/sim/proxy.py); alluxiofuse args: "
          f"defaults {args.alluxiofuse_args}".rstrip())
    print(f"dataset: {ds.root}: big.bin {ds.big_size // MiB} MiB, {len(ds.small)} small files "
          f"({ds.small_bytes / MiB:.0f} MiB), read in listing order; repeat={args.repeat}, "
          f"median (min–max) shown; {args.prewarm_gib:g} GiB touched and freed before each "
          "pass")
    report(ctx, args.markdown)
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
