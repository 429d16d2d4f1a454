"""What the local-directory benchmarks share: the data set (generated once and cached under
--data-dir), its checks and readers, and the mounts of the local targets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bench.harness import REPO_ROOT, BenchError, MiB, Mount, daemon_mount, log

BLOCK = 64 * MiB
FAULTS_TARGET = 30_000  # daemon minor faults in a cold 1 GiB sequential read (issue 16)
SEED = 20240611
N_DIRS = 100
# The local targets: the source directory itself ("direct") and the daemons mounted() runs
# over it.
TARGETS = ("direct", "alluxiofuse", "alluxiofuse.fsspec", "alluxiofuse.tuned", "fsspec.fuse",
           "floor", "floor.read")
DAEMONS = ("alluxiofuse", "alluxiofuse.fsspec", "alluxiofuse.tuned")
ALIASES = {"direct": "direct", "alluxiofuse": "alluxiofuse", "alluxio": "alluxiofuse",
           "alluxiofuse.fsspec": "alluxiofuse.fsspec", "alluxiofuse.tuned": "alluxiofuse.tuned",
           "tuned": "alluxiofuse.tuned", "fsspec": "fsspec.fuse", "fsspec.fuse": "fsspec.fuse",
           "floor": "floor", "floor.read": "floor.read"}
FLOORS = ("floor", "floor.read")  # bench/floor_fs.py
FSSPEC_CODE = ("import sys, fsspec, fsspec.fuse; fsspec.fuse.run(fsspec.filesystem('file'), "
               "sys.argv[1] + '/', sys.argv[2], foreground=True)")


# ------------------------------------------------------------------------ data set


@dataclass
class Dataset:
    root: Path
    big_size: int
    small: list[tuple[str, int]]  # (relative path, size)
    small_bytes: int = 0
    n_entries: int = 0  # names os.walk yields: small/, dNN/, files, big.bin, manifest.json
    big_sha256: str = ""


def plan_dataset(data_dir: Path, quick: bool) -> Dataset:
    rng = random.Random(SEED)
    n = 2000 if quick else 10000
    small = [(f"small/d{i % N_DIRS:02d}/f{i:04d}.bin", rng.randint(4096, 65536)) for i in range(n)]
    return Dataset(data_dir / ("quick" if quick else "full"), (256 if quick else 1024) * MiB,
                   small, sum(s for _, s in small), 1 + N_DIRS + n + 2)


def ensure_dataset(ds: Dataset) -> None:
    """Reuse the cached dataset if it is complete, else (re)generate it."""
    manifest = ds.root / "manifest.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        meta = json.loads(manifest.read_text())
        if ((meta["seed"], meta["big_size"], meta["n_small"]) == (SEED, ds.big_size, len(ds.small))
                and (ds.root / "big.bin").stat().st_size == ds.big_size
                and all((ds.root / p).stat().st_size == s for p, s in ds.small)):
            ds.big_sha256 = meta["big_sha256"]
            return
    log(f"generating dataset in {ds.root} ...")
    manifest.unlink(missing_ok=True)
    shutil.rmtree(ds.root / "small", ignore_errors=True)
    ds.root.mkdir(parents=True, exist_ok=True)
    block, sha = bytearray(os.urandom(BLOCK)), hashlib.sha256()
    with open(ds.root / "big.bin.tmp", "wb") as f:
        for b in range(ds.big_size // BLOCK):  # stamp a global counter into every 4 KiB page
            for off in range(0, BLOCK, 4096):
                block[off:off + 8] = (b * BLOCK + off).to_bytes(8, "little")
            f.write(block)
            sha.update(block)
    os.replace(ds.root / "big.bin.tmp", ds.root / "big.bin")
    pool, rng = os.urandom(4 * MiB), random.Random(SEED + 1)
    for d in range(N_DIRS):
        (ds.root / f"small/d{d:02d}").mkdir(parents=True, exist_ok=True)
    for rel, size in ds.small:
        off = rng.randrange(len(pool) - size)
        (ds.root / rel).write_bytes(pool[off:off + size])
    ds.big_sha256 = sha.hexdigest()
    manifest.write_text(json.dumps({"seed": SEED, "big_size": ds.big_size,
                                    "n_small": len(ds.small), "big_sha256": ds.big_sha256}))
    os.sync()


def small_digest(paths: list[str]) -> str:
    """The sha256 of the files' bytes, one after the other."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            h.update(f.read())
    return h.hexdigest()


def check_reply(who: str, work: str, reply: dict[str, Any], ds: Dataset,
                small_sha256: str, verify: bool, checked: list[str]) -> None:
    """A client pass's reply: the bytes it read (``reply["bytes"]``) and, when
    ``verify``, their sha256 (``reply["digest"]``) against the source's."""
    seq = work == "seq"
    want = ds.big_size if seq else ds.small_bytes
    if reply["bytes"] != want:
        raise BenchError(f"{who}: read {reply['bytes']} bytes, expected {want}")
    if verify:
        expect = ds.big_sha256 if seq else small_sha256
        if reply["digest"] != expect:
            raise BenchError(f"{who}: sha256 {reply['digest']}, not {expect}")
        checked.append(who)


# ------------------------------------------------------------------------ readers


def read_seq(path: Path) -> int:
    """How many bytes ``path`` holds, read in 1 MiB ``readinto`` calls."""
    buf, total = bytearray(MiB), 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def read_small(paths: list[str]) -> int:
    """How many bytes the files hold, each read whole, by 4 threads."""
    def one(p: str) -> int:
        with open(p, "rb", buffering=0) as f:
            return len(f.read())

    with ThreadPoolExecutor(max_workers=4) as ex:
        return sum(ex.map(one, paths))


# ------------------------------------------------------------------------ mounts


def daemon_command(target: str, src: Path, extra: str, mnt: Path) -> list[str]:
    """The command line of ``target``'s daemon mounting ``src`` on ``mnt``."""
    if target in DAEMONS:  # the daemon's defaults, but for ``extra``
        source = f"local://{src}" if target == "alluxiofuse.fsspec" else str(src)
        return [sys.executable, "-m", "alluxiofuse", "mount", source, str(mnt), "-f",
                "--log-level", "warning", *shlex.split(extra)]
    if target in FLOORS:
        return [sys.executable, str(REPO_ROOT / "bench" / "floor_fs.py"), str(src), str(mnt),
                *(["--read"] if target == "floor.read" else [])]
    return [sys.executable, "-c", FSSPEC_CODE, str(src), str(mnt)]


@contextlib.contextmanager
def mounted(
    target: str, src: Path, extra: str, command: Callable[[Path], list[str]] | None = None,
) -> Iterator[Mount]:
    """Yield a fresh mount of `src` (or `src` itself for direct); always clean up.
    `command(mountpoint)`, if given, is the daemon's command line instead of target's
    (but for the alluxiofuse targets, which always run alluxiofuse)."""
    if target == "direct":
        yield Mount(target, src)
        return
    if command is None or target in DAEMONS:
        command = partial(daemon_command, target, src, extra)
    with daemon_mount(target, command) as m:
        yield m
