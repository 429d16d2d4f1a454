"""The daemon process: builds every part, mounts, serves until unmounted, then shuts down.

The composition root: the only place that creates the metrics registry, the thread
limiter, the backend and the filesystem, and passes each to what needs it. Nothing here
is global, except what pyfuse3 itself keeps (one mount per process).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import functools
import logging
import os
import signal
import sys
from collections.abc import Callable

import pyfuse3
import trio

from alluxiofuse import __version__
from alluxiofuse.backends.base import Backend
from alluxiofuse.backends.cluster.backend import MTIME_UNIT_NS, Membership, open_cluster
from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.proxy.backend import open_proxy
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.config import MountConfig
from alluxiofuse.daemon.exporter import Exporter, Health
from alluxiofuse.daemon.logs import REDACTED, mask_secrets, redact, secrets_of, setup_logging
from alluxiofuse.daemon.memory import MemoryGovernor
from alluxiofuse.daemon.sdnotify import Notifier
from alluxiofuse.errors import AlluxioFuseError, ConfigError, NotFound
from alluxiofuse.fs.diskpages import DiskPages
from alluxiofuse.fs.diskreads import DiskReads
from alluxiofuse.fs.filesystem import Filesystem, KernelCaches
from alluxiofuse.limits import ALLOWANCE, MiB, memory_limits
from alluxiofuse.metrics import Metrics, new_registry
from alluxiofuse.model import FileStatus, Kind
from alluxiofuse.mountinfo import mounts
from alluxiofuse.ops import Operations
from alluxiofuse.options import DEFAULT_METRICS_ADDR, split_addr
from alluxiofuse.writes.spool import Spool, owed_uploads
from alluxiofuse.writes.staging import DiskIO
from alluxiofuse.writes.writes import Writes

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

# FUSE requests served at once; each waits on the page cache or a worker thread.
MAX_FUSE_TASKS = 128
# How often /readyz's view of the backend is refreshed, and the memory budget enforced.
BACKEND_PROBE_INTERVAL = 10.0
MEMORY_CHECK_INTERVAL = 0.25  # reading our resident size is one small /proc read
_FORGOTTEN_TO_TRIM = 100_000  # inodes forgotten before freed memory is handed back
# Seconds granted beyond --drain-timeout to finish stopping (close the backend, exit).
_STOP_MARGIN = 30


class StartupError(Exception):
    """The mount could not be set up; the message is one line for the user."""


def run(config: MountConfig, *, notify_fd: int | None = None) -> int:
    """Serve ``config`` until unmounted; the process exit code.

    With ``notify_fd`` (background mode), ``ready`` or ``error: <reason>`` is written to
    it once, so the starting process can return only when the mount is live.
    """
    setup_logging(config, background=notify_fd is not None)
    log.info("alluxiofuse %s: mounting %s at %s (%s)", __version__, config.source,
             config.mountpoint, describe_options(config))
    reuse_freed_pages()
    # systemd's variables are read now and removed, before anything could inherit them.
    notifier = Notifier.take(os.environ)

    def notify(message: str) -> None:
        nonlocal notify_fd
        if notify_fd is not None:
            os.write(notify_fd, message.encode("utf-8", "replace") + b"\n")
            os.close(notify_fd)
            notify_fd = None

    def warn(message: str) -> None:
        """A start-up warning the user must see (it is in the log already): on the
        starting command's stderr in the background, on ours in the foreground."""
        if notify_fd is not None:
            os.write(notify_fd, f"warning: {message}\n".encode("utf-8", "replace"))
        elif config.log_file:  # else the log line was this very stderr
            print(f"alluxiofuse: warning: {message}", file=sys.stderr)

    try:
        trio.run(serve, config, lambda: notify("ready"), notifier, warn)
    except Exception as group:
        e = _single(group)
        if not isinstance(e, ConfigError | StartupError):
            log.critical("daemon failed: %s", e, exc_info=e)
            e = StartupError(f"daemon failed: {type(e).__name__}: {e}")
        reason = redact(str(e), secrets_of(config))  # stderr and the journal: no secrets
        if notify_fd is not None or config.log_file:  # else the log is this very stderr
            log.error("%s", reason)
        if notify_fd is None:
            print(f"alluxiofuse: {reason}", file=sys.stderr)
        notify(f"error: {reason}")
        notifier.send(f"STATUS=failed: {reason}")
        return 1
    return 0


def describe_options(config: MountConfig) -> str:
    """The options that differ from their defaults, for the log, secrets masked."""
    shown = dataclasses.replace(config, ufs_options=mask_secrets(config.ufs_options),
                                etcd_password=config.etcd_password and REDACTED)
    defaults = MountConfig(source="", mountpoint="")
    changed = [f"{f.name}={getattr(shown, f.name)!r}" for f in dataclasses.fields(shown)
               if f.name not in ("source", "mountpoint")
               and getattr(shown, f.name) != getattr(defaults, f.name)]
    return ", ".join(changed) or "defaults"


def reuse_freed_pages() -> None:
    """Make glibc hand the memory of freed pages to the next page, whichever thread asks.

    Pages are allocated in worker threads. By default glibc keeps freed memory in
    per-thread arenas, maps large blocks afresh each time, and gives the top of its heap
    back to the kernel as soon as 128 KiB of it are free. Each of those costs fresh memory
    for the next page: a page fault per 4 KiB, and the kernel zeroing it. One arena, a
    fixed 4 MiB mmap threshold (a page of up to 4 MiB comes from the heap) and a 64 MiB
    trim threshold (the memory of the pages a sequential reader just dropped stays for the
    pages it reads next) keep a read in memory already faulted in. What is kept free
    counts as the rest of the process for the memory governor, which hands it back
    (``release_free_memory``) when it must shrink the cache. bench/RESULTS.md has the
    measurements. A no-op where libc has no mallopt.
    """
    with contextlib.suppress(OSError, AttributeError):  # no libc, or one without mallopt
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_ARENA_MAX, 1)
        libc.mallopt(_M_MMAP_THRESHOLD, 4 * 1024 * 1024)
        libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)


def _single(exc: Exception) -> Exception:
    """The one exception inside (nested) single-member exception groups from trio."""
    while isinstance(exc, ExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _open_disk_pages(config: MountConfig) -> DiskPages | None:
    """The disk page store ``--disk-cache-dir`` names, opened (which tidies what a crash
    left and evicts down to ``--disk-cache-size``), or None when there is none."""
    if not config.disk_cache_dir:
        return None
    try:
        store = await trio.to_thread.run_sync(functools.partial(
            DiskPages.open, config.disk_cache_dir, config.disk_cache_size,
            page_size=config.page_size))
    except OSError as e:
        raise ConfigError(f"cannot use --disk-cache-dir {config.disk_cache_dir}: "
                          f"{e.strerror or e}") from None
    log.info("disk page store %s: %d of %d MiB used", config.disk_cache_dir,
             store.used() // MiB, store.capacity // MiB)
    return store


def _disk_counters(disk: DiskReads) -> dict[str, float]:
    c = disk.store.counters
    return {"hits": c.hits, "misses": c.misses, "hit_bytes": c.hit_bytes,
            "written_bytes": c.written_bytes, "skipped_bytes": disk.skipped_bytes,
            "evicted_pages": c.evicted_pages, "evicted_bytes": c.evicted_bytes,
            "corrupt_pages": c.corrupt, "errors": c.errors}


async def serve(config: MountConfig, ready: Callable[[], None] = lambda: None,
                notifier: Notifier | None = None,
                warn: Callable[[str], None] = lambda message: None) -> None:
    """Mount ``config.mountpoint``, call ``ready()``, serve until unmounted or signalled.

    ``notifier`` tells systemd each step; READY=1 once the kernel's INIT is answered.
    ``warn`` shows the user what works, but not as asked (no worker answers).
    """
    notifier = notifier or Notifier({})
    metrics = Metrics(new_registry())
    health = Health()
    async with contextlib.AsyncExitStack() as stack:  # closed in reverse, however it ends
        exporter = start_exporter(config, metrics, health)
        if exporter is not None:
            stack.callback(exporter.close)
        background = await stack.enter_async_context(trio.open_nursery())
        stack.callback(background.cancel_scope.cancel)
        background.start_soon(_beat, health)
        limiter = trio.CapacityLimiter(config.io_threads)
        cluster = None
        backend: Backend
        if config.proxy:
            backend = open_proxy(config.source, timeout=config.io_timeout,
                                 retries=config.worker_retries, read_type=config.read_type,
                                 write_type=config.write_type, limiter=limiter, metrics=metrics)
            stack.push_async_callback(backend.aclose)
        else:
            ufs = open_ufs(config.source, config.ufs_options, limiter, config.io_timeout,
                           mtime_unit_ns=MTIME_UNIT_NS if config.cluster else 1,
                           part_size=config.upload_part_size,
                           object_metadata=not config.ignore_object_metadata)
            stack.push_async_callback(ufs.aclose)
            cluster = open_cluster(config, ufs, metrics) if config.cluster else None
            if cluster is not None:
                stack.push_async_callback(cluster.aclose)
            backend = cluster or ufs
        notifier.send(f"STATUS=checking source {redact(config.source, [])}")
        if cluster is not None:
            await read_membership(cluster.membership)
            problem = await unanswered_workers(cluster.membership, config.worker_timeout)
            if problem is not None:
                warn(problem)
        root = await check_source(backend)
        health.backend_error = None
        writes = None
        if not config.read_only and not backend.writes.files:
            log.info("%s cannot be written: mounting it read-only", backend.description)
            config = dataclasses.replace(config, read_only=True)
        if not config.read_only:
            spool = await trio.to_thread.run_sync(
                Spool.open, config.cache_dir, config.source, config.cache_size)
            stack.callback(spool.close)
            io = DiskIO(trio.CapacityLimiter(config.io_threads), config.io_timeout)
            writes = Writes(config, backend, spool, io)
            # A local source's commits write temporary files there, noted in the spool.
            await writes.recover(
                tidy=None if config.proxy else functools.partial(ufs.note_commits, spool.commits))
            uploader = writes.uploader
            # What the journal owes, as ``alluxiofuse status`` counts it (scraped in the
            # exporter's thread: reading the journal there blocks no request).
            metrics.watch_uploads(lambda: len(owed_uploads(spool.root)),
                                  lambda: sum(r.size for r, _ in owed_uploads(spool.root)),
                                  lambda: uploader.failures)
        store = await _open_disk_pages(config)
        session = KernelSession()
        async with trio.open_nursery() as nursery:
            if cluster is not None:
                nursery.start_soon(cluster.membership.run, config.membership_refresh)
            disk = None
            if store is not None:
                disk = DiskReads(store, config.source, spawn=nursery.start_soon,
                                 deadline=config.io_timeout)
                metrics.watch_disk_cache(functools.partial(_disk_counters, disk), store.used,
                                         store.capacity)
            fs = Filesystem(config, backend, root, metrics, spawn=nursery.start_soon,
                            invalidate_attrs=invalidate_kernel_attrs, writes=writes, disk=disk)
            pages = fs.pages
            metrics.watch_memory(config.memory_budget, lambda: pages.used + pages.reserved)
            if writes is not None:
                nursery.start_soon(writes.run)

            def on_init() -> None:
                nursery.start_soon(_after_init, config, notifier)
                health.mounted = True

            ops = Operations(fs, config, metrics, on_init=on_init)
            notifier.send(f"STATUS=mounting at {config.mountpoint}")
            mount(ops, config)
            try:
                nursery.start_soon(_handle_signals, fs, metrics, session)
                nursery.start_soon(probe_backend, backend, health, config.io_timeout)
                nursery.start_soon(govern_memory, fs, config, metrics)
                nursery.start_soon(notifier.keep_watchdog)
                log.info("mounted %s at %s", config.source, config.mountpoint)
                ready()
                await pyfuse3.main(min_tasks=4, max_tasks=MAX_FUSE_TASKS)
            finally:
                health.stopping = True
                notifier.send("STOPPING=1", "STATUS=unmounting")
                with trio.CancelScope(shield=True):
                    await session.close()
                    if writes is not None:
                        await _drain(writes, notifier)
                nursery.cancel_scope.cancel()
        log.info("unmounted %s", config.mountpoint)


class KernelSession:
    """pyfuse3's one session, open until :meth:`close`.

    A signal can arrive once the session is closed (an unmount from outside, then
    SIGTERM while uploads drain), and pyfuse3's calls on a closed session crash the
    process; a SIGHUP's invalidations run in a thread and must not overlap the close.
    """

    def __init__(self) -> None:
        self.open = True
        self.lock = trio.Lock()  # held while the session is used off the event loop

    async def close(self) -> None:
        async with self.lock:
            self.open = False
            pyfuse3.close(unmount=True)


async def _beat(health: Health) -> None:
    """Show /healthz that the event loop runs: a stuck loop stops the beat."""
    while True:
        health.beat()
        await trio.sleep(1)


def start_exporter(config: MountConfig, metrics: Metrics, health: Health) -> Exporter | None:
    """Serve /metrics, /healthz and /readyz at ``--metrics-addr``, unless it is ``off``.

    A busy port is a start-up error when the address was asked for. The default port is
    taken whenever a second mount runs on the host: that mount must neither fail nor go
    without metrics and probes, so it serves on a port the system picks, on the same
    interface, and its log says where (the one line that names the address, as always).
    """
    addr = config.metrics_addr or DEFAULT_METRICS_ADDR
    if addr == "off":
        return None
    host, port = split_addr(addr)
    try:
        exporter = Exporter(host, port, metrics.registry, health)
    except OSError as e:
        message = f"cannot serve metrics on {addr}: {e.strerror or e}"
        if config.metrics_addr is not None:
            raise StartupError(message + " (choose another --metrics-addr, or off)") from None
        try:
            exporter = Exporter(host, 0, metrics.registry, health)
        except OSError as again:  # no port at all on that interface: mount without
            log.warning("%s, nor on any other port (%s); no metrics for this mount (set "
                        "--metrics-addr)", message, again.strerror or again)
            return None
        log.info("%s (another mount's?): serving on a port of the system's choosing",
                 message)
    log.info("serving metrics at %s/metrics", exporter.url)
    return exporter


async def probe_backend(backend: Backend, health: Health, io_timeout: float) -> None:
    """Keep /readyz's view of the backend fresh: a stat of the source's root, every
    BACKEND_PROBE_INTERVAL seconds (for an object store: one request per interval)."""
    within = min(io_timeout, BACKEND_PROBE_INTERVAL)
    while True:
        await trio.sleep(BACKEND_PROBE_INTERVAL)
        error = None
        with trio.move_on_after(within) as scope:
            try:
                await backend.stat("")
            except Exception as e:  # whatever the library raised: report it, keep probing
                error = f"{type(e).__name__}: {e}"
        if scope.cancelled_caught:
            error = f"no answer in {within}s"
        if error != health.backend_error:
            log.log(logging.WARNING if error else logging.INFO, "backend %s: %s",
                    backend.description, error or "reachable again")
        health.backend_error = error


async def govern_memory(fs: Filesystem, config: MountConfig, metrics: Metrics) -> None:
    """Hold the process near its memory budget: the page cache (and read-ahead with it)
    shrinks while the rest of the process is larger than the budget allows."""
    governor = MemoryGovernor(config.memory_budget, config.page_cache_size,
                              floor=4 * config.page_size, cgroup_limit=memory_limits().cgroup)
    if config.memory_budget + ALLOWANCE > governor.ceiling:
        log.warning("memory budget %d MiB (+%d MiB for the rest of the process) exceeds 90%% "
                    "of the cgroup memory limit, %d MiB: the page cache will be held smaller "
                    "(lower --memory-budget)", config.memory_budget >> 20, ALLOWANCE >> 20,
                    (governor.cgroup_limit or 0) >> 20)
    inodes_held = len(fs.inodes)  # the most held since memory was last handed back
    while True:
        before = governor.current
        bound = governor.update(resident_bytes(), fs.pages)
        # Once the kernel has forgotten many inodes (a walk's dentries reclaimed), what
        # they held is free but mostly kept by the allocator: hand it back too.
        inodes_held = max(inodes_held, len(fs.inodes))
        forgotten = inodes_held - len(fs.inodes) >= max(_FORGOTTEN_TO_TRIM, inodes_held // 2)
        if bound != before:
            fs.resize_page_cache(bound)
            if bound < before:
                metrics.memory_pressure_shrinks.inc()
            if config.page_cache_size in (before, bound):  # pressure begins, or is over
                log.info("memory: page cache bound %d MiB (configured %d MiB; resident %d "
                         "MiB, ceiling %d MiB)", bound >> 20, config.page_cache_size >> 20,
                         resident_bytes() >> 20, governor.ceiling >> 20)
        if bound < before or forgotten:
            await trio.to_thread.run_sync(release_free_memory)
            inodes_held = len(fs.inodes)
        await trio.sleep(MEMORY_CHECK_INTERVAL)


def resident_bytes() -> int:
    """This process's resident set size (from procfs: memory, not disk)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def release_free_memory() -> None:
    """Hand memory freed by evicted pages or forgotten inodes back to the kernel (glibc
    keeps it otherwise)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


async def read_membership(membership: Membership) -> None:
    """The first read of the workers: a source that cannot be read stops the mount (a
    typo in --etcd must not turn into a quiet under-storage mount); an empty one is a
    warning, and the mount reads the under-storage until workers appear."""
    try:
        await membership.refresh()
    except AlluxioFuseError as e:
        raise StartupError(f"cannot read the workers from {membership.source.description}: "
                           f"{e}") from None


# Workers asked at once at start-up whether they answer; one answer is enough.
_WORKERS_KNOCKED = 16


async def unanswered_workers(membership: Membership, within: float) -> str | None:
    """Why no worker will serve reads now, if none will: the list is empty, or none of
    its workers takes a connection ``within`` seconds. The mount still works (through the
    under-storage), but a user who named workers must hear it, not find it out from the
    metrics; it is logged here too."""
    workers = membership.workers()
    answered = False

    async def knock(worker: WorkerAddress, cancel: trio.CancelScope) -> None:
        nonlocal answered
        with contextlib.suppress(OSError):
            stream = await trio.open_tcp_stream(worker.host, worker.http_port)
            await stream.aclose()
            answered = True
            cancel.cancel()

    with trio.move_on_after(within):
        async with trio.open_nursery() as nursery:
            for worker in workers[:_WORKERS_KNOCKED]:
                nursery.start_soon(knock, worker, nursery.cancel_scope)
    if answered:
        return None
    where = membership.source.description
    if workers:
        shown = ", ".join(w.url() for w in workers[:3]) + (", ..." if len(workers) > 3 else "")
        problem = (f"no worker of {where} answers ({shown}): reading from the "
                   "under-storage until one does")
    else:
        problem = f"{where} lists no workers: reading from the under-storage until it does"
    log.warning("%s", problem)
    return problem


async def check_source(backend: Backend) -> FileStatus:
    """The source's root status; a clear StartupError if it is missing or unreachable."""
    try:
        root = await backend.stat("")
    except NotFound:
        raise StartupError(f"source does not exist: {backend.description}") from None
    except AlluxioFuseError as e:
        raise StartupError(f"cannot read source {backend.description}: {e}") from None
    except Exception as e:  # credentials missing, bad endpoint: say what the library said
        raise StartupError(
            f"cannot reach source {backend.description}: {type(e).__name__}: {e}"
        ) from None
    if root.kind is not Kind.DIRECTORY:
        raise StartupError(f"source is not a directory: {backend.description}")
    return root


def mount_options(config: MountConfig) -> set[str]:
    """libfuse mount options: kernel permission checks, our name in /proc/mounts, ``ro``
    for a read-only mount, and the kernel flags mount(8) asked for."""
    # /proc/mounts is world-readable: a password in the source URL must not show there.
    source = redact(config.source, []).replace("\\", "\\\\").replace(",", "\\,")
    options = {"default_permissions", "subtype=alluxiofuse", f"fsname={source}",
               *config.kernel_flags}
    if config.read_only:
        options.add("ro")
    if config.allow_other:
        options.add("allow_other")
    return options


def mount(ops: Operations, config: MountConfig) -> None:
    try:
        pyfuse3.init(ops, config.mountpoint, mount_options(config))
    except RuntimeError as e:
        raise StartupError(f"cannot mount at {config.mountpoint}: {e}") from None


def _invalidate_kernel_caches(caches: KernelCaches) -> None:
    """Make the kernel drop the cached data and attributes of these inodes, and these
    negative entries (else a name made in the source stays missing until they expire)."""
    for ino in caches.inodes:
        try:
            pyfuse3.invalidate_inode(ino, attr_only=False)
        except OSError as e:  # ENOENT: the kernel has already forgotten the inode
            log.debug("invalidating inode %d: %s", ino, e.strerror)
    for parent, name in caches.misses:
        try:
            pyfuse3.invalidate_entry(parent, os.fsencode(name))
        except OSError as e:  # ENOENT: expired, or its directory forgotten, already
            log.debug("invalidating entry %r of inode %d: %s", name, parent, e.strerror)


def invalidate_kernel_attrs(ino: int) -> None:
    """Make the kernel fetch ``ino``'s attributes again before it next uses them."""
    try:
        pyfuse3.invalidate_inode(ino, attr_only=True)
    except OSError as e:  # ENOENT: the kernel has already forgotten the inode
        log.debug("invalidating the attributes of inode %d: %s", ino, e.strerror)


async def _after_init(config: MountConfig, notifier: Notifier) -> None:
    """Runs as soon as the INIT reply is out, before the next request is read.

    The kernel sizes a file's read-ahead when the file is opened, so the window must be
    set before anyone can open a file. Both files written and read here live in memory
    (sysfs and procfs), so this does not stall the event loop on I/O. Only now is the
    mount live for systemd: a unit ordered after ours may use it at once.
    """
    set_kernel_readahead(config)
    # systemctl status shows this line to every user: no password from the source URL.
    notifier.send("READY=1",
                  f"STATUS=serving {redact(config.source, [])} at {config.mountpoint}")


async def _drain(writes: Writes, notifier: Notifier) -> None:
    """``writes.shutdown()``, saying every second how many uploads are still owed."""
    if notifier.enabled:  # systemd's stop timeout must not cut the drain short
        seconds = writes.config.drain_timeout + _STOP_MARGIN
        notifier.send(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}")

    async def report() -> None:
        while True:
            if owed := len(writes.uploader):
                notifier.send(f"STATUS=draining {owed} owed uploads")
            await trio.sleep(1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(report)
        await writes.shutdown()
        nursery.cancel_scope.cancel()


def set_kernel_readahead(config: MountConfig) -> None:
    """Set the kernel's read-ahead for our mount (root only; best effort).

    The kernel splits buffered reads of a FUSE file into requests no larger than its
    read-ahead window, 128 KiB by default: each costs a round trip through the daemon. It
    resets the window when it processes the INIT reply, so this runs after INIT. The
    device number comes from /proc/self/mountinfo: a stat of the mountpoint would be a
    request to this very daemon.
    """
    mountpoint, size = config.mountpoint, config.kernel_readahead
    if not size:
        return
    device = _mount_device(mountpoint)
    if device is None:
        log.info("kernel read-ahead unchanged: %s not found in mountinfo", mountpoint)
        return
    try:
        with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
            f.write(str(max(1, size // 1024)))
    except OSError as e:
        log.info("kernel read-ahead unchanged (%s): %s", device, e.strerror)


def _mount_device(mountpoint: str) -> str | None:
    """``major:minor`` of the mount at ``mountpoint`` (the last one, if stacked)."""
    devices = [m.device for m in mounts() if m.mountpoint == mountpoint]
    return devices[-1] if devices else None


async def _handle_signals(fs: Filesystem, metrics: Metrics, session: KernelSession) -> None:
    """SIGTERM or SIGINT: stop serving (``serve`` then unmounts); once stopping, they are
    noted and otherwise ignored, so that owed uploads drain. SIGHUP: drop the metadata
    and page caches, ours and the kernel's."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            name = signal.Signals(signum).name
            async with session.lock:
                if not session.open:
                    log.info("%s: already stopping", name)
                elif signum == signal.SIGHUP:
                    caches = fs.drop_caches()
                    # In a thread: the kernel waits for pages being read to be unlocked,
                    # and their reads need this event loop to answer them.
                    await trio.to_thread.run_sync(_invalidate_kernel_caches, caches)
                    metrics.cache_drops.inc()
                    log.info("SIGHUP: dropped the metadata and page caches (%d inodes, "
                             "%d missing names)", len(caches.inodes), len(caches.misses))
                else:
                    log.info("%s: unmounting", name)
                    pyfuse3.terminate()
