#!/usr/bin/env python3
"""S3 benchmark: alluxiofuse against rclone mount, s3fs-fuse and fsspec.fuse, and against
a plain client (the ceiling), all over one S3 server at a realistic latency.

The endpoint: s3rver (npm) on loopback behind bench/latency_proxy.py, which adds --ttfb
(20 ms) to the first byte of every reply and caps each connection at --bandwidth
(90 MiB/s, about one S3 connection). The round trip through it is measured at the start
(a HEAD on a kept-alive connection) and printed. Data, put into s3rver once and kept in
/var/tmp/alluxiofuse-bench/s3rver-{full,quick} (bench/s3env.py):
  full   big.bin 1 GiB; small/: 2,000 files of 4-64 KiB in 20 directories; tree/: 100
         directories of 100 files (a walk of 10,100 entries)
  quick  128 MiB; 400 files; 10 x 50 files (--quick, for smoke runs)

Targets, each mounted with its OWN defaults (alluxiofuse: only --cache-dir and
--metrics-addr move its spool and its port out of other mounts' way):
  alluxiofuse  python -m alluxiofuse mount s3://bench/ MNT -f (the repo's code, or
               --repo's: another worktree, run by its .venv's python)
  rclone       rclone mount :s3:bench MNT (provider Other, endpoint the proxy)
  s3fs         s3fs bench MNT -f -o url=...,use_path_request_style,passwd_file=...
  fsspec       fsspec.fuse.run(s3fs.S3FileSystem(endpoint the proxy)) on fusepy
  ceiling      boto3 threads through the same proxy: the 1 GiB object by 8 and by 16
               parallel 8 MiB ranged GETs; the small objects by 16 and 64 concurrent GETs
Workloads (every cold one on a fresh mount after dropping the kernel's page cache):
  seq1        big.bin read in order in 1 MiB calls, 1 reader (MiB/s); also the mount
              process's peak RSS (VmHWM) and its minor faults over the pass
  seq4        4 readers, each reading its own quarter in order (MiB/s)
  small16     every small file read whole by 16 threads, in listing order (files/s);
              then, same mount: small16_warm, the same files again, bytes checked;
              walk_cold and walk_warm, os.walk + os.stat of tree/ twice (entries/s)
  small64     the same by 64 threads, cold (files/s)
A pass that runs past --budget seconds stops taking new files (or directories) and
reports its rate over what it read (marked *); a warm pass covers what its cold pass did.

Each target's workloads run --repeat times (medians shown), the targets in a rotating
order. The table gives alluxiofuse / best FUSE peer and alluxiofuse / ceiling beside the
issue's targets. To keep each run short (the machine is shared: run under flock), pick
targets and workloads and gather the samples of several runs in one --results file:
  flock /work/wt/bench.lock .venv/bin/python -m bench.s3_bench --quick --repeat 1
  flock /work/wt/bench.lock .venv/bin/python -m bench.s3_bench --only alluxiofuse,ceiling \\
        --results /tmp/s3.json
  flock /work/wt/bench.lock .venv/bin/python -m bench.s3_bench --only rclone,s3fs \\
        --results /tmp/s3.json --markdown          # prints the table of both runs
  .venv/bin/python -m bench.s3_bench --report /tmp/s3.json --markdown
Exit status non-zero if the benchmark itself failed (a mount did not come up, a pass hung,
wrong bytes); whether targets are met is printed, not judged. Run as root (/dev/fuse,
drop_caches). Every mount is under a temporary directory and is unmounted, and every
process ended, on the way out, on an error or on Ctrl-C/SIGTERM alike.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from bench import latency_proxy, s3env
from bench.harness import (
    BenchError,
    MiB,
    drop_caches,
    log,
    on_sigterm,
    print_table,
    proc_counters,
    proc_cpu,
)

TARGETS = (*s3env.PEERS, "ceiling")
# workload -> (label, unit)
WORKLOADS = {
    "seq1": ("1 GiB sequential, 1 reader, cold", "MiB/s"),
    "seq4": ("1 GiB sequential, 4 readers, cold", "MiB/s"),
    "small16": ("small files, 16 threads, cold", "files/s"),
    "small64": ("small files, 64 threads, cold", "files/s"),
    "small16_warm": ("small files, 16 threads, warm", "files/s"),
    "walk_cold": ("walk + stat, cold", "entries/s"),
    "walk_warm": ("walk + stat, warm", "entries/s"),
    "rss": ("peak RSS while reading the 1 GiB file", "MiB"),
    "minflt": ("minor faults while reading the 1 GiB file", "faults"),
}
# Which passes a --workloads name selects (one fresh mount each).
GROUPS = {"seq1": ("seq1", "rss", "minflt"), "seq4": ("seq4",),
          "small16": ("small16", "small16_warm", "walk_cold", "walk_warm"),
          "small64": ("small64",)}
# The ceiling's passes, and which ceiling each workload is held to.
CEILING = {"seq8": "8 x 8 MiB ranged GETs", "seq16": "16 x 8 MiB ranged GETs",
           "get16": "16 concurrent GETs", "get64": "64 concurrent GETs"}
HELD_TO = {"seq1": ("seq8", "seq16"), "seq4": ("seq8", "seq16"), "small16": ("get16",),
           "small64": ("get64",)}
# The targets: (>= x best peer, >= x ceiling) or a bound on the value.
GOALS: dict[str, tuple[float | None, float | None]] = {
    "seq1": (1.3, 0.6), "seq4": (1.3, 0.6), "small16": (5.0, 0.6), "small64": (5.0, 0.6),
    "small16_warm": (1.0, None), "walk_warm": (1.0, None)}
BOUNDS = {"rss": 300.0, "minflt": 30000.0}


@dataclass
class Context:
    args: argparse.Namespace
    ep: s3env.Endpoint
    logs: Path
    res: s3env.Results

    @property
    def ds(self) -> s3env.Dataset:
        assert self.ep.ds is not None  # made by s3env.endpoint
        return self.ep.ds


# ------------------------------------------------------------------------ passes


@contextlib.contextmanager
def watchdog(m: s3env.Mount, seconds: float, what: str) -> Iterator[None]:
    """Kill the mount's process if `what` overruns: the kernel then fails the reads
    blocked on the mount (ENOTCONN) instead of leaving them hung."""
    fired = threading.Event()

    def fire() -> None:
        fired.set()
        m.proc.kill()

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    except OSError as e:
        raise BenchError(f"{m.peer} {what}: {e!r}\n    {m.tail()}") from e
    finally:
        timer.cancel()
    if fired.is_set():
        raise BenchError(f"{m.peer} {what}: hung for {seconds:g}s (killed)\n    {m.tail()}")


def timed(ctx: Context, m: s3env.Mount | None, target: str, work: str, rep: int,
          fn: Callable[[float], tuple[float, bool]]) -> None:
    """Run fn(deadline) -> (amount, complete); record amount / seconds."""
    unit = WORKLOADS.get(work, ("", "MiB/s" if work.startswith("seq") else "files/s"))[1]
    cpu0 = proc_cpu(m.pid) if m else 0.0
    t0 = time.perf_counter()
    deadline = time.monotonic() + ctx.args.budget
    if m is not None:
        with watchdog(m, ctx.args.budget + 120, work):
            amount, complete = fn(deadline)
    else:
        amount, complete = fn(deadline)
    secs = time.perf_counter() - t0
    value = amount / secs
    ctx.res.add(work, target, value, complete)
    cpu = f"  {(proc_cpu(m.pid) - cpu0) / secs:.2f} cores" if m else ""
    log(f"  [{rep + 1}] {target:<11} {work:<13} {value:>10,.1f} {unit}"
        f"{'' if complete else ' * (budget)'}{cpu}")


def cold() -> None:
    if not drop_caches():
        raise BenchError("cannot drop the page cache (/proc/sys/vm/drop_caches): run as root")


def seq_pass(ctx: Context, m: s3env.Mount, target: str, readers: int,
             deadline: float) -> tuple[float, bool]:
    size, big = ctx.ds.big_size, m.root / ctx.ds.big_key
    got = (s3env.read_range(big, 0, size) if readers == 1
           else s3env.read_parallel(big, size, readers))
    if got != size:
        raise BenchError(f"{target}: read {got} bytes of big.bin, expected {size}")
    return got / MiB, True


def small_paths(ctx: Context, root: Path) -> list[tuple[int, str]]:
    """(index, path) of every small file, in listing order (directory by directory)."""
    order = sorted(range(len(ctx.ds.small)), key=lambda i: ctx.ds.small[i][0])
    return [(i, str(root / ctx.ds.small[i][0])) for i in order]


def read_small(ctx: Context, files: list[tuple[int, str]], threads: int, deadline: float | None,
               check: bool, done: list[tuple[int, str]]) -> tuple[float, bool]:
    """Read files whole with ``threads`` threads until ``deadline``; append what was read
    to ``done``; with ``check``, compare each file's bytes with what was put."""
    it, lock = iter(files), threading.Lock()

    def worker() -> list[tuple[int, str]]:
        mine = []
        while deadline is None or time.monotonic() < deadline:
            with lock:
                item = next(it, None)
            if item is None:
                break
            i, path = item
            with open(path, "rb", buffering=0) as f:
                data = f.read()
            want = ctx.ds.small_content(i)
            if len(data) != len(want) or (check and data != want):
                raise BenchError(f"{path}: {len(data)} bytes that are not the file's "
                                 f"{len(want)}")
            mine.append(item)
        return mine

    with ThreadPoolExecutor(max_workers=threads) as ex:
        for mine in ex.map(lambda _: worker(), range(threads)):
            done += mine
    return len(done), len(done) == len(files)


def walk(root: Path, deadline: float | None, limit: int | None) -> tuple[int, int]:
    """os.walk + os.stat of every file under root, directory by directory, stopping after
    ``deadline`` or once ``limit`` entries are seen; (entries, directories listed)."""
    def onerror(exc: OSError) -> None:
        raise exc

    n = dirs_listed = 0
    for dirpath, dirs, files in os.walk(root, onerror=onerror):
        dirs.sort()
        for name in sorted(files):
            os.stat(os.path.join(dirpath, name))
        n += len(dirs) + len(files)
        dirs_listed += 1
        if (deadline is not None and time.monotonic() > deadline) or \
                (limit is not None and n >= limit):
            break
    return n, dirs_listed


def run_peer(ctx: Context, peer: str, rep: int) -> None:
    """One repetition of the chosen workloads on ``peer``: a fresh mount for each."""
    ds, args = ctx.ds, ctx.args
    extra = args.alluxiofuse_args if peer == "alluxiofuse" else ""

    def mount() -> contextlib.AbstractContextManager[s3env.Mount]:
        return s3env.mounted(peer, ctx.ep, ctx.logs, args.repo, extra)

    if "seq1" in args.workloads:
        with mount() as m:
            cold()
            f0 = proc_counters(m.pid)[0]
            timed(ctx, m, peer, "seq1", rep, lambda d: seq_pass(ctx, m, peer, 1, d))
            ctx.res.add("minflt", peer, proc_counters(m.pid)[0] - f0)
            if (hwm := m.rss_hwm_mib()) is not None:
                ctx.res.add("rss", peer, hwm)
                log(f"  [{rep + 1}] {peer:<11} peak RSS {hwm:,.0f} MiB, minor faults "
                    f"{proc_counters(m.pid)[0] - f0:,}")
    if "seq4" in args.workloads:
        with mount() as m:
            cold()
            timed(ctx, m, peer, "seq4", rep, lambda d: seq_pass(ctx, m, peer, 4, d))
    if "small16" in args.workloads:
        with mount() as m:
            cold()
            files, done = small_paths(ctx, m.root), []
            timed(ctx, m, peer, "small16", rep,
                  lambda d: read_small(ctx, files, 16, d, False, done))
            again: list[tuple[int, str]] = []
            timed(ctx, m, peer, "small16_warm", rep,
                  lambda d: (read_small(ctx, done, 16, None, True, again)[0], True))
            seen = [0]

            def walk_cold(d: float) -> tuple[float, bool]:
                seen[0], _ = walk(m.root / "tree", d, None)
                return seen[0], seen[0] >= ds.walk_entries

            timed(ctx, m, peer, "walk_cold", rep, walk_cold)
            timed(ctx, m, peer, "walk_warm", rep,
                  lambda d: (walk(m.root / "tree", None, seen[0])[0], True))
    if "small64" in args.workloads:
        with mount() as m:
            cold()
            files, done = small_paths(ctx, m.root), []
            timed(ctx, m, peer, "small64", rep,
                  lambda d: read_small(ctx, files, 64, d, False, done))


def run_ceiling(ctx: Context, rep: int) -> None:
    """The plain client through the same proxy: what the endpoint gives at best."""
    ds, ep = ctx.ds, ctx.ep
    c = s3env.client(ep.url, max_pool=64)
    keys = [k for k, _ in sorted(ds.small)]
    for work, threads in (("seq8", 8), ("seq16", 16)):
        if ctx.args.workloads & {"seq1", "seq4"}:
            cold()
            timed(ctx, None, "ceiling", work, rep, lambda d, t=threads: (
                s3env.ranged_get(c, ep.bucket, ds.big_key, ds.big_size, t) / MiB, True))
    for work, threads, group in (("get16", 16, "small16"), ("get64", 64, "small64")):
        if group in ctx.args.workloads:
            cold()
            timed(ctx, None, "ceiling", work, rep, lambda d, t=threads: (
                len(keys) if s3env.get_many(c, ep.bucket, keys, t) == ds.small_bytes
                else -1e18, True))


def run(args: argparse.Namespace, logs: Path, res: s3env.Results) -> None:
    ds = s3env.plan(args.quick)
    with s3env.endpoint(ds, logs, args.ttfb, args.bandwidth) as ep:
        ctx = Context(args, ep, logs, res)
        rtt = s3env.round_trip(ep.url, ep.bucket, ds.big_key)
        res.rtt.append(rtt)
        log(f"endpoint {ep.url} (s3rver {ep.server.url}); round trip (HEAD) "
            f"{rtt * 1000:.1f} ms; data {ds.name}")
        for rep in range(args.repeat):
            k = rep % len(args.targets)
            targets = args.targets[k:] + args.targets[:k]
            for target in targets:
                if target in res.failed:
                    continue
                try:
                    if target == "ceiling":
                        run_ceiling(ctx, rep)
                    else:
                        run_peer(ctx, target, rep)
                except BenchError as e:
                    res.failed[target] = str(e)
                    log(f"  {target}: FAILED: {e}")


# ------------------------------------------------------------------------ report


def fmt(v: float | None, complete: bool = True) -> str:
    if v is None:
        return "-"
    s = f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"
    return s if complete else s + "*"


def report(res: s3env.Results, markdown: bool) -> None:
    peers = [p for p in s3env.PEERS if p != "alluxiofuse"]
    head = ["workload", *(s3env.PEER_NAMES[p] for p in s3env.PEERS), "ceiling",
            "allux / best peer", "allux / ceiling", "target", "met"]
    rows = [head]
    any_partial = False
    for work, (label, unit) in WORKLOADS.items():
        cells = [f"{label} ({unit})"]
        vals: dict[str, float | None] = {}
        for p in s3env.PEERS:
            v, complete = res.median(work, p)
            vals[p] = v
            any_partial |= not complete
            cells.append(fmt(v, complete))
        ceil_names = HELD_TO.get(work, ())
        ceils = [(n, res.median(n, "ceiling")[0]) for n in ceil_names]
        ceils = [(n, v) for n, v in ceils if v is not None]
        ceiling = max((v for _, v in ceils), default=None)
        cells.append(fmt(ceiling))
        a = vals["alluxiofuse"]
        best = max((vals[p] for p in peers if vals[p] is not None), default=None)
        if work in BOUNDS:
            best = min((vals[p] for p in peers if vals[p] is not None), default=None)
        r_peer = a / best if a is not None and best else None
        r_ceil = a / ceiling if a is not None and ceiling else None
        cells += ["-" if r_peer is None else f"{r_peer:.2f}x",
                  "-" if r_ceil is None or work in BOUNDS else f"{r_ceil:.2f}x"]
        goal, met = "", "-"
        if work in GOALS:
            g_peer, g_ceil = GOALS[work]
            goal = " and ".join(s for s in (
                f">= {g_peer}x best" if g_peer else "", f">= {g_ceil}x ceiling" if g_ceil else "")
                if s)
            checks = [r >= g for r, g in ((r_peer, g_peer), (r_ceil, g_ceil))
                      if g is not None and r is not None]
            met = "-" if not checks else "no" if not all(checks) else "yes"
        elif work in BOUNDS:
            goal = f"<= {BOUNDS[work]:,.0f}"
            met = "-" if a is None else "yes" if a <= BOUNDS[work] else "no"
        rows.append([*cells, goal, met])
    print_table(rows, markdown, left=(0, len(head) - 2))
    print()
    for n, label in CEILING.items():
        v, _ = res.median(n, "ceiling")
        if v is not None:
            print(f"ceiling {n}: {label}: {fmt(v)} {'MiB/s' if n.startswith('seq') else 'files/s'}")
    if res.rtt:
        print(f"round trip through the proxy (HEAD, median of the runs): "
              f"{statistics.median(res.rtt) * 1000:.1f} ms")
    n = {k: len(v) for k, v in res.samples.items()}
    print(f"samples per cell: {min(n.values(), default=0)}-{max(n.values(), default=0)} "
          "(median shown)")
    if any_partial:
        print("* a pass stopped at --budget: the rate over the part it read")
    for note in res.notes:
        print(f"note: {note}")
    for t, why in res.failed.items():
        print(f"{t}: FAILED: {why}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small data set, for smoke runs")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(TARGETS),
                   help=f"comma-separated targets: {', '.join(TARGETS)}")
    p.add_argument("--workloads", default=",".join(GROUPS),
                   help=f"comma-separated: {', '.join(GROUPS)} (small16 includes the warm "
                        "passes and the walk)")
    p.add_argument("--ttfb", type=latency_proxy.parse_duration,
                   default=latency_proxy.DEFAULT_TTFB, help="proxy: added time to first "
                   "byte (20ms)")
    p.add_argument("--bandwidth", type=latency_proxy.parse_rate,
                   default=latency_proxy.DEFAULT_BANDWIDTH,
                   help="proxy: cap per connection, e.g. 90MiB (default); 0: none")
    p.add_argument("--budget", type=float, default=60.0,
                   help="seconds a pass may take before it stops taking new files")
    p.add_argument("--repo", type=Path, default=s3env.REPO_ROOT,
                   help="the alluxiofuse checkout to mount with (its .venv's python)")
    p.add_argument("--alluxiofuse-args", default="",
                   help="extra daemon options (one string): a tuned row, not the default")
    p.add_argument("--results", type=Path,
                   help="add this run's samples to this JSON file; the table is of all")
    p.add_argument("--report", type=Path, help="print the table of a --results file; run nothing")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()

    res = s3env.Results()
    if args.report:
        report(s3env.Results.load(args.report), args.markdown)
        return 0
    names = [t.strip() for t in args.only.split(",") if t.strip()]
    if bad := [t for t in names if t not in TARGETS]:
        p.error(f"unknown target(s) {bad}; choose from {', '.join(TARGETS)}")
    args.workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if bad := sorted(args.workloads - set(GROUPS)):
        p.error(f"unknown workload(s) {bad}; choose from {', '.join(GROUPS)}")
    if os.geteuid() != 0:
        p.error("run as root (FUSE mounts, drop_caches)")
    s3env.ensure_python_deps()
    args.targets = []
    for t in (t for t in TARGETS if t in names):
        if why := (s3env.missing_tool(t) if t != "ceiling" else None):
            res.notes.append(f"{t} skipped: {why}")
        else:
            args.targets.append(t)
    if args.alluxiofuse_args:
        res.notes.append(f"alluxiofuse ran with {args.alluxiofuse_args!r}: not its defaults")
    signal.signal(signal.SIGTERM, on_sigterm)
    logs = s3env.BENCH_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        run(args, logs, res)
    finally:
        if args.results:
            res = res.merged_into(args.results)
    print(f"S3 through the latency proxy: ttfb {args.ttfb * 1000:g} ms, "
          f"{args.bandwidth / MiB:g} MiB/s per connection; data "
          f"{'quick' if args.quick else 'full'}; logs in {logs}")
    report(res, args.markdown)
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
