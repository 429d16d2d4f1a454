#!/usr/bin/env python3
"""Scale benchmark (issue 17): wide directories and big trees on a local source.

Targets, each a fresh mount with its own defaults over one local directory:
  direct       the source directory itself
  floor        bench/floor_fs.py: a do-nothing pyfuse3 + trio daemon serving the tree from
               memory (what the kernel, libfuse, pyfuse3 and trio cost; nothing is faster)
  alluxiofuse  ``python -m alluxiofuse mount SRC MNT -f`` (defaults)
  fsspec.fuse  fsspec.fuse.run(file filesystem), as in read_bench.py
  rclone       ``rclone mount SRC MNT`` (its local backend; Debian package ``rclone``)
Data (made once under --data-dir, kept between runs):
  wide/   100,000 empty files in one directory (COCO's train2017 holds 118,287)
  tree/   1,000 directories of 1,281 files (ImageNet's train set: 1,281,167 files in
          1,000 directories); --quick: 100 directories
Workloads (kernel caches dropped before each; median of --repeat):
  ls      ``ls -l wide`` (seconds)
  find    ``find tree | wc -l`` (seconds)
For alluxiofuse it also prints the daemon's RSS growth per entry over ``ls -l wide``
(VmRSS after minus before, divided by the entries) and, after the find, its RSS once
``echo 2 > drop_caches`` made the kernel forget every inode, beside its RSS before the
find. Targets: ls <= 2x direct, find <= 3x direct, <= 300 B per entry, RSS after the
forget within 20% of before plus the configured caches.

Run as root under the shared lock:
  flock /work/wt/bench.lock .venv/bin/python bench/scale_bench.py --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import read_bench as rb  # the mounts, the cache drop, the table

TARGETS = ("direct", "floor", "alluxiofuse", "fsspec.fuse", "rclone")
WIDE = 100_000
TREE_FILES = 1_281


def ensure_data(root: Path, dirs: int) -> tuple[Path, Path]:
    """wide/ and tree-N/ under ``root``, made once (a marker file says they are whole)."""
    wide, tree = root / "wide", root / f"tree-{dirs}"
    for path, make in ((wide, lambda: _files(wide, WIDE)),
                       (tree, lambda: [_files(tree / f"d{d:04d}", TREE_FILES)
                                       for d in range(dirs)])):
        if (path / ".complete").exists():
            continue
        shutil.rmtree(path, ignore_errors=True)
        rb.log(f"making {path} ...")
        make()
        (path / ".complete").touch()
    return wide, tree


def _files(directory: Path, n: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        os.close(os.open(directory / f"{i:07d}.jpg", os.O_WRONLY | os.O_CREAT, 0o644))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise rb.BenchError(f"no VmRSS for {pid}")


def timed(argv: str) -> float:
    start = time.monotonic()
    subprocess.run(["sh", "-c", argv], check=True, stdout=subprocess.DEVNULL, timeout=1800)
    return time.monotonic() - start


def command(target: str, src: Path) -> Callable[[Path], list[str]] | None:
    """The daemon's command line for ``target``, where read_bench has none of its own."""
    if target == "rclone":
        return lambda mnt: ["rclone", "mount", str(src), str(mnt), "--config", "/dev/null"]
    return None


def run(target: str, src: Path, wide: Path, tree: Path, args: argparse.Namespace,
        out: dict[str, list[float]]) -> None:
    extra = args.alluxiofuse_args if target == "alluxiofuse" else ""
    for work in args.workloads:
        with rb.mounted(target, src, extra, command(target, src)) as m:
            rb.drop_caches()
            sub = m.root / (wide.name if work == "ls" else tree.name)
            pid = m.proc.pid if m.proc is not None else None
            before = rss_kib(pid) if pid else 0
            seconds = timed(f"ls -l {sub}" if work == "ls" else f"find {sub} | wc -l")
            out.setdefault(f"{work} {target}", []).append(seconds)
            if pid and target == "alluxiofuse":
                after = rss_kib(pid)
                if work == "ls":
                    out.setdefault("bytes per entry", []).append((after - before) * 1024 / WIDE)
                else:
                    Path("/proc/sys/vm/drop_caches").write_text("2\n")
                    time.sleep(2)  # the forgets reach the daemon
                    out.setdefault("RSS before find (MiB)", []).append(before / 1024)
                    out.setdefault("RSS after find (MiB)", []).append(after / 1024)
                    out.setdefault("RSS after forget (MiB)", []).append(rss_kib(pid) / 1024)
            rb.log(f"  {target:12s} {work:5s} {seconds:8.2f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("/var/tmp/alluxiofuse-bench/scale"))
    p.add_argument("--quick", action="store_true", help="a tree of 100 directories")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(TARGETS))
    p.add_argument("--workloads", default="ls,find")
    p.add_argument("--alluxiofuse-args", default="")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    args.workloads = args.workloads.split(",")
    targets = [t for t in args.only.split(",") if t in TARGETS]
    if "rclone" in targets and shutil.which("rclone") is None:
        rb.log("rclone is not installed (apt-get install -y rclone): skipped")
        targets.remove("rclone")
    src = args.data_dir
    wide, tree = ensure_data(src, 100 if args.quick else 1000)
    out: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        for target in targets[rep % len(targets):] + targets[:rep % len(targets)]:
            run(target, src, wide, tree, args, out)
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
            f"find | wc -l, {sum(d.is_dir() for d in tree.iterdir()) * TREE_FILES:,} files (s)"
        rows.append([name, *[f"{med[t]:.2f}" if t in med else "-" for t in targets],
                     f"{ratio:.2f}x" if ratio else "-", f"{floor:.2f}x" if floor else "-",
                     f"<= {target_ratio:g}x"])
    rb.print_table(rows, args.markdown)
    for key, values in out.items():
        if " " in key and key.split(" ", 1)[1] in TARGETS:
            continue
        rb.log(f"alluxiofuse {key}: {statistics.median(values):,.1f} "
               f"(of {', '.join(f'{v:,.1f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
