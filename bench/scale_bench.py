#!/usr/bin/env python3
"""Scale benchmark (issue 17): wide directories and big trees on a local source.

Targets, each a fresh mount with its own defaults over one local directory:
  direct       the source directory itself
  floor        bench/floor_fs.py: a do-nothing pyfuse3 + trio daemon serving the tree from
               memory (what the kernel, libfuse, pyfuse3 and trio cost; nothing is faster)
  alluxiofuse  ``python -m alluxiofuse mount SRC MNT -f`` (defaults)
  fsspec.fuse  fsspec.fuse.run(file filesystem), as in localenv.py
  rclone       ``rclone mount SRC MNT`` (its local backend; Debian package ``rclone``)
Data (made once under --data-dir, kept between runs):
  wide/     100,000 empty files in one directory (COCO's train2017 holds 118,287)
  wide-1m/  1,000,000 empty files in one directory (for the mem workload only)
  tree/     1,000 directories of 1,281 files (ImageNet's train set: 1,281,167 files in
            1,000 directories); --quick: 100 directories
Workloads (kernel caches dropped before each; median of --repeat):
  ls      ``ls -l wide`` (seconds)
  find    ``find tree | wc -l`` (seconds)
  mem     ``ls -l wide-1m``, alluxiofuse only: no time target
For alluxiofuse, ls and mem also print the daemon's RSS growth per entry (VmRSS after
minus before, divided by the entries); find and mem print its RSS once
``echo 2 > drop_caches`` made the kernel forget every inode, against its RSS before plus
what its metadata cache then holds (``alluxiofuse_metadata_cache_bytes``: the daemon runs
with its defaults and ``--metrics-addr`` on a free loopback port, to read it). Targets:
ls <= 2x direct, find <= 3x direct, <= 300 B per entry of the million, RSS after the
forget within 20% of before plus the metadata cache.

Run as root under the shared lock:
  flock /work/wt/bench.lock .venv/bin/python -m bench.scale_bench --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench import localenv  # the mounts
from bench.harness import BenchError, drop_caches, free_port, log, print_table

TARGETS = ("direct", "floor", "alluxiofuse", "fsspec.fuse", "rclone")
WIDE = 100_000
WIDE_1M = 1_000_000
TREE_FILES = 1_281


def ensure_data(root: Path, dirs: int, mem: bool) -> tuple[Path, Path, Path]:
    """wide/, wide-1m/ (if ``mem``) and tree-N/ under ``root``, made once (a marker file
    says they are whole)."""
    wide, wide_1m, tree = root / "wide", root / "wide-1m", root / f"tree-{dirs}"
    wanted = {wide: [(wide, WIDE)], tree: [(tree / f"d{d:04d}", TREE_FILES) for d in range(dirs)]}
    if mem:
        wanted[wide_1m] = [(wide_1m, WIDE_1M)]
    for path, parts in wanted.items():
        if (path / ".complete").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        log(f"making {path} ...")
        for directory, files in parts:
            _files(directory, files)
        (path / ".complete").touch()
    return wide, wide_1m, tree


def _files(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.close(os.open(directory / f"{i:07d}.jpg", os.O_WRONLY | os.O_CREAT, 0o644))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for {pid}")



def metadata_cache_kib(port: int) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("alluxiofuse_metadata_cache_bytes "):
                return float(line.split()[1]) / 1024
    raise BenchError("no alluxiofuse_metadata_cache_bytes in /metrics")


def timed(argv: str) -> float:
    start = time.monotonic()
    subprocess.run(["sh", "-c", argv], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.monotonic() - start


def command(target: str, src: Path) -> Callable[[Path], list[str]] | None:
    """The daemon's command line for ``target``, where localenv has none of its own."""
    if target == "rclone":
        return lambda mnt: ["rclone", "mount", str(src), str(mnt), "--config", "/dev/null"]
    return None


def run(target: str, src: Path, dirs: dict[str, Path], args: argparse.Namespace,
        out: dict[str, list[float]]) -> None:
    port = free_port()
    extra = f"{args.alluxiofuse_args} --metrics-addr 127.0.0.1:{port}" \
        if target == "alluxiofuse" else ""
    for work in args.workloads:
        if work == "mem" and target != "alluxiofuse":
            continue
        with localenv.mounted(target, src, extra, command(target, src)) as m:
            drop_caches()
            sub = m.root / dirs[work].name
            pid = m.proc.pid if m.proc is not None else None
            before = rss_kib(pid) if pid else 0
            seconds = timed(f"find {sub} | wc -l" if work == "find" else f"ls -l {sub}")
            out.setdefault(f"{work} {target}", []).append(seconds)
            if pid and target == "alluxiofuse":
                after = rss_kib(pid)
                if work != "find":
                    entries = WIDE if work == "ls" else WIDE_1M
                    out.setdefault(f"{work}: bytes per entry", []).append(
                        (after - before) * 1024 / entries)
                if work != "ls":
                    Path("/proc/sys/vm/drop_caches").write_text("2\n")
                    time.sleep(3)  # the forgets reach the daemon
                    forgotten, cached = rss_kib(pid), metadata_cache_kib(port)
                    out.setdefault(f"{work}: RSS before (MiB)", []).append(before / 1024)
                    out.setdefault(f"{work}: RSS after (MiB)", []).append(after / 1024)
                    out.setdefault(f"{work}: RSS after forget (MiB)", []).append(forgotten / 1024)
                    out.setdefault(f"{work}: metadata cache (MiB)", []).append(cached / 1024)
                    out.setdefault(f"{work}: RSS after forget / (before + metadata cache)",
                                   []).append(forgotten / (before + cached))
            log(f"  {target:12s} {work:5s} {seconds:8.2f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("/var/tmp/alluxiofuse-bench/scale"))
    p.add_argument("--quick", action="store_true", help="a tree of 100 directories")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(TARGETS))
    p.add_argument("--workloads", default="ls,find,mem")
    p.add_argument("--alluxiofuse-args", default="")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    args.workloads = args.workloads.split(",")
    targets = [t for t in args.only.split(",") if t in TARGETS]
    if "rclone" in targets and shutil.which("rclone") is None:
        log("rclone is not installed (apt-get install -y rclone): skipped")
        targets.remove("rclone")
    src = args.data_dir
    wide, wide_1m, tree = ensure_data(src, 100 if args.quick else 1000, "mem" in args.workloads)
    dirs = {"ls": wide, "mem": wide_1m, "find": tree}
    out: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        for target in targets[rep % len(targets):] + targets[:rep % len(targets)]:
            run(target, src, dirs, args, out)
    rows = [["workload", *targets, "alluxiofuse / direct", "floor / direct", "target"]]
    for work, target_ratio in (("ls", 2.0), ("find", 3.0)):
        if work not in args.workloads:
            continue
        med = {t: statistics.median(out[f"{work} {t}"]) for t in targets
               if f"{work} {t}" in out}
        ratio = (med["alluxiofuse"] / med["direct"]
                 if "alluxiofuse" in med and "direct" in med else None)
        floor = med["floor"] / med["direct"] if "floor" in med and "direct" in med else None
        name = "ls -l, 100,000 entries (s)" if work == "ls" else \
            f"find, {sum(d.is_dir() for d in tree.iterdir()) * TREE_FILES:,} files (s)"
        rows.append([name, *[f"{med[t]:.2f}" if t in med else "-" for t in targets],
                     f"{ratio:.2f}x" if ratio else "-", f"{floor:.2f}x" if floor else "-",
                     f"<= {target_ratio:g}x"])
    print_table(rows, args.markdown)
    for key, values in out.items():
        if " " in key and key.split(" ", 1)[1] in TARGETS:
            continue
        log(f"alluxiofuse {key}: {statistics.median(values):,.2f} "
               f"(of {', '.join(f'{v:,.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
