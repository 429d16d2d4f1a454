#!/usr/bin/env python3
"""Read-path benchmark: alluxiofuse vs fsspec.fuse vs the source directory itself.

Targets, all over one local source directory (generated once and cached under
--data-dir: ``full/`` = 1 GiB big.bin + 10,000 files of 4-64 KiB in 100 directories,
``quick/`` = 256 MiB + 2,000 files):
  direct       reads of the source directory itself
  alluxiofuse  ``python -m alluxiofuse mount SRC MNT -f``: the daemon's DEFAULT options
               (local source: its local fast path, LocalUfs)
  alluxiofuse.fsspec
               the same daemon, defaults, over ``local://SRC``: fsspec's LocalFileSystem
               through the daemon's generic fsspec path (UfsBackend), as for any remote
               store (seq_cold and seq_warm only)
  alluxiofuse.tuned
               the local mount with --tuned-args (``--page-cache-size 256MiB``, the
               flag this benchmark passed before it ran the defaults): a row beside the
               defaults, never instead of them (seq_cold and seq_warm only; not in the
               default --only)
  fsspec.fuse  fsspec.fuse.run(file filesystem): fusepy on libfuse2, in its default
               single-threaded mode (threads=True returns corrupted data: concurrent
               reads of one handle race on a shared seek+read; measured, then dropped)
  floor        bench/floor_fs.py: a do-nothing pyfuse3 + trio daemon serving the tree's
               names and sizes from memory and zeros as data; the fastest any pyfuse3
               daemon can be (small_4t and walk only: its bytes are not the files')
  floor.read   the same, serving the files' real bytes with a blocking pread on the
               event loop: the fastest a pyfuse3 daemon that really reads can be
Workloads (each --repeat times, median reported; every one starts on a fresh mount; the
order of the targets rotates from one repetition to the next):
  seq_cold  sequential 1 MiB reads of big.bin after dropping kernel caches (MiB/s)
  seq_warm  a second pass on the same mount, caches kept (MiB/s); on the first
            repetition an extra untimed pass compares sha256(big.bin) with the source
  small_4t  read every small file fully with 4 threads, cold caches (files/s)
  walk      os.walk + os.stat of the whole tree, cold caches (entries/s)
It also prints, for each daemon that read big.bin: its peak RSS (VmHWM just before
unmounting that mount), and the minor page faults it took and the CPU it used during the
seq_cold pass alone (/proc/PID/stat minflt, utime + stime, before and after): a page
buffer that is fresh memory costs a fault per 4 KiB, 262,144 for 1 GiB.
Targets (issue 16): seq_cold >= 0.9x direct and <= 30,000 daemon minor faults with the
defaults; small_4t >= 1.0x fsspec.fuse; seq_warm and walk >= 2.0x fsspec.fuse.

It prints and does not judge, except to say whether each target is met. The exit
status is non-zero only if the benchmark itself failed: a mount did not come up, a
timeout, or wrong data from any target.

Run as root (drop_caches, /dev/fuse; needs fusermount3, and libfuse2 for fusepy):
  .venv/bin/python -m bench.read_bench --quick            # smoke run, ~1 min
  .venv/bin/python -m bench.read_bench                    # full run
  .venv/bin/python -m bench.read_bench --only direct,fsspec --repeat 5 --markdown
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import (
    BenchError,
    MiB,
    Mount,
    chosen,
    drop_caches,
    environment,
    fmt,
    log,
    print_table,
    ratio,
    watchdog,
)
from bench.localenv import (
    ALIASES,
    DAEMONS,
    FAULTS_TARGET,
    FLOORS,
    TARGETS,
    Dataset,
    ensure_dataset,
    mounted,
    plan_dataset,
    read_seq,
    read_small,
)

PAGE_CACHE_MIB = 256  # the tuned row's page cache; the main rows run the defaults
TUNED_ARGS = f"--page-cache-size {PAGE_CACHE_MIB}MiB"
SEQ_ONLY = ("alluxiofuse.fsspec", "alluxiofuse.tuned")  # seq_cold and seq_warm only
# workload -> (unit, baseline, required ratio alluxiofuse / baseline)
WORKLOADS = {"seq_cold": ("MiB/s", "direct", 0.9), "seq_warm": ("MiB/s", "fsspec.fuse", 2.0),
             "small_4t": ("files/s", "fsspec.fuse", 1.0),
             "walk": ("entries/s", "fsspec.fuse", 2.0)}


# ------------------------------------------------------------------------ workloads



def walk_stat(root: Path) -> int:
    def onerror(exc: OSError) -> None:
        raise exc

    n = 0
    for dirpath, dirs, files in os.walk(root, onerror=onerror):
        for name in files:
            os.stat(os.path.join(dirpath, name))
        n += len(dirs) + len(files)
    return n


@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    rss: dict[str, list[float]] = field(default_factory=dict)
    faults: dict[str, list[int]] = field(default_factory=dict)  # daemon minflt, seq_cold
    cpu: dict[str, list[float]] = field(default_factory=dict)  # daemon CPU s, seq_cold
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cold: list[bool] = field(default_factory=list)


def run_target(target: str, ds: Dataset, args: argparse.Namespace, rep: int, res: Results) -> None:
    """One repetition of every workload for one target (three fresh mounts)."""

    def measure(m: Mount, work: str, fn: Callable[[], int], want: int, count: int = 0) -> None:
        if work != "seq_warm":
            res.cold.append(drop_caches())
        with watchdog(m, args.timeout, work):
            f0, c0 = m.counters()
            t0 = time.perf_counter()
            got = fn()
            secs = time.perf_counter() - t0
            f1, c1 = m.counters()
        if work == "seq_cold" and m.proc is not None:
            res.faults.setdefault(target, []).append(f1 - f0)
            res.cpu.setdefault(target, []).append(c1 - c0)
        if got != want:
            raise BenchError(f"{target} {work}: read {got} bytes/entries, expected {want}")
        value = (got / MiB if work.startswith("seq") else count or got) / secs
        res.samples.setdefault((work, target), []).append(value)
        unit = WORKLOADS[work][0]
        more = (f"  daemon: {f1 - f0:,} minor faults, {c1 - c0:.2f} s CPU"
                if work == "seq_cold" and m.proc is not None else "")
        log(f"  [{rep + 1}/{args.repeat}] {target:<18} {work:<9} {value:>12,.1f} {unit}{more}")

    extra = args.alluxiofuse_args
    if target == "alluxiofuse.tuned":
        extra = f"{args.tuned_args} {extra}"
    if target not in FLOORS:  # the floors run small_4t and walk only
        read_big(target, ds, args, rep, res, measure, extra)
    if target in SEQ_ONLY:
        return
    with mounted(target, ds.root, extra) as m:
        paths = [str(m.root / rel) for rel, _ in ds.small]
        measure(m, "small_4t", lambda: read_small(paths), ds.small_bytes, len(paths))
    with mounted(target, ds.root, extra) as m:
        measure(m, "walk", lambda: walk_stat(m.root), ds.n_entries)


def read_big(target: str, ds: Dataset, args: argparse.Namespace, rep: int, res: Results,
             measure: Callable[..., None], extra: str) -> None:
    """seq_cold and seq_warm on one mount, the sha256 check, and the daemon's peak RSS."""
    with mounted(target, ds.root, extra) as m:
        big = m.root / "big.bin"
        measure(m, "seq_cold", lambda: read_seq(big), ds.big_size)
        measure(m, "seq_warm", lambda: read_seq(big), ds.big_size)
        if rep == 0:
            with watchdog(m, args.timeout, "sha256 check"), open(big, "rb", buffering=0) as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
            if digest != ds.big_sha256:
                raise BenchError(
                    f"{target}: sha256(big.bin) via the mount is {digest}, not {ds.big_sha256}")
    if m.peak_rss_mib is not None:
        res.rss.setdefault(target, []).append(m.peak_rss_mib)


# ------------------------------------------------------------------------ report



def report(res: Results, targets: list[str], markdown: bool) -> None:
    def med(work: str, target: str) -> float | None:
        vals = res.samples.get((work, target))
        return statistics.median(vals) if vals else None

    def over(x: float | None, y: float | None) -> float | None:
        return x / y if x and y else None

    rows = [["workload", *TARGETS, "allux/direct", "allux/fsspec", "floor/fsspec",
             "floor.read/fsspec", "target", "met"]]
    for work, (unit, base, need) in WORKLOADS.items():
        v = {t: med(work, t) for t in TARGETS}
        a, f = v["alluxiofuse"], v["fsspec.fuse"]
        r = over(a, v[base])
        met = "n/a" if r is None else "yes" if r >= need else "no"
        rows.append([f"{work} ({unit})", *(fmt(v[t]) for t in TARGETS),
                     ratio(over(a, v["direct"])), ratio(over(a, f)),
                     ratio(over(v["floor"], f)), ratio(over(v["floor.read"], f)),
                     f">= {need}x {base}", met])
    dash = ["-"] * 4
    peak = {t: max(v) for t, v in res.rss.items()}
    rows.append(["peak RSS reading big.bin (MiB)", *(fmt(peak.get(t)) for t in TARGETS),
                 *dash, "-", "-"])
    faults = {t: statistics.median(v) for t, v in res.faults.items()}
    a_f = faults.get("alluxiofuse")
    rows.append(["daemon minor faults, seq_cold", *(fmt(faults.get(t)) for t in TARGETS),
                 *dash, f"<= {FAULTS_TARGET:,}",
                 "n/a" if a_f is None else "yes" if a_f <= FAULTS_TARGET else "no"])
    cpu = {t: statistics.median(v) for t, v in res.cpu.items()}
    rows.append(["daemon CPU, seq_cold (s)", *("-" if t not in cpu else f"{cpu[t]:.2f}"
                                              for t in TARGETS), *dash, "-", "-"])
    print()
    print_table(rows, markdown, left=(0, len(rows[0]) - 2))
    print()
    for t in DAEMONS:
        if t in faults:
            print(f"{t}: seq_cold daemon minor faults {sorted(res.faults[t])}, CPU s "
                  f"{[round(c, 2) for c in sorted(res.cpu[t])]}, peak RSS MiB "
                  f"{[round(r) for r in sorted(res.rss.get(t, []))]}")
    for note in res.notes:
        print(f"note: {note}")
    for t in TARGETS:
        status = "not selected" if t not in targets else f"FAILED: {res.failed[t]}" \
            if t in res.failed else "ok"
        print(f"{t}: {status}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("/var/tmp/alluxiofuse-bench/data"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="256 MiB big file, 2,000 small files")
    p.add_argument("--only",
                   default="direct,alluxiofuse,alluxiofuse.fsspec,fsspec.fuse,floor,floor.read",
                   help="comma-separated targets: direct, alluxiofuse, alluxiofuse.fsspec, "
                        "alluxiofuse.tuned, fsspec(.fuse), floor, floor.read")
    p.add_argument("--alluxiofuse-args", default="",
                   help="extra daemon arguments for every alluxiofuse row (one string): "
                        "the rows then no longer run the defaults")
    p.add_argument("--tuned-args", default=TUNED_ARGS,
                   help="the alluxiofuse.tuned row's daemon arguments (one string)")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per pass")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args()
    targets = chosen(p, args.only, ALIASES, TARGETS)

    ds = plan_dataset(args.data_dir.resolve(), args.quick)
    ensure_dataset(ds)
    res = Results()
    for rep in range(args.repeat):
        # A rotating order: no target is always the one that follows another's I/O (the
        # first large read after other work is often slower here, whoever does it).
        for target in targets[rep % len(targets):] + targets[:rep % len(targets)]:
            if target in res.failed:
                continue
            try:
                run_target(target, ds, args, rep, res)
            except BenchError as exc:
                res.failed[target] = str(exc)
                log(f"  {target}: FAILED: {exc}")

    print(environment())
    if args.alluxiofuse_args:
        print(f"NOTE: every alluxiofuse row ran with {args.alluxiofuse_args!r}, not the defaults")
    print(f"alluxiofuse.tuned: {args.tuned_args!r}")
    print(f"dataset: {ds.root}: big.bin {ds.big_size // MiB} MiB, {len(ds.small)} small files "
          f"({ds.small_bytes / MiB:.0f} MiB); repeat={args.repeat}, median shown; caches "
          f"dropped: {'yes' if res.cold and all(res.cold) else 'NO, cold numbers are not cold'}")
    report(res, targets, args.markdown)
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
