"""A mount's configuration: defaults, validation, and the merge of config file and command line.

Every option (declared in :mod:`alluxiofuse.options`) has one name (``page_cache_size``),
spelled ``--page-cache-size`` on the command line and ``page_cache_size`` (or
``page-cache-size``) in the TOML config file. The command line wins over the file.
Under-storage options (credentials, endpoints) go in the file's ``[ufs_options]`` table or
in repeatable ``--ufs-option key=value``, so that secrets need not appear in ``ps``.

Alluxio 3.x cluster reads are turned on by naming the workers (``--workers``, ``--etcd``
or ``--load-balance-domain``). Alluxio properties (``--alluxio-property key=value`` or the
file's ``[alluxio_properties]`` table) set the matching options, under the names an
Alluxio deployment already uses; an explicit option wins over a property.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alluxiofuse.errors import ConfigError
from alluxiofuse.limits import GiB, KiB, MiB, default_memory_budget, memory_limits
from alluxiofuse.options import OPTIONS


@dataclass(frozen=True)
class MountConfig:
    """Everything the daemon needs to know; built by :func:`build_config`."""

    source: str
    mountpoint: str
    foreground: bool = False
    ufs_options: Mapping[str, Any] = field(default_factory=dict)
    # Metadata caches (seconds; 0 turns a cache off). A minute, as gcsfuse caches stats
    # and types and mountpoint-s3 metadata with a cache: a change made behind the mount
    # shows within a minute (SIGHUP: at once), and a pass over a dataset that takes longer
    # than the timeout does not ask the store again for what it has just been told. Missing
    # names for 5 s (gcsfuse's negative TTL): a file another writer is about to make shows
    # soon.
    attr_timeout: float = 60.0
    entry_timeout: float = 60.0
    negative_timeout: float = 5.0
    dir_timeout: float = 60.0
    # The source does not change while mounted (a data set): the four timeouts above are
    # FOREVER, here and in the kernel, so a later epoch asks neither the store nor, for
    # what the kernel keeps, the daemon. SIGHUP still drops everything.
    immutable: bool = False
    # What cached statuses, missing names and listings may hold together, in bytes; 0 =
    # a quarter of the memory budget, at least 16 MiB (listings are held in columns, a few
    # bytes a field an entry: see listing.py).
    metadata_cache_size: int = 0
    # S3: modes, owners and times are not kept in object metadata (as on other object
    # stores): a listing then says all there is of each object, so `ls -l` costs the list
    # pages alone, with no HEAD or GET per object (rclone's --use-server-modtime).
    ignore_object_metadata: bool = False
    # Data path.
    page_size: int = 1 * MiB
    memory_budget: int = 0  # 0 = derived from the memory limits: limits.default_memory_budget
    page_cache_size: int = 0  # 0 = the memory budget (the cache holds read-ahead too)
    # The disk page store (fs/diskpages.py): "" = off. disk_cache (the Alluxio property
    # alluxio.user.client.cache.enabled) turns it on in <cache_dir>/pages, or off.
    disk_cache_dir: str = ""
    disk_cache_size: int = 0  # 0 = half its disk's free space, counting the store
    disk_cache: bool | None = None
    # None = by source: fs/readahead.default_readahead (16 MiB; 8 requests' worth where
    # read-ahead is ranged requests, as on object stores).
    max_readahead: int | None = None
    kernel_readahead: int = 4 * MiB  # the mount's bdi read_ahead_kb; 0 keeps the kernel's
    prefetch_budget: int = 0  # 0 = page_cache_size // 4, at most 256 MiB
    dir_readahead: int = 32  # files of a directory read in order to fetch ahead; 0 = off
    io_threads: int = 16
    io_timeout: float = 60.0
    # Writes.
    read_only: bool = False
    write_type: str = "THROUGH"  # see options.WRITE_TYPES
    read_type: str = "CACHE"  # Alluxio 2.x proxy reads: see options.READ_TYPES
    cache_dir: str = ""  # "" = default_cache_dir(); the spool and journal live below it
    cache_size: int = 0  # bytes the spool may hold; 0 = half the disk's free space at mount
    upload_part_size: int = 16 * MiB
    upload_threads: int = 4
    drain_timeout: float = 60.0
    # Presentation.
    allow_other: bool = False
    # mount(8)'s flags for the kernel (noexec, nosuid, sync, ...), handed to libfuse as
    # they are. Set by mount.alluxiofuse from `-o`; not an option of its own.
    kernel_flags: frozenset[str] = frozenset()
    uid: int | None = None
    gid: int | None = None
    file_mode: int | None = None
    dir_mode: int | None = None
    # Alluxio 3.x cluster: off unless one of workers / etcd / load_balance_domain is set.
    workers: str | None = None  # host[:port],...
    etcd: str | None = None  # host[:port],... or http://host:port,...
    load_balance_domain: str | None = None
    cluster_name: str = "DefaultAlluxioCluster"
    etcd_username: str | None = None
    etcd_password: str | None = None
    worker_api: str = "oss"  # or "enterprise": read-through with ufsFullPath, /v1/node
    worker_http_port: int = 28080
    worker_page_size: int = 1 * MiB
    worker_timeout: float = 5.0
    worker_retries: int = 2
    worker_cooloff: float = 30.0
    membership_refresh: float = 30.0
    virtual_nodes: int = 2000
    # Process.
    # "host:port", ":port" (every interface) or "off"; None: options.DEFAULT_METRICS_ADDR,
    # which a second mount on the host may find taken (then it serves on a port of its own)
    metrics_addr: str | None = None
    log_level: str = "info"
    log_file: str | None = None  # None: stderr, or default_log_file() in the background
    slow_op_threshold: float = 10.0  # a FUSE request slower than this is a warning; 0 = never
    strict: bool = False

    @property
    def cluster(self) -> bool:
        """Whether reads go through Alluxio workers."""
        return bool(self.workers or self.etcd or self.load_balance_domain)

    @property
    def proxy(self) -> bool:
        """Whether the source is an Alluxio 2.x namespace behind a proxy."""
        return self.source.startswith(PROXY_SCHEME + "://")

    @property
    def logging_level(self) -> int:
        return int(getattr(logging, self.log_level.upper()))


PROXY_SCHEME = "alluxio-proxy"


def default_cache_dir() -> str:
    """Where the spool lives unless --cache-dir says: the system cache for root, else the
    user's (it must survive a reboot, as pending uploads are resumed from it)."""
    if os.geteuid() == 0:
        return "/var/cache/alluxiofuse"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "alluxiofuse")


# A log file name longer than this (a deep mountpoint) is cut, and a digest of the whole
# mountpoint keeps it apart from others (file names end at 255 bytes).
_LOG_NAME_MAX = 200


def default_log_file(mountpoint: str) -> str:
    """Where a daemon in the background logs unless --log-file says: one file per
    mountpoint, named as ``systemd-escape --path`` names the mountpoint's units
    (``/mnt/data`` → ``mnt-data.log``), in the system's log directory for root, else in
    the user's state directory. A foreground daemon logs to stderr instead."""
    if os.geteuid() == 0:
        base = "/var/log/alluxiofuse"
    else:
        state = (os.environ.get("XDG_STATE_HOME")
                 or os.path.join(os.path.expanduser("~"), ".local", "state"))
        base = os.path.join(state, "alluxiofuse")
    name = escape_path(mountpoint)
    if len(name) > _LOG_NAME_MAX:
        digest = hashlib.sha256(os.fsencode(mountpoint)).hexdigest()[:16]
        name = f"{name[:_LOG_NAME_MAX - 17]}-{digest}"
    return os.path.join(base, f"{name}.log")


def escape_path(path: str) -> str:
    """``path`` as ``systemd-escape --path`` writes it: ``/srv/my-data`` → ``srv-my\\x2ddata``,
    ``/`` → ``-``."""
    trimmed = "/".join(part for part in path.split("/") if part)
    if not trimmed:
        return "-"
    escaped = []
    for i, byte in enumerate(os.fsencode(trimmed)):
        char = chr(byte)
        if char == "/":
            escaped.append("-")
        elif char.isascii() and (char.isalnum() or char in ":_.") and not (i == 0 and char == "."):
            escaped.append(char)
        else:
            escaped.append(f"\\x{byte:02x}")
    return "".join(escaped)


# How each option's value is parsed, by the names the config file and build_config take.
_PARSERS = {option.name: option.parse for option in OPTIONS if option.parse is not None}
OPTION_NAMES = frozenset(_PARSERS)
# Alluxio property names and the option each sets.
ALLUXIO_PROPERTIES = {name: option.name for option in OPTIONS for name in option.properties}


def parse_key_value(item: str, what: str) -> tuple[str, str]:
    """``"key=value"`` → (key, value)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{what} needs key=value, got {item!r}")
    return key.strip(), value.strip()


def _from_properties(properties: Mapping[str, Any]) -> dict[str, Any]:
    """Option values set by Alluxio properties; ConfigError for a property not understood
    (a misspelt ring property would silently place files on other workers)."""
    values: dict[str, Any] = {}
    for key, value in properties.items():
        name = ALLUXIO_PROPERTIES.get(key)
        if name is None:
            raise ConfigError(f"unknown Alluxio property {key!r}; understood: "
                              f"{', '.join(sorted(ALLUXIO_PROPERTIES))}")
        if name in values and values[name] != value:
            raise ConfigError(f"Alluxio properties set {name} twice, to {values[name]!r} "
                              f"and {value!r}")
        values[name] = value
    return values


def parse_ufs_option(item: str) -> tuple[str, Any]:
    """``"key=value"`` → (key, value); the value is JSON when it parses (``true``, ``3``),
    otherwise the literal string, so ``anon=true`` gives a bool and ``region=eu-1`` a str."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--ufs-option needs key=value, got {item!r}")
    try:
        value: Any = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML config file into option names → raw values (``ufs_options`` as a dict)."""
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in ("ufs_options", "alluxio_properties"):
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: [{name}] must be a table")
            values[name] = dict(value)
        elif name in values:
            raise ConfigError(f"{path}: option {name!r} is given twice")
        elif name in OPTION_NAMES:
            values[name] = value
        else:
            raise ConfigError(f"{path}: unknown option {key!r}")
    return values


# What --immutable sets the metadata timeouts to: longer than any mount lives (about 30
# years), finite so that every timer and the kernel's (u64 seconds) take it as it is.
FOREVER = 1e9
_METADATA_TIMEOUTS = ("attr_timeout", "entry_timeout", "negative_timeout", "dir_timeout")


def build_config(
    values: Mapping[str, Any], ufs_options: Mapping[str, Any] | None = None,
    alluxio_properties: Mapping[str, Any] | None = None, *, mount: bool = True,
) -> MountConfig:
    """Parse and validate raw option values into a :class:`MountConfig`.

    ``values`` maps option names to raw values (strings from the command line, typed
    values from TOML); ``ufs_options`` and ``alluxio_properties`` are merged over any of
    the same name in ``values``. Raises :class:`ConfigError` with a one-line message
    naming the bad option. With ``mount=False`` (commands that only talk to a cluster)
    SOURCE and MOUNTPOINT may be missing.
    """
    properties = {**dict(values.get("alluxio_properties") or {}),
                  **dict(alluxio_properties or {})}
    values = {**_from_properties(properties),
              **{k: v for k, v in values.items() if v is not None}}
    parsed: dict[str, Any] = {}
    for name, raw in values.items():
        if raw is None or name in ("ufs_options", "alluxio_properties"):
            continue
        if name not in _PARSERS:
            raise ConfigError(f"unknown option {name!r}")
        try:
            parsed[name] = _PARSERS[name](raw)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"--{name.replace('_', '-')}: {e}") from None
    for name in ("source", "mountpoint"):
        if mount and not parsed.get(name):
            raise ConfigError(f"missing {name.upper()}")
        parsed.setdefault(name, "")
    if parsed.get("immutable"):
        given = [n for n in _METADATA_TIMEOUTS if n in parsed]
        if given:
            raise ConfigError(f"--immutable keeps names, attributes and listings for the "
                              f"mount's life: leave out --{given[0].replace('_', '-')}")
        parsed.update(dict.fromkeys(_METADATA_TIMEOUTS, FOREVER))
    merged_ufs = {**dict(values.get("ufs_options") or {}), **dict(ufs_options or {})}
    config = MountConfig(**parsed, ufs_options=merged_ufs)
    return _with_derived_defaults(_validated(config))


def _validated(c: MountConfig) -> MountConfig:
    if c.page_size < 4 * KiB or c.page_size > 64 * MiB or c.page_size & (c.page_size - 1):
        raise ConfigError("--page-size must be a power of two between 4KiB and 64MiB")
    if c.page_cache_size and c.page_cache_size < 4 * c.page_size:
        raise ConfigError("--page-cache-size must hold at least 4 pages")
    if not 1 <= c.io_threads <= 1024:
        raise ConfigError("--io-threads must be between 1 and 1024")
    if c.io_timeout <= 0:
        raise ConfigError("--io-timeout must be positive")
    named = [n for n in ("workers", "etcd", "load_balance_domain") if getattr(c, n)]
    if len(named) > 1:
        raise ConfigError("name the workers one way: " + " or ".join(
            f"--{n.replace('_', '-')}" for n in named))
    if c.worker_timeout <= 0:
        raise ConfigError("--worker-timeout must be positive")
    ps = c.worker_page_size
    if ps < 4 * KiB or ps > 64 * MiB:
        raise ConfigError("--worker-page-size must be between 4KiB and 64MiB")
    if c.membership_refresh <= 0:
        raise ConfigError("--membership-refresh must be positive")
    if c.proxy and named:
        raise ConfigError(f"--{named[0].replace('_', '-')} names Alluxio 3.x workers; a "
                          f"{PROXY_SCHEME}:// source is read through its proxy alone")
    if c.proxy and c.ufs_options:
        raise ConfigError(f"--ufs-option has no meaning for a {PROXY_SCHEME}:// source (the "
                          "Alluxio cluster holds its under-storage's credentials)")
    if c.write_type == "MUST_CACHE" and not c.proxy:
        raise ConfigError("--write-type MUST_CACHE keeps files in Alluxio storage alone, which "
                          f"only an Alluxio 2.x ({PROXY_SCHEME}://) source can; use THROUGH, "
                          "CACHE_THROUGH or ASYNC_THROUGH")
    if c.write_type == "CACHE_THROUGH" and not (c.cluster or c.proxy):
        raise ConfigError("--write-type CACHE_THROUGH caches written files in Alluxio: name the "
                          "3.x workers with --workers, --etcd or --load-balance-domain, or "
                          f"mount a {PROXY_SCHEME}:// source")
    if not 5 * MiB <= c.upload_part_size <= 5 * GiB:
        raise ConfigError("--upload-part-size must be between 5MiB and 5GiB (the limits of "
                          "S3 multipart uploads)")
    return c


def _with_derived_defaults(c: MountConfig) -> MountConfig:
    budget = c.memory_budget or c.page_cache_size or default_memory_budget(memory_limits())
    cache = c.page_cache_size or budget
    if cache > budget:
        raise ConfigError(f"--page-cache-size ({cache} bytes) is larger than --memory-budget "
                          f"({budget} bytes)")
    cache = max(cache, 4 * c.page_size)
    prefetch = c.prefetch_budget or min(256 * MiB, cache // 4)
    metadata = c.metadata_cache_size or max(16 * MiB, max(budget, cache) // 4)
    cache_dir = os.path.abspath(c.cache_dir or default_cache_dir())
    disk_cache_dir = c.disk_cache_dir
    if c.disk_cache is False:
        disk_cache_dir = ""
    elif c.disk_cache and not disk_cache_dir:
        disk_cache_dir = os.path.join(cache_dir, "pages")
    disk_cache_dir = disk_cache_dir and os.path.abspath(disk_cache_dir)
    return dataclasses.replace(c, memory_budget=max(budget, cache), page_cache_size=cache,
                               metadata_cache_size=metadata,
                               prefetch_budget=max(prefetch, c.page_size),
                               cache_dir=cache_dir, disk_cache_dir=disk_cache_dir)
