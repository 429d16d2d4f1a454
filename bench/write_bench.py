#!/usr/bin/env python3
"""Write-path benchmark: alluxiofuse vs fsspec.fuse vs writing the local disk directly,
and vs the floor of any pyfuse3 + trio daemon.

Targets; every run writes into a fresh, empty source directory under a scratch directory
on /var/tmp (a real disk here; /tmp may be tmpfs), and every FUSE run on a fresh mount
of it (localenv.py's ``mounted()``):
  direct       writes straight into the source directory
  alluxiofuse  ``python -m alluxiofuse mount SRC MNT -f``, the daemon's defaults, plus
               --extra (e.g. ``--extra "--write-type ASYNC_THROUGH"``) and --cache-dir
  fsspec.fuse  fsspec.fuse.run(file filesystem), as localenv.py runs it: fusepy on
               libfuse2, single-threaded, no ``big_writes`` (the kernel sends it 4 KiB
               writes). It creates and writes files, but its fsync is a no-op, its
               utimens is a no-op (extracted files keep the time of extraction), and
               chown answers EROFS: hence ``tar --no-same-owner`` for every target
  floor        bench/floor_write.py: a do-nothing pyfuse3 + trio daemon keeping the tree
               in memory and discarding the bytes written (alluxiofuse's mount options
               and FUSE task counts): the fastest any pyfuse3 + trio daemon can write.
               It keeps no data, so the checks below are skipped for it; instead its
               own counts must match (files created, bytes written), and its count of
               FUSE requests of each kind is reported per file (tar_x) or per MiB
  floor.wb     the same with the kernel's write-back cache (enable_writeback_cache):
               the kernel merges small writes; what that alone would change
Workloads (each --repeat times, median and min-max reported; the order of the targets
rotates from one repetition to the next; kernel caches dropped before each timed pass):
  seq_write  open, 1 GiB of 1 MiB ``os.write`` calls (random bytes generated once in
             memory, each block a different window of them), fsync, close; timed from
             open to close returning (MiB/s). Checked untimed after unmounting:
             sha256 of the file in the source directory, read directly
  tar_x      ``tar --no-same-owner -xf ARCHIVE -C DIR`` of 10,000 files of 4-64 KiB
             in 100 directories (localenv's small-file names and sizes, content from
             a seeded random; the archive is built once, cached under --data-dir and
             read into the page cache before the timed run); timed until tar exits
             (files/s). Checked untimed after unmounting: every file in the source
             directory with its size, and the sha256 of every 50th file
``--quick``: 256 MiB and 2,000 files. Also reported per workload: each daemon's peak RSS
(VmHWM, just before unmounting), its unmount time (fusermount -u until the daemon has
exited, untimed above: what a daemon writing back after close still had to drain), its
CPU time in the timed section, and how many of the host's CPUs were busy meanwhile
(well above what the pass itself needs: other work on the host competed with it).
On a small VM, tar_x (one request at a time) depends on how fast a sleeping vCPU wakes:
its numbers vary with the host's load, up to 2-3x; ``taskset -c 1 python ...`` (all
processes on one CPU) makes them stable and comparable between targets.
Targets: seq_write alluxiofuse >= 0.5x direct and >= 2x fsspec.fuse; tar_x alluxiofuse
>= 2x fsspec.fuse.

It prints and does not judge, except to say whether each target is met. The exit
status is non-zero only if the benchmark itself failed: a mount did not come up, a
write or tar failed (e.g. EROFS), a timeout (the daemon is killed, so a hung FUSE write
ends with ENOTCONN), bytes in the source directory other than those written, or a
floor's counts other than the files and bytes written.

Run as root (drop_caches, /dev/fuse; needs fusermount3, GNU tar, and libfuse2 for fusepy):
  .venv/bin/python -m bench.write_bench --quick --repeat 1       # smoke run
  .venv/bin/python -m bench.write_bench --markdown               # full run
  .venv/bin/python -m bench.write_bench --only direct,fsspec,floor,floor.wb
  .venv/bin/python -m bench.write_bench --only alluxiofuse,fsspec \\
      --extra "--write-type ASYNC_THROUGH" --cache-dir /var/tmp/allux-cache
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench import localenv
from bench.harness import (
    REPO_ROOT,
    UMOUNT,
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
    run_quiet,
    vm_hwm_mib,
    watchdog,
)

SEED = localenv.SEED + 7
MTIME = 1_700_000_000  # every member's mtime in the archive
SAMPLE_EVERY = 50  # tar_x: sha256 of every 50th file
STRIDE = 1031  # seq_write: block b is the MiB window at b * 1031 % MiB of a 2 MiB buffer
TARGETS = ("direct", "alluxiofuse", "fsspec.fuse", "floor", "floor.wb")
ALIASES = {**{k: v for k, v in localenv.ALIASES.items() if v in TARGETS}, "floor.wb": "floor.wb"}
FLOORS = {"floor": [], "floor.wb": ["--writeback"]}  # target -> floor_write.py's options
FLOOR_WRITE = REPO_ROOT / "bench" / "floor_write.py"
COUNTS = "floor_write requests: "  # the line floor_write.py prints at exit
WORKLOADS = {"seq_write": "MiB/s", "tar_x": "files/s"}
# workload -> [(baseline, required ratio alluxiofuse / baseline)]
GOALS = {"seq_write": [("direct", 0.5), ("fsspec.fuse", 2.0)], "tar_x": [("fsspec.fuse", 2.0)]}
TAR = ("tar", "--no-same-owner", "-xf")  # fsspec.fuse answers chown with EROFS


@dataclass
class Plan:
    big_size: int
    block: bytes  # 2 MiB of random bytes, the windows of which make big.bin
    big_sha256: str
    archive: Path
    pool: bytes  # 4 MiB of seeded random bytes; file i is pool[off:off + size]
    files: list[tuple[str, int, int]]  # (relative path, size, offset into pool)
    n_bytes: int = 0


def big_blocks(block: bytes, size: int) -> Iterator[memoryview]:
    view = memoryview(block)
    for b in range(size // MiB):
        off = b * STRIDE % MiB  # unique for every block: no two blocks are alike
        yield view[off:off + MiB]


def make_plan(data_dir: Path, quick: bool) -> Plan:
    """What to write: the local data set's small-file names and sizes, grouped by directory."""
    ds = localenv.plan_dataset(data_dir, quick)
    rng = random.Random(SEED)
    pool = rng.randbytes(4 * MiB)
    files = [(rel.removeprefix("small/"), size, rng.randrange(len(pool) - size))
             for rel, size in sorted(ds.small)]
    block, sha = os.urandom(2 * MiB), hashlib.sha256()
    for chunk in big_blocks(block, ds.big_size):
        sha.update(chunk)
    return Plan(ds.big_size, block, sha.hexdigest(),
                data_dir / ("quick" if quick else "full") / "files.tar", pool, files,
                sum(s for _, s, _ in files))


def ensure_archive(plan: Plan) -> None:
    """Reuse the cached archive if its manifest and size match, else (re)build it."""
    manifest = plan.archive.with_name("manifest.json")
    want = {"seed": SEED, "mtime": MTIME, "n_files": len(plan.files), "bytes": plan.n_bytes}
    with contextlib.suppress(OSError, ValueError, KeyError):
        meta = json.loads(manifest.read_text())
        if ({k: meta[k] for k in want} == want
                and plan.archive.stat().st_size == meta["archive_size"]):
            return
    log(f"building {plan.archive} ({len(plan.files):,} files) ...")
    manifest.unlink(missing_ok=True)
    plan.archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.archive.with_suffix(".tmp")

    def info(name: str, kind: bytes, mode: int, size: int = 0) -> tarfile.TarInfo:
        ti = tarfile.TarInfo(name)
        ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, MTIME
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = "root"
        return ti

    with tarfile.open(tmp, "w", format=tarfile.GNU_FORMAT) as tf:
        for d in sorted({rel.rpartition("/")[0] for rel, _, _ in plan.files}):
            tf.addfile(info(d, tarfile.DIRTYPE, 0o755))
        for rel, size, off in plan.files:
            tf.addfile(info(rel, tarfile.REGTYPE, 0o644, size),
                       io.BytesIO(plan.pool[off:off + size]))
    os.replace(tmp, plan.archive)
    manifest.write_text(json.dumps({**want, "archive_size": plan.archive.stat().st_size}))
    os.sync()


# ------------------------------------------------------------------------ runs

@dataclass
class Results:
    samples: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    rss: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    unmount: dict[tuple[str, str], list[float]] = field(default_factory=dict)
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    notes: dict[str, None] = field(default_factory=dict)  # ordered, without repeats
    requests: dict[tuple[str, str], list[dict[str, int]]] = field(default_factory=dict)
    cpu: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # daemon CPU s
    busy: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # host CPUs busy
    cold: list[bool] = field(default_factory=list)


@contextlib.contextmanager
def mounted(target: str, src: Path, extra: str) -> Iterator[Mount]:
    """localenv's mounted(); a floor runs bench/floor_write.py."""
    command = None
    if target in FLOORS:
        def command(mnt: Path) -> list[str]:
            return [sys.executable, str(FLOOR_WRITE), str(src), str(mnt), *FLOORS[target]]
    with localenv.mounted(target, src, extra, command) as m:
        yield m


def floor_counts(m: Mount) -> dict[str, int]:
    """The request counts a floor printed at exit (read before mounted() deletes its log)."""
    with contextlib.suppress(OSError, ValueError):
        for line in (m.errlog.read_text(errors="replace").splitlines() if m.errlog else []):
            if line.startswith(COUNTS):
                return {k: int(v) for k, v in json.loads(line[len(COUNTS):]).items()}
    raise BenchError(f"{m.target}: no request counts in its output\n    {m.tail()}")


def check_floor(target: str, work: str, plan: Plan, counts: dict[str, int]) -> None:
    """A floor keeps no bytes: check its own counts of files created and bytes written."""
    files, size = (1, plan.big_size) if work == "seq_write" else (len(plan.files), plan.n_bytes)
    got = (counts.get("create", 0), counts.get("write_bytes", 0))
    if got != (files, size):
        raise BenchError(f"{target} {work}: the daemon counted {got[0]:,} files created and "
                         f"{got[1]:,} bytes written; expected {files:,} and {size:,}")


def cpu_now(pid: int | None) -> tuple[float, float, float]:
    """CPU seconds so far: the daemon's (user + system, all threads), and the host's busy
    and total (from /proc/stat; busy = all but idle and iowait)."""
    tick = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    own = 0.0
    if pid is not None:
        with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
            own = (int(fields[11]) + int(fields[12])) / tick
    return own, (sum(v) - v[3] - v[4]) / tick, sum(v) / tick


@contextlib.contextmanager
def metered(m: Mount, work: str, res: Results) -> Iterator[None]:
    """Record the daemon's CPU time over the timed section, and how many of the host's
    CPUs were busy on average (anything well above what the pass itself uses means other
    work on the host competed with it)."""
    pid = m.proc.pid if m.proc is not None else None
    before = cpu_now(pid)
    yield
    after = cpu_now(pid)
    if pid is not None:
        res.cpu.setdefault((work, m.target), []).append(after[0] - before[0])
    total = after[2] - before[2]
    res.busy.setdefault((work, m.target), []).append(
        (after[1] - before[1]) / total * (os.cpu_count() or 1) if total else 0.0)


@contextlib.contextmanager
def guarded(m: Mount, seconds: float, what: str) -> Iterator[None]:
    """The harness's watchdog (kills a daemon that overruns), and a BenchError for an
    OSError of the direct target too, which has no daemon to watch."""
    try:
        with watchdog(m, seconds, what):
            yield
    except OSError as exc:
        raise BenchError(f"{m.target} {what}: {exc}") from exc


def unmount(m: Mount, timeout: float) -> tuple[float, float | None]:
    """Unmount and wait for the daemon to exit, however long it takes to drain what it
    still holds (up to ``timeout``; mounted()'s stop() would SIGTERM it after 20 s).
    Returns the seconds taken and the daemon's peak RSS, read first (mounted() reads it
    after its body, when this daemon is gone)."""
    if m.proc is None:
        return 0.0, None
    rss = vm_hwm_mib(m.proc.pid)
    t0 = time.perf_counter()
    run_quiet([UMOUNT, "-u", str(m.root)])
    try:
        m.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{m.target}: daemon still running {timeout:g}s after unmounting"
                         f"\n    {m.tail()}") from None
    return time.perf_counter() - t0, rss


def write_big(path: Path, block: bytes, size: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for chunk in big_blocks(block, size):
            while chunk:
                chunk = chunk[os.write(fd, chunk):]
        os.fsync(fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.close(fd)
        raise
    os.close(fd)


def seq_write(m: Mount, src: Path, plan: Plan, args: argparse.Namespace,
              res: Results) -> float:
    res.cold.append(drop_caches())
    with guarded(m, args.timeout, "seq_write"), metered(m, "seq_write", res):
        t0 = time.perf_counter()
        write_big(m.root / "big.bin", plan.block, plan.big_size)
        secs = time.perf_counter() - t0
    with contextlib.suppress(OSError):
        if m.target not in FLOORS and (held := (src / "big.bin").stat().st_size) < plan.big_size:
            res.notes[f"{m.target} seq_write: when close() returned, the source file held "
                      f"{held:,} of {plan.big_size:,} bytes"] = None
    return plan.big_size / MiB / secs


def check_big(target: str, src: Path, plan: Plan) -> None:
    path = src / "big.bin"
    try:
        size = path.stat().st_size
        with open(path, "rb", buffering=0) as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as exc:
        raise BenchError(f"{target} seq_write: source file unreadable: {exc}") from exc
    if size != plan.big_size or digest != plan.big_sha256:
        raise BenchError(f"{target} seq_write: source file has {size:,} bytes, sha256 "
                         f"{digest}; wrote {plan.big_size:,}, sha256 {plan.big_sha256}")


def tar_x(m: Mount, plan: Plan, args: argparse.Namespace, res: Results) -> float:
    res.cold.append(drop_caches())
    with open(plan.archive, "rb", buffering=0) as f:  # tar's input from memory, not disk
        while f.read(16 * MiB):
            pass
    cmd = [*TAR, str(plan.archive), "-C", str(m.root)]
    try:  # the watchdog kills a FUSE daemon first; subprocess's timeout is for direct
        with guarded(m, args.timeout, "tar_x"), metered(m, "tar_x", res):
            t0 = time.perf_counter()
            r = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                               errors="replace", timeout=args.timeout + 60, check=False)
            secs = time.perf_counter() - t0
    except subprocess.TimeoutExpired:
        raise BenchError(f"{m.target} tar_x: tar timed out after {args.timeout + 60:g}s") \
            from None
    if r.returncode != 0:
        err = r.stderr.strip().splitlines()
        more = f" (+{len(err) - 5} more lines)" if len(err) > 5 else ""
        raise BenchError(f"{m.target} tar_x: `{shlex.join(cmd)}` exited with {r.returncode}: "
                         + " | ".join(err[:5]) + more + (f"\n    {tail}" if (tail := m.tail())
                                                         else ""))
    return len(plan.files) / secs


def check_tree(target: str, src: Path, plan: Plan, res: Results) -> None:
    found: dict[str, int] = {}
    for dirpath, _dirs, names in os.walk(src):
        for name in names:
            p = os.path.join(dirpath, name)
            found[os.path.relpath(p, src)] = os.stat(p).st_size
    want = {rel: size for rel, size, _ in plan.files}
    missing = [rel for rel in want if rel not in found]
    wrong = [rel for rel, size in want.items() if rel in found and found[rel] != size]
    extra = [rel for rel in found if rel not in want]
    if missing or wrong or extra:
        raise BenchError(f"{target} tar_x: source has {len(found):,} files, {len(missing):,} "
                         f"missing (e.g. {missing[:3]}), {len(wrong):,} of the wrong size "
                         f"(e.g. {wrong[:3]}), {len(extra):,} unexpected (e.g. {extra[:3]})")
    bad, stale = [], 0
    for rel, size, off in plan.files[::SAMPLE_EVERY]:
        path = src / rel
        if hashlib.sha256(path.read_bytes()).digest() != \
                hashlib.sha256(plan.pool[off:off + size]).digest():
            bad.append(rel)
        stale += int(path.stat().st_mtime) != MTIME
    if bad:
        raise BenchError(f"{target} tar_x: wrong bytes in {len(bad)} of "
                         f"{len(plan.files[::SAMPLE_EVERY])} sampled files, e.g. {bad[:3]}")
    if stale:
        res.notes[f"{target} tar_x: {stale} of {len(plan.files[::SAMPLE_EVERY])} sampled files "
                  "lack the archive's mtime (the mount ignored utimens)"] = None


def run_one(target: str, work: str, plan: Plan, args: argparse.Namespace, rep: int,
            res: Results) -> None:
    """One timed pass: a fresh empty source directory, a fresh mount, then the check."""
    src = Path(tempfile.mkdtemp(prefix=f"{target}-{work}-src-"))
    extra = args.extra + (f" --cache-dir {shlex.quote(str(args.cache_dir))}"
                          if args.cache_dir else "")
    try:
        with mounted(target, src, extra) as m:
            if work == "seq_write":
                value = seq_write(m, src, plan, args, res)
            else:
                value = tar_x(m, plan, args, res)
            drain, peak = unmount(m, args.timeout)
            counts = floor_counts(m) if target in FLOORS else None
        if counts is not None:
            check_floor(target, work, plan, counts)
            res.requests.setdefault((work, target), []).append(counts)
        elif work == "seq_write":
            check_big(target, src, plan)
        else:
            check_tree(target, src, plan, res)
        res.samples.setdefault((work, target), []).append(value)
        if peak is not None:
            res.rss.setdefault((work, target), []).append(peak)
        if m.proc is not None:
            res.unmount.setdefault((work, target), []).append(drain)
        rss = f"  peak RSS {peak:,.0f} MiB" if peak is not None else ""
        unm = f"  unmount {drain:.1f}s" if m.proc is not None else ""
        cpu = f"  daemon CPU {res.cpu[work, target][-1]:.2f}s" if m.proc is not None else ""
        log(f"  [{rep + 1}/{args.repeat}] {target:<12} {work:<9} {value:>10,.1f} "
            f"{WORKLOADS[work]}{rss}{unm}{cpu}  host busy "
            f"{res.busy[work, target][-1]:.2f}/{os.cpu_count()} CPUs")
    finally:
        shutil.rmtree(src, ignore_errors=True)


# ------------------------------------------------------------------------ report

def summary(vals: list[float] | None) -> str:
    if not vals:
        return "-"
    med = fmt(statistics.median(vals))
    return med if len(vals) == 1 else f"{med} ({fmt(min(vals))}-{fmt(max(vals))})"


def filesystem(path: Path) -> str:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        r = subprocess.run(["findmnt", "-n", "-o", "SOURCE,FSTYPE", "-T", str(path)],
                           capture_output=True, text=True, timeout=10, check=False)
        return " ".join(r.stdout.split()) or "?"
    return "?"


def report(res: Results, plan: Plan, targets: list[str], markdown: bool) -> None:
    def med(work: str, target: str) -> float | None:
        vals = res.samples.get((work, target))
        return statistics.median(vals) if vals else None

    def cell(work: str, target: str) -> str:
        if target not in targets:
            return "-"
        return "FAILED" if (target, work) in res.failed else summary(
            res.samples.get((work, target)))

    names = {"seq_write": f"seq_write, {plan.big_size // MiB:,} MiB (MiB/s)",
             "tar_x": f"tar_x, {len(plan.files):,} files (files/s)"}
    rows = [["workload", *TARGETS, "allux/direct", "allux/fsspec", "floor/fsspec",
             "floor.wb/fsspec", "targets"]]
    verdicts = []
    for work in WORKLOADS:
        a = med(work, "alluxiofuse")
        r = {t: a / b if a and (b := med(work, t)) else None for t in ("direct", "fsspec.fuse")}
        f = med(work, "fsspec.fuse")
        z = {t: y / f if f and (y := med(work, t)) else None for t in FLOORS}
        goals = []
        for base, need in GOALS[work]:
            got = r[base]
            met = "n/a" if got is None else "yes" if got >= need else "no"
            goals.append(f">= {need}x {base}: {met}")
            verdicts.append(f"target {work}: alluxiofuse >= {need}x {base}: "
                            + ("n/a (not measured)" if got is None else
                               f"{'met' if met == 'yes' else 'NOT met'} ({got:.2f}x)"))
        rows.append([names[work], *(cell(work, t) for t in TARGETS),
                     ratio(r["direct"]), ratio(r["fsspec.fuse"]), ratio(z["floor"]),
                     ratio(z["floor.wb"]), "; ".join(goals)])
    for what, table, unit in (("peak RSS", res.rss, "MiB"), ("unmount", res.unmount, "s"),
                              ("daemon CPU", res.cpu, "s"), ("host busy", res.busy, "CPUs")):
        for work in WORKLOADS:
            rows.append([f"{what}, {work} ({unit})",
                         *(summary(table.get((work, t))) for t in TARGETS),
                         "-", "-", "-", "-", "-"])
    print()
    print_table(rows, markdown, left=(0, 10))
    print()
    for v in verdicts:
        print(v)
    for (work, target), runs in sorted(res.requests.items()):
        big = work == "seq_write"
        per = plan.big_size / MiB if big else len(plan.files)
        keys = sorted({k for c in runs for k in c if k != "write_bytes"})
        each = {k: statistics.median(c.get(k, 0) for c in runs) / per for k in keys}
        writes = statistics.median(c.get("write", 0) for c in runs)
        size = statistics.median(c.get("write_bytes", 0) for c in runs) / writes if writes \
            else 0
        n = statistics.median(sum(v for k, v in c.items() if k != "write_bytes") for c in runs)
        cpu = statistics.median(res.cpu.get((work, target)) or [0.0]) / n * 1e6 if n else 0
        print(f"{target} {work}: FUSE requests per {'MiB' if big else 'file'}: "
              f"{sum(each.values()):.2f} ("
              + ", ".join(f"{k} {v:.2f}" for k, v in each.items() if v >= 0.005)
              + f"); {size / 1024:,.1f} KiB per write; daemon CPU {cpu:.0f} µs per request")
    for note in res.notes:
        print(f"note: {note}")
    for t in TARGETS:
        fails = [res.failed[t, w] for w in WORKLOADS if (t, w) in res.failed]
        print(f"{t}: " + ("not selected" if t not in targets else
                          "target failed: " + "\n    ".join(fails) if fails else "ok"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=Path("/var/tmp/alluxiofuse-bench/write"),
                   help="where the tar archive is cached")
    p.add_argument("--work-dir", type=Path, default=Path("/var/tmp"),
                   help="parent of the scratch directory (sources, mountpoints, daemon logs); "
                        "a real disk, not tmpfs")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="256 MiB file, 2,000 files")
    p.add_argument("--only", default=",".join(TARGETS),
                   help="comma-separated targets: direct, alluxiofuse, fsspec(.fuse), floor, "
                        "floor.wb")
    p.add_argument("--workloads", default=",".join(WORKLOADS),
                   help="comma-separated workloads: seq_write, tar_x")
    p.add_argument("--extra", default="", help="extra alluxiofuse mount options (one string)")
    p.add_argument("--cache-dir", type=Path, help="passed to alluxiofuse as --cache-dir")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per pass")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = p.parse_args()
    targets = chosen(p, args.only, ALIASES, TARGETS)
    works = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if bad := [w for w in works if w not in WORKLOADS]:
        p.error(f"unknown workload(s) {bad}; choose from {', '.join(WORKLOADS)}")

    work_fs = filesystem(args.work_dir)
    if work_fs.endswith("tmpfs"):
        log(f"warning: {args.work_dir} is {work_fs}: direct writes will go to memory")
    plan = make_plan(args.data_dir.resolve(), args.quick)
    ensure_archive(plan)
    scratch = Path(os.path.realpath(tempfile.mkdtemp(prefix="alluxiofuse-write-bench-",
                                                     dir=args.work_dir)))
    tempfile.tempdir = str(scratch)  # mounted() makes its mountpoints and logs here too
    res = Results()
    try:
        for rep in range(args.repeat):
            # A rotating order: no target always follows another's I/O.
            for target in targets[rep % len(targets):] + targets[:rep % len(targets)]:
                for work in works:
                    if (target, work) in res.failed:
                        continue
                    try:
                        run_one(target, work, plan, args, rep, res)
                    except BenchError as exc:
                        res.failed[target, work] = str(exc)
                        log(f"  {target} {work}: target failed: {exc}")
    finally:
        tempfile.tempdir = None
        for f in scratch.glob("*.log"):  # a failed daemon's log, kept by mounted()
            if f.stat().st_size == 0:
                f.unlink()
        leftovers = list(scratch.iterdir())
        if leftovers:
            log(f"kept {scratch}: " + ", ".join(p.name for p in leftovers[:5]))
        else:
            scratch.rmdir()

    print(environment())
    print(f"scratch: {scratch} on {work_fs}; archive: {plan.archive} "
          f"({plan.archive.stat().st_size / MiB:,.0f} MiB, {len(plan.files):,} files, "
          f"{plan.n_bytes / MiB:,.0f} MiB of data); tar: {shlex.join(TAR)}")
    print(f"repeat={args.repeat}, median (min-max) shown; caches dropped: "
          f"{'yes' if res.cold and all(res.cold) else 'NO'}; alluxiofuse options: "
          f"defaults {args.extra}"
          + (f" --cache-dir {args.cache_dir}" if args.cache_dir else ""))
    report(res, plan, targets, args.markdown)
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
