#!/usr/bin/env python3
"""The disk page store (issue 19, point 6): a data set twice the daemon's memory budget,
over S3 behind the latency proxy, read in epochs, with and without ``--disk-cache-dir``.

Data (made once under --data-dir/disk and put into an s3rver of its own, both kept):
shards of 128 MiB, tar-shard-like files read whole and in order, as many as make twice
the memory budget the daemon gets. Each daemon runs in a memory cgroup of its own with a limit
(--memory-limit, 2 GiB by default: a sidecar's limit, its default budget then half of it,
alluxiofuse/limits.py); the budget it reports on /metrics is checked to be at most half the
data set. Without a usable memory cgroup (or with --memory-limit 0) the data set is twice
the default budget of the host instead, and the report says so.

Rows, each a fresh mount with the defaults (plus ``--disk-cache-dir`` for the store):
  alluxiofuse       S3 (s3rver behind latency_proxy.py: 20 ms to first byte, 90 MiB/s per
                    connection), no disk store: epochs 1 and 2
  alluxiofuse+disk  the same with ``--disk-cache-dir`` on a fresh empty directory: epochs 1
                    and 2, then epoch 2 again on a new daemon mounted on the same store
                    after the first one is unmounted ("after restart")
  local             alluxiofuse over the data set's local directory: the baseline
  floor             the do-nothing pyfuse3 daemon that preads (bench/floor_fs.py --read)
                    over the same directory: what any pyfuse3 + trio daemon costs
  direct            the local directory itself: the floor
  boto3             a plain boto3 client reading the shards by 8 parallel ranged GETs of
                    8 MiB through the same proxy: the ceiling of a first epoch
An epoch reads every shard sequentially (1 MiB ``readinto`` calls; --readers shards at a
time). The kernel's caches are dropped before every epoch of every row, so each epoch
reaches the daemon and the local rows read from disk; before an S3 epoch, s3rver's own
files are read back into the page cache (untimed), so the server answers from memory as a
remote one would and does not share this disk with the store. The first run of each row
reads the data set once more, untimed, and checks every shard's sha256. After its last
epoch the store row also reads the store's page files themselves, by 4 threads (as many
as the daemon's store uses) after the caches are dropped: what the disk gives that
layout ("page files").

Per epoch: seconds, MiB/s, the daemon's CPU seconds, the requests and bytes the proxy
passed on (S3), and for the store the deltas of ``alluxiofuse_disk_cache_*`` from /metrics
(the daemon runs with ``--metrics-addr`` on a free loopback port). Targets (issue 19),
as ratios of medians of this run: the store's epoch 2 >= 5x its epoch 1 and >= 0.7x the
local row's epoch 2; the same for epoch 2 after restart. A row during which the rest of
the machine used more than --max-other cores is run again (--attempts).

Run as root under the shared lock:
  flock /work/wt/bench.lock .venv/bin/python -m bench.disk_bench --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from alluxiofuse.limits import MemoryLimits, default_memory_budget, memory_limits
from alluxiofuse.options import parse_size
from bench import latency_proxy, localenv, s3env
from bench.harness import (
    BenchError,
    MiB,
    Mount,
    chosen,
    daemon_mount,
    drop_caches,
    environment,
    free_port,
    log,
    machine_busy,
    on_sigterm,
    print_table,
    proc_cpu,
    ratio,
    self_cpu,
    summary,
    wait_quiet,
    watchdog,
)

SHARD = 128 * MiB
ROWS = ("alluxiofuse", "alluxiofuse+disk", "local", "floor", "direct", "boto3")
ALIASES = {"alluxiofuse": "alluxiofuse", "s3": "alluxiofuse", "alluxiofuse+disk":
           "alluxiofuse+disk", "disk": "alluxiofuse+disk", "local": "local",
           "floor": "floor", "direct": "direct", "boto3": "boto3", "ceiling": "boto3"}
EPOCHS = ("epoch 1", "epoch 2", "after restart", "page files")
STORE_THREADS = 4  # the disk store's threads in the daemon (fs/diskreads.py)
EPOCH_TIMEOUT = 900.0
DISK_COUNTERS = ("hits", "misses", "hit_bytes", "written_bytes", "skipped_bytes",
                 "evicted_pages", "corrupt_pages", "errors")


# ------------------------------------------------------------------------ the data set


@dataclass
class Data:
    """The shards read: a local directory (root/shards/) and the same objects in the
    bucket (shards/NAME)."""

    root: Path
    shards: list[str]  # names, in reading order
    sha256: dict[str, str]

    @property
    def size(self) -> int:
        return SHARD * len(self.shards)


def ensure_data(data_dir: Path, n: int) -> Data:
    """The first ``n`` shards under data_dir/disk, made where missing; the manifest keeps
    every shard's sha256, so that a run wanting more shards adds to the same directory."""
    root = data_dir / "disk"
    manifest = root / "manifest.json"
    known: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError, KeyError):
        got = json.loads(manifest.read_text())
        if got["shard"] == SHARD:
            known = got["sha256"]
    names = [f"shard-{i:03d}.tar" for i in range(n)]
    (root / "shards").mkdir(parents=True, exist_ok=True)
    for name in names:
        path = root / "shards" / name
        with contextlib.suppress(OSError):
            if name in known and path.stat().st_size == SHARD:
                continue
        log(f"making {path} ({SHARD // MiB} MiB) ...")
        h, tmp = hashlib.sha256(), path.with_name(f".{name}.tmp")
        with open(tmp, "wb") as f:
            for _ in range(SHARD // (16 * MiB)):
                block = os.urandom(16 * MiB)
                h.update(block)
                f.write(block)
        os.replace(tmp, path)
        known[name] = h.hexdigest()
        manifest.write_text(json.dumps({"shard": SHARD, "sha256": known}))
    os.sync()
    return Data(root, names, {name: known[name] for name in names})


def populate(server: s3env.S3Server, data: Data) -> None:
    """Put the shards the bucket's manifest does not list with the same sha256."""
    c = s3env.client(server.url)
    have: dict[str, str] = {}
    with contextlib.suppress(Exception):
        have = json.loads(c.get_object(Bucket=server.bucket, Key="manifest.json")["Body"].read())
    missing = [name for name in data.shards if have.get(name) != data.sha256[name]]
    if not missing:
        return
    log(f"putting {len(missing)} shards into s3rver ...")
    t0 = time.monotonic()
    from boto3.s3.transfer import TransferConfig

    for name in missing:
        c.upload_file(str(data.root / "shards" / name), server.bucket, f"shards/{name}",
                      Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4))
        have[name] = data.sha256[name]
        c.put_object(Bucket=server.bucket, Key="manifest.json", Body=json.dumps(have).encode())
    log(f"put in {time.monotonic() - t0:.0f}s")


def warm(directory: Path) -> None:
    """Read every file under ``directory`` into the page cache (s3rver's store)."""
    buf = bytearray(MiB)
    for top, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(top, name), "rb", buffering=0) as f:
                while f.readinto(buf):
                    continue  # read to the end: the bytes only pass through buf


# ------------------------------------------------------------------------ memory cgroup


@dataclass
class Cgroups:
    """Where to make a memory cgroup of a limit: v1's memory hierarchy below this
    process's own cgroup, or v2's root; None: not usable here."""

    kind: str  # "v1" or "v2"
    parent: Path
    limit_file: str
    made: int = 0

    @contextlib.contextmanager
    def fresh(self, limit: int) -> Iterator[Path]:
        """A new cgroup of ``limit`` bytes; yields its ``cgroup.procs``; removed after."""
        self.made += 1
        cg = self.parent / f"alluxiofuse-bench-{os.getpid()}-{self.made}"
        cg.mkdir()
        try:
            (cg / self.limit_file).write_text(str(limit))
            yield cg / "cgroup.procs"
        finally:
            for _ in range(50):  # its processes are gone; the kernel may lag a moment
                try:
                    cg.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
            else:
                log(f"warning: could not remove the cgroup {cg}")


def find_cgroups() -> Cgroups | None:
    """Where this machine lets a memory cgroup be made, tried by making one."""
    lines = Path("/proc/self/cgroup").read_text().splitlines()
    candidates = []
    v2_root = Path("/sys/fs/cgroup")
    if "memory" in _read(v2_root / "cgroup.controllers").split():
        candidates.append(Cgroups("v2", v2_root, "memory.max"))
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            candidates.append(Cgroups("v1", Path("/sys/fs/cgroup/memory") / path.strip("/"),
                                      "memory.limit_in_bytes"))
    for cg in candidates:
        try:
            with cg.fresh(1 << 30) as procs:
                if procs.exists():
                    return cg
        except OSError:
            continue
    return None


def _read(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text()
    return ""


# ------------------------------------------------------------------------ the daemon


def metrics(port: int) -> dict[str, float]:
    """The daemon's unlabelled samples from /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+) (\S+)$", text, re.M)}


def disk_counters(port: int) -> dict[str, float]:
    got = metrics(port)
    return {c: got.get(f"alluxiofuse_disk_cache_{c}_total", 0.0) for c in DISK_COUNTERS}


def settle(port: int, timeout: float = 30.0) -> None:
    """Wait until the store's written bytes stop growing (the writes behind an epoch)."""
    last, deadline = -1.0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = disk_counters(port)["written_bytes"]
        if now == last:
            return
        last = now
        time.sleep(0.5)


@dataclass
class Daemon:
    mount: Mount
    port: int | None  # of its /metrics; None: it has none (the floor)

    @property
    def pid(self) -> int:
        assert self.mount.proc is not None
        return self.mount.proc.pid


@contextlib.contextmanager
def daemon(row: str, source: str, ep: s3env.Endpoint | None, procs: Path | None,
           store: Path | None, extra: tuple[str, ...] = ()) -> Iterator[Daemon]:
    """alluxiofuse with its defaults mounting ``source`` (a local path or s3://bucket/),
    in the cgroup whose ``cgroup.procs`` is ``procs``, on a fresh mountpoint."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="disk-bench-spool-") as spool:
        def command(mnt: Path) -> list[str]:
            cmd = [sys.executable, "-m", "alluxiofuse", "mount", source, str(mnt), "-f",
                   "--log-level", "warning", "--metrics-addr", f"127.0.0.1:{port}",
                   # The spool only keeps this mount apart from others on the machine.
                   "--cache-dir", spool]
            if ep is not None:
                cmd += ["--ufs-option", "client_kwargs=" + json.dumps({"endpoint_url": ep.url})]
            if store is not None:
                cmd += ["--disk-cache-dir", str(store)]
            cmd += extra
            if procs is None:
                return cmd
            # Into the cgroup first, then the daemon in the same process.
            return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(procs), *cmd]

        with daemon_mount(row, command) as m:
            deadline = time.monotonic() + 30
            while True:  # /metrics comes up with the mount, or just after
                try:
                    metrics(port)
                    break
                except OSError as exc:
                    if time.monotonic() > deadline:
                        raise BenchError(f"{row}: no /metrics on port {port}\n    "
                                         f"{m.tail()}") from exc
                    time.sleep(0.1)
            yield Daemon(m, port)


# ------------------------------------------------------------------------ epochs


def read_file(path: Path) -> int:
    buf, total = bytearray(MiB), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def read_all(root: Path, names: list[str], readers: int) -> int:
    """Every shard read whole, ``readers`` at a time, in order; bytes read."""
    paths = [root / name for name in names]
    if readers == 1:
        return sum(read_file(p) for p in paths)
    with ThreadPoolExecutor(max_workers=readers) as ex:
        return sum(ex.map(read_file, paths))


def read_store(store: Path) -> int:
    """The store's page files read whole by STORE_THREADS threads; bytes read."""
    files = sorted(p for p in (store / "pages").rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=STORE_THREADS) as ex:
        return sum(ex.map(read_file, files))


def verify(root: Path, data: Data, who: str) -> None:
    for name in data.shards:
        h = hashlib.sha256()
        with open(root / name, "rb", buffering=0) as f:
            while block := f.read(8 * MiB):
                h.update(block)
        if h.hexdigest() != data.sha256[name]:
            raise BenchError(f"{who}: {name} read back with sha256 {h.hexdigest()}, "
                             f"not {data.sha256[name]}")


@dataclass
class Epoch:
    seconds: float
    mib_s: float
    daemon_cpu: float | None = None
    other: float = 0.0  # cores the rest of the machine used meanwhile
    s3_requests: float | None = None
    s3_bytes: float | None = None
    disk: dict[str, float] = field(default_factory=dict)


@dataclass
class Ctx:
    args: argparse.Namespace
    data: Data
    ep: s3env.Endpoint
    cgroups: Cgroups | None
    limit: int
    pids: list[int]  # helper processes whose CPU is not "the rest of the machine"
    budgets: list[float] = field(default_factory=list)
    verified: set[str] = field(default_factory=set)

    @contextlib.contextmanager
    def cgroup(self) -> Iterator[Path | None]:
        if self.cgroups is None:
            yield None
            return
        with self.cgroups.fresh(self.limit) as procs:
            yield procs


def prepare(ctx: Ctx, s3: bool) -> None:
    """Before an epoch: drop the kernel's caches, then put s3rver's files back in them."""
    if not drop_caches():
        raise BenchError("cannot drop the kernel's caches (run as root)")
    if s3:
        warm(ctx.ep.server.directory)


def epoch(ctx: Ctx, row: str, root: Path, d: Daemon | None, s3: bool,
          read: Callable[[], int] | None = None, whole: bool = True) -> Epoch:
    """One timed epoch over ``root`` (or ``read()``), with its counters; ``whole``: it
    must have read the data set's bytes."""
    prepare(ctx, s3)
    pids = ctx.pids + ([d.pid] if d is not None else [])
    cpu0 = {p: proc_cpu(p) for p in pids}
    busy0, me0 = machine_busy(), self_cpu()
    s3_0 = ctx.ep.proxy.counts() if s3 else (0, 0)
    disk0 = disk_counters(d.port) if d is not None and d.port is not None else {}
    t0 = time.monotonic()
    if read is not None:
        got = read()
    else:
        assert d is not None or row == "direct"
        if d is not None:
            with watchdog(d.mount, EPOCH_TIMEOUT, "epoch"):
                got = read_all(root, ctx.data.shards, ctx.args.readers)
        else:
            got = read_all(root, ctx.data.shards, ctx.args.readers)
    seconds = time.monotonic() - t0
    if whole and got != ctx.data.size:
        raise BenchError(f"{row}: an epoch read {got:,} bytes, not {ctx.data.size:,}")
    ours = sum(proc_cpu(p) - cpu0[p] for p in pids) + self_cpu() - me0
    e = Epoch(seconds, got / MiB / seconds,
              other=max(0.0, (machine_busy() - busy0 - ours) / seconds))
    if d is not None:
        e.daemon_cpu = proc_cpu(d.pid) - cpu0[d.pid]
    if d is not None and d.port is not None:
        if row == "alluxiofuse+disk":
            settle(d.port)
        disk1 = disk_counters(d.port)
        e.disk = {c: disk1[c] - disk0[c] for c in DISK_COUNTERS}
    if s3:
        s3_1 = ctx.ep.proxy.counts()
        e.s3_requests, e.s3_bytes = s3_1[0] - s3_0[0], s3_1[1] - s3_0[1]
    return e


def check_budget(ctx: Ctx, d: Daemon, row: str) -> None:
    assert d.port is not None
    budget = metrics(d.port)["alluxiofuse_memory_budget_bytes"]
    ctx.budgets.append(budget)
    if ctx.data.size < 2 * budget:
        raise BenchError(f"{row}: the daemon's memory budget is {budget / MiB:,.0f} MiB: the "
                         f"data set ({ctx.data.size / MiB:,.0f} MiB) is not twice it")


def verify_once(ctx: Ctx, row: str, root: Path, s3: bool) -> None:
    """The first time a row runs: every shard read again (untimed) and its sha256 checked."""
    if row in ctx.verified:
        return
    prepare(ctx, s3)
    verify(root, ctx.data, row)
    ctx.verified.add(row)
    log(f"  {row}: {len(ctx.data.shards)} shards read back, sha256 checked")


def run_row(ctx: Ctx, row: str) -> dict[str, Epoch]:
    """One run of ``row``: its epochs by name."""
    out: dict[str, Epoch] = {}
    shards = ctx.data.root / "shards"
    if row == "direct":
        out["epoch 1"] = epoch(ctx, row, shards, None, False)
        out["epoch 2"] = epoch(ctx, row, shards, None, False)
        verify_once(ctx, row, shards, False)
        return out
    if row == "floor":
        with daemon_mount(row, lambda mnt: localenv.daemon_command(
                "floor.read", ctx.data.root, "", mnt)) as m:
            assert m.proc is not None
            d = Daemon(m, None)
            out["epoch 1"] = epoch(ctx, row, m.root / "shards", d, False)
            out["epoch 2"] = epoch(ctx, row, m.root / "shards", d, False)
        return out
    if row == "boto3":
        c = s3env.client(ctx.ep.url)

        def read() -> int:
            return sum(s3env.ranged_get(c, ctx.ep.bucket, f"shards/{name}", SHARD, 8)
                       for name in ctx.data.shards)

        out["epoch 1"] = epoch(ctx, row, shards, None, True, read)
        return out
    s3 = row != "local"
    source = f"s3://{ctx.ep.bucket}/" if s3 else str(ctx.data.root)
    ep = ctx.ep if s3 else None
    with contextlib.ExitStack() as stack:
        store = None
        if row == "alluxiofuse+disk":
            store = Path(stack.enter_context(tempfile.TemporaryDirectory(
                prefix="disk-bench-store-", dir=ctx.args.store_parent)))
        with ctx.cgroup() as procs, daemon(row, source, ep, procs, store) as d:
            check_budget(ctx, d, row)
            root = d.mount.root / "shards"
            out["epoch 1"] = epoch(ctx, row, root, d, s3)
            out["epoch 2"] = epoch(ctx, row, root, d, s3)
            if row != "alluxiofuse+disk":
                verify_once(ctx, row, root, s3)
        if store is not None:
            with ctx.cgroup() as procs, daemon(row, source, ep, procs, store) as d:
                check_budget(ctx, d, row)
                root = d.mount.root / "shards"
                out["after restart"] = epoch(ctx, row, root, d, s3)
                verify_once(ctx, row, root, s3)
            out["page files"] = epoch(ctx, row, store, None, False,
                                      partial(read_store, store), whole=False)
    return out


def run_row_quiet(ctx: Ctx, row: str, notes: list[str]) -> tuple[dict[str, Epoch], int]:
    """run_row, again when the rest of the machine was busy during one of its epochs."""
    args = ctx.args
    for attempt in range(1, args.attempts + 1):
        wait_quiet(args.max_other, args.quiet_wait)
        out = run_row(ctx, row)
        busiest = max(e.other for e in out.values())
        if busiest <= args.max_other:
            return out, attempt - 1
        if attempt < args.attempts:
            log(f"  {row}: discarded, {busiest:.2f} cores used elsewhere during an epoch")
    notes.append(f"{row}: kept after {args.attempts} attempts with {busiest:.2f} cores used "
                 f"elsewhere")
    return out, args.attempts - 1


# ------------------------------------------------------------------------ report


def report(ctx: Ctx, rows: list[str], runs: dict[str, list[dict[str, Epoch]]],
           notes: list[str], discarded: int) -> None:
    md = ctx.args.markdown

    def samples(row: str, ep: str, get: Callable[[Epoch], float | None]) -> list[float]:
        return [v for run in runs.get(row, []) if ep in run
                if (v := get(run[ep])) is not None]

    def med(row: str, ep: str) -> float | None:
        vals = samples(row, ep, lambda e: e.mib_s)
        return statistics.median(vals) if vals else None

    def mib(v: float) -> float:
        return v / MiB

    head = ["row", "epoch", "MiB/s", "seconds", "daemon CPU (s)", "S3 requests", "S3 MiB",
            "disk hits", "disk misses", "disk hit MiB", "written MiB", "skipped MiB",
            "corrupt", "errors"]
    table = [head]
    for row in rows:
        for ep in EPOCHS:
            if not samples(row, ep, lambda e: e.seconds):
                continue

            def col(get: Callable[[Epoch], float | None], row: str = row,
                    ep: str = ep) -> str:
                return summary(samples(row, ep, get))

            def disk(name: str, scale: Callable[[float], float] = float,
                     row: str = row, ep: str = ep) -> str:
                if row != "alluxiofuse+disk" or ep == "page files":
                    return "-"
                return summary(samples(row, ep, lambda e: scale(e.disk[name])))

            table.append([
                row, ep, col(lambda e: e.mib_s), col(lambda e: e.seconds),
                col(lambda e: e.daemon_cpu),
                col(lambda e: e.s3_requests), col(lambda e: None if e.s3_bytes is None
                                                  else mib(e.s3_bytes)),
                disk("hits"), disk("misses"), disk("hit_bytes", mib), disk("written_bytes", mib),
                disk("skipped_bytes", mib), disk("corrupt_pages"), disk("errors")])
    print_table(table, md, left=(0, 1))
    print()

    d1, d2 = med("alluxiofuse+disk", "epoch 1"), med("alluxiofuse+disk", "epoch 2")
    dr, local = med("alluxiofuse+disk", "after restart"), med("local", "epoch 2")

    def over(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    def met(v: float | None, target: float) -> str:
        return "-" if v is None else "yes" if v >= target else "**no**"

    targets = [
        ("store epoch 2 / store epoch 1", over(d2, d1), 5.0),
        ("store epoch 2 / local epoch 2", over(d2, local), 0.7),
        ("after restart / store epoch 1", over(dr, d1), 5.0),
        ("after restart / local epoch 2", over(dr, local), 0.7),
    ]
    context = [
        ("store epoch 1 / no-store epoch 1 (the cost of writing behind)",
         over(d1, med("alluxiofuse", "epoch 1"))),
        ("no-store epoch 2 / no-store epoch 1", over(med("alluxiofuse", "epoch 2"),
                                                    med("alluxiofuse", "epoch 1"))),
        ("no-store epoch 1 / boto3 (ceiling)", over(med("alluxiofuse", "epoch 1"),
                                                    med("boto3", "epoch 1"))),
        ("local epoch 2 / direct epoch 2", over(local, med("direct", "epoch 2"))),
        ("local epoch 2 / floor epoch 2", over(local, med("floor", "epoch 2"))),
        ("store epoch 2 / floor epoch 2", over(d2, med("floor", "epoch 2"))),
        ("after restart / floor epoch 2", over(dr, med("floor", "epoch 2"))),
        ("page files read directly / store epoch 2", over(med("alluxiofuse+disk", "page files"),
                                                         d2)),
        ("floor epoch 2 / no-store epoch 1 (at most the 5x ratio, the store at the floor)",
         over(med("floor", "epoch 2"), med("alluxiofuse", "epoch 1"))),
    ]
    rt = [["ratio (of medians, MiB/s)", "value", "target", "met"]]
    rt += [[name, ratio(v), f">= {t:g}x", met(v, t)] for name, v, t in targets]
    rt += [[name, ratio(v), "", ""] for name, v in context]
    print_table(rt, md, left=(0,))
    print()
    size = ctx.data.size
    budget = statistics.median(ctx.budgets) if ctx.budgets else None
    cg = (f"each daemon in a {ctx.cgroups.kind} memory cgroup of {ctx.limit / MiB:,.0f} MiB"
          if ctx.cgroups else "no memory cgroup (not usable here): the host's default budget")
    print(f"data set: {len(ctx.data.shards)} shards of {SHARD // MiB} MiB = {size / MiB:,.0f} "
          f"MiB; {cg}; memory budget the daemons reported: "
          f"{'-' if budget is None else f'{budget / MiB:,.0f} MiB'}"
          + (f" (data set {size / budget:.2f}x it)" if budget else ""))
    print(f"S3: s3rver behind latency_proxy ({ctx.ep.ttfb * 1000:g} ms to first byte, "
          f"{ctx.ep.bandwidth / MiB:g} MiB/s per connection); readers: {ctx.args.readers}; "
          f"median (range) of {ctx.args.repeat} runs; shards checked by sha256 once per "
          f"row: {', '.join(sorted(ctx.verified)) or 'none'}")
    for note in notes:
        print(f"note: {note}")
    print(f"rows discarded and run again (another job used more than {ctx.args.max_other} "
          f"cores during an epoch): {discarded}")
    print(environment())


# ------------------------------------------------------------------------ main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(ROWS),
                   help=f"rows, comma-separated: {', '.join(ALIASES)}")
    p.add_argument("--repeat", type=int, default=3, help="runs of each row (median shown)")
    p.add_argument("--readers", type=int, default=1, help="shards read at a time")
    p.add_argument("--memory-limit", type=parse_size, default=2 << 30,
                   help="each daemon's memory cgroup limit (default 2GiB; 0: no cgroup, the "
                        "data set is then twice the host's default budget)")
    p.add_argument("--data-dir", type=Path, default=s3env.BENCH_DIR,
                   help="where the shards are made and kept")
    p.add_argument("--store-parent", type=Path, default=s3env.BENCH_DIR,
                   help="where each run's fresh store directory is made (a local disk)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--max-other", type=float, default=0.3,
                   help="cores the rest of the machine may use during an epoch: a row over "
                        "it is run again; also the idle level waited for before each row")
    p.add_argument("--attempts", type=int, default=3, help="tries per row (see --max-other)")
    p.add_argument("--quiet-wait", type=float, default=120,
                   help="seconds to wait, before each row, for the machine to be idle")
    args = p.parse_args()
    rows = chosen(p, args.only, ALIASES, ROWS)
    signal.signal(signal.SIGTERM, on_sigterm)
    s3env.ensure_python_deps()
    os.environ.update(AWS_ACCESS_KEY_ID=s3env.KEY, AWS_SECRET_ACCESS_KEY=s3env.SECRET,
                      AWS_DEFAULT_REGION="us-east-1")

    cgroups = find_cgroups() if args.memory_limit else None
    here = memory_limits()
    if cgroups is not None:
        limit = min(args.memory_limit, here.cgroup or args.memory_limit)
        budget = default_memory_budget(MemoryLimits(here.ram, limit))
    else:
        if args.memory_limit:
            log("no memory cgroup can be made here: the data set is twice the host's budget")
        limit, budget = 0, default_memory_budget(here)
    n = -(-2 * budget // SHARD)
    data = ensure_data(args.data_dir, n)
    logs = Path(tempfile.mkdtemp(prefix="disk-bench-logs-"))
    runs: dict[str, list[dict[str, Epoch]]] = {}
    notes: list[str] = []
    discarded = 0
    ok = False
    try:
        with s3env.s3rver(s3env.BENCH_DIR / "s3rver-disk", logs / "s3rver.log") as server:
            populate(server, data)
            with latency_proxy.spawn(("127.0.0.1", server.port), log=logs / "proxy.log") as px:
                ep = s3env.Endpoint(server, px, None, latency_proxy.DEFAULT_TTFB,
                                    latency_proxy.DEFAULT_BANDWIDTH)
                ctx = Ctx(args, data, ep, cgroups, limit, [server.proc.pid, px.proc.pid])
                for rep in range(args.repeat):
                    order = rows[rep % len(rows):] + rows[:rep % len(rows)]
                    for row in order:
                        out, n_discarded = run_row_quiet(ctx, row, notes)
                        discarded += n_discarded
                        runs.setdefault(row, []).append(out)
                        log(f"run {rep + 1} {row:17s} " + "  ".join(
                            f"{name} {e.mib_s:7.1f} MiB/s ({e.seconds:5.2f} s)"
                            for name, e in out.items()))
        report(ctx, rows, runs, notes, discarded)
        ok = True
    finally:
        if ok:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            log(f"logs kept in {logs}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
