"""Every option of a mount, declared once: how its value is parsed and how it is documented.

From each :class:`Option` of :data:`OPTIONS` are made: its argument of ``alluxiofuse
mount`` (and of ``locate`` and ``load``, for the cluster's options), its ``-o`` name for
``mount.alluxiofuse``, its config-file key and the parser of its values, and its row of
README.md's options table. Its default is that of its
:class:`~alluxiofuse.config.MountConfig` field; the help and the README say it in words.
``python -m alluxiofuse.options README.md`` writes the table into the README again.

Sizes take binary units (``1MiB``, ``1M`` and ``1MB`` are all 1,048,576 bytes, as in
Alluxio's own properties); durations take seconds or a unit (``500ms``, ``2s``, ``1m``).
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from alluxiofuse.limits import GiB, KiB, MiB

LOG_LEVELS = ("debug", "info", "warning", "error")
# Where /metrics, /healthz and /readyz are served unless --metrics-addr says otherwise:
# loopback only, as the numbers are nobody else's business by default.
DEFAULT_METRICS_ADDR = "127.0.0.1:9847"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def _parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def parse_size(value: Any) -> int:
    """``"1MiB"`` → 1048576; plain integers are bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    else:
        m = _SIZE_RE.match(str(value))
        if not m:
            raise ValueError(f"not a size: {value!r} (try 512KiB, 1MiB, 2GiB)")
        size = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])
    if size < 0:
        raise ValueError(f"size must not be negative: {value!r}")
    return size


def parse_duration(value: Any) -> float:
    """``"500ms"`` → 0.5; plain numbers are seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION_RE.match(str(value))
        if not m:
            raise ValueError(f"not a duration: {value!r} (try 1, 0.5, 500ms, 2s, 1m)")
        seconds = float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()]
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration must be a finite number of seconds >= 0: {value!r}")
    return seconds


def parse_mode(value: Any) -> int:
    """``"0644"``, ``"644"`` or ``0o644`` → 0o644."""
    if isinstance(value, bool):
        raise ValueError(f"not a permission mode: {value!r}")
    mode = value if isinstance(value, int) else int(str(value), 8)
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"not a permission mode: {value!r}")
    return mode


def _parse_id(value: Any) -> int:
    ident = int(value)
    if not 0 <= ident < 2**32:
        raise ValueError(f"not a uid/gid: {value!r}")
    return ident


def _parse_count(value: Any, minimum: int = 0) -> int:
    count = int(value)
    if count < minimum:
        raise ValueError(f"must be at least {minimum}: {value!r}")
    return count


def _parse_port(value: Any) -> int:
    port = int(value)
    if not 0 < port < 65536:
        raise ValueError(f"not a port number: {value!r}")
    return port


def _parse_worker_api(value: Any) -> str:
    api = str(value).lower()
    if api not in ("oss", "enterprise"):
        raise ValueError(f"not a worker API: {value!r} (oss or enterprise)")
    return api


WRITE_TYPES = ("THROUGH", "CACHE_THROUGH", "ASYNC_THROUGH", "MUST_CACHE")
# How an Alluxio 2.x proxy reads a file for us: NO_CACHE leaves Alluxio storage as it is,
# CACHE (Alluxio's default) caches what is read, CACHE_PROMOTE also moves it to the top tier.
READ_TYPES = ("NO_CACHE", "CACHE", "CACHE_PROMOTE")
def _parse_write_type(value: Any) -> str:
    kind = str(value).strip().upper()
    if kind not in WRITE_TYPES:
        raise ValueError(f"not a write type: {value!r} (one of {', '.join(WRITE_TYPES)})")
    return kind


def _parse_read_type(value: Any) -> str:
    kind = str(value).strip().upper()
    if kind not in READ_TYPES:
        raise ValueError(f"not a read type: {value!r} (one of {', '.join(READ_TYPES)})")
    return kind


def parse_metrics_addr(value: Any) -> str:
    """``"127.0.0.1:9847"``, ``":9847"`` (every interface), ``"[::1]:9847"`` or ``"off"``
    → ``"host:port"`` or ``"off"``."""
    text = str(value).strip()
    if text.lower() in ("off", "none", "no", "false", "0", ""):
        return "off"
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"not HOST:PORT or off: {value!r}")
    host = host.removeprefix("[").removesuffix("]")
    return f"[{host}]:{int(port)}" if ":" in host else f"{host}:{int(port)}"


def split_addr(addr: str) -> tuple[str, int]:
    """``"host:port"`` as made by :func:`parse_metrics_addr` → (host, port); the host is
    "" for every interface."""
    host, _, port = addr.rpartition(":")
    return host.removeprefix("[").removesuffix("]"), int(port)


def _parse_disk_cache_dir(value: Any) -> str:
    """A directory; Alluxio's ``alluxio.user.client.cache.dirs`` may list several, and one
    store is kept in one."""
    dirs = [d.strip() for d in str(value).split(",") if d.strip()]
    if len(dirs) > 1:
        raise ValueError(f"one directory, not {len(dirs)}: {value!r}")
    return dirs[0] if dirs else ""


def _parse_level(value: Any) -> str:
    level = str(value).lower()
    if level not in LOG_LEVELS:
        raise ValueError(f"not a log level: {value!r} (one of {', '.join(LOG_LEVELS)})")
    return level


Kind = Literal["positional", "value", "flag", "repeated", "file"]


@dataclass(frozen=True)
class Option:
    """One option of a mount.

    ``kind`` says where it is given: ``positional`` (SOURCE, MOUNTPOINT), ``value``
    (``--name VALUE``), ``flag`` (``--name``, no value), ``repeated`` (``--name KEY=VALUE``,
    any number of times) or ``file`` (the config file and Alluxio properties only).
    """

    name: str  # the MountConfig field, the config-file key and the -o name
    kind: Kind
    # The value from a command-line string or a TOML value; None for what is not a
    # config-file key (--config, and the repeated KEY=VALUE options).
    parse: Callable[[Any], Any] | None
    metavar: str  # "" for a flag
    help: str  # what `alluxiofuse mount --help` says
    default: str  # README's default column; "off" for a flag
    doc: str = ""  # README's meaning column, where it says more than the help
    properties: tuple[str, ...] = ()  # the Alluxio properties that set it
    cluster: bool = False  # an option of `locate` and `load` too
    short: str = ""  # "-f"

    @property
    def string(self) -> str:
        """``--page-cache-size``."""
        return "--" + self.name.replace("_", "-")


def _flag(name: str, text: str, doc: str = "", short: str = "") -> Option:
    return Option(name, "flag", _parse_bool, "", text, "off", doc, short=short)


# In the order of `alluxiofuse mount --help`, which is README's.
OPTIONS: tuple[Option, ...] = (
    Option("source", "positional", str, "SOURCE",
           "a local directory, file:///dir, any fsspec URL (s3://bucket/prefix), or an Alluxio "
           "2.x namespace: alluxio-proxy://HOST[:39999]/PATH", ""),
    Option("mountpoint", "positional", str, "MOUNTPOINT",
           "an existing directory, not mounted already (what it holds is hidden while mounted)",
           ""),
    _flag("foreground", "stay in the foreground (default: return once mounted)",
          "stay in the foreground instead of returning once mounted", short="-f"),
    Option("attr_timeout", "value", parse_duration, "SECONDS",
           "how long file attributes are cached (default 60)", "60",
           "how long file attributes are cached, by the kernel and the daemon: a change made "
           "behind the mount shows after up to this long (`SIGHUP`: at once); see "
           "SEMANTICS.md"),
    Option("entry_timeout", "value", parse_duration, "SECONDS",
           "how long name lookups are cached (default 60)", "60",
           "how long name lookups are cached by the kernel"),
    Option("negative_timeout", "value", parse_duration, "SECONDS",
           "how long a missing name is cached (default 5)", "5",
           "how long a missing name is cached (0: not at all)"),
    Option("dir_timeout", "value", parse_duration, "SECONDS",
           "how long directory listings are cached (default 60)", "60",
           "how long a directory listing is cached"),
    Option("metadata_cache_size", "value", parse_size, "SIZE",
           "what cached statuses, missing names and listings may hold together (default: a "
           "quarter of the memory budget, at least 16MiB)",
           "a quarter of the memory budget, at least 16MiB",
           "what cached statuses, missing names and listings may hold together, in bytes "
           "(`alluxiofuse_metadata_cache_bytes`); a listing is kept in columns, about 100 bytes "
           "an entry (a directory of 100,000 local files: 10 MB) and answers for its "
           "children's statuses; a listing larger than the bound is served all the same, only "
           "not cached"),
    Option("page_size", "value", parse_size, "SIZE",
           "page size of the page cache (default 1MiB)", "1MiB",
           "unit of the page cache and of under-storage reads (power of two, 4KiB–64MiB)"),
    Option("memory_budget", "value", parse_size, "SIZE",
           "memory the page cache and read-ahead may hold (default: 1/8 of RAM, 64MiB-4GiB, "
           "and at most half the cgroup memory limit)",
           "1/8 of RAM, 64MiB–4GiB, at most half the cgroup limit",
           "what the page cache and read-ahead may hold ([Memory](#memory))"),
    Option("page_cache_size", "value", parse_size, "SIZE",
           "page cache bound, read-ahead included (default: the memory budget)",
           "the memory budget",
           "page cache bound, including pages being fetched; at most the budget"),
    Option("disk_cache_dir", "value", _parse_disk_cache_dir, "DIR",
           "keep the pages read on local disk here too, for later epochs and restarts "
           "(default: none, off)", "none: off",
           "keep the pages read in a page store on local disk, behind the memory page cache: "
           "a later read of the same version of a file (a later epoch, a remount, another "
           "daemon of the node sharing DIR) is served from it instead of the source "
           "([Disk page store](#disk-page-store))",
           properties=("alluxio.user.client.cache.dirs",)),
    Option("disk_cache_size", "value", parse_size, "SIZE",
           "bytes the disk page store may hold (default: half of what its disk has free, "
           "counting the store)", "half the disk's free space, counting the store",
           "bytes the disk page store may hold, for all the daemons sharing it (give them "
           "the same); whatever this says, the store never leaves its disk under 5% free",
           properties=("alluxio.user.client.cache.size",)),
    Option("disk_cache", "file", _parse_bool, "BOOL", "", "on with `--disk-cache-dir`",
           "`false` turns the disk page store off; `true` with no `--disk-cache-dir` keeps it "
           "in `pages` under `--cache-dir`",
           properties=("alluxio.user.client.cache.enabled",)),
    Option("max_readahead", "value", parse_size, "SIZE",
           "largest read-ahead window of one open file (default: 16MiB; 64MiB from object "
           "stores and other fsspec sources)",
           "16MiB; 64MiB from S3 and other fsspec sources",
           "largest read-ahead window of one open file; from fsspec sources the window is read "
           "in requests of up to 8MiB, several in flight, so that a sequential read keeps "
           "several connections busy"),
    Option("kernel_readahead", "value", parse_size, "SIZE",
           "the kernel's read-ahead for the mount, so reads reach the daemon in large requests "
           "(root only; default 4MiB; 0 keeps the kernel's)", "4MiB",
           "the kernel's read-ahead for this mount (`/sys/class/bdi/*/read_ahead_kb`, root "
           "only): reads reach the daemon in requests this large instead of 128 KiB; 0 keeps "
           "the kernel's default"),
    Option("prefetch_budget", "value", parse_size, "SIZE",
           "read-ahead bytes in flight, all files together (default: page cache / 4, at most "
           "256MiB)", "page cache / 4, ≤ 256MiB",
           "read-ahead bytes in flight across all files"),
    Option("dir_readahead", "value", _parse_count, "N",
           "when a directory's files are read in order, fetch the first pages of up to N next "
           "files ahead (default 32; 0 turns it off)", "32",
           "when a directory's files are opened in listing order (`cp -r`, `tar`, a sequential "
           "loader), fetch the first pages of up to this many next files ahead (from a local "
           "directory: ask the kernel to read them ahead, and serve them from its cache); "
           "shuffled access does not trigger it; 0 turns it off"),
    Option("io_threads", "value", _parse_count, "N",
           "under-storage calls at once (default 16)", "16",
           "under-storage calls running at once in worker threads (reads of S3 need none: they "
           "are awaited on s3fs's event loop, up to 64 for waiting readers and 16 for "
           "read-ahead at once, apart, so that a reader never waits behind read-ahead; the S3 "
           "connection pool is sized for all of them unless `--ufs-option config_kwargs=...` "
           "sets `max_pool_connections`)"),
    Option("io_timeout", "value", parse_duration, "SECONDS",
           "deadline of one under-storage or Alluxio proxy call; an upload has one second per "
           "MiB more (default 60)", "60",
           "deadline of one under-storage or Alluxio proxy call (an upload: plus one second per "
           "MiB); past it the request fails with `EIO`"),
    Option("uid", "value", _parse_id, "UID",
           "owner of every file (default: from the source, else the mounting user)",
           "from the source, else the mounting user", "owner shown for every file"),
    Option("gid", "value", _parse_id, "GID",
           "group of every file (default: from the source, else the mounting user)",
           "from the source, else the mounting user", "group shown for every file"),
    Option("file_mode", "value", parse_mode, "OCTAL",
           "permission bits of every file (default: from the source, else 0644)",
           "from the source, else 0644", "permission bits shown for every file"),
    Option("dir_mode", "value", parse_mode, "OCTAL",
           "permission bits of every directory (default: from the source, else 0755)",
           "from the source, else 0755", "permission bits shown for every directory"),
    Option("write_type", "value", _parse_write_type, "TYPE",
           "THROUGH (default: close and fsync return once the under-storage has the file), "
           "CACHE_THROUGH (also cached by the cluster), ASYNC_THROUGH (they return once the file "
           "is journaled in the spool; uploaded in the background), MUST_CACHE "
           "(alluxio-proxy:// only: kept in Alluxio storage, never persisted)", "THROUGH",
           "`THROUGH`, `CACHE_THROUGH`, `ASYNC_THROUGH` or (`alluxio-proxy://` only) "
           "`MUST_CACHE` (see [Writes](#writes))",
           properties=("alluxio.user.file.writetype.default",)),
    Option("read_type", "value", _parse_read_type, "TYPE",
           "alluxio-proxy:// reads: CACHE (default: Alluxio caches what is read), "
           "CACHE_PROMOTE (and moves it to the top tier) or NO_CACHE", "CACHE",
           "`alluxio-proxy://` reads: `CACHE`, `CACHE_PROMOTE` or `NO_CACHE`",
           properties=("alluxio.user.file.readtype.default",)),
    Option("cache_dir", "value", str, "DIR",
           "where files being written and owed uploads are kept (default /var/cache/alluxiofuse "
           "as root, else ~/.cache/alluxiofuse)",
           "`/var/cache/alluxiofuse` (root), else `~/.cache/alluxiofuse`",
           "where the spool and its journal live: on a disk that survives reboots"),
    Option("cache_size", "value", parse_size, "SIZE",
           "bytes the spool may hold (default: half the disk's free space)",
           "half the disk's free space",
           "bytes the spool may hold; past it, writes fail with `ENOSPC`"),
    Option("upload_part_size", "value", parse_size, "SIZE",
           "part size of multipart uploads (default 16MiB)", "16MiB",
           "part size of multipart uploads (5MiB–5GiB)"),
    Option("upload_threads", "value", functools.partial(_parse_count, minimum=1), "N",
           "background uploads at once (default 4)", "4", "background uploads at once"),
    Option("drain_timeout", "value", parse_duration, "SECONDS",
           "at unmount, how long to wait for owed uploads; the rest resume at the next mount "
           "(default 60)", "60", "how long an unmount or a rename waits for owed uploads"),
    Option("metrics_addr", "value", parse_metrics_addr, "HOST:PORT",
           f"serve /metrics, /healthz and /readyz here (default {DEFAULT_METRICS_ADDR}, or a "
           "port the system picks if another mount has it, named in the log; :PORT for every "
           "interface; off turns it off)", DEFAULT_METRICS_ADDR,
           "where `/metrics`, `/healthz` and `/readyz` are served; `:PORT` for every interface "
           "(IPv6 and IPv4); `off`. The default port taken (a second mount): a port the system "
           "picks, named in the log"),
    Option("log_level", "value", _parse_level, "LEVEL",
           f"one of {', '.join(LOG_LEVELS)} (default info)", "info",
           "`debug`, `info`, `warning` or `error`"),
    Option("log_file", "value", str, "PATH",
           "log here (default: stderr in the foreground; in the background "
           "/var/log/alluxiofuse/MOUNTPOINT.log as root, else ~/.local/state/alluxiofuse/, the "
           "mountpoint escaped as by systemd-escape --path, and said at mount)",
           "stderr (foreground); `/var/log/alluxiofuse/MOUNTPOINT.log` (background, root; else "
           "`~/.local/state/alluxiofuse/`)",
           "where the daemon logs, one line per event. The default file is named as "
           "`systemd-escape --path` names the mountpoint (`/mnt/data`: `mnt-data.log`), kept "
           "below 10 MiB (the older half in `mnt-data.log.1`)"),
    Option("slow_op_threshold", "value", parse_duration, "SECONDS",
           "log a warning for each FUSE request slower than this (default 10; 0: never)", "10",
           "a FUSE request slower than this many seconds is logged as a warning; 0: never",
           properties=("alluxio.fuse.logging.threshold",)),
    _flag("allow_other", "let other users access the mount (as root, or with user_allow_other)",
          "let other users into the mount (root, or `user_allow_other` in `/etc/fuse.conf`)"),
    _flag("read_only", "refuse every change (EROFS); no spool is used",
          "refuse every change with `EROFS` (`ro` in `/proc/mounts`); no spool. Also saves a "
          "round trip per close: a writable mount must hear every close (pyfuse3 cannot ask "
          "the kernel to skip the flush of a read-only open)"),
    _flag("immutable", "the source does not change while mounted (a data set): names, "
          "attributes, listings and pages are kept for the mount's life, in the kernel too "
          "(SIGHUP refreshes them); not with --attr-, --entry-, --negative- or --dir-timeout",
          "the source does not change while mounted (a data set): names, attributes, missing "
          "names, listings and pages are kept for the mount's life, by the kernel too, so a "
          "later epoch sends the daemon no lookup (mountpoint-s3's `--metadata-ttl "
          "indefinite`, gcsfuse's `--metadata-cache-ttl-secs=-1`); `SIGHUP` still drops "
          "everything. Not with `--attr-timeout`, `--entry-timeout`, `--negative-timeout` or "
          "`--dir-timeout`"),
    _flag("ignore_object_metadata", "S3: keep no modes, owners or times in object metadata "
          "(chmod, chown, utimes: ENOTSUP); listings then say all of an object's attributes, "
          "so ls -l costs the list pages alone, with no request per object",
          "S3: keep no modes, owners or times in object metadata, as on other object stores "
          "(chmod, chown and utimes are `ENOTSUP`; mtime is LastModified): listings then tell "
          "all of an object's attributes, so a `stat` of a listed object costs no request "
          "(rclone's `--use-server-modtime`)"),
    _flag("strict", "crash on unexpected exceptions instead of answering EIO (for tests)",
          "crash on an unexpected exception instead of answering `EIO` (tests use it)"),
    # Alluxio 3.x cluster options, and where options come from: of mount, locate and load.
    Option("config", "value", None, "FILE",
           "TOML file of options, [ufs_options] and [alluxio_properties]", "none",
           "TOML file of options (`page_cache_size = \"4GiB\"`), a `[ufs_options]` and an "
           "`[alluxio_properties]` table", cluster=True),
    Option("ufs_option", "repeated", None, "KEY=VALUE",
           "an under-storage option (repeatable); values are JSON or strings", "none",
           "an under-storage (fsspec) option; repeatable", cluster=True),
    Option("alluxio_property", "repeated", None, "KEY=VALUE",
           "an Alluxio property (repeatable), e.g. alluxio.user.worker.selection.policy."
           "consistent.hash.virtual.node.count.per.worker=2000", "none",
           "an Alluxio property (see above); repeatable", cluster=True),
    Option("workers", "value", str, "HOST[:PORT],...",
           "read through these Alluxio 3.x workers (HTTP port default 28080)", "none",
           "read through these Alluxio 3.x workers", cluster=True),
    Option("etcd", "value", str, "HOST[:PORT],...",
           "read through the Alluxio 3.x workers registered in this etcd (port default 2379)",
           "none",
           "read through the workers registered in this etcd (`/ServiceDiscovery/<cluster>/`; "
           "port 2379; `http(s)://` URLs too)",
           properties=("alluxio.etcd.endpoints",), cluster=True),
    Option("load_balance_domain", "value", str, "NAME",
           "read through the Alluxio 3.x workers this DNS name resolves to (re-resolved with "
           "each membership refresh)", "none",
           "read through the workers this DNS name resolves to (resolved off the event loop, "
           "again at each refresh)", cluster=True),
    Option("cluster_name", "value", str, "NAME",
           "the cluster's name in etcd (default DefaultAlluxioCluster)", "DefaultAlluxioCluster",
           "the cluster's name in etcd", properties=("alluxio.cluster.name",), cluster=True),
    Option("etcd_username", "value", str, "USER", "etcd user name", "none",
           properties=("alluxio.etcd.username",), cluster=True),
    Option("etcd_password", "value", str, "PASSWORD",
           "etcd password (visible in ps: prefer the config file)", "none",
           "etcd password (prefer the config file: the command line shows in `ps`)",
           properties=("alluxio.etcd.password",), cluster=True),
    Option("worker_api", "value", _parse_worker_api, "API",
           "oss (default) or enterprise: read-through with ufsFullPath and /v1/node owner "
           "lookups", "oss", "`oss` or `enterprise` (read-through, `/v1/node`, content hashes)",
           cluster=True),
    Option("worker_http_port", "value", _parse_port, "PORT",
           "the workers' HTTP port where not given (default 28080)", "28080",
           "workers' HTTP port where a list does not say",
           properties=("alluxio.worker.http.server.port",), cluster=True),
    Option("worker_page_size", "value", parse_size, "SIZE",
           "the workers' page size, alluxio.worker.page.store.page.size (default 1MiB)", "1MiB",
           "the workers' page size", properties=("alluxio.worker.page.store.page.size",),
           cluster=True),
    Option("worker_timeout", "value", parse_duration, "SECONDS",
           "deadline of one worker call, retries included (default 5)", "5",
           "deadline of one worker call, retries included", cluster=True),
    Option("worker_retries", "value", _parse_count, "N",
           "retries of an idempotent worker call refused or answered 429/503 (default 2)", "2",
           "retries of an idempotent call refused or answered 429/503 (jittered backoff; "
           "timeouts are not retried: the under-storage answers instead)", cluster=True),
    Option("worker_cooloff", "value", parse_duration, "SECONDS",
           "how long a failing worker is set aside (default 30)", "30",
           "how long a failing worker is set aside", cluster=True),
    Option("membership_refresh", "value", parse_duration, "SECONDS",
           "how often the worker list is read again (default 30)", "30",
           "how often the worker list is read again",
           properties=("alluxio.user.worker.list.refresh.interval",), cluster=True),
    # Both names of the ring's virtual-node count are accepted: Alluxio's documented key
    # (default 2000) and the OSS clients' key.
    Option("virtual_nodes", "file", functools.partial(_parse_count, minimum=1), "N", "", "2000",
           "the hash ring's virtual nodes per worker, as Alluxio documents (the open-source "
           "clients default to 5: match the cluster)",
           properties=("alluxio.user.worker.selection.policy.consistent.hash.virtual.node."
                       "count.per.worker", "alluxio.user.consistent.hash.virtual.node.count."
                       "per.worker")),
)


# README.md's options table lies between these lines.
README_BEGIN = ("<!-- The options table is made from alluxiofuse/options.py: edit that, then run "
                "python -m alluxiofuse.options README.md -->")
README_END = "<!-- end of the options table -->"


def readme_table(options: tuple[Option, ...] = OPTIONS) -> str:
    """README.md's options table, in Markdown."""
    rows = ["| option | default | meaning |", "|---|---|---|"]
    for option in options:
        if option.kind == "positional":
            continue
        if option.kind == "file":
            names = f"`{option.name}` (config file)"
        else:
            names = "`" + " ".join(filter(None, (option.string, option.metavar))) + "`"
            if option.short:
                names = f"`{option.short}`, {names}"
        meaning = option.doc or option.help
        if option.properties:
            meaning += "; Alluxio property " + " or ".join(f"`{p}`" for p in option.properties)
        rows.append(f"| {names} | {option.default} | {meaning} |")
    return "\n".join(rows) + "\n"


def with_readme_table(readme: str) -> str:
    """``readme`` with its options table made again."""
    before, begin, rest = readme.partition(README_BEGIN + "\n")
    _, end, after = rest.partition(README_END)
    if not begin or not end:
        raise ValueError(f"the README has no {README_BEGIN!r} ... {README_END!r}")
    return before + begin + readme_table() + end + after


if __name__ == "__main__":  # python -m alluxiofuse.options README.md
    for path in sys.argv[1:]:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(with_readme_table(text))
