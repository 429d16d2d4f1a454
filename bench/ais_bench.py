#!/usr/bin/env python3
"""AIStore benchmark: an ais:// mount against the official aistore SDK and a plain HTTP
client, all reading the same objects from one simulated AIStore cluster.

The server is tests/sim/ais.py (SimAis: one proxy and --sim-targets targets, HTTP on
127.0.0.1, all in one asyncio thread), run in a process of its own (``--serve``: this
module as a launcher that puts the data set, prints the proxy's URL and serves until
killed), so that it shares no GIL with the readers here. It is a simulator, not a real
cluster: its objects are files under --sim-dir (tmpfs by default, so that dropping the
kernel's caches drops the clients' caches, not the server's), and its one thread caps
what any client gets. Absolute figures therefore say little about AIStore; the ratios
say how much the mount costs over a plain client of the same server. Data, put once per
run (its bytes are s3env's: seeded, the big object stamped with its offset every 4 KiB):
  full   big.bin 1 GiB; 10,000 objects of 4-64 KiB under small/d00/ .. small/d19/
  quick  256 MiB; 2,000 objects (--quick, for smoke runs)

Targets:
  alluxiofuse        ``python -m alluxiofuse mount ais://bench MNT -f --ufs-option
                     endpoint=PROXY``, its defaults (only --cache-dir and --metrics-addr
                     127.0.0.1:0 keep it apart from other mounts): each object request
                     straight to the target that holds it
  alluxiofuse.proxy  the same with ``--ufs-option direct=false``: every object request
                     to the proxy, which redirects it (a row beside, never instead)
  sdk                the official ``aistore`` SDK in this process, ``Client(PROXY)``:
                     ``bucket.object(name).get_reader().read_all()`` by 16 threads, the
                     big object by one reader in 1 MiB chunks, its listing
                     (``list_all_objects_iter``) for the walk; by its default, its GETs
                     go through the proxy's redirects
  http               a plain httpx client GETting each object from the target that holds
                     it (placed from the cluster map before the pass), and one recursive
                     listing at the proxy: the ceiling of any client of this simulator,
                     but for one stream (seq_cold), where httpx's cost per 64 KiB read
                     keeps it under the SDK's requests: there the SDK is the ceiling
Workloads (each target --repeat times, median shown, the targets in an order that rotates
from one repetition to the next; every cold pass on a fresh mount, or a fresh client,
after dropping the kernel's caches):
  seq_cold      big.bin read in order in 1 MiB calls, 1 reader (MiB/s)
  small16       every small object read whole by 16 threads (objects/s); then, on the
                same mount (or client), small16_warm: the same again, bytes checked
  walk          os.walk + os.stat of small/ through the mount; the listing of small/ for
                the clients (entries/s: its 20 directories and every object)
The report gives alluxiofuse / sdk, alluxiofuse / http and alluxiofuse /
alluxiofuse.proxy, and for every pass the requests the simulator answered (GETs sent
straight to a target, GETs the proxy redirected, listings, cluster maps) and the CPU used
by the simulator, the daemon, this process and the rest of the machine (a pass during
which other jobs used more than --max-other cores is run again).

Exit status non-zero only if the benchmark itself failed (wrong bytes, a mount that did
not come up, a hang, the simulator gone). Every mount is unmounted, the simulator ended
and its data removed on the way out, on an error or on Ctrl-C/SIGTERM alike. Run as root
(/dev/fuse, drop_caches), under the shared lock:
  flock /work/wt/bench.lock .venv/bin/python -m bench.ais_bench --quick --repeat 1
  flock /work/wt/bench.lock .venv/bin/python -m bench.ais_bench --repeat 3 --markdown
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import s3env
from bench.harness import (
    REPO_ROOT,
    BenchError,
    LineReader,
    MiB,
    Mount,
    Snapshot,
    add_quiet_options,
    chosen,
    daemon_mount,
    drop_caches,
    end,
    environment,
    log,
    log_findings,
    machine_busy,
    on_sigterm,
    print_notes,
    print_table,
    proc_cpu,
    quiet_pass,
    ratio,
    self_cpu,
    summary,
    tail,
    watchdog,
)
from bench.read_bench import walk_stat

BUCKET = "bench"
N_DIRS = 20
THREADS = 16
TARGETS = ("alluxiofuse", "alluxiofuse.proxy", "sdk", "http")
ALIASES = {**{t: t for t in TARGETS}, "proxy": "alluxiofuse.proxy"}
MOUNT_ARGS = {"alluxiofuse": [], "alluxiofuse.proxy": ["--ufs-option", "direct=false"]}
WORKLOADS = {"seq_cold": "MiB/s", "small16": "objects/s", "small16_warm": "objects/s",
             "walk": "entries/s"}
GROUPS = {"seq_cold": ("seq_cold",), "small16": ("small16", "small16_warm"), "walk": ("walk",)}
START_TIMEOUT = 900.0  # the launcher puts the whole data set before it answers
HTTP_TIMEOUT = 30.0


# ------------------------------------------------------------------------ the data set


def plan(quick: bool) -> s3env.Dataset:
    """The objects: big.bin and the small ones in N_DIRS prefixes (s3env's bytes)."""
    rng = random.Random(s3env.SEED)
    n = 2000 if quick else 10000
    small = [(f"small/d{i % N_DIRS:02d}/f{i:05d}.bin", rng.randint(4096, 65536))
             for i in range(n)]
    orng = random.Random(s3env.SEED + 1)
    offsets = [orng.randrange(4 * MiB - size) for _, size in small]
    return s3env.Dataset("quick" if quick else "full", (256 if quick else 1024) * MiB, small,
                         [], 0, offsets)


def big_content(size: int) -> bytes:
    block = s3env.BigFile.BLOCK
    return b"".join(s3env.big_block(i, min(block, size - off))
                    for i, off in enumerate(range(0, size, block)))


def walk_entries(ds: s3env.Dataset) -> int:
    """What os.walk of small/ yields: its directories and every object."""
    return N_DIRS + len(ds.small)


def check_stamp(chunk: bytes | memoryview, pos: int, who: str) -> None:
    """The big object carries its offset every 4 KiB: check the first stamp in ``chunk``,
    read at ``pos`` (one compare per chunk, so the check costs the pass nothing)."""
    off = -pos % 4096
    if off + 8 <= len(chunk) and \
            int.from_bytes(chunk[off:off + 8], "little") != pos + off:
        raise BenchError(f"{who}: big.bin at offset {pos + off} is not its bytes")


# ------------------------------------------------------------------------ the simulator


def serve_main() -> int:
    """Launcher mode: start SimAis, put the data set, print the proxy's URL and targets (a
    JSON line), then answer "stats" lines with its request counts until stdin ends."""
    p = argparse.ArgumentParser()
    p.add_argument("--serve", type=Path, required=True, help="the simulator's directory")
    p.add_argument("--targets", type=int, required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    from tests.sim.ais import SimAis

    ds = plan(args.quick)
    with SimAis(args.serve, targets=args.targets) as sim:
        sim.create_bucket(BUCKET)
        for i, (key, _) in enumerate(ds.small):
            sim.put_object(BUCKET, key, ds.small_content(i))
        sim.put_object(BUCKET, ds.big_key, big_content(ds.big_size))
        print(json.dumps({"url": sim.url, "targets": sim.targets}), flush=True)
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps(sim.stats()), flush=True)
    return 0


@dataclass
class Sim:
    proc: subprocess.Popen[bytes]
    lines: LineReader
    errlog: Path
    url: str = ""
    owners: dict[str, str] = field(default_factory=dict)  # object name -> its target's URL

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"the simulator exited ({self.proc.returncode}):\n    "
                             f"{tail(self.errlog)}")

    def stats(self) -> Counter[str]:
        """The simulator's request counts so far (all kinds, all nodes)."""
        self.check_alive()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"stats\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise BenchError(f"the simulator: {e!r}\n    {tail(self.errlog)}") from e
        return Counter(json.loads(self.lines.readline(30, "stats")))

    def snapshot(self, pid: int | None) -> Snapshot:
        stats = self.stats()  # before the clock is read: one round trip per interval, not two
        return Snapshot(time.perf_counter(), [proc_cpu(self.proc.pid)],
                        proc_cpu(pid) if pid else 0.0, self_cpu(), machine_busy(), stats)


@contextlib.contextmanager
def simulator(args: argparse.Namespace, ds: s3env.Dataset, logs: Path) -> Iterator[Sim]:
    """The launcher in a process of its own, with the data set put; ended, and its
    directory removed, on the way out."""
    root = Path(tempfile.mkdtemp(prefix="ais-bench-sim-", dir=args.sim_dir))
    errlog = logs / "simulator.log"
    cmd = [sys.executable, "-m", "bench.ais_bench", "--serve", str(root),
           "--targets", str(args.sim_targets), *(["--quick"] if args.quick else [])]
    try:
        with open(errlog, "wb") as err:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=err, start_new_session=True)
        try:
            sim = Sim(proc, LineReader(proc, "the simulator"), errlog)
            t0 = time.monotonic()
            try:
                ready = json.loads(sim.lines.readline(START_TIMEOUT, "proxy URL"))
            except BenchError as e:
                raise BenchError(f"{e}\n    {tail(errlog)}") from None
            sim.url = ready["url"]
            sim.owners = place(sim.url, ds)
            log(f"simulator (pid {proc.pid}): proxy {sim.url}, {len(ready['targets'])} targets; "
                f"{ds.big_size // MiB} MiB + {len(ds.small):,} objects put in "
                f"{time.monotonic() - t0:.0f}s")
            yield sim
        finally:
            end(proc)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def place(url: str, ds: s3env.Dataset) -> dict[str, str]:
    """Each object's target URL, from the cluster map, placed as the simulator places it."""
    import httpx

    from tests.sim.ais import hrw_target, uname

    try:
        smap = httpx.get(f"{url}/v1/daemon", params={"what": "smap"}, timeout=HTTP_TIMEOUT)
        smap.raise_for_status()
        tmap = smap.json()["tmap"]
    except (httpx.HTTPError, ValueError, KeyError) as e:
        raise BenchError(f"the simulator's cluster map: {e!r}") from e
    ids = list(tmap)
    return {name: tmap[hrw_target(ids, uname("ais", BUCKET, name))]["public_net"]["direct_url"]
            for name in [ds.big_key, *(k for k, _ in ds.small)]}


# ------------------------------------------------------------------------ passes


@dataclass
class Pass:
    """One timed pass: its rate, what it cost, and the requests the simulator answered."""

    value: float
    secs: float
    cpu: dict[str, float]  # cores: sim, daemon, bench (this process), other
    requests: Counter[str]


@dataclass
class Group:
    """The passes made on one mount (or client): run again together by quiet_pass."""

    passes: dict[str, Pass]

    @property
    def cpu(self) -> dict[str, float]:
        return {"other": max(p.cpu["other"] for p in self.passes.values())}


@dataclass
class Context:
    args: argparse.Namespace
    ds: s3env.Dataset
    sim: Sim
    logs: Path
    results: dict[tuple[str, str], list[Pass]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    cold: list[bool] = field(default_factory=list)
    discarded: int = 0


class Reader:
    """How one target reads: a mount's files, or a client's objects."""

    def __init__(self, ctx: Context, target: str, m: Mount | None) -> None:
        self.ctx, self.target, self.m = ctx, target, m
        self.sdk: Any = None
        self.http: Any = None
        if target == "sdk":
            from aistore.sdk import Client  # type: ignore[import-untyped]

            self.sdk = Client(ctx.sim.url).bucket(BUCKET)
        elif target == "http":
            import httpx

            self.http = httpx.Client(timeout=HTTP_TIMEOUT, limits=httpx.Limits(
                max_connections=2 * THREADS, max_keepalive_connections=2 * THREADS))

    def close(self) -> None:
        if self.http is not None:
            self.http.close()

    def chunks(self, name: str) -> Iterable[bytes | memoryview]:
        """The object's bytes in order, in 1 MiB pieces."""
        if self.m is not None:
            buf = bytearray(MiB)
            view = memoryview(buf)
            with open(self.m.root / name, "rb", buffering=0) as f:
                while n := f.readinto(buf):
                    yield view[:n]
        elif self.sdk is not None:
            yield from self.sdk.object(name).get_reader(chunk_size=MiB)
        else:
            with self.http.stream("GET", self.object_url(name)) as reply:
                reply.raise_for_status()
                # as the pieces arrive (64 KiB): gathering them into 1 MiB ones would
                # halve what this client reads in one stream here
                yield from reply.iter_raw()

    def whole(self, name: str) -> bytes:
        if self.m is not None:
            with open(self.m.root / name, "rb", buffering=0) as f:
                return f.read()
        if self.sdk is not None:
            data: bytes = self.sdk.object(name).get_reader().read_all()
            return data
        reply = self.http.get(self.object_url(name))
        reply.raise_for_status()
        return bytes(reply.content)

    def object_url(self, name: str) -> str:
        return f"{self.ctx.sim.owners[name]}/v1/objects/{BUCKET}/{name}?provider=ais"

    def entries(self) -> int:
        """Walk small/ (a mount) or list it (a client): its directories and objects."""
        if self.m is not None:
            return walk_stat(self.m.root / "small")
        if self.sdk is not None:
            names = [o.name for o in self.sdk.list_all_objects_iter(prefix="small/",
                                                                    props="name,size")]
        else:
            names = self.list_http()
        return len(names) + len({n.rsplit("/", 1)[0] for n in names})

    def list_http(self) -> list[str]:
        import msgpack

        names: list[str] = []
        token = ""
        while True:
            msg = {"action": "list", "value": {"prefix": "small/", "props": "name,size",
                                               "continuation_token": token, "flags": "0"}}
            reply = self.http.request("GET", f"{self.ctx.sim.url}/v1/buckets/{BUCKET}",
                                      params={"provider": "ais"}, content=json.dumps(msg),
                                      headers={"Accept": "application/msgpack"})
            reply.raise_for_status()
            page = msgpack.unpackb(reply.content, raw=False)
            names += [e["n"] for e in page["Entries"]]
            if not (token := page["ContinuationToken"]):
                return names


def read_seq(r: Reader) -> float:
    """big.bin in order, its stamps checked; MiB read."""
    pos = 0
    for chunk in r.chunks(r.ctx.ds.big_key):
        check_stamp(chunk, pos, r.target)
        pos += len(chunk)
    if pos != r.ctx.ds.big_size:
        raise BenchError(f"{r.target}: read {pos} bytes of big.bin, expected {r.ctx.ds.big_size}")
    return pos / MiB


def read_small(r: Reader, check: bool) -> float:
    """Every small object whole, by THREADS threads, in listing order; with ``check``, its
    bytes compared with what was put (else its length); objects read."""
    ds = r.ctx.ds

    def one(i: int) -> None:
        name, size = ds.small[i]
        data = r.whole(name)
        if len(data) != size or (check and data != ds.small_content(i)):
            raise BenchError(f"{r.target}: {name}: {len(data)} bytes that are not the "
                             f"object's {size}")

    order = sorted(range(len(ds.small)), key=lambda i: ds.small[i][0])
    with ThreadPoolExecutor(max_workers=THREADS) as ex:
        list(ex.map(one, order))  # each read's error, if any, raised here
    return len(order)


def timed(ctx: Context, r: Reader, work: str, fn: Callable[[], float]) -> Pass:
    """One pass, ``fn()`` (what it read: MiB, objects, entries), with what it cost; a
    mount's daemon is killed if the pass overruns --timeout (its readers then fail)."""
    m = r.m
    pid = m.proc.pid if m is not None and m.proc is not None else None
    if work != "small16_warm":
        ctx.cold.append(drop_caches())
    a = ctx.sim.snapshot(pid)
    t0 = time.perf_counter()
    try:
        if m is not None:
            with watchdog(m, ctx.args.timeout, work):
                amount = fn()
        else:
            amount = fn()
    except BenchError:
        raise
    except Exception as e:  # a client's error (the SDK's, httpx's): the pass failed
        raise BenchError(f"{r.target} {work}: {e!r}") from e
    secs = time.perf_counter() - t0
    b = ctx.sim.snapshot(pid)
    wall = b.t - a.t
    cpu = {"sim": (b.sims[0] - a.sims[0]) / wall, "daemon": (b.proc - a.proc) / wall,
           "bench": (b.me - a.me) / wall}
    cpu["other"] = max(0.0, (b.busy - a.busy) / wall - sum(cpu.values()))
    return Pass(amount / secs, secs, cpu, b.stats - a.stats)


@contextlib.contextmanager
def opened(ctx: Context, target: str) -> Iterator[Reader]:
    """A fresh mount of the bucket (the alluxiofuse targets) or a fresh client; a
    daemon's warnings are noted."""
    if target not in MOUNT_ARGS:
        r = Reader(ctx, target, None)
        try:
            yield r
        finally:
            r.close()
        return
    cache = Path(tempfile.mkdtemp(prefix=f"ais-bench-{target}-cache-"))

    def command(mnt: Path) -> list[str]:
        # --cache-dir and --metrics-addr only keep the mount apart from other mounts on
        # this machine (its spool, a port the OS picks); everything else is the default.
        return [sys.executable, "-m", "alluxiofuse", "mount", f"ais://{BUCKET}", str(mnt), "-f",
                "--ufs-option", f"endpoint={ctx.sim.url}", "--cache-dir", str(cache),
                "--metrics-addr", "127.0.0.1:0", *MOUNT_ARGS[target],
                *shlex.split(ctx.args.alluxiofuse_args)]

    try:
        with daemon_mount(target, command) as m:
            yield Reader(ctx, target, m)
            if m.errlog is not None and (bad := log_findings(m.errlog)[1]):
                ctx.problems.append(f"{target}: {len(bad)} warning(s) in its log:"
                                    + "".join(f"\n    {x}" for x in bad[:5]))
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_group(ctx: Context, target: str, group: str) -> Group:
    """One group of passes on a fresh mount (or client)."""
    with opened(ctx, target) as r:
        if group == "seq_cold":
            return Group({"seq_cold": timed(ctx, r, group, lambda: read_seq(r))})
        if group == "small16":
            cold = timed(ctx, r, "small16", lambda: read_small(r, False))
            warm = timed(ctx, r, "small16_warm", lambda: read_small(r, True))
            return Group({"small16": cold, "small16_warm": warm})
        want = walk_entries(ctx.ds)

        def walk() -> float:
            if (n := r.entries()) != want:
                raise BenchError(f"{target} walk: {n} entries, expected {want}")
            return n

        return Group({"walk": timed(ctx, r, "walk", walk)})


def run_target(ctx: Context, target: str, rep: int) -> None:
    args = ctx.args
    for group in (g for g in GROUPS if g in args.workloads):
        step = f"  [{rep + 1}/{args.repeat}] {target:<17} {group:<12} "

        def said(g: Group, step: str = step) -> str:
            return step + ", ".join(f"{p.value:,.1f}" for p in g.passes.values()) + " "

        g, discarded = quiet_pass(partial(run_group, ctx, target, group), args,
                                  ctx.sim.check_alive, f"{target} {group} (repetition {rep + 1})",
                                  said, ctx.problems)
        ctx.discarded += discarded
        for work, p in g.passes.items():
            ctx.results.setdefault((work, target), []).append(p)
            log(f"  [{rep + 1}/{args.repeat}] {target:<17} {work:<12} {p.value:>10,.1f} "
                f"{WORKLOADS[work]:<9} {p.secs:6.2f}s  cores: sim {p.cpu['sim']:.2f} daemon "
                f"{p.cpu['daemon']:.2f} bench {p.cpu['bench']:.2f} other "
                f"{p.cpu['other']:.2f}  requests: {', '.join(where(p.requests)) or '0'}")


def run(args: argparse.Namespace, ds: s3env.Dataset, logs: Path) -> Context:
    with simulator(args, ds, logs) as sim:
        ctx = Context(args, ds, sim, logs)
        for rep in range(args.repeat):
            k = rep % len(args.targets)
            for target in args.targets[k:] + args.targets[:k]:
                if target in ctx.failed:
                    continue
                try:
                    run_target(ctx, target, rep)
                except BenchError as e:
                    ctx.failed[target] = str(e)
                    log(f"  {target}: FAILED: {e}")
        return ctx


# ------------------------------------------------------------------------ report


def where(c: Counter[str]) -> list[str]:
    """Where a pass's requests went: object requests sent straight to a target, those the
    proxy redirected (counted once, at the proxy), and the others by kind."""
    out = []
    for how, label in (("direct", "direct"), ("redirect", "via proxy")):
        for k in sorted(c):
            if k.startswith(f"{how}:") and c[k]:
                out.append(f"{c[k]:,} {k.split(':', 1)[1]} {label}")
    objects = {"get", "head", "put", "delete", "object", "bytes_served"}
    out += [f"{c[k]:,} {k}" for k in sorted(c)
            if ":" not in k and k not in objects and c[k]]
    return out


def report(ctx: Context, markdown: bool) -> None:
    def values(work: str, target: str) -> list[float]:
        return [p.value for p in ctx.results.get((work, target), [])]

    def med(work: str, target: str) -> float | None:
        v = values(work, target)
        return statistics.median(v) if v else None

    def over(x: float | None, y: float | None) -> float | None:
        return x / y if x and y else None

    rows = [["workload", *TARGETS, "alluxiofuse / sdk", "alluxiofuse / http",
             "alluxiofuse / alluxiofuse.proxy"]]
    for work, unit in WORKLOADS.items():
        if not any(values(work, t) for t in TARGETS):
            continue
        a = med(work, "alluxiofuse")
        rows.append([f"{work} ({unit})", *(summary(values(work, t)) for t in TARGETS),
                     ratio(over(a, med(work, "sdk"))), ratio(over(a, med(work, "http"))),
                     ratio(over(a, med(work, "alluxiofuse.proxy")))])
    print()
    print_table(rows, markdown, left=(0,))
    print()
    rows = [["pass", "requests the simulator answered (last repetition)", "MiB served",
             "sim (cores)", "daemon (cores)", "bench process (cores)", "rest of machine (cores)"]]
    for work in WORKLOADS:
        for target in TARGETS:
            if not (ps := ctx.results.get((work, target))):
                continue

            def cores(key: str, ps: list[Pass] = ps) -> str:
                return f"{statistics.median(p.cpu[key] for p in ps):.2f}"

            rows.append([f"{work}: {target}", ", ".join(where(ps[-1].requests)) or "0",
                         f"{ps[-1].requests['bytes_served'] / MiB:,.1f}", cores("sim"),
                         "-" if target not in MOUNT_ARGS else cores("daemon"),
                         cores("bench"), cores("other")])
    print_table(rows, markdown, left=(0, 1))
    print()
    print_notes(ctx.problems, ctx.args.max_other, ctx.discarded)
    for t in TARGETS:
        status = ("not selected" if t not in ctx.args.targets else
                  f"FAILED: {ctx.failed[t]}" if t in ctx.failed else "ok")
        print(f"{t}: {status}")


def main() -> int:
    if "--serve" in sys.argv[1:]:
        return serve_main()
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="256 MiB and 2,000 small objects")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--only", default=",".join(TARGETS),
                   help=f"comma-separated targets: {', '.join(TARGETS)}")
    p.add_argument("--workloads", default=",".join(GROUPS),
                   help=f"comma-separated: {', '.join(GROUPS)} (small16 includes its warm pass)")
    p.add_argument("--sim-targets", type=int, default=3, help="the simulator's targets")
    p.add_argument("--sim-dir", type=Path, default=Path("/dev/shm"),
                   help="where the simulator keeps its objects (removed after the run)")
    p.add_argument("--alluxiofuse-args", default="",
                   help="extra daemon options for both mounts (one string): not the defaults")
    p.add_argument("--timeout", type=float, default=900, help="seconds allowed per pass")
    add_quiet_options(p)
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown")
    args = p.parse_args()
    targets = chosen(p, args.only, ALIASES, TARGETS)
    args.workloads = {w.strip() for w in args.workloads.split(",") if w.strip()}
    if bad := sorted(args.workloads - set(GROUPS)):
        p.error(f"unknown workload(s) {bad}; choose from {', '.join(GROUPS)}")
    if os.geteuid() != 0:
        p.error("run as root (FUSE mounts, drop_caches)")
    args.targets = targets
    signal.signal(signal.SIGTERM, on_sigterm)  # run the clean-ups, as on Ctrl-C
    ds = plan(args.quick)
    logs = Path(tempfile.mkdtemp(prefix="ais-bench-logs-", dir=s3env.BENCH_DIR
                                 if s3env.BENCH_DIR.is_dir() else None))
    try:
        ctx = run(args, ds, logs)
    except BenchError as e:
        log(f"FAILED: {e}\nlogs kept in {logs}")
        return 1
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM, once everything is cleaned up
        log(f"interrupted ({str(e) or 'Ctrl-C'}); logs kept in {logs}")
        return 130
    if ctx.failed:
        log(f"logs kept in {logs}")
    else:
        shutil.rmtree(logs, ignore_errors=True)

    print(environment())
    try:
        sdk = metadata.version("aistore")
    except metadata.PackageNotFoundError:
        sdk = "not installed"
    print(f"server: tests/sim/ais.py (one proxy, {args.sim_targets} targets, one thread), not a "
          f"real cluster: the ratios are the figures; SDK: aistore {sdk}")
    if args.alluxiofuse_args:
        print(f"NOTE: both mounts ran with {args.alluxiofuse_args!r}, not their defaults")
    print(f"data: big.bin {ds.big_size // MiB} MiB, {len(ds.small):,} objects of 4-64 KiB "
          f"({ds.small_bytes / MiB:.0f} MiB) in {N_DIRS} prefixes; repeat={args.repeat}, "
          f"median (min–max) shown; caches dropped: "
          f"{'yes' if ctx.cold and all(ctx.cold) else 'NO, cold numbers are not cold'}")
    report(ctx, args.markdown)
    return 1 if ctx.failed else 0


if __name__ == "__main__":
    sys.exit(main())
