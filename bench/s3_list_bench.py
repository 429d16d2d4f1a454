#!/usr/bin/env python3
"""Listing + stat of a wide S3 prefix (issue 17): ``ls -l`` through each mount, against the
ListObjectsV2 pages a plain boto3 client needs for the same prefix, with the requests each
one sent counted.

Data: s3rver over /var/tmp/alluxiofuse-bench/s3rver-list (made once, kept), behind the
latency proxy (20 ms to first byte, as s3_bench.py): ``wide/`` holds 100,000 objects of 100
bytes (COCO's train2017 is 118,287 files in one directory), ``wide1k/`` 1,000.
Targets, each a fresh mount with its own defaults (a tuned row beside):
  boto3              list_objects_v2 pages (Delimiter "/") of the prefix: the floor
  alluxiofuse        defaults: object metadata is read, one request per object
  alluxiofuse-plain  --ignore-object-metadata: the listing is each object's whole status
  rclone             ``rclone mount`` defaults (reads its mtime from metadata: a HEAD each)
  rclone-server      rclone mount --use-server-modtime
Rows whose targets send a request per object, one at a time as ``ls -l`` stats its
entries, run on wide1k/ only: on wide/ they would take most of an hour each. Kernel
caches are dropped before each ``ls -l``; the median of --repeat runs is shown, with the
requests (replies the proxy passed on) and the ratio to boto3's time.

Run as root under the shared lock:
  flock /work/wt/bench.lock .venv/bin/python -m bench.s3_list_bench --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench import latency_proxy, s3env
from bench.harness import BenchError, drop_caches, log, print_table

PREFIXES = {"wide1k": 1_000, "wide": 100_000}
SPEC = {"prefixes": PREFIXES, "size": 100}
# target -> (peer, extra mount arguments, whether it sends a request per object)
TARGETS: dict[str, tuple[str, str, bool]] = {
    "boto3": ("", "", False),
    "alluxiofuse": ("alluxiofuse", "", True),
    "alluxiofuse-plain": ("alluxiofuse", "--ignore-object-metadata", False),
    "rclone": ("rclone", "", True),
    "rclone-server": ("rclone", "--use-server-modtime", False),
}


def populate(server: s3env.S3Server) -> None:
    c = s3env.client(server.url)
    try:
        got = json.loads(c.get_object(Bucket=server.bucket, Key="manifest.json")["Body"].read())
    except Exception:  # not there yet, or unreadable: made again
        got = None
    if got == SPEC:
        return
    keys = [f"{prefix}/{i:07d}.jpg" for prefix, n in PREFIXES.items() for i in range(n)]
    log(f"populating s3rver with {len(keys):,} objects (once) ...")
    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as ex:
        list(ex.map(lambda k: c.put_object(Bucket=server.bucket, Key=k, Body=b"x" * 100), keys))
    c.put_object(Bucket=server.bucket, Key="manifest.json", Body=json.dumps(SPEC).encode())
    log(f"populated in {time.monotonic() - t0:.0f}s")


def list_pages(url: str, bucket: str, prefix: str) -> int:
    """The prefix's entries, listed as a mount lists a directory: ListObjectsV2 pages of
    up to 1,000 keys with Delimiter "/"."""
    c = s3env.client(url)
    entries = 0
    for page in c.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/", Delimiter="/"):
        entries += len(page.get("Contents", [])) + len(page.get("CommonPrefixes", []))
    return entries


def long_listing(directory: Path) -> int:
    out = subprocess.run(["ls", "-l", str(directory)], check=True, capture_output=True,
                         timeout=3600).stdout
    return out.count(b"\n") - 1  # "total N" first


def run(target: str, prefix: str, ep: s3env.Endpoint, logs: Path,
        out: dict[tuple[str, str], list[tuple[float, int]]]) -> None:
    peer, extra, _ = TARGETS[target]
    want = PREFIXES[prefix]
    if not peer:
        before = ep.proxy.replies()
        t0 = time.monotonic()
        got = list_pages(ep.url, ep.bucket, prefix)
        seconds = time.monotonic() - t0
    else:
        with s3env.mounted(peer, ep, logs, extra=extra) as m:
            drop_caches()
            before = ep.proxy.replies()
            t0 = time.monotonic()
            got = long_listing(m.root / prefix)
            seconds = time.monotonic() - t0
    requests = ep.proxy.replies() - before
    if got != want:
        raise BenchError(f"{target}: {got} entries in {prefix}/, not {want}")
    out.setdefault((target, prefix), []).append((seconds, requests))
    log(f"  {target:18s} {prefix:7s} {seconds:8.2f} s  {requests:7,} requests")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(TARGETS))
    p.add_argument("--prefixes", default=",".join(PREFIXES))
    p.add_argument("--markdown", action="store_true")
    args = p.parse_args()
    s3env.ensure_python_deps()
    targets = [t for t in args.only.split(",") if t in TARGETS]
    if missing := s3env.missing_tool("rclone"):
        log(f"{missing}: skipped")
        targets = [t for t in targets if TARGETS[t][0] != "rclone"]
    prefixes = [p for p in args.prefixes.split(",") if p in PREFIXES]
    out: dict[tuple[str, str], list[tuple[float, int]]] = {}
    logs = s3env.BENCH_DIR / "logs" / f"s3-list-{time.strftime('%Y%m%d-%H%M%S')}"
    logs.mkdir(parents=True, exist_ok=True)
    log(f"logs in {logs}")
    with s3env.s3rver(s3env.BENCH_DIR / "s3rver-list", logs / "s3rver.log") as server:
        populate(server)
        with latency_proxy.spawn(("127.0.0.1", server.port),
                                 log=logs / "proxy.log") as proxy:
            ep = s3env.Endpoint(server, proxy, None, latency_proxy.DEFAULT_TTFB,
                                latency_proxy.DEFAULT_BANDWIDTH)
            for rep in range(args.repeat):
                for prefix in prefixes:
                    rotated = targets[rep % len(targets):] + targets[:rep % len(targets)]
                    for target in rotated:
                        if TARGETS[target][2] and PREFIXES[prefix] > 1_000:
                            continue  # a request per object, one at a time: too long
                        run(target, prefix, ep, logs, out)
    rows = [["prefix", "target", "seconds", "requests", "/ boto3"]]
    for prefix in prefixes:
        floor = out.get(("boto3", prefix))
        base = statistics.median(s for s, _ in floor) if floor else None
        for target in targets:
            runs = out.get((target, prefix))
            if not runs:
                continue
            seconds = statistics.median(s for s, _ in runs)
            requests = statistics.median(r for _, r in runs)
            rows.append([f"{prefix}/ ({PREFIXES[prefix]:,})", target, f"{seconds:.2f}",
                         f"{requests:,.0f}", f"{seconds / base:.2f}x" if base else "-"])
    print_table(rows, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
