#!/usr/bin/env python3
"""Faults: a mixed workload through an S3 mount behind the fault-injecting proxy, nothing lost.

The full-size run of tests/integration/test_s3_faults.py's workload (its Plan, populate,
run_workload and verify, imported), issue 20 point 3: parallel reads of 1,000 small files
and of a 1 GiB file (8 readers, each its part), writes and overwrites (whole and in part)
of 500 files, 4 of them 40 MiB (multipart uploads), and 100 renames, 32 at once, through
a mount with ``--write-type THROUGH`` and then with ``ASYNC_THROUGH`` (drained at unmount),
while tests/support/faultproxy.py answers 10% of the requests with 503 SlowDown, resets
2% part-way through their replies and stalls 1% for 5 s. Printed for each write type:
operations run, faults injected by kind, bytes verified, files lost (must be 0), reads
failed, calls past their deadline, wall time, the daemon's peak RSS against its budget,
and the WARNING+ lines of its log.

The S3 server is s3rver (bench/s3env.py), not moto (tests/support/s3server.py): moto
reads an object whole for every ranged GET (a 1 GiB object copied for each 8 MiB read)
and would serve from this process, taking the GIL from the proxy and the readers; s3rver
is a process of its own and streams ranges from disk. The proxy runs in this process.

  flock /work/wt/bench.lock .venv/bin/python -m bench.fault_bench      # full size, < 10 min
  .venv/bin/python -m bench.fault_bench --quick                        # the test's size
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import s3env
from bench.harness import (
    UMOUNT,
    BenchError,
    daemon_mount,
    environment,
    log,
    log_findings,
    on_sigterm,
)
from tests.integration.test_s3_faults import Plan, peak_rss, populate, run_workload, verify
from tests.support.faultproxy import FaultProxy, Rates

MiB = 1 << 20
FULL = Plan(small=1000, big=1 << 30, big_readers=8, writes=500, large=4, large_size=40 * MiB,
            renames=100, threads=32, op_deadline=60.0, deadline=420.0)
QUICK = Plan()
RATES = Rates(slowdown=0.10, reset=0.02, stall=0.01, stall_seconds=5.0)
BUDGET = 256 * MiB  # --memory-budget: small enough for the RSS figure to mean something
RSS_SLACK = 150 * MiB  # what the daemon may hold beside its budget (test_memory's bound)
IO_TIMEOUT = 30  # --io-timeout: a 5 s stall and the retries after it fit well within


def s3fs_of(url: str) -> Any:
    """A plain s3fs client of ``url`` (s3rver's credentials, no instance cache)."""
    import s3fs

    return s3fs.S3FileSystem(key=s3env.KEY, secret=s3env.SECRET, skip_instance_cache=True,
                             client_kwargs={"endpoint_url": url, "region_name": "us-east-1"})


def mount_command(proxy: FaultProxy, mnt: Path, work: Path, write_type: str) -> list[str]:
    ufs = {"endpoint_url": proxy.url, "key": s3env.KEY, "secret": s3env.SECRET,
           "client_kwargs": {"region_name": "us-east-1"}}
    return [sys.executable, "-m", "alluxiofuse", "mount", f"s3://{s3env.BUCKET}/", str(mnt),
            "-f", *(f"--ufs-option={k}={v if isinstance(v, str) else json.dumps(v)}"
                    for k, v in ufs.items()),
            "--cache-dir", str(work / "cache"), "--log-file", str(work / "daemon.log"),
            "--metrics-addr", "127.0.0.1:0", "--write-type", write_type,
            "--io-timeout", str(IO_TIMEOUT), "--memory-budget", str(BUDGET)]


def run_one(plan: Plan, rates: Rates, write_type: str, seed: int,
            keep: bool) -> dict[str, Any]:
    """One write type: a fresh s3rver with the data set, the proxy, a mount, the
    workload, the unmount (the drain), the check. Its figures. ``keep``: leave the logs
    and the store in the work directory (named in the figures)."""
    with contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="fault-bench-"))
        if not keep:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        server = stack.enter_context(s3env.s3rver(work / "s3rver", work / "s3rver.log"))
        direct = s3fs_of(server.url)
        prefix = f"faults-{write_type.lower()}"
        root = f"{server.bucket}/{prefix}"
        t0 = time.monotonic()
        ds = populate(direct, root, plan)
        # s3rver lists a prefix that holds only prefixes as if it were not there.
        direct.pipe_file(f"{root}/README.txt", b"fault_bench\n")
        log(f"{write_type}: data set put in {time.monotonic() - t0:.0f}s")

        def peek(name: str) -> bytes | None:
            try:
                return bytes(direct.cat_file(f"{root}/{name}"))
            except FileNotFoundError:
                return None

        proxy = stack.enter_context(FaultProxy(("127.0.0.1", server.port), seed=seed))
        with daemon_mount("alluxiofuse", lambda mnt: mount_command(proxy, mnt, work,
                                                                   write_type)) as m:
            assert m.proc is not None
            proxy.set_rates(rates)
            t0 = time.monotonic()
            out = run_workload(m.root / prefix, ds, plan, peek)
            workload_s = time.monotonic() - t0
            rss = peak_rss(m.proc.pid)
            unmounted = subprocess.run([UMOUNT, "-u", str(m.root)], capture_output=True,
                                       timeout=60, check=False)
            try:
                code = m.proc.wait(timeout=IO_TIMEOUT * 4)
            except subprocess.TimeoutExpired:
                code = None
            wall = time.monotonic() - t0
            proxy.set_rates(Rates())
        figures = verify(ds, out, peek)
        findings = log_findings(work / "daemon.log")[1]
        failed_reads = [p for p in out.problems if p.startswith("read failed")]
        return {
            "write type": write_type, "operations": dict(out.ops), "faults": proxy.counts(),
            "bytes verified": out.bytes_verified, "files checked": figures.get("files checked", 0),
            "files lost": figures.get("files lost", 0),
            "closes failed": figures.get("closes failed", 0),
            "reads failed": len(failed_reads), "problems": out.problems,
            "slow calls": out.slow, "workload s": workload_s,
            "wall s (to the end of the drain)": wall,
            "unmount": f"fusermount {unmounted.returncode}, daemon exit {code}",
            "peak RSS MiB": rss / MiB, "budget MiB": BUDGET / MiB,
            "upstream failures": proxy.upstream_failures,
            "log WARNING+": len(findings), "log sample": findings[:5],
            "work directory": str(work) if keep else "(removed)",
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the integration test's size")
    p.add_argument("--write-types", default="THROUGH,ASYNC_THROUGH")
    p.add_argument("--seed", type=int, default=2026, help="the proxy's RNG seed")
    p.add_argument("--json", type=Path, help="also write the figures here")
    p.add_argument("--keep", action="store_true",
                   help="keep each run's work directory (daemon and s3rver logs, the store)")
    args = p.parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    s3env.ensure_python_deps()
    plan = QUICK if args.quick else FULL
    rates = Rates(slowdown=RATES.slowdown, reset=RATES.reset, stall=RATES.stall,
                  stall_seconds=2.0) if args.quick else RATES
    print(environment())
    print(f"plan: {plan}\nrates: {rates}")
    results, bad = [], False
    for write_type in args.write_types.split(","):
        try:
            r = run_one(plan, rates, write_type, args.seed, args.keep)
        except BenchError as e:
            log(f"{write_type}: {e}")
            return 2
        results.append(r)
        print(f"\n== {write_type}")
        for k, v in r.items():
            if k in ("problems", "slow calls", "log sample", "upstream failures"):
                for line in v[:10]:
                    print(f"  {k}: {str(line)[:400]}")
            else:
                print(f"  {k}: {round(v, 1) if isinstance(v, float) else v}")
        rss_ok = r["peak RSS MiB"] <= (BUDGET + RSS_SLACK) / MiB
        print(f"  peak RSS within budget + {RSS_SLACK // MiB} MiB: {rss_ok}")
        bad |= bool(r["files lost"] or r["problems"] or r["slow calls"] or not rss_ok)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
