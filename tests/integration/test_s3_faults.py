"""A mixed workload through an S3 mount behind a proxy that injects faults: nothing is lost."""

# The proxy (tests/support/faultproxy.py) stands between the daemon and moto, answering 10%
# of the requests with 503 SlowDown, resetting 2% part-way through their replies and
# stalling 1% for seconds, while threads read files (small ones and a large one by several
# readers), write, overwrite (whole and in part) and rename files through the mount.
# Checked: every read returns the right bytes and none fails; every file whose close
# returned 0 is in the bucket byte for byte at the end (after the drain at unmount for
# ASYNC_THROUGH); a close that failed left the previous version in the bucket; no call
# outlives its deadline; the daemon's peak RSS stays within its budget.
#
# The workload is written once, here, for two sizes: this test's, well under a minute, and
# bench/fault_bench.py's full one (which imports Plan, populate, run_workload and verify).
# The daemon gets botocore's default retries (not s3server's single attempt, which keeps a
# stopped server's failures fast elsewhere): its real retry stack is what is under test.

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import copy
import errno
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support.faultproxy import FaultProxy, Rates
from tests.support.mounts import Mount, MountFactory, errno_of, read_bytes, wait_until
from tests.support.s3server import S3Server, moto_s3

pytestmark = pytest.mark.integration

MiB = 1 << 20
ROOT = "root"  # the mounted prefix inside the bucket
BUDGET = 128 * MiB  # the daemon's --memory-budget: small enough for the RSS check to bite
RSS_SLACK = 150 * MiB  # the interpreter, its libraries and the rest beside the budget
SMALL_SIZES = (0, 1, 100, 4096, 65536, 200_000)


@dataclass(frozen=True)
class Plan:
    """The workload's size. Of ``writes`` files, a quarter are new, a quarter overwritten
    whole, a half overwritten in part (the old content fetched for the rest); ``large``
    of them are ``large_size`` bytes (multipart uploads)."""

    small: int = 100
    big: int = 32 * MiB
    big_readers: int = 4
    writes: int = 50
    large: int = 2
    large_size: int = 12 * MiB
    renames: int = 10
    threads: int = 16
    op_deadline: float = 30.0  # the longest one call (open, read, write, close, rename) may take
    deadline: float = 50.0  # the whole workload's
    seed: int = 20


@dataclass
class Write:
    """One file written: its previous content (None: new), what was written, how it went."""

    previous: bytes | None
    new: bytes
    error: int | None = None  # the errno of the open, write or close; None: closed with 0
    after_error: bytes | None = None  # the bucket's content right after the failure


@dataclass
class Dataset:
    reads: dict[str, bytes]  # path -> content, read through the mount
    writes: dict[str, Write]
    renames: dict[str, tuple[str, bytes]]  # old path -> (new path, content)


@dataclass
class Outcome:
    ops: collections.Counter[str] = field(default_factory=collections.Counter)
    bytes_verified: int = 0
    problems: list[str] = field(default_factory=list)  # wrong bytes, failed reads, ...
    slow: list[str] = field(default_factory=list)  # calls past their deadline
    rename_errors: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def count(self, op: str, n: int = 1) -> None:
        with self.lock:
            self.ops[op] += n

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)


def populate(fs: Any, root: str, plan: Plan) -> Dataset:
    """Put the files read, overwritten and renamed into the bucket (under ``root``,
    "bucket/prefix", directly), and say what the workload will write."""
    rng = random.Random(plan.seed)
    reads = {f"r/s{i:04d}.bin": rng.randbytes(rng.choice(SMALL_SIZES))
             for i in range(plan.small)}
    reads["r/big.bin"] = b"".join(rng.randbytes(min(64 * MiB, plan.big - at))
                                  for at in range(0, plan.big, 64 * MiB))
    writes: dict[str, Write] = {}
    for i in range(plan.writes):
        large = i < plan.large
        size = plan.large_size + i if large else rng.choice(SMALL_SIZES[1:])
        kind = ("new", "whole", "part", "part")[i % 4]
        name = f"w/{kind}{i:04d}.bin"
        previous = None if kind == "new" else rng.randbytes(size)
        if kind == "part":
            assert previous is not None
            at = rng.randrange(len(previous))
            patch = rng.randbytes(rng.randint(1, 4096))
            new = previous[:at] + patch + previous[at + len(patch):]
        else:
            new = rng.randbytes(size + 7 if kind == "whole" else size)
        writes[name] = Write(previous, new)
    renames = {f"m/a{i:04d}.bin": (f"m/b{i:04d}.bin", rng.randbytes(rng.choice(SMALL_SIZES)))
               for i in range(plan.renames)}
    objects = {**reads, **{k: w.previous for k, w in writes.items() if w.previous is not None},
               **{k: v[1] for k, v in renames.items()}}
    big = {k: v for k, v in objects.items() if len(v) > 8 * MiB}
    fs.pipe({f"{root}/{k}": v for k, v in objects.items() if k not in big})
    for k, v in big.items():  # one at a time: each is uploaded in parts in parallel
        fs.pipe_file(f"{root}/{k}", v)
    return Dataset(reads, writes, renames)


def _timed(out: Outcome, plan: Plan, what: str, fn: Callable[[], Any]) -> Any:
    """``fn()``, noted as slow when it outlives the deadline of one call."""
    t0 = time.monotonic()
    try:
        return fn()
    finally:
        took = time.monotonic() - t0
        if took > plan.op_deadline:
            with out.lock:
                out.slow.append(f"{what}: {took:.1f}s")


def _read(mnt: Path, out: Outcome, plan: Plan, name: str, want: bytes,
          start: int = 0, end: int | None = None) -> None:
    end = len(want) if end is None else end
    path = mnt / name
    try:
        f = _timed(out, plan, f"open {name}", lambda: open(path, "rb", buffering=0))  # noqa: SIM115
        with f:
            f.seek(start)
            at = start
            while at < end:
                n = min(MiB, end - at)
                got = _timed(out, plan, f"read {name}@{at}", partial(f.read, n))
                out.count("read")
                if got != want[at:at + n]:
                    out.problem(f"wrong bytes: {name} at {at}: {len(got)} bytes read of {n}, "
                                f"first difference at {_first_difference(got, want[at:at + n])}")
                    return
                at += n
                with out.lock:
                    out.bytes_verified += n
            out.count("open for reading")
    except OSError as e:
        out.problem(f"read failed (daemon bug: retries within the deadline would have "
                    f"served it): {name} [{start}, {end}): {e!r}")


def _first_difference(a: bytes, b: bytes) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y),
                min(len(a), len(b)))


def _write(mnt: Path, out: Outcome, plan: Plan, name: str, w: Write,
           peek: Callable[[str], bytes | None]) -> None:
    path = mnt / name
    part = w.previous is not None and len(w.previous) == len(w.new) and w.previous != w.new
    try:
        if part:
            assert w.previous is not None
            at = _first_difference(w.previous, w.new)
            f = _timed(out, plan, f"open {name}", lambda: open(path, "r+b", buffering=0))  # noqa: SIM115
            try:
                f.seek(at)
                end = len(w.new) - _first_difference(w.previous[::-1], w.new[::-1])
                _timed(out, plan, f"write {name}", lambda: f.write(w.new[at:end]))
            finally:
                _timed(out, plan, f"close {name}", f.close)
        else:
            f = _timed(out, plan, f"open {name}", lambda: open(path, "wb", buffering=0))  # noqa: SIM115
            try:
                for at in range(0, len(w.new), MiB):
                    _timed(out, plan, f"write {name}@{at}", partial(f.write, w.new[at:at + MiB]))
            finally:
                _timed(out, plan, f"close {name}", f.close)
        out.count("write")
    except OSError as e:
        w.error = e.errno
        w.after_error = peek(name)  # before any retry in the background lands it
        out.count("write failed")


def _rename(mnt: Path, out: Outcome, plan: Plan, old: str, new: str) -> None:
    try:
        _timed(out, plan, f"rename {old}", lambda: os.rename(mnt / old, mnt / new))
        out.count("rename")
    except OSError as e:
        with out.lock:
            out.rename_errors[old] = e.errno or 0
        out.count("rename failed")


def run_workload(mnt: Path, ds: Dataset, plan: Plan,
                 peek: Callable[[str], bytes | None]) -> Outcome:
    """Every read, write and rename of ``ds`` through the mount at ``mnt``, in a shuffled
    order, ``plan.threads`` at once. ``peek(path)`` reads the bucket directly."""
    out = Outcome()
    jobs: list[Callable[[], None]] = []
    for name, want in ds.reads.items():
        if name == "r/big.bin":
            part = -(-len(want) // plan.big_readers)
            jobs += [partial(_read, mnt, out, plan, name, want, s, min(s + part, len(want)))
                     for s in range(0, len(want), part)]
        else:
            jobs.append(partial(_read, mnt, out, plan, name, want))
    jobs += [partial(_write, mnt, out, plan, name, w, peek) for name, w in ds.writes.items()]
    jobs += [partial(_rename, mnt, out, plan, old, new) for old, (new, _) in ds.renames.items()]
    random.Random(plan.seed).shuffle(jobs)
    pool = concurrent.futures.ThreadPoolExecutor(plan.threads, thread_name_prefix="workload")
    futures = [pool.submit(job) for job in jobs]
    done, pending = concurrent.futures.wait(futures, timeout=plan.deadline)
    pool.shutdown(wait=not pending, cancel_futures=True)
    if pending:
        out.problem(f"hang: {len(pending)} of {len(futures)} operations not done within "
                    f"{plan.deadline}s")
    for fut in done:
        if (e := fut.exception()) is not None:
            out.problem(f"operation raised {e!r}")
    return out


def verify(ds: Dataset, out: Outcome, peek: Callable[[str], bytes | None]) -> dict[str, int]:
    """What the bucket holds at the end against what the workload was told (problems go
    to ``out``): the files checked, lost and wrong, by kind."""
    figures = collections.Counter[str]()
    for name, w in ds.writes.items():
        now = peek(name)
        figures["files checked"] += 1
        if w.error is None:
            if now != w.new:
                figures["files lost"] += 1
                out.problem(f"lost: {name} closed with 0 but the bucket has "
                            f"{_describe(now, w)}")
            else:
                with out.lock:
                    out.bytes_verified += len(now)
            continue
        figures["closes failed"] += 1
        if w.after_error != w.previous:
            figures["files wrong"] += 1
            out.problem(f"a failed close ({errno.errorcode.get(w.error or 0)}) of {name} did "
                        f"not leave the previous version: {_describe(w.after_error, w)}")
        if now not in (w.previous, w.new):
            figures["files wrong"] += 1
            out.problem(f"{name}: the bucket has {_describe(now, w)} after a failed close")
    for old, (new, content) in ds.renames.items():
        at_old, at_new = peek(old), peek(new)
        figures["files checked"] += 1
        if old in out.rename_errors:
            if content not in (at_old, at_new):
                figures["files lost"] += 1
                out.problem(f"lost: a failed rename of {old} left it at neither name")
        elif at_new != content or at_old is not None:
            figures["files lost"] += 1
            out.problem(f"rename {old} -> {new} returned 0 but the bucket has "
                        f"{len(at_old or b'')} bytes at the old name, "
                        f"{None if at_new is None else len(at_new)} at the new one")
    return dict(figures)


def _describe(now: bytes | None, w: Write) -> str:
    if now is None:
        return "no object"
    if now == w.previous:
        return "the previous version"
    if now == w.new:
        return "the new version"
    return f"{len(now)} bytes of neither version (new {len(w.new)} bytes)"


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


# -- the test

# Half the default plan's files (bench/fault_bench.py's quick run): still every kind of
# operation, two multipart uploads and a large file read in parts, and enough requests
# (some hundreds) that every kind of fault strikes each run.
TEST_PLAN = Plan(small=50, big=16 * MiB, writes=24, large=2, large_size=6 * MiB, renames=6)


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        server.fs().pipe_file(f"{server.bucket}/{ROOT}/", b"")
        yield server


@pytest.fixture
def faults(s3: S3Server) -> Iterator[FaultProxy]:
    """The proxy in front of moto, injecting nothing until the test says."""
    host, _, port = s3.endpoint_url.removeprefix("http://").rpartition(":")
    with FaultProxy((host, int(port)), seed=2026) as proxy:
        yield proxy


def mount_behind(mount: MountFactory, s3: S3Server, proxy: FaultProxy, *options: str) -> Mount:
    ufs = copy.deepcopy(s3.ufs_options)
    ufs["endpoint_url"] = proxy.url
    del ufs["config_kwargs"]["retries"]  # botocore's own: see the module's comment
    return mount(s3.url(ROOT), *(f"--ufs-option={k}={v if isinstance(v, str) else json.dumps(v)}"
                                 for k, v in ufs.items()), *options)


def test_the_proxy_passes_bodies_by_their_framing_and_flips_one_byte(s3: S3Server) -> None:
    """The proxy itself, with a plain HTTP client: a chunked upload passes whole; a flip
    changes exactly one byte of a body sent with a length, chunked, or aws-chunked (of its
    data, not its framing); an error answer to ``Expect: 100-continue`` closes; and every
    thread ends at close."""
    import http.client

    fs = s3.fs()
    body = bytes(range(256)) * 100
    host, _, port = s3.endpoint_url.removeprefix("http://").rpartition(":")

    def differences(key: str) -> int:
        got = bytes(fs.cat_file(f"{s3.bucket}/{key}"))
        return len(got) - len(body) + sum(a != b for a, b in zip(got, body, strict=False))

    def put_chunked(c: http.client.HTTPConnection, key: str) -> int:
        c.putrequest("PUT", f"/{s3.bucket}/{key}")
        c.putheader("Transfer-Encoding", "chunked")
        c.endheaders()
        for at in range(0, len(body), 7000):
            c.send(b"%x\r\n%s\r\n" % (len(body[at:at + 7000]), body[at:at + 7000]))
        c.send(b"0\r\n\r\n")
        reply = c.getresponse()
        reply.read()
        return reply.status

    with FaultProxy((host, int(port))) as proxy:
        c = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
        assert put_chunked(c, "chunked") == 200
        assert differences("chunked") == 0
        proxy.inject("flip", method="PUT")
        c.request("PUT", f"/{s3.bucket}/flipped", body=body)
        assert (c.getresponse().read(), differences("flipped")) == (b"", 1)
        proxy.inject("flip", method="PUT")
        assert put_chunked(c, "flipped-chunked") == 200
        assert differences("flipped-chunked") == 1
        proxy.inject("flip", method="PUT")
        signature = b"0" * 64
        aws = (b"%x;chunk-signature=%s\r\n%s\r\n0;chunk-signature=%s\r\n\r\n"
               % (len(body), signature, body, signature))
        c.request("PUT", f"/{s3.bucket}/flipped-aws", body=aws, headers={
            "Content-Encoding": "aws-chunked", "x-amz-decoded-content-length": str(len(body)),
            "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"})
        reply = c.getresponse()
        assert (reply.status, reply.read()) == (200, b"")
        assert differences("flipped-aws") == 1
        proxy.inject("slowdown", method="PUT")
        c.putrequest("PUT", f"/{s3.bucket}/expecting")
        c.putheader("Content-Length", str(len(body)))
        c.putheader("Expect", "100-continue")
        c.endheaders()
        reply = c.getresponse()
        assert (reply.status, reply.getheader("Connection")) == (503, "close")
        assert b"<Code>SlowDown</Code>" in reply.read()
        c.close()
        counts = proxy.counts()
        assert (counts["requests"], counts["flip"], counts["slowdown"]) == (5, 3, 1)
    assert not [t for t in threading.enumerate() if t.name.startswith("faultproxy")]


# Bug: s3.get_start (alluxiofuse/backends/s3.py) reads the reply of a file's first status
# read (a ranged GET from byte 0, no If-Match) unguarded: a reply cut mid-body raises
# aiohttp's ClientPayloadError, an unexpected error: the stat fails with EIO (under
# --strict the daemon dies) where asking again would have served it.
# A file's first status read: a GET from byte 0 without If-Match (small files a listing
# named are read with their status, in one GET).
_STATUS_READ = r"^(?![\s\S]*\r\nif-match:)[\s\S]*\r\nrange: bytes=0-"


def test_a_status_read_cut_mid_body_is_asked_again(
    s3: S3Server, faults: FaultProxy, mount: MountFactory,
) -> None:
    """One reply cut part-way, on the first stat of a file a listing named: the status is
    asked for again (a HEAD), and the read gets the right bytes."""
    data = random.Random(1).randbytes(200_000)
    s3.fs().pipe_file(f"{s3.bucket}/{ROOT}/f.bin", data)
    m = mount_behind(mount, s3, faults, "--io-timeout", "20")
    assert os.listdir(m.path) == ["f.bin"]
    faults.inject("reset", method="GET", target=r"/f\.bin", header=_STATUS_READ)
    assert read_bytes(m.path / "f.bin") == data
    assert faults.counts()["reset"] == 1


def test_a_close_whose_upload_completed_unseen_returns_0(
    s3: S3Server, faults: FaultProxy, mount: MountFactory,
) -> None:
    """The reply to CompleteMultipartUpload lost after the store completed the upload: its
    retry is answered NoSuchUpload (as S3 does), and the object, HEADed, is this upload:
    close() returns 0 and the bucket has the new content."""
    fs = s3.fs()
    fs.pipe_file(f"{s3.bucket}/{ROOT}/f.bin", b"old" * 1000)
    m = mount_behind(mount, s3, faults, "--io-timeout", "20", "--upload-part-size", "5MiB")
    assert os.listdir(m.path) == ["f.bin"]
    faults.inject("reset", method="POST", target=r"/f\.bin\?uploadId=")
    faults.inject("nosuchupload", method="POST", target=r"/f\.bin\?uploadId=")
    new = random.Random(2).randbytes(6 * MiB + 7)  # two parts

    def write() -> None:
        with open(m.path / "f.bin", "wb") as f:
            f.write(new)

    assert errno_of(write) is None
    assert fs.cat_file(f"{s3.bucket}/{ROOT}/f.bin") == new
    assert faults.counts()["reset"] == 1 and faults.counts()["nosuchupload"] == 1


@pytest.mark.expect_log(r"^f\.bin: upload owed after a failed commit", count=1)
@pytest.mark.expect_log(r"^flush: ContentMismatch: .*f\.bin: the store's ETag of", count=1)
@pytest.mark.parametrize("size", [100_000, 6 * MiB + 7])  # one PUT; two parts
def test_an_upload_whose_body_is_damaged_on_the_way_is_never_taken_for_good(
    s3: S3Server, faults: FaultProxy, mount: MountFactory, size: int,
) -> None:
    """The proxy flips a byte of the upload's body after the client computed its MD5 and
    checksums. The store (moto keeps what it gets) holds a damaged object only until the
    ETag check fails the commit: close() is EIO, the bytes stay in the spool, and the
    upload owed lands whole in the background."""
    fs = s3.fs()
    m = mount_behind(mount, s3, faults, "--io-timeout", "20", "--upload-part-size", "5MiB")
    new = random.Random(3).randbytes(size)
    faults.inject("flip", method="PUT", target=r"/f\.bin")

    def write() -> None:
        with open(m.path / "f.bin", "wb") as f:
            f.write(new)

    assert errno_of(write) == errno.EIO
    assert faults.counts()["flip"] == 1
    key = f"{s3.bucket}/{ROOT}/f.bin"

    def landed() -> bool:
        with contextlib.suppress(FileNotFoundError, OSError):
            return bool(fs.cat_file(key) == new)
        return False

    assert wait_until(landed, 30), "the upload owed never landed whole"


@pytest.mark.timeout(150)
@pytest.mark.parametrize("write_type", ["THROUGH", "ASYNC_THROUGH"])
def test_a_mixed_workload_under_faults_loses_nothing(
    s3: S3Server, faults: FaultProxy, mount: MountFactory, write_type: str,
) -> None:
    plan = TEST_PLAN
    fs = s3.fs()
    root = f"{s3.bucket}/{ROOT}"
    ds = populate(fs, root, plan)

    def peek(name: str) -> bytes | None:
        try:
            return bytes(fs.cat_file(f"{root}/{name}"))
        except FileNotFoundError:
            return None

    m = mount_behind(mount, s3, faults, "--write-type", write_type, "--io-timeout", "20",
                     "--memory-budget", str(BUDGET), "--upload-part-size", "5MiB")
    try:
        budget = m.scrape()("alluxiofuse_memory_budget_bytes")
        faults.set_rates(Rates(slowdown=0.10, reset=0.02, stall=0.01, stall_seconds=1.0))
        # Besides the rates, one reply cut on a first status read, so that every run meets
        # that path rather than most.
        faults.inject("reset", method="GET", target=r"/r/s\d+\.bin", header=_STATUS_READ)
        t0 = time.monotonic()
        out = run_workload(m.path, ds, plan, peek)
        rss = peak_rss(m.proc.pid)
        assert m.unmount(timeout=90) == 0, m.log_text()[-3000:]  # ASYNC_THROUGH: the drain
        took = time.monotonic() - t0
        faults.set_rates(Rates())
        figures = verify(ds, out, peek)
        counts = faults.counts()
        summary = (f"{write_type}: {dict(out.ops)}, faults {counts}, {figures}, "
                   f"{out.bytes_verified} bytes verified, {took:.1f}s, peak RSS "
                   f"{rss / MiB:.0f} MiB (budget {budget / MiB:.0f} MiB)")
        print(summary)
        assert not out.problems, "\n".join([summary, *out.problems[:20]])
        assert not out.slow, "\n".join([summary, *out.slow[:20]])
        assert out.ops["open for reading"] == len(ds.reads) - 1 + plan.big_readers, summary
        assert out.bytes_verified >= sum(map(len, ds.reads.values())), summary
        assert counts["slowdown"] > 0 and counts["reset"] > 1 and counts["stall"] > 0, summary
        assert figures.get("files lost", 0) == 0
        assert rss <= budget + RSS_SLACK, summary
    finally:
        m.close()

