"""What the S3 benchmarks share: an S3 server (s3rver) on loopback with the data set in
it, the latency proxy in front of it, a plain boto3 client, and a FUSE mount of the bucket
by alluxiofuse or by one of its peers (rclone mount, s3fs-fuse, fsspec.fuse), each with its
own defaults.

What it needs and installs where missing (bench/README.md):
  s3rver       npm package, installed with ``npm install --prefix DIR`` into
               /var/tmp/alluxiofuse-bench/node (outside the repo; $ALLUXIOFUSE_BENCH_NODE
               to move it); needs node and npm (Debian packages nodejs, npm)
  rclone       Debian package ``rclone`` (``apt-get install -y rclone``)
  s3fs-fuse    Debian package ``s3fs``
  fsspec.fuse  PyPI ``fusepy`` (on libfuse2) and ``s3fs``
  boto3        PyPI ``boto3``
The Python ones are the project's ``bench`` extra (``pip install -e '.[bench]'``): they are
installed into the running interpreter by ``ensure_python_deps`` when missing. The others
are not installed by the bench (it says what is missing and skips that peer) except s3rver,
which every run needs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import latency_proxy
from bench.harness import REPO_ROOT, BenchError, MiB, end, is_mounted, log, stop, tail, vm_hwm_mib

BENCH_DIR = Path(os.environ.get("ALLUXIOFUSE_BENCH_DIR", "/var/tmp/alluxiofuse-bench"))
NODE_DIR = Path(os.environ.get("ALLUXIOFUSE_BENCH_NODE", BENCH_DIR / "node"))
S3RVER_VERSION = "3.7.1"
KEY = SECRET = "S3RVER"  # s3rver's fixed credentials
BUCKET = "bench"
START_TIMEOUT = 60.0
MOUNT_TIMEOUT = 60.0
SEED = 20261206
PEERS = ("alluxiofuse", "rclone", "s3fs", "fsspec")
PEER_NAMES = {"alluxiofuse": "alluxiofuse", "rclone": "rclone mount", "s3fs": "s3fs-fuse",
              "fsspec": "fsspec.fuse"}
# s3rver lists a prefix that holds only prefixes (small/, tree/) as if it were not there:
# its listing prunes the walk of its store below the first delimiter before it has seen an
# object there. A small object directly in each keeps these directories visible to all.
MARKERS = ("small/README.txt", "tree/README.txt")
PYTHON_DEPS = {"boto3": "boto3", "fuse": "fusepy", "s3fs": "s3fs"}  # module -> PyPI name



# ------------------------------------------------------------------------ installing


def ensure_python_deps() -> None:
    """pip-install the bench extra's packages into this interpreter where missing."""
    missing = [pkg for mod, pkg in PYTHON_DEPS.items() if importlib.util.find_spec(mod) is None]
    if missing:
        log(f"installing {' '.join(missing)} into {sys.prefix} (the bench extra)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def s3rver_bin() -> Path:
    """The s3rver command, installed into NODE_DIR by npm the first time."""
    exe = NODE_DIR / "node_modules" / ".bin" / "s3rver"
    if not exe.exists():
        if shutil.which("npm") is None:
            raise BenchError("s3rver needs npm: apt-get install -y nodejs npm")
        log(f"installing s3rver {S3RVER_VERSION} into {NODE_DIR} (npm)")
        NODE_DIR.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--prefix", str(NODE_DIR), "--no-audit", "--no-fund",
                        f"s3rver@{S3RVER_VERSION}"], check=True, stdout=subprocess.DEVNULL)
    return exe


def missing_tool(peer: str) -> str | None:
    """Why `peer` cannot run here, or None."""
    if peer == "rclone" and shutil.which("rclone") is None:
        return "rclone is not installed (apt-get install -y rclone)"
    if peer == "s3fs" and shutil.which("s3fs") is None:
        return "s3fs-fuse is not installed (apt-get install -y s3fs)"
    if peer == "fsspec" and importlib.util.find_spec("fuse") is None:
        return "fusepy is not installed (pip install fusepy)"
    return None


# ------------------------------------------------------------------------ processes



# ------------------------------------------------------------------------ S3 server


@dataclass
class S3Server:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes]
    bucket: str = BUCKET

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def s3rver(directory: Path | None = None, logfile: Path | None = None) -> Iterator[S3Server]:
    """s3rver on 127.0.0.1 (a port the OS picks) serving ``directory`` (a temporary one
    if None: then gone afterwards) with the bucket BUCKET."""
    exe = s3rver_bin()
    with contextlib.ExitStack() as stack:
        if directory is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="s3rver-")))
        directory.mkdir(parents=True, exist_ok=True)
        err = stack.enter_context(open(logfile or os.devnull, "wb"))
        proc = subprocess.Popen(
            [str(exe), "-d", str(directory), "-a", "127.0.0.1", "-p", "0", "--silent",
             "--configure-bucket", BUCKET],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
            # Its continuation tokens (truncated listings) use DES, which OpenSSL 3 keeps
            # in its legacy provider: without it such a listing is a 500.
            env=dict(os.environ, NODE_OPTIONS="--openssl-legacy-provider"))
        stack.callback(end, proc)
        assert proc.stdout is not None
        stack.callback(proc.stdout.close)
        timer = threading.Timer(START_TIMEOUT, proc.kill)
        timer.start()
        port = 0
        for raw in proc.stdout:  # "S3rver listening on 127.0.0.1:PORT"
            if b"listening on" in raw:
                port = int(raw.decode().rsplit(":", 1)[1])
                break
        timer.cancel()
        if not port:
            raise BenchError(f"s3rver did not start ({proc.poll()}): {tail(Path(err.name))}")
        # Its stdout is not read from now on: --silent keeps it quiet.
        yield S3Server(port, directory, proc)


def client(url: str, max_pool: int = 64) -> Any:
    """A plain boto3 S3 client of ``url`` (path-style, s3rver's credentials)."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
        region_name="us-east-1",
        config=Config(max_pool_connections=max_pool, s3={"addressing_style": "path"},
                      retries={"max_attempts": 3, "mode": "standard"},
                      connect_timeout=10, read_timeout=60))


def ranged_get(c: Any, bucket: str, key: str, size: int, threads: int,
               part: int = 8 * MiB) -> int:
    """Read ``key`` by ``threads`` parallel ranged GETs of ``part`` bytes; bytes read."""
    def one(off: int) -> int:
        body = c.get_object(Bucket=bucket, Key=key,
                            Range=f"bytes={off}-{min(off + part, size) - 1}")["Body"]
        n = 0
        while chunk := body.read(MiB):
            n += len(chunk)
        return n

    with ThreadPoolExecutor(max_workers=threads) as ex:
        return sum(ex.map(one, range(0, size, part)))


def get_many(c: Any, bucket: str, keys: list[str], threads: int) -> int:
    """GET every key with ``threads`` concurrent requests; bytes read."""
    def one(key: str) -> int:
        return len(c.get_object(Bucket=bucket, Key=key)["Body"].read())

    with ThreadPoolExecutor(max_workers=threads) as ex:
        return sum(ex.map(one, keys))


# ------------------------------------------------------------------------ the data set


@dataclass
class Dataset:
    """The objects of the bucket: one big file, small files in directories, and a tree of
    tiny files to walk (keys are paths below the bucket)."""

    name: str
    big_size: int
    small: list[tuple[str, int]]
    tree: list[str]
    tree_dirs: int
    offsets: list[int]  # where each small file's bytes start in small_pool()

    big_key = "big.bin"

    @property
    def small_bytes(self) -> int:
        return sum(s for _, s in self.small)

    @property
    def walk_entries(self) -> int:
        """What os.walk of tree/ yields: its directories and files (and its marker)."""
        return self.tree_dirs + len(self.tree) + 1

    def spec(self) -> dict[str, Any]:
        return {"seed": SEED, "big": self.big_size, "small": len(self.small),
                "tree": len(self.tree), "markers": list(MARKERS)}

    def small_content(self, i: int) -> bytes:
        """The bytes of small file ``i``: a slice of a seeded pool, so that the mount's
        bytes can be checked without keeping them."""
        off = self.offsets[i]
        return small_pool()[off:off + self.small[i][1]]


_POOL: list[bytes] = []


def small_pool() -> bytes:
    if not _POOL:
        _POOL.append(random.Random(SEED + 2).randbytes(4 * MiB))
    return _POOL[0]


def plan(quick: bool) -> Dataset:
    """full: 1 GiB; 2,000 files of 4-64 KiB in 20 directories; a tree of 100 directories of
    100 files (a walk of 10,100 entries). quick: 128 MiB; 400 files; 10 x 50 files."""
    rng = random.Random(SEED)
    n_small, n_dirs, tree_dirs, per_dir = (400, 20, 10, 50) if quick else (2000, 20, 100, 100)
    small = [(f"small/d{i % n_dirs:02d}/f{i:04d}.bin", rng.randint(4096, 65536))
             for i in range(n_small)]
    tree = [f"tree/d{d:03d}/f{f:03d}" for d in range(tree_dirs) for f in range(per_dir)]
    orng = random.Random(SEED + 1)
    offsets = [orng.randrange(4 * MiB - size) for _, size in small]
    return Dataset("quick" if quick else "full", (128 if quick else 1024) * MiB, small, tree,
                   tree_dirs, offsets)


def big_block(i: int, size: int) -> bytes:
    """Block ``i`` of the big file: seeded bytes, each 4 KiB stamped with its offset."""
    block = bytearray(random.Random(SEED + 3 + i).randbytes(size))
    for off in range(0, size, 4096):
        block[off:off + 8] = (i * size + off).to_bytes(8, "little")
    return bytes(block)


class BigFile:
    """A file-like reader of the big object's bytes, made block by block (no temp file)."""

    BLOCK = 16 * MiB

    def __init__(self, size: int) -> None:
        self.size, self.pos, self.buf = size, 0, b""

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size - self.pos
        while len(self.buf) < n and self.pos < self.size:
            i = self.pos // self.BLOCK
            self.buf += big_block(i, min(self.BLOCK, self.size - self.pos))
            self.pos += self.BLOCK
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def populate(server: S3Server, ds: Dataset) -> None:
    """Put the data set into the bucket unless its manifest says it is there already."""
    c = client(server.url)
    with contextlib.suppress(Exception):
        got = json.loads(c.get_object(Bucket=server.bucket, Key="manifest.json")["Body"].read())
        if got == ds.spec():
            return
    log(f"populating s3rver ({ds.name}): {ds.big_size // MiB} MiB, {len(ds.small)} small "
        f"files, {len(ds.tree)} tree files ...")
    t0 = time.monotonic()
    from boto3.s3.transfer import TransferConfig

    c.upload_fileobj(BigFile(ds.big_size), server.bucket, ds.big_key,
                     Config=TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=4))

    def put(item: tuple[str, bytes]) -> None:
        c.put_object(Bucket=server.bucket, Key=item[0], Body=item[1])

    items = [(key, ds.small_content(i)) for i, (key, _) in enumerate(ds.small)]
    items += [(key, b"x" * 100) for key in ds.tree]
    items += [(key, b"benchmark data of bench/s3env.py\n") for key in MARKERS]
    with ThreadPoolExecutor(max_workers=16) as ex:
        list(ex.map(put, items))
    c.put_object(Bucket=server.bucket, Key="manifest.json", Body=json.dumps(ds.spec()).encode())
    log(f"populated in {time.monotonic() - t0:.0f}s")


@dataclass
class Endpoint:
    """s3rver with the data set (None: a bench's own objects), and the latency proxy in
    front of it."""

    server: S3Server
    proxy: latency_proxy.Spawned
    ds: Dataset | None
    ttfb: float
    bandwidth: float

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy.port}"

    @property
    def bucket(self) -> str:
        return self.server.bucket


@contextlib.contextmanager
def endpoint(ds: Dataset, logs: Path, ttfb: float = latency_proxy.DEFAULT_TTFB,
             bandwidth: float = latency_proxy.DEFAULT_BANDWIDTH) -> Iterator[Endpoint]:
    """s3rver over BENCH_DIR/s3rver-NAME (kept between runs: populated once), behind the
    latency proxy in a process of its own."""
    with s3rver(BENCH_DIR / f"s3rver-{ds.name}", logs / "s3rver.log") as server:
        populate(server, ds)
        with latency_proxy.spawn(("127.0.0.1", server.port), ttfb, bandwidth,
                                 logs / "proxy.log") as proxy:
            yield Endpoint(server, proxy, ds, ttfb, bandwidth)


def round_trip(url: str, bucket: str, key: str, n: int = 20) -> float:
    """Median seconds of a HEAD of ``key`` on a kept-alive connection: one round trip."""
    c = client(url, max_pool=1)
    c.head_object(Bucket=bucket, Key=key)  # connect first
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.head_object(Bucket=bucket, Key=key)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


# ------------------------------------------------------------------------ results


@dataclass
class Results:
    """Samples by "workload|target": [value, complete] each; saved and merged as JSON."""

    samples: dict[str, list[list[float]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rtt: list[float] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def add(self, work: str, target: str, value: float, complete: bool = True) -> None:
        self.samples.setdefault(f"{work}|{target}", []).append([value, float(complete)])

    def median(self, work: str, target: str) -> tuple[float | None, bool]:
        vals = self.samples.get(f"{work}|{target}")
        if not vals:
            return None, True
        return statistics.median(v for v, _ in vals), all(c for _, c in vals)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({"samples": self.samples, "notes": self.notes,
                                    "rtt": self.rtt, "failed": self.failed}, indent=1))

    @classmethod
    def load(cls, path: Path) -> Results:
        d = json.loads(path.read_text())
        return cls(d["samples"], d["notes"], d["rtt"], d["failed"])

    def merged_into(self, path: Path) -> Results:
        """Add these samples to the --results file ``path`` (made if missing); the sum."""
        total = Results.load(path) if path.exists() else Results()
        total.merge(self)
        total.save(path)
        return total

    def merge(self, other: Results) -> None:
        for k, v in other.samples.items():
            self.samples.setdefault(k, []).extend(v)
        self.notes += [n for n in other.notes if n not in self.notes]
        self.rtt += other.rtt
        self.failed.update(other.failed)



# ------------------------------------------------------------------------ mounts


@dataclass
class Mount:
    peer: str
    root: Path
    proc: subprocess.Popen[bytes]
    logfile: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_hwm_mib(self) -> float | None:
        return vm_hwm_mib(self.proc.pid)

    def tail(self) -> str:
        return f"--- {self.peer} log ({self.logfile}):\n    {tail(self.logfile)}"

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.peer} exited ({self.proc.returncode})\n    {self.tail()}")


def alluxiofuse_python(repo: Path) -> str:
    """The interpreter that runs the daemon of ``repo``: its .venv's, else this one."""
    venv = repo / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def mount_command(peer: str, ep: Endpoint, mnt: Path, work: Path, repo: Path,
                  extra: str) -> tuple[list[str], dict[str, str]]:
    """The command line (foreground) and environment that mount ep's bucket on ``mnt``
    with ``peer``'s own defaults; ``work`` is a scratch directory of this mount."""
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET,
               AWS_DEFAULT_REGION="us-east-1")
    if peer == "alluxiofuse":
        env["PYTHONPATH"] = str(repo)
        # --cache-dir and --metrics-addr only keep the mount apart from other mounts on
        # this machine (its spool, a port the OS picks); everything else is the default.
        return [alluxiofuse_python(repo), "-m", "alluxiofuse", "mount", f"s3://{ep.bucket}/",
                str(mnt), "-f", "--ufs-option",
                "client_kwargs=" + json.dumps({"endpoint_url": ep.url}),
                "--cache-dir", str(work / "cache"), "--metrics-addr", "127.0.0.1:0",
                *shlex.split(extra)], env
    if peer == "rclone":
        env.update(RCLONE_CONFIG="/dev/null", RCLONE_S3_PROVIDER="Other",
                   RCLONE_S3_ENDPOINT=ep.url, RCLONE_S3_ACCESS_KEY_ID=KEY,
                   RCLONE_S3_SECRET_ACCESS_KEY=SECRET, RCLONE_CACHE_DIR=str(work / "cache"))
        env.pop("AWS_CA_BUNDLE", None)  # rclone cannot load one into its transport: it exits
        return ["rclone", "mount", f":s3:{ep.bucket}", str(mnt), *shlex.split(extra)], env
    if peer == "s3fs":
        passwd = work / "passwd"
        passwd.write_text(f"{KEY}:{SECRET}\n")
        passwd.chmod(0o600)
        return ["s3fs", ep.bucket, str(mnt), "-f", "-o", f"url={ep.url}", "-o",
                "use_path_request_style", "-o", f"passwd_file={passwd}",
                *shlex.split(extra)], env
    if peer == "fsspec":
        code = ("import sys, json, s3fs, fsspec.fuse; fs = s3fs.S3FileSystem("
                "client_kwargs={'endpoint_url': sys.argv[1]}); "
                "fsspec.fuse.run(fs, sys.argv[2] + '/', sys.argv[3], foreground=True)")
        return [sys.executable, "-c", code, ep.url, ep.bucket, str(mnt)], env
    raise ValueError(peer)


@contextlib.contextmanager
def mounted(peer: str, ep: Endpoint, logs: Path, repo: Path = REPO_ROOT,
            extra: str = "") -> Iterator[Mount]:
    """A fresh mount of ep's bucket by ``peer`` under a temporary directory; unmounted,
    its process ended and its directory removed on the way out, whatever happens."""
    work = Path(tempfile.mkdtemp(prefix=f"s3bench-{peer}-"))
    mnt = work / "mnt"
    mnt.mkdir()
    logfile = logs / f"{peer}-{time.strftime('%H%M%S')}-{os.getpid()}.log"
    try:
        cmd, env = mount_command(peer, ep, mnt, work, repo, extra)
        with open(logfile, "ab") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=work,
                                    start_new_session=True)
        m = Mount(peer, mnt, proc, logfile)
        try:
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not os.path.ismount(mnt):
                m.check()
                if time.monotonic() > deadline:
                    raise BenchError(f"{peer} not mounted after {MOUNT_TIMEOUT:.0f}s\n    "
                                     f"{m.tail()}")
                time.sleep(0.05)
            yield m
        finally:
            stop(proc, mnt)  # unmount, wait, SIGTERM, SIGKILL, lazy unmount; rmdir
    finally:
        if not is_mounted(mnt):  # never delete through a mount that would not go
            shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------------ reading


def read_range(path: Path, start: int, length: int) -> int:
    """Read ``length`` bytes of ``path`` from ``start`` in 1 MiB calls; bytes read."""
    buf, total = bytearray(MiB), 0
    with open(path, "rb", buffering=0) as f:
        f.seek(start)
        while total < length:
            n = f.readinto(memoryview(buf)[:min(MiB, length - total)])
            if not n:
                break
            total += n
    return total


def read_parallel(path: Path, size: int, readers: int) -> int:
    """``readers`` threads, each reading its own contiguous part of ``path`` in order."""
    part = -(-size // readers)
    with ThreadPoolExecutor(max_workers=readers) as ex:
        return sum(ex.map(lambda i: read_range(path, i * part, min(part, size - i * part)),
                          range(readers)))
