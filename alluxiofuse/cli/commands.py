"""Operator commands: what Alluxio offers beyond POSIX, and what a mount still owes.

- On an Alluxio 3.x cluster, ``locate`` (who owns a file) and ``load``. They take the same
  membership options as ``mount`` and name files by their full UFS URI; a local path is
  ``file://`` plus its absolute path, and a path inside an alluxiofuse mount is translated
  to the URI of the file in the mount's source.
- On an Alluxio 2.x namespace, through its proxy: ``free`` (evict from Alluxio storage) and
  ``setattr`` (pin, TTL, replication). They name files as ``alluxio-proxy://`` URIs or as
  paths inside an alluxiofuse mount of one.
- On an AIStore cluster (``ais://`` URIs, or paths inside a mount of one): ``locate`` (the
  target that holds an object), ``load`` (prefetch into the cluster) and ``free`` (evict).
  The cluster's endpoint is ``--ufs-option endpoint=URL`` or ``$AIS_ENDPOINT``.
- ``status``: the uploads a mount still owes its source.
- ``cache``: what a disk page store holds, or empty it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TextIO

import trio

from alluxiofuse.backends.ais.backend import AisBackend, open_ais
from alluxiofuse.backends.cluster.backend import worker_source
from alluxiofuse.backends.cluster.client import LoadProgress, WorkerClient
from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.cluster.ring import HashRing, path_id
from alluxiofuse.backends.proxy.backend import ProxySource, parse_source
from alluxiofuse.backends.proxy.client import ProxyClient, ProxyStatus
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.config import PROXY_SCHEME, MountConfig
from alluxiofuse.errors import (
    AlluxioFuseError,
    BackendUnavailable,
    ConfigError,
    ConnectionDropped,
)
from alluxiofuse.fs.diskpages import DiskPages
from alluxiofuse.mountinfo import MOUNTINFO, Mount, mounts
from alluxiofuse.writes.spool import owed_uploads, spool_dir, spool_in_use

_SIZE = re.compile(r"([\d.]+)\s*([KMGTP]?)i?B", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_BAR_WIDTH = 30
_LOAD_WALK_LIMIT = 8  # directory listings at once while totalling a load's size


def to_uri(path: str, mountinfo: str = MOUNTINFO) -> str:
    """The full UFS URI of ``path``: a URI as it is, a path inside an alluxiofuse mount
    as the file in the mount's source, any other path as a ``file://`` URI."""
    if "://" in path:
        return path
    found = _in_mount(path, mountinfo)
    if found is not None:
        source, rest = found
        base = source if "://" in source else f"file://{os.path.abspath(source)}"
        return f"{base.rstrip('/')}/{rest}" if rest else base
    return f"file://{os.path.abspath(path)}"


def _in_mount(path: str, mountinfo: str) -> tuple[str, str] | None:
    """(source, path relative to it) when ``path`` is inside an alluxiofuse mount."""
    absolute = os.path.abspath(path)
    for m in _alluxiofuse_mounts(mountinfo):
        if absolute == m.mountpoint or absolute.startswith(m.mountpoint.rstrip("/") + "/"):
            return m.source, absolute[len(m.mountpoint):].strip("/")
    return None


def _alluxiofuse_mounts(mountinfo: str) -> list[Mount]:
    """Every alluxiofuse mount, longest mountpoint first."""
    try:
        found = [m for m in mounts(mountinfo) if m.fstype == "fuse.alluxiofuse"]
    except OSError:
        return []
    return sorted(found, key=lambda m: -len(m.mountpoint))


async def _ring(config: MountConfig) -> HashRing[WorkerAddress]:
    source = worker_source(config)
    try:
        workers = await source.workers()
    finally:
        await source.aclose()
    return HashRing(workers, config.virtual_nodes)


def locate(config: MountConfig, paths: list[str], count: int, out: TextIO | None = None,
           ) -> int:
    """Print each path's owner and preference list as JSON (on stdout unless ``out``);
    the exit code."""
    out = out or sys.stdout
    try:
        ring = trio.run(_ring, config)
    except AlluxioFuseError as e:
        print(f"alluxiofuse: cannot read the workers: {e}", file=sys.stderr)
        return 1
    report = []
    for path in paths:
        uri = to_uri(path)
        preference = [f"{w.host}:{w.http_port}" for w in ring.preference(uri, count)]
        report.append({"path": path, "uri": uri, "file_id": path_id(uri),
                       "owner": preference[0] if preference else None,
                       "preference": preference})
    json.dump(report, out, indent=2, ensure_ascii=False)
    out.write("\n")
    return 0


def load(config: MountConfig, path: str, interval: float, out: TextIO | None = None) -> int:
    """Load ``path`` into the cluster, drawing progress on ``out`` (stderr unless given);
    Ctrl-C stops the job. The exit code: 0 loaded, 1 failed, 130 stopped."""
    try:
        return trio.run(_load, config, to_uri(path), interval, out or sys.stderr)
    except (AlluxioFuseError, ExceptionGroup) as e:
        error = _domain_error(e)
        if error is None:
            raise
        print(f"\nalluxiofuse: load failed: {error}", file=sys.stderr)
        return 1


def _domain_error(e: BaseException) -> AlluxioFuseError | None:
    """The AlluxioFuseError ``e`` is or (from trio's nurseries) wraps alone, else None."""
    while isinstance(e, BaseExceptionGroup) and len(e.exceptions) == 1:
        e = e.exceptions[0]
    return e if isinstance(e, AlluxioFuseError) else None


async def _load(config: MountConfig, uri: str, interval: float, out: TextIO) -> int:
    ring = await _ring(config)
    if not len(ring):
        raise BackendUnavailable("no workers are registered")
    worker = ring.owner(uri)
    client = WorkerClient(timeout=config.worker_timeout, retries=config.worker_retries)
    bar = ProgressBar(out, uri)
    interrupted = False
    try:
        # Ctrl-C from the submit on: a job that may have started is stopped.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    nonlocal interrupted
                    async for _ in signals:
                        interrupted = True
                        nursery.cancel_scope.cancel()

                nursery.start_soon(on_signal)
                try:
                    await client.load_submit(worker, uri)
                except ConnectionDropped:  # an OSS worker drops a submit while a job runs
                    bar.note("a load of this path is already running: following it")
                nursery.start_soon(_total_size, config, uri, bar)
                progress = await _follow(client, worker, uri, interval, bar)
                nursery.cancel_scope.cancel()
        if interrupted:
            with trio.move_on_after(config.worker_timeout):
                stopped = await client.load_stop(worker, uri)
                bar.finish(f"stopped ({'job stopped' if stopped else 'no job was running'})")
            return 130
        bar.finish(progress.state)
        return 0 if "SUCCEEDED" in progress.state else 1
    finally:
        await client.aclose()


async def _follow(client: WorkerClient, worker: WorkerAddress, uri: str, interval: float,
                  bar: ProgressBar) -> LoadProgress:
    while True:
        progress = await client.load_progress(worker, uri)
        bar.update(progress)
        if progress.finished:
            return progress
        await trio.sleep(interval)


async def _total_size(config: MountConfig, uri: str, bar: ProgressBar) -> None:
    """Add up the sizes under ``uri`` (through the under-storage) for the bar's total;
    the bar shows bytes without a fraction until this is done, or if it fails."""
    limiter = trio.CapacityLimiter(_LOAD_WALK_LIMIT)
    try:
        ufs = open_ufs(uri, config.ufs_options, limiter, config.io_timeout)
    except Exception:  # an under-storage we cannot open: no total, the load goes on
        return
    total = 0

    async def walk(path: str) -> None:
        nonlocal total
        entries = await ufs.list(path)  # at most _LOAD_WALK_LIMIT at once: the limiter
        async with trio.open_nursery() as nursery:
            for entry in entries:
                if entry.is_dir:
                    nursery.start_soon(walk, f"{path}/{entry.name}" if path else entry.name)
                else:
                    total += entry.size

    try:
        root = await ufs.stat("")
        if root.is_dir:
            await walk("")
        bar.total = total if root.is_dir else root.size
    except AlluxioFuseError:
        return
    finally:
        await ufs.aclose()


class ProgressBar:
    """One line redrawn in place on a terminal; elsewhere a line per change."""

    def __init__(self, out: TextIO, what: str, clock: Callable[[], float] = trio.current_time,
                 ) -> None:
        self.out = out
        self.what = what
        self.total: int | None = None
        self._tty = out.isatty()
        self._last = ""
        self._clock = clock
        self._start: float | None = None

    def note(self, message: str) -> None:
        self.out.write(f"{message}\n")
        self.out.flush()

    def update(self, progress: LoadProgress) -> None:
        loaded = reported_size(progress.properties.get("Bytes Loaded", ""))
        files = progress.properties.get("Files Processed", progress.properties.get(
            "Files Loaded", "?"))
        self.show(progress.state, loaded, files)

    def show(self, state: str, loaded: int | None, files: int | str) -> None:
        now = self._clock()
        if self._start is None:
            self._start = now
        line = f"{state:<10} {self._bar(loaded)} {files} files"
        if loaded and now > self._start:
            line += f", {_human(loaded / (now - self._start))}/s"
        if line == self._last:
            return
        self._last = line
        self.out.write(f"\r{line}\x1b[K" if self._tty else f"{line}\n")
        self.out.flush()

    def finish(self, state: str) -> None:
        self.out.write(("\n" if self._tty else "") + f"load of {self.what}: {state}\n")
        self.out.flush()

    def _bar(self, loaded: int | None) -> str:
        if loaded is None:
            return "[" + "?" * _BAR_WIDTH + "]"
        if not self.total:
            return f"[{'.' * _BAR_WIDTH}] {_human(loaded)}"
        fraction = min(1.0, loaded / self.total)
        filled = math.floor(fraction * _BAR_WIDTH)
        return (f"[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {fraction:4.0%} "
                f"{_human(loaded)} of {_human(self.total)}")


def reported_size(text: str) -> int | None:
    """The first size in a load report value (``1234B``, ``12.50MB``), in bytes."""
    match = _SIZE.search(text)
    if not match:
        return None
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    raise AssertionError("unreachable")


def cache(action: str, directory: str, out: TextIO | None = None) -> int:
    """``alluxiofuse cache stats|clear DIR``: what the disk page store in ``directory``
    holds, or remove every page of it (under its lock: mounts using it go on, and fetch
    again what they miss). Exit code 0, or 1 (said on stderr) when ``directory`` holds
    no store."""
    out = out or sys.stdout
    if not os.path.isfile(os.path.join(directory, "lock")):
        print(f"alluxiofuse: {directory} is not a disk page store (no lock file): give a "
              "mount's --disk-cache-dir", file=sys.stderr)
        return 1
    store = DiskPages(directory, 0, page_size=0)
    try:
        if action == "clear":
            removed = store.clear()
            print(f"{directory}: removed {removed} pages", file=out)
            return 0
        stats = store.stats()
    except OSError as e:
        print(f"alluxiofuse: {directory}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"{directory}: {stats.pages} pages, {_human(stats.used)}; "
          f"{_human(stats.free)} free on its disk", file=out)
    return 0


def status(target: str, cache_dir: str, out: TextIO | None = None) -> int:
    """Print the uploads owed for ``target`` (an alluxiofuse mountpoint, or a source) and
    whether a daemon is running to make them; the exit code: 0, or 1 (said on stderr)
    when ``target`` is neither a mount nor a source that has a spool in ``cache_dir``."""
    out = out or sys.stdout
    mount = _mount_at(target)
    if mount is None and "://" not in target and not os.path.exists(target):
        print(f"alluxiofuse: {target}: no such file or directory", file=sys.stderr)
        return 1
    source = mount.source if mount else target if "://" in target else os.path.abspath(target)
    root = spool_dir(cache_dir, source)
    read_only_at = mount.mountpoint if mount is not None and mount.read_only else None
    if read_only_at and not os.path.isdir(root):  # a read-only mount makes no spool
        print(f"{source}: no uploads pending (mounted read-only at {read_only_at})", file=out)
        return 0
    if not os.path.isdir(root):
        if mount is not None:
            print(f"alluxiofuse: {source} is mounted at {mount.mountpoint}, but its spool is "
                  f"not in {cache_dir}: give the mount's --cache-dir", file=sys.stderr)
        else:
            print(f"alluxiofuse: {target} is not an alluxiofuse mount, nor a source with a "
                  f"spool in {cache_dir} (a mount with another --cache-dir: give it)",
                  file=sys.stderr)
        return 1
    owed = owed_uploads(root)
    if read_only_at:  # owed by an earlier writable mount; this one uploads nothing
        state = ("mounted read-only: they resume at the next writable mount" if owed
                 else f"mounted read-only at {read_only_at}")
    elif spool_in_use(root):
        state = "its daemon is running"
    else:
        state = "no daemon is running" + (": they resume at the next mount" if owed else "")
    print(f"{source}: {len(owed)} uploads pending ({state}; spool {root})", file=out)
    now = time.time_ns()
    for record, error in owed:
        age = max(0, now - record.closed_ns) / 1e9
        line = f"  {record.path}  {_human(record.size)}  closed {age:.0f}s ago"
        if error:
            line += f"  last error: {error}"
        print(line, file=out)
    return 0


@dataclass(frozen=True)
class _Mount:
    mountpoint: str
    source: str
    read_only: bool


def _mount_at(target: str, mountinfo: str = MOUNTINFO) -> _Mount | None:
    """The alluxiofuse mount whose mountpoint ``target`` is, if it is one."""
    if "://" in target:
        return None
    absolute = os.path.abspath(target)
    for m in _alluxiofuse_mounts(mountinfo):
        if absolute == m.mountpoint:
            return _Mount(m.mountpoint, m.source, "ro" in m.options.split(","))
    return None


# --- Alluxio 2.x, through the proxy --------------------------------------------------------


def proxy_target(path: str, mountinfo: str = MOUNTINFO) -> tuple[ProxySource, str]:
    """Which proxy, and which Alluxio path, ``path`` names: an ``alluxio-proxy://`` URI (its
    path percent-decoded), or a path inside an alluxiofuse mount of one."""
    if "://" in path:
        where = parse_source(path)
        return where, where.root
    found = _in_mount(path, mountinfo)
    if found is None or not found[0].startswith(f"{PROXY_SCHEME}://"):
        raise ConfigError(f"{path}: neither an {PROXY_SCHEME}:// URI nor a path inside an "
                          f"alluxiofuse mount of one")
    where = parse_source(found[0])
    return where, where.path(found[1])


def free(paths: list[str], *, recursive: bool, forced: bool, timeout: float,
         out: TextIO | None = None) -> int:
    """Evict each path's data from Alluxio storage; print each one's status after, as JSON
    lines. The exit code: 0, or 1 if any path failed (each failure is said on stderr)."""
    targets = [proxy_target(path) for path in paths]

    async def free_one(client: ProxyClient, apath: str) -> None:
        await client.free(apath, recursive=recursive, forced=forced)

    return _on_proxy(targets, paths, free_one, timeout, out or sys.stdout, "free")


def set_attributes(paths: list[str], *, timeout: float, out: TextIO | None = None,
                   **changes: Any) -> int:
    """Set Alluxio attributes (``ProxyClient.set_attribute``'s options) of each path;
    print each one's status after, as JSON lines. The exit code as for :func:`free`."""
    targets = [proxy_target(path) for path in paths]

    async def set_one(client: ProxyClient, apath: str) -> None:
        await client.set_attribute(apath, **changes)

    return _on_proxy(targets, paths, set_one, timeout, out or sys.stdout, "setattr")


def _on_proxy(
    targets: list[tuple[ProxySource, str]], paths: list[str],
    change: Callable[[ProxyClient, str], Awaitable[None]], timeout: float, out: TextIO,
    what: str,
) -> int:
    async def run() -> int:
        failed = 0
        for (where, apath), path in zip(targets, paths, strict=True):
            client = ProxyClient(where.host, where.port, timeout=timeout)
            try:
                await change(client, apath)
                status = await client.get_status(apath)
            except AlluxioFuseError as e:
                print(f"alluxiofuse: {what} {path}: {e}", file=sys.stderr)
                failed = 1
                continue
            finally:
                await client.aclose()
            out.write(json.dumps(_describe(status), ensure_ascii=False) + "\n")
        out.flush()
        return failed

    return trio.run(run)


def _describe(status: ProxyStatus) -> dict[str, Any]:
    return {"path": status.path, "pinned": status.pinned, "ttl_ms": status.ttl,
            "ttl_action": status.ttl_action, "in_alluxio_percent": status.in_alluxio_percentage,
            "persisted": status.persisted, "persistence_state": status.persistence_state,
            "mode": oct(status.status.mode or 0), "length": status.status.size,
            "folder": status.status.is_dir}


# -- AIStore


def is_ais(path: str) -> bool:
    return to_uri(path).startswith("ais://")


def _ais(config: MountConfig, uri: str) -> tuple[AisBackend, str]:
    """The backend of ``uri``'s bucket, and the object's path in it."""
    bucket, _, key = uri.partition("://")[2].partition("/")
    key = key.strip("/")
    limiter = trio.CapacityLimiter(1)
    return open_ais(f"ais://{bucket}", config.ufs_options, limiter, config.io_timeout), key


def ais_locate(config: MountConfig, paths: list[str], out: TextIO | None = None) -> int:
    """Print the target that holds each object, as JSON; the exit code."""
    out = out or sys.stdout
    report = []
    for path in paths:
        uri = to_uri(path)
        backend, key = _ais(config, uri)
        try:
            target = backend.locate(key)
        except AlluxioFuseError as e:
            print(f"alluxiofuse: cannot read the cluster map: {e}", file=sys.stderr)
            return 1
        finally:
            backend.client.close()
        report.append({"path": path, "uri": uri,
                       "owner": target.daemon_id if target else None,
                       "url": target.url if target else None})
    json.dump(report, out, indent=2, ensure_ascii=False)
    out.write("\n")
    return 0


def ais_job(config: MountConfig, action: str, path: str, interval: float,
            out: TextIO | None = None) -> int:
    """Run ``action`` (prefetch or evict) on everything under ``path``, drawing progress
    on ``out`` (stderr unless given); Ctrl-C stops the job. The exit code: 0 done, 1
    failed, 130 stopped."""
    out = out or sys.stderr
    uri = to_uri(path)
    backend, key = _ais(config, uri)
    bar = ProgressBar(out, uri, clock=time.monotonic)
    job_id = ""
    try:
        if action == "prefetch-listrange":
            bar.total = backend.total_size(key)
        job_id = backend.start_job(action, key)
        bar.note(f"job {job_id}")
        while True:
            status = backend.job_status(job_id)
            state = ("FAILED" if status.error or status.aborted else
                     "SUCCEEDED" if status.done else "RUNNING")
            bar.show(state, status.bytes, status.objects)
            if status.done or status.aborted:
                bar.finish(state + (f": {status.error}" if status.error else ""))
                return 0 if state == "SUCCEEDED" else 1
            time.sleep(interval)
    except KeyboardInterrupt:
        if job_id:
            with contextlib.suppress(AlluxioFuseError):
                backend.client.stop_job(job_id)
        bar.finish("stopped")
        return 130
    except AlluxioFuseError as e:
        print(f"\nalluxiofuse: {action.split('-')[0]} of {uri} failed: {e}", file=sys.stderr)
        return 1
    finally:
        backend.client.close()
