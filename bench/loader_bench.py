#!/usr/bin/env python3
"""Training-loop benchmark: a PyTorch DataLoader reading raw samples through alluxiofuse,
rclone mount and s3fs-fuse (and fsspec.fuse with --only), all over the S3 endpoint of
bench/s3_bench.py: s3rver behind the latency proxy (20 ms to first byte, 90 MiB/s per
connection), the same data set (bench/s3env.py).

The loader: a map-style Dataset of the 2,000 small files (4-64 KiB in 20 directories;
400 with --quick) whose ``__getitem__`` opens the file and reads it whole (raw bytes, no
decoding: only the file system is measured); DataLoader(shuffle=True, batch_size 16,
num_workers 8 or 16, the batch a list of bytes). Shuffled order is what training does:
read-ahead along a directory cannot help it, only fewer round trips per file and more
requests in flight can. For each worker count, on one fresh mount (the kernel's page cache
dropped first): epoch 1 (cold) and epoch 2 (same mount, another shuffle), samples/s; the
mount process's peak RSS (VmHWM) after epoch 2 and its CPU. The loader's workers persist
from epoch 1 to epoch 2, as in training. Every sample's bytes are checked.

Beside the rates it prints workers / round trip, the rate one round trip per sample would
give; the round trip (a HEAD on a kept-alive connection through the proxy) is measured at
the start of the run.

Needs torch, the CPU build: installed into this interpreter when missing with
``pip install torch==2.13.0+cpu`` (a wheel on this machine's disk; elsewhere, PyTorch's
CPU wheel index: a plain ``pip install torch`` brings the CUDA build and ~3 GiB of nvidia
packages). Run as root, under the shared lock, one or two targets a run:
  flock /work/wt/bench.lock .venv/bin/python -m bench.loader_bench --quick --repeat 1
  flock /work/wt/bench.lock .venv/bin/python -m bench.loader_bench --only alluxiofuse \\
        --results /tmp/loader.json
  flock /work/wt/bench.lock .venv/bin/python -m bench.loader_bench --only rclone,s3fs \\
        --results /tmp/loader.json --markdown
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

from bench import latency_proxy, s3env
from bench.harness import BenchError, drop_caches, log, on_sigterm, print_table, proc_cpu

TARGETS = s3env.PEERS
DEFAULT_TARGETS = ("alluxiofuse", "rclone", "s3fs")
WORKERS = (8, 16)
BATCH = 16
TORCH = "torch==2.13.0+cpu"


def ensure_torch() -> None:
    if importlib.util.find_spec("torch") is None:
        log(f"installing {TORCH} into {sys.prefix}")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", TORCH], check=True)


class Samples:
    """The map-style dataset: sample i is small file i's bytes, read raw."""

    def __init__(self, root: Path, ds: s3env.Dataset) -> None:
        self.paths = [str(root / key) for key, _ in ds.small]
        self.ds = ds

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> bytes:
        with open(self.paths[i], "rb", buffering=0) as f:
            data = f.read()
        if data != self.ds.small_content(i):
            raise BenchError(f"{self.paths[i]}: {len(data)} bytes that are not the file's")
        return data


def as_list(batch: list[bytes]) -> list[bytes]:
    return batch


def epochs(root: Path, ds: s3env.Dataset, workers: int, seed: int) -> Iterator[float]:
    """Shuffled passes over the samples by one DataLoader whose workers live from the
    first pass to the last (as in training: epoch 2 pays no start-up); samples/s each."""
    import torch
    from torch.utils.data import DataLoader

    s3env.small_pool()  # made once here, before the workers fork, not in each of them
    loader = DataLoader(Samples(root, ds),  # type: ignore[arg-type]
                        batch_size=BATCH, shuffle=True, num_workers=workers,
                        persistent_workers=True, collate_fn=as_list,
                        generator=torch.Generator().manual_seed(seed), timeout=300)
    while True:
        t0 = time.perf_counter()
        n = nbytes = 0
        for batch in loader:
            n += len(batch)
            nbytes += sum(len(b) for b in batch)
        secs = time.perf_counter() - t0
        if n != len(ds.small) or nbytes != ds.small_bytes:
            raise BenchError(f"an epoch read {n} samples, {nbytes} bytes; expected "
                             f"{len(ds.small)}, {ds.small_bytes}")
        yield n / secs


def run_peer(ep: s3env.Endpoint, peer: str, args: argparse.Namespace, logs: Path,
             res: s3env.Results, rep: int) -> None:
    extra = args.alluxiofuse_args if peer == "alluxiofuse" else ""
    for workers in WORKERS:
        with s3env.mounted(peer, ep, logs, args.repo, extra) as m:
            if not drop_caches():
                raise BenchError("cannot drop the page cache: run as root")
            assert ep.ds is not None  # made by s3env.endpoint
            passes = epochs(m.root, ep.ds, workers, seed=rep)
            for ep_no in (1, 2):
                cpu0, t0 = proc_cpu(m.pid), time.perf_counter()
                try:
                    rate = next(passes)
                except (OSError, RuntimeError) as e:  # a worker's error comes as RuntimeError
                    raise BenchError(f"{peer} {workers} workers epoch {ep_no}: {e!r}\n    "
                                     f"{m.tail()}") from e
                cores = (proc_cpu(m.pid) - cpu0) / (time.perf_counter() - t0)
                res.add(f"w{workers}_e{ep_no}", peer, rate)
                log(f"  [{rep + 1}] {peer:<11} {workers:>2} workers epoch {ep_no}: "
                    f"{rate:8,.1f} samples/s  {cores:.2f} cores")
            passes.close()  # the loader's workers end before the mount goes
            m.check()
            if (hwm := m.rss_hwm_mib()) is not None:
                res.add(f"w{workers}_rss", peer, hwm)


def report(res: s3env.Results, markdown: bool) -> None:
    peers = [p for p in TARGETS if any(k.endswith(f"|{p}") for k in res.samples)]
    others = [p for p in peers if p != "alluxiofuse"]
    rtt = statistics.median(res.rtt) if res.rtt else None
    head = ["samples/s", *(s3env.PEER_NAMES[p] for p in peers), "allux / best peer",
            "workers / round trip", "allux / (workers / rtt)", "target"]
    rows = [head]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:,.1f}"

    for w in WORKERS:
        for e in (1, 2):
            vals = {p: res.median(f"w{w}_e{e}", p)[0] for p in peers}
            a = vals.get("alluxiofuse")
            best = max((vals[p] for p in others if vals[p] is not None), default=None)
            bound = w / rtt if rtt else None
            goal = (">= 1.5x best, >= 0.6x workers/rtt" if e == 1 else ">= 1.0x best")
            rows.append([f"{w} workers, epoch {e}", *(fmt(vals[p]) for p in peers),
                         f"{a / best:.2f}x" if a and best else "-", fmt(bound),
                         f"{a / bound:.2f}x" if a and bound else "-", goal])
        rss = {p: res.median(f"w{w}_rss", p)[0] for p in peers}
        rows.append([f"{w} workers, peak RSS (MiB)", *(fmt(rss[p]) for p in peers), "", "",
                     "", ""])
    print_table(rows, markdown, left=(0, len(head) - 1))
    print()
    if rtt:
        print(f"round trip through the proxy (HEAD on a kept-alive connection, median): "
              f"{rtt * 1000:.1f} ms")
    n = [len(v) for v in res.samples.values()]
    print(f"samples per cell: {min(n, default=0)}-{max(n, default=0)} (median shown)")
    for note in res.notes:
        print(f"note: {note}")
    for t, why in res.failed.items():
        print(f"{t}: FAILED: {why}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="400 samples")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(DEFAULT_TARGETS),
                   help=f"comma-separated: {', '.join(TARGETS)}")
    p.add_argument("--ttfb", type=latency_proxy.parse_duration,
                   default=latency_proxy.DEFAULT_TTFB)
    p.add_argument("--bandwidth", type=latency_proxy.parse_rate,
                   default=latency_proxy.DEFAULT_BANDWIDTH)
    p.add_argument("--repo", type=Path, default=s3env.REPO_ROOT,
                   help="the alluxiofuse checkout to mount with (its .venv's python)")
    p.add_argument("--alluxiofuse-args", default="",
                   help="extra daemon options (one string): a tuned row, not the default")
    p.add_argument("--results", type=Path, help="add this run's samples to this JSON file")
    p.add_argument("--report", type=Path, help="print the table of a --results file")
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    if args.report:
        report(s3env.Results.load(args.report), args.markdown)
        return 0
    targets = [t.strip() for t in args.only.split(",") if t.strip()]
    if bad := [t for t in targets if t not in TARGETS]:
        p.error(f"unknown target(s) {bad}; choose from {', '.join(TARGETS)}")
    if os.geteuid() != 0:
        p.error("run as root (FUSE mounts, drop_caches)")
    s3env.ensure_python_deps()
    ensure_torch()
    res = s3env.Results()
    if args.alluxiofuse_args:
        res.notes.append(f"alluxiofuse ran with {args.alluxiofuse_args!r}: not its defaults")
    for t in list(targets):
        if why := s3env.missing_tool(t):
            res.notes.append(f"{t} skipped: {why}")
            targets.remove(t)
    # torch warns of more workers than cores: here they wait on I/O, which is the point.
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    signal.signal(signal.SIGTERM, on_sigterm)
    logs = s3env.BENCH_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    ds = s3env.plan(args.quick)
    try:
        with s3env.endpoint(ds, logs, args.ttfb, args.bandwidth) as ep:
            rtt = s3env.round_trip(ep.url, ep.bucket, ds.big_key)
            res.rtt.append(rtt)
            log(f"endpoint {ep.url}; round trip {rtt * 1000:.1f} ms; {len(ds.small)} samples")
            for rep in range(args.repeat):
                k = rep % len(targets)
                for peer in targets[k:] + targets[:k]:
                    if peer in res.failed:
                        continue
                    try:
                        run_peer(ep, peer, args, logs, res, rep)
                    except BenchError as e:
                        res.failed[peer] = str(e)
                        log(f"  {peer}: FAILED: {e}")
    finally:
        if args.results:
            res = res.merged_into(args.results)
    print(f"PyTorch DataLoader over S3 through the latency proxy: ttfb "
          f"{args.ttfb * 1000:g} ms, {args.bandwidth / (1 << 20):g} MiB/s per connection; "
          f"{len(ds.small)} samples, batch {BATCH}, shuffled; logs in {logs}")
    report(res, args.markdown)
    return 1 if res.failed else 0


if __name__ == "__main__":
    sys.exit(main())
