#!/usr/bin/env python3
"""Cluster-mode benchmark: alluxiofuse against the official Alluxio Python client, both
reading from the same simulated Alluxio 3.x workers.

One run starts a real etcd (127.0.0.1, free ports) and N simulated workers
(tests/sim/worker.py, OSS mode) registered in it, over localenv.py's dataset (the same
cached directory under --data-dir: ``full/`` = 1 GiB big.bin + 10,000 files of 4-64 KiB
in 100 directories, ``quick/`` = 256 MiB + 2,000 files), and loads the whole directory
into the workers' caches (``/v1/load``): every page is then served from a worker's page
store, never read through from the under-storage. The page stores stay in the kernel's
page cache for the whole run (as a worker's memory tier); they are not dropped. Once
loaded, every worker waits --worker-latency-ms (1 ms by default; the simulator's ``delay``
fault switch) before it answers each request, as a worker across a network would: on
loopback a round trip is otherwise a few tens of microseconds, which no real cluster has.

Three targets, each --repeat times, in an order that rotates from one repetition to the
next; every pass starts a fresh daemon or process:
  alluxiofuse  ``python -m alluxiofuse mount UFS MNT -f --etcd URL --cluster-name NAME
               --alluxio-property ...virtual.node.count.per.worker=V``, all else the
               daemon's defaults; a fresh mount per pass, so its page cache and the
               kernel's cache of the mount are cold
  official     the official client (``alluxio`` package, AlluxioFileSystem over the same
               etcd, same virtual node count) in a subprocess of its own, so that its RSS
               is measurable and it shares no GIL with this driver
  sims         the workers' own limit: this driver fetching the same pages straight from
               their owners with a minimal keep-alive HTTP client (raw sockets, threads)
Workloads:
  seq       big.bin, sequentially: through the mount, 1 MiB ``readinto`` calls (as
            localenv's read_seq); official: ``fs.read(uri)`` (the whole file in memory,
            as that API returns it); sims: every page in order on one connection
            (``sims.1c``) and with --sim-threads connections (``sims``). MiB/s
  small_4t  every small file read whole by 4 threads (localenv's read_small through the
            mount; ``fs.read(uri)`` in a 4-thread pool for the client; page 0 of each file
            for the sims: --sim-threads threads, one connection per worker each). files/s
It also records each daemon's / client process's peak RSS (VmHWM, right after the timed
pass), the CPU used during each pass (in cores: CPU seconds / wall seconds) by the
workers (all, and the busiest one), by the daemon or client process and by this driver's
reader threads, and the requests the workers got. The machine has few cores: the CPU
columns say which process saturates. The rest of the machine's busy time is measured too
(/proc/stat): before each pass the run waits for the machine to be idle, and a pass during
which other jobs used more than --max-other cores is discarded and run again.

Checks: byte counts on every pass; on the first repetition, an extra untimed pass
compares sha256 of big.bin and of the small files (concatenated in order) with the
source, for alluxiofuse and the official client. The daemon runs with --log-level debug
into a log file: every worker call it answered from the under-storage instead (and every
warning) is counted and reported, since then the bytes did not come from the cluster.

Exit status non-zero if the benchmark failed (a process did not start, a timeout, wrong
bytes) or alluxiofuse fell back to the under-storage.

Run as root (/dev/fuse; needs fusermount3 and the etcd binary):
  .venv/bin/python -m bench.cluster_bench --quick --repeat 1       # smoke run
  .venv/bin/python -m bench.cluster_bench --repeat 3 --markdown    # full run
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.cluster.ring import VNODES_PROPERTIES, HashRing, path_id
from bench import localenv
from bench.harness import (
    REPO_ROOT,
    BenchError,
    LineReader,
    MiB,
    Snapshot,
    add_quiet_options,
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

PAGE = 1 << 20  # the workers' page size (alluxio.worker.page.store.page.size default)
CLIENT_VNODES_KEY = "alluxio.user.consistent.hash.virtual.node.count.per.worker"
CLUSTER_NAME_KEY = "alluxio.cluster.name"
TARGETS = ("alluxiofuse", "official", "sims")
# workload -> (unit, required ratio alluxiofuse / official), with --worker-latency-ms 1
WORKLOADS = {"seq": ("MiB/s", 1.5), "small_4t": ("files/s", 2.0)}
START_TIMEOUT = 60.0
LOAD_TIMEOUT = 1200.0
FALLBACK_MARK = "using the under-storage"



# ------------------------------------------------------------------------ measuring


@dataclass
class Pass:
    """One timed pass: its rate and what it cost."""

    value: float
    secs: float
    cpu: dict[str, float]  # cores: sims, sims_max, proc, readers, other
    requests: Counter[str]
    rss_mib: float | None = None
    minflt: int | None = None  # the daemon's minor page faults during the pass


# ------------------------------------------------------------------------ the cluster


@dataclass
class Cluster:
    etcd: str
    cluster: Any  # tests.sim.cluster.SimCluster
    vnodes: int
    ring: HashRing[WorkerAddress] = field(init=False)

    def __post_init__(self) -> None:
        from tests.sim.worker import etcd_members

        self.ring = HashRing(etcd_members(self.etcd, self.cluster_name)(), self.vnodes)

    @property
    def cluster_name(self) -> str:
        from tests.sim.cluster import CLUSTER

        return CLUSTER

    @property
    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.cluster.workers]

    def check_alive(self) -> None:
        for w in self.cluster.workers:
            if w.proc.poll() is not None:
                raise BenchError(f"simulated worker on port {w.port} exited "
                                 f"({w.proc.returncode}): {tail(w.log)}")

    def stats(self) -> Counter[str]:
        """Requests the workers have answered so far, by route, all workers together."""
        import httpx

        total: Counter[str] = Counter()
        for w in self.cluster.workers:
            try:
                total.update(w.stats())
            except httpx.HTTPError as e:
                raise BenchError(f"worker on port {w.port}: stats: {e!r}") from e
        return total

    def snapshot(self, pid: int | None) -> Snapshot:
        stats = self.stats()
        return Snapshot(time.perf_counter(), [proc_cpu(p) for p in self.pids],
                        proc_cpu(pid) if pid else 0.0, self_cpu(), machine_busy(), stats)

    def cost(self, a: Snapshot, b: Snapshot) -> tuple[float, dict[str, float], Counter[str]]:
        """Wall seconds, CPU in cores, and worker requests between two snapshots."""
        wall = b.t - a.t
        sims = [y - x for x, y in zip(a.sims, b.sims, strict=True)]
        cpu = {"sims": sum(sims) / wall, "sims_max": max(sims) / wall,
               "proc": (b.proc - a.proc) / wall, "readers": (b.me - a.me) / wall}
        # The rest of the machine's busy time: the kernel's own threads, and other jobs.
        cpu["other"] = max(0.0, (b.busy - a.busy) / wall - cpu["sims"] - cpu["proc"]
                           - cpu["readers"])
        return wall, cpu, b.stats - a.stats


@contextlib.contextmanager
def etcd(workdir: Path) -> Iterator[str]:
    import pytest

    from tests.support.etcdserver import etcd_server

    if shutil.which("etcd") is None:
        raise BenchError("etcd is not installed")
    try:
        cm = etcd_server(workdir / "etcd-data")
        url = cm.__enter__()
    except (pytest.fail.Exception, pytest.skip.Exception) as e:  # its test-only way to fail
        raise BenchError(f"etcd did not start: {e}") from None
    try:
        yield url
    finally:
        cm.__exit__(None, None, None)


@contextlib.contextmanager
def sim_workers(etcd_url: str, ufs: Path, workdir: Path, n: int, vnodes: int) -> Iterator[Any]:
    """N simulated workers (SimCluster) with a kill timer on their start-up."""
    from tests.sim.cluster import SimCluster

    cluster = SimCluster(etcd_url, ufs.resolve(), workdir / "store", vnodes=vnodes)
    starting = threading.Event()

    def kill_stuck() -> None:
        if starting.is_set():
            for w in cluster.workers:
                w.proc.kill()
            log("warning: simulated workers did not start in time; killed")

    try:
        for _ in range(n):
            starting.set()
            timer = threading.Timer(START_TIMEOUT, kill_stuck)
            timer.daemon = True
            timer.start()
            try:
                cluster.start_worker(lease_ttl=30)
            except (RuntimeError, OSError) as e:
                raise BenchError(str(e)) from e
            finally:
                starting.clear()
                timer.cancel()
        yield cluster
    finally:
        cluster.stop()


def load_all(cluster: Any, ufs: Path, workloads: list[str], parallel: int = 12) -> None:
    """Load what ``workloads`` read into the workers' caches (``/v1/load``), waiting for
    it: one job per top-level file (seq) and per directory under ``small/`` (small_4t; a
    simulated worker's load asks etcd for the members once per file, so 10,000 files take
    minutes), ``parallel`` at a time, submitted round-robin to the workers."""
    import httpx

    paths = [p for p in sorted(ufs.iterdir()) if p.is_file()] if "seq" in workloads else []
    if "small_4t" in workloads:
        paths += sorted(p for p in (ufs / "small").iterdir() if p.is_dir())
    pending = [(f"file://{p}", cluster.workers[i % len(cluster.workers)].url)
               for i, p in enumerate(paths)]
    running: list[tuple[str, str]] = []
    deadline = time.monotonic() + LOAD_TIMEOUT
    with httpx.Client(timeout=10) as http:
        while pending or running:
            while pending and len(running) < parallel:
                uri, url = job = pending.pop(0)
                reply = http.get(f"{url}/v1/load", params={"path": uri, "opType": "submit"})
                if not reply.json().get("success"):
                    raise BenchError(f"load of {uri} not submitted: {reply.text}")
                running.append(job)
            time.sleep(0.2)
            for job in list(running):
                uri, url = job
                state = http.get(f"{url}/v1/load",
                                 params={"path": uri, "opType": "progress"}).json()
                if state["jobState"] == "RUNNING":
                    continue
                if state["jobState"] != "SUCCEEDED":
                    raise BenchError(f"load of {uri} failed: {state}")
                running.remove(job)
            if time.monotonic() > deadline:
                raise BenchError(f"load of {ufs} not done after {LOAD_TIMEOUT:.0f}s")


def warm_store(store: Path) -> int:
    """Read every page file once, so the workers serve from the kernel's page cache."""
    n = 0
    for dirpath, _dirs, files in os.walk(store):
        for name in files:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                while chunk := f.read(PAGE):
                    n += len(chunk)
    return n


# ------------------------------------------------------------------------ alluxiofuse


def fuse_pass(ctx: Context, work: str, rep: int) -> Pass:
    ds, args = ctx.ds, ctx.args
    logfile = ctx.logs / f"alluxiofuse-{work}-{rep + 1}.log"
    extra = (f"--etcd {ctx.cl.etcd} --cluster-name {ctx.cl.cluster_name} "
             f"--alluxio-property {VNODES_PROPERTIES[0]}={args.vnodes} "
             f"--log-level debug --log-file {logfile} {args.alluxiofuse_args}")
    with localenv.mounted("alluxiofuse", ds.root, extra) as m:
        assert m.proc is not None
        pid = m.proc.pid
        if work == "seq":
            big = m.root / "big.bin"

            def fn() -> int:
                return localenv.read_seq(big)
            want = ds.big_size
        else:
            paths = [str(m.root / rel) for rel, _ in ds.small]

            def fn() -> int:
                return localenv.read_small(paths)
            want = ds.small_bytes
        a = ctx.cl.snapshot(pid)
        f0 = proc_counters(pid)[0]
        with watchdog(m, args.timeout, work):
            got = fn()
        minflt = proc_counters(pid)[0] - f0
        b = ctx.cl.snapshot(pid)
        rss = vm_hwm_mib(pid)
        if got != want:
            raise BenchError(f"alluxiofuse {work}: read {got} bytes, expected {want}")
        if rep == 0:
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
    secs, cpu, reqs = ctx.cl.cost(a, b)
    fallbacks, bad = log_findings(logfile, FALLBACK_MARK)
    if fallbacks or bad:
        ctx.problems.append(f"alluxiofuse {work} (repetition {rep + 1}): {fallbacks} worker "
                            f"call(s) answered from the under-storage, {len(bad)} warning(s); "
                            f"log kept: {logfile}" + "".join(f"\n    {x}" for x in bad[:10]))
        ctx.keep_logs = True
    else:
        logfile.unlink(missing_ok=True)
    value = got / MiB / secs if work == "seq" else len(ds.small) / secs
    return Pass(value, secs, cpu, reqs, rss, minflt)


# ------------------------------------------------------------------------ official client


def client_main() -> int:
    """Child mode: one official-client pass. stdin: a JSON config line, then "go"."""
    conf = json.loads(sys.stdin.readline())
    from alluxio import AlluxioFileSystem  # type: ignore[import-untyped]

    fs = AlluxioFileSystem(etcd_hosts="127.0.0.1", etcd_port=conf["etcd_port"], options={
        CLUSTER_NAME_KEY: conf["cluster"], CLIENT_VNODES_KEY: str(conf["vnodes"])})
    uris: list[str] = conf["uris"]
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        return 2
    c0, t0 = time.process_time(), time.perf_counter()
    if conf["work"] == "seq":
        data = fs.read(uris[0])
        got = len(data)
    else:
        with ThreadPoolExecutor(max_workers=4) as ex:
            got = sum(len(b) for b in ex.map(fs.read, uris))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    rss = vm_hwm_mib(os.getpid())
    print(json.dumps({"bytes": got, "secs": secs, "cpu": cpu, "rss": rss}), flush=True)
    digest = ""  # after the driver's snapshot ("check"), so that its reads are not counted
    if sys.stdin.readline().strip() == "check" and conf["verify"]:
        if conf["work"] == "seq":
            digest = hashlib.sha256(data).hexdigest()
        else:
            h = hashlib.sha256()
            for uri in uris:
                h.update(fs.read(uri))
            digest = h.hexdigest()
    print(json.dumps({"digest": digest}), flush=True)
    return 0


def client_pass(ctx: Context, work: str, rep: int) -> Pass:
    ds, args = ctx.ds, ctx.args
    errlog = ctx.logs / f"official-{work}-{rep + 1}.log"
    uris = ([f"file://{ds.root}/big.bin"] if work == "seq"
            else [f"file://{ds.root}/{rel}" for rel, _ in ds.small])
    conf = {"etcd_port": int(ctx.cl.etcd.rsplit(":", 1)[1]), "cluster": ctx.cl.cluster_name,
            "vnodes": args.vnodes, "work": work, "uris": uris, "verify": rep == 0}
    with open(errlog, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "bench.cluster_bench", "--client-pass"],
                                cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err)
    try:
        assert proc.stdin is not None
        lines = LineReader(proc)
        proc.stdin.write(json.dumps(conf).encode() + b"\n")
        proc.stdin.flush()
        if (ready := lines.readline(START_TIMEOUT, "ready")) != "ready":
            raise BenchError(f"official client: {ready!r} instead of ready")
        a = ctx.cl.snapshot(None)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        try:
            reply = json.loads(lines.readline(args.timeout, "result"))
        finally:
            b = ctx.cl.snapshot(None)
        proc.stdin.write(b"check\n")
        proc.stdin.flush()
        reply.update(json.loads(lines.readline(args.timeout, "digest")))
        proc.wait(timeout=60)
    except BenchError as e:
        raise BenchError(f"{e}\n    {tail(errlog)}") from None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    localenv.check_reply(f"official {work}", work, reply, ds, ctx.small_sha256, rep == 0,
                         ctx.checked)
    wall, cpu, reqs = ctx.cl.cost(a, b)
    secs = reply["secs"]
    # The driver's snapshots bracket the child's own timing: per second of the child's.
    cpu = {k: v * wall / secs for k, v in cpu.items()}
    cpu["proc"], cpu["readers"] = reply["cpu"] / secs, 0.0
    cpu["other"] = max(0.0, cpu["other"] - cpu["proc"])
    errlog.unlink(missing_ok=True)
    value = reply["bytes"] / MiB / secs if work == "seq" else len(uris) / secs
    return Pass(value, secs, cpu, reqs, reply["rss"])


# ------------------------------------------------------------------------ the workers' limit


class RawHttp:
    """A minimal HTTP/1.1 keep-alive GET: one request at a time, body into a reused buffer."""

    def __init__(self, addr: WorkerAddress, timeout: float) -> None:
        self.sock = socket.create_connection((addr.host, addr.http_port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray(PAGE)
        self.view = memoryview(self.buf)

    def get(self, target: str) -> int:
        self.sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while (end := head.find(b"\r\n\r\n")) < 0:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise BenchError(f"worker closed the connection on {target}")
            head += chunk
        status, length = int(head[9:12]), -1
        for line in head[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = head[end + 4:]
        if status != 200 or not 0 <= len(body) <= length <= len(self.buf):
            raise BenchError(f"worker answered {status}, length {length} on {target}")
        got = len(body)
        self.buf[:got] = body
        while got < length:
            n = self.sock.recv_into(self.view[got:length])
            if not n:
                raise BenchError(f"worker cut the body short on {target}")
            got += n
        return length

    def close(self) -> None:
        self.sock.close()


def fetch_all(pages: list[tuple[WorkerAddress, str, int]], threads: int, timeout: float) -> int:
    """Fetch every page with ``threads`` threads, each with one connection per worker."""
    counter = itertools.count()  # next() is atomic under the GIL
    errors: list[BaseException] = []

    def run() -> int:
        conns: dict[WorkerAddress, RawHttp] = {}
        total = 0
        try:
            while not errors and (i := next(counter)) < len(pages):
                addr, target, want = pages[i]
                if addr not in conns:
                    conns[addr] = RawHttp(addr, timeout)
                if (n := conns[addr].get(target)) != want:
                    raise BenchError(f"{target}: {n} bytes, expected {want}")
                total += n
        except BaseException as e:
            errors.append(e)
            raise
        finally:
            for c in conns.values():
                c.close()
        return total

    with ThreadPoolExecutor(max_workers=threads) as ex:
        futures = [ex.submit(run) for _ in range(threads)]
    if errors:
        raise BenchError(f"sims: {errors[0]!r}")
    return sum(f.result() for f in futures)


def page_list(cl: Cluster, files: list[tuple[str, int]], root: Path, whole: bool,
              ) -> list[tuple[WorkerAddress, str, int]]:
    """(owner, request target, length) of every page of ``files`` (only page 0 if not
    ``whole``: the small files are one page each)."""
    out = []
    for rel, size in files:
        uri = f"file://{root}/{rel}"
        owner, pid = cl.ring.owner(uri), path_id(uri)
        n = -(-size // PAGE) if whole else 1
        out += [(owner, f"/v1/file/{pid}/page/{i}", min(PAGE, size - i * PAGE))
                for i in range(n)]
    return out


def sim_pass(ctx: Context, work: str, threads: int) -> Pass:
    ds = ctx.ds
    if work == "seq":
        pages = page_list(ctx.cl, [("big.bin", ds.big_size)], ds.root, whole=True)
        want = ds.big_size
    else:
        pages = page_list(ctx.cl, ds.small, ds.root, whole=False)
        want = ds.small_bytes
    a = ctx.cl.snapshot(None)
    got = fetch_all(pages, threads, timeout=30.0)  # every socket call has this deadline
    b = ctx.cl.snapshot(None)
    if got != want:
        raise BenchError(f"sims {work}: {got} bytes, expected {want}")
    secs, cpu, reqs = ctx.cl.cost(a, b)
    cpu["proc"], cpu["readers"] = cpu["readers"], 0.0  # the fetching client is this driver
    value = got / MiB / secs if work == "seq" else len(ds.small) / secs
    return Pass(value, secs, cpu, reqs)


# ------------------------------------------------------------------------ the run


@dataclass
class Context:
    args: argparse.Namespace
    ds: localenv.Dataset
    cl: Cluster
    logs: Path
    small_sha256: str = ""
    results: dict[tuple[str, str], list[Pass]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    keep_logs: bool = False
    discarded: int = 0

    def record(self, work: str, target: str, rep: int, p: Pass) -> None:
        self.results.setdefault((work, target), []).append(p)
        unit = WORKLOADS[work][0]
        log(f"  [{rep + 1}/{self.args.repeat}] {target:<11} {work:<8} {p.value:>10,.1f} "
            f"{unit:<7} {p.secs:6.2f}s  cores: sims {p.cpu['sims']:.2f} (max "
            f"{p.cpu['sims_max']:.2f}) proc {p.cpu['proc']:.2f} readers "
            f"{p.cpu['readers']:.2f} other {p.cpu['other']:.2f}  requests: {requests(p.requests)}"
            + (f"  RSS {p.rss_mib:.0f} MiB" if p.rss_mib else "")
            + (f"  minflt {p.minflt:,}" if p.minflt is not None else ""))


def measured(ctx: Context, work: str, target: str, rep: int, fn: Callable[[], Pass]) -> None:
    """Run one pass while the machine is quiet (``quiet_pass``) and record it."""
    step = f"  [{rep + 1}/{ctx.args.repeat}] {target:<11} {work:<8} "
    what = f"{target} {work} (repetition {rep + 1})"
    p, discarded = quiet_pass(fn, ctx.args, ctx.cl.check_alive, what,
                              lambda p: f"{step}{p.value:>10,.1f} ", ctx.problems)
    ctx.discarded += discarded
    ctx.record(work, target, rep, p)


def run_target(ctx: Context, target: str, rep: int) -> None:
    for work in ctx.args.workloads:
        if target == "alluxiofuse":
            measured(ctx, work, target, rep, partial(fuse_pass, ctx, work, rep))
        elif target == "official":
            measured(ctx, work, target, rep, partial(client_pass, ctx, work, rep))
        else:
            if work == "seq":
                measured(ctx, work, "sims.1c", rep, partial(sim_pass, ctx, work, 1))
            measured(ctx, work, "sims", rep, partial(sim_pass, ctx, work, ctx.args.sim_threads))


def run(args: argparse.Namespace, ds: localenv.Dataset, workdir: Path, logs: Path) -> Context:
    with etcd(workdir) as etcd_url, \
            sim_workers(etcd_url, ds.root, workdir, args.workers, args.vnodes) as sims:
        t0 = time.monotonic()
        load_all(sims, ds.root, args.workloads)
        os.sync()
        stored = warm_store(workdir / "store")
        log(f"loaded {stored / MiB:,.0f} MiB into {args.workers} simulated workers in "
            f"{time.monotonic() - t0:.0f}s (ports {', '.join(str(w.port) for w in sims.workers)})")
        for w in sims.workers:  # after the load, which it would only slow down
            w.faults(delay=args.worker_latency_ms / 1000)
        ctx = Context(args, ds, Cluster(etcd_url, sims, args.vnodes), logs)
        owners = Counter(ctx.cl.ring.owner(f"file://{ds.root}/{rel}").http_port
                         for rel, _ in ds.small)
        big_owner = ctx.cl.ring.owner(f"file://{ds.root}/big.bin").http_port
        ctx.problems.append(f"(info) big.bin is on the worker at port {big_owner}; small "
                            f"files per worker: {dict(sorted(owners.items()))}")
        ctx.small_sha256 = localenv.small_digest([str(ds.root / rel) for rel, _ in ds.small])
        for rep in range(args.repeat):
            for target in TARGETS[rep % 3:] + TARGETS[:rep % 3]:
                if target in ctx.failed:
                    continue
                try:
                    run_target(ctx, target, rep)
                except BenchError as exc:
                    ctx.failed[target] = str(exc)
                    ctx.keep_logs = True
                    log(f"  {target}: FAILED: {exc}")
        return ctx


# ------------------------------------------------------------------------ report


def requests(c: Counter[str]) -> str:
    """Worker requests by route, pages first: "2,000 file + 100 files + 13 info"."""
    keys = sorted(c, key=lambda k: (k != "file", k))
    return " + ".join(f"{c[k]:,} {'page' if k == 'file' else k}" for k in keys) or "0"


def report(ctx: Context, markdown: bool) -> None:
    def vals(work: str, target: str, what: Callable[[Pass], float | None]) -> list[float]:
        return [v for p in ctx.results.get((work, target), []) if (v := what(p)) is not None]

    def med(work: str, target: str) -> float | None:
        v = vals(work, target, lambda p: p.value)
        return statistics.median(v) if v else None

    n_small = len(ctx.ds.small)
    names = {"seq": f"seq, {ctx.ds.big_size // MiB:,} MiB file (MiB/s)",
             "small_4t": f"small_4t, {n_small:,} files (files/s)"}
    rows = [["workload", "alluxiofuse", "official client", "alluxiofuse / official", "target",
             "met", "sims direct, 1 connection", f"sims direct, {ctx.args.sim_threads} threads"]]
    for work in ctx.args.workloads:
        need = WORKLOADS[work][1]
        a, o = med(work, "alluxiofuse"), med(work, "official")
        r = a / o if a and o else None
        rows.append([names[work], summary(vals(work, "alluxiofuse", lambda p: p.value)),
                     summary(vals(work, "official", lambda p: p.value)), ratio(r),
                     f"≥ {need}x", "n/a" if r is None else "yes" if r >= need else "**no**",
                     summary(vals(work, "sims.1c", lambda p: p.value)),
                     summary(vals(work, "sims", lambda p: p.value))])
    for work in ctx.args.workloads:
        rows.append([f"peak RSS, {work} (MiB)",
                     summary(vals(work, "alluxiofuse", lambda p: p.rss_mib)),
                     summary(vals(work, "official", lambda p: p.rss_mib)),
                     "–", "–", "–", "–", "–"])
    rows.append(["daemon minor faults, seq", summary(vals("seq", "alluxiofuse",
                                                          lambda p: p.minflt)),
                 "–", "–", f"≤ {localenv.FAULTS_TARGET:,}",
                 "n/a" if not (f := vals("seq", "alluxiofuse", lambda p: p.minflt)) else
                 "yes" if statistics.median(f) <= localenv.FAULTS_TARGET else "**no**", "–", "–"])
    print()
    print_table(rows, markdown)
    print()

    rows = [["pass", "rate", "wall (s)", "sims CPU, all (cores)", "busiest sim (cores)",
             "daemon / client CPU (cores)", "reader threads CPU (cores)",
             "rest of the machine (cores)", "worker requests (last repetition)"]]
    who = {"alluxiofuse": "alluxiofuse", "official": "official client",
           "sims.1c": "sims direct, 1 conn", "sims": f"sims direct, {ctx.args.sim_threads} thr"}
    for work in ctx.args.workloads:
        unit = WORKLOADS[work][0]
        for target in ("alluxiofuse", "official", "sims.1c", "sims"):
            ps = ctx.results.get((work, target))
            if not ps:
                continue

            def cpu(key: str, ps: list[Pass] = ps) -> str:
                return f"{statistics.median(p.cpu[key] for p in ps):.2f}"

            rows.append([f"{work}: {who[target]}",
                         f"{fmt(statistics.median(p.value for p in ps))} {unit}",
                         f"{statistics.median(p.secs for p in ps):.2f}", cpu("sims"),
                         cpu("sims_max"), "–" if target.startswith("sims") else cpu("proc"),
                         cpu("proc") if target.startswith("sims") else
                         ("–" if target == "official" else cpu("readers")),
                         cpu("other"), requests(ps[-1].requests)])
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
                   help="where the run's etcd data and worker page stores go (removed after)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="256 MiB big file, 2,000 small files")
    p.add_argument("--workers", type=int, default=3, help="simulated workers")
    p.add_argument("--workloads", nargs="+", choices=list(WORKLOADS), default=list(WORKLOADS),
                   help="the workloads to run (default: all); only their files are loaded")
    p.add_argument("--vnodes", type=int, default=5,
                   help="virtual nodes per worker, on the workers, the mount and the client")
    p.add_argument("--worker-latency-ms", type=float, default=1.0,
                   help="milliseconds each simulated worker waits before answering each "
                        "request (0: none)")
    p.add_argument("--sim-threads", type=int, default=4,
                   help="threads of the direct fetch that measures the workers' limit")
    p.add_argument("--alluxiofuse-args", default="",
                   help="extra daemon arguments (one string); localenv's mount already "
                        "passes -f --log-level warning")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per pass")
    add_quiet_options(p)
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = p.parse_args()
    args.alluxiofuse_args = " ".join(shlex.quote(a) for a in shlex.split(args.alluxiofuse_args))
    signal.signal(signal.SIGTERM, on_sigterm)  # run the clean-ups, as on Ctrl-C
    load_before = Path("/proc/loadavg").read_text().split()[:3]

    ds = localenv.plan_dataset(args.data_dir.resolve(), args.quick)
    localenv.ensure_dataset(ds)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="cluster-run-", dir=args.work_dir))
    logs = Path(tempfile.mkdtemp(prefix="cluster-logs-", dir=args.work_dir))
    ctx: Context | None = None
    try:
        ctx = run(args, ds, workdir, logs)
    except BenchError as e:
        log(f"FAILED: {e}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        if ctx is not None and not ctx.keep_logs:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            log(f"logs kept in {logs}")

    print(environment())
    print(f"load average before the run: {' '.join(load_before)}, after: "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    try:
        client = metadata.version("alluxio")
    except metadata.PackageNotFoundError:
        client = "not installed"
    print(f"official client: alluxio {client}; {args.workers} simulated workers (OSS mode), "
          f"{args.vnodes} virtual nodes each, {args.worker_latency_ms:g} ms added to each "
          f"worker reply; alluxiofuse args: defaults {args.alluxiofuse_args}")
    print(f"dataset: {ds.root}: big.bin {ds.big_size // MiB} MiB, {len(ds.small)} small files "
          f"({ds.small_bytes / MiB:.0f} MiB); repeat={args.repeat}, median (min–max) shown")
    report(ctx, args.markdown)
    fell_back = any("under-storage" in n for n in ctx.problems)
    return 1 if ctx.failed or fell_back else 0


if __name__ == "__main__":
    sys.exit(main())
