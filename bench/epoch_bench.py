#!/usr/bin/env python3
"""Epochs over a data set that does not change (issue 17, point 4): what a second epoch
costs, and which requests still reach the daemon.

Data (made once under --data-dir, kept): 10 directories of 1,000 files of 1-16 KiB.
An epoch walks the tree, stats every file and reads it whole (a data loader's pass).
Targets, each a fresh mount of the data with its own defaults:
  direct                 the directory itself
  alluxiofuse            defaults (attributes and names kept 60 s by the kernel)
  alluxiofuse-immutable  --immutable (kept for the mount's life): a tuned row beside
  rclone                 ``rclone mount`` defaults (Debian package ``rclone``)
Kernel caches are dropped before the first epoch; the second runs --pause seconds later
(61 by default: past the default timeouts, as the minutes of a real epoch are). For the
alluxiofuse rows the requests of the second epoch are counted from /metrics (the daemon
runs with ``--metrics-addr`` on a free loopback port). Median of --repeat runs.

Run as root under the shared lock:
  flock /work/wt/bench.lock .venv/bin/python -m bench.epoch_bench --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from bench import localenv  # the mounts
from bench.harness import BenchError, drop_caches, free_port, log, print_table

TARGETS = ("direct", "alluxiofuse", "alluxiofuse-immutable", "rclone")
DIRS, FILES = 10, 1_000
OPS = ("lookup", "getattr", "open", "read", "opendir", "readdir")


def ensure_data(root: Path) -> Path:
    data = root / "epoch"
    if (data / ".complete").exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    log(f"making {data} ...")
    rng = random.Random(17)
    for d in range(DIRS):
        (data / f"d{d:02d}").mkdir(parents=True)
        for f in range(FILES):
            size = rng.randint(1, 16) << 10
            (data / f"d{d:02d}" / f"{f:04d}.bin").write_bytes(rng.randbytes(size))
    (data / ".complete").touch()
    return data


def epoch(root: Path) -> float:
    """Seconds to walk ``root``, stat every file and read it whole."""
    start = time.monotonic()
    files = 0
    for top, _, names in os.walk(root):
        for name in names:
            path = os.path.join(top, name)
            os.stat(path)
            with open(path, "rb") as f:
                f.read()  # whole: the files are 16 KiB at most
            files += 1
    if files != DIRS * FILES + 1:  # and the marker
        raise BenchError(f"an epoch over {root} saw {files} files")
    return time.monotonic() - start


def requests(port: int) -> dict[str, float]:
    """The FUSE requests the daemon has answered so far, by operation."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    counts = dict.fromkeys(OPS, 0.0)
    for op, value in re.findall(r'^alluxiofuse_fuse_op_seconds_count\{op="(\w+)"\} (\S+)$',
                                text, re.M):
        if op in counts:
            counts[op] = float(value)
    return counts


def command(target: str, src: Path, extra: list[str]) -> Callable[[Path], list[str]] | None:
    """The daemon's command line for ``target``, where localenv has none of its own."""
    if target == "rclone":
        return lambda mnt: ["rclone", "mount", str(src), str(mnt), "--config", "/dev/null"]
    if target == "alluxiofuse-immutable":
        return lambda mnt: [sys.executable, "-m", "alluxiofuse", "mount", str(src), str(mnt),
                            "-f", "--log-level", "warning", *extra, "--immutable"]
    return None


def run(target: str, data: Path, pause: float, out: dict[str, list[float]]) -> None:
    port = free_port()
    extra = ["--metrics-addr", f"127.0.0.1:{port}"]
    daemon = target.startswith("alluxiofuse")
    with localenv.mounted(target, data, " ".join(extra) if target == "alluxiofuse" else "",
                          command(target, data, extra)) as m:
        drop_caches()
        out.setdefault(f"{target} epoch 1", []).append(epoch(m.root))
        if target != "direct":
            time.sleep(pause)
        before = requests(port) if daemon else None
        out.setdefault(f"{target} epoch 2", []).append(epoch(m.root))
        if before is not None:
            after = requests(port)
            for op in OPS:
                out.setdefault(f"{target} {op}", []).append(after[op] - before[op])
    log(f"  {target:22s} epochs {out[f'{target} epoch 1'][-1]:7.2f} "
            f"{out[f'{target} epoch 2'][-1]:7.2f} s")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=Path("/var/tmp/alluxiofuse-bench"))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(TARGETS))
    p.add_argument("--pause", type=float, default=61.0)
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    targets = [t for t in args.only.split(",") if t in TARGETS]
    if "rclone" in targets and shutil.which("rclone") is None:
        log("rclone is not installed (apt-get install -y rclone): skipped")
        targets.remove("rclone")
    data = ensure_data(args.data_dir)
    out: dict[str, list[float]] = {}
    for rep in range(args.repeat):
        for target in targets[rep % len(targets):] + targets[:rep % len(targets)]:
            run(target, data, args.pause, out)

    def med(key: str) -> float | None:
        return statistics.median(out[key]) if key in out else None

    direct = med("direct epoch 2")
    rows = [["target", "epoch 1 (s)", "epoch 2 (s)", "epoch 2 / direct's",
             *[f"{op}s in epoch 2" for op in OPS]]]
    for target in targets:
        first, second = med(f"{target} epoch 1"), med(f"{target} epoch 2")
        counts = [med(f"{target} {op}") for op in OPS]
        rows.append([target, f"{first:.2f}" if first is not None else "-",
                     f"{second:.2f}" if second is not None else "-",
                     f"{second / direct:.2f}x" if second and direct else "-",
                     *[f"{c:,.0f}" if c is not None else "-" for c in counts]])
    print_table(rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
