"""The ``alluxiofuse`` command: ``mount`` and ``umount``, and the operator commands
(``locate``, ``load``, ``free``, ``setattr``, ``status``, ``install-mount-helper``).

``alluxiofuse mount SOURCE MOUNTPOINT`` returns only once the mount is live (exit 0), or
prints one line saying why not (exit 1) and leaves nothing mounted. Usage errors exit 2.
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import alluxiofuse
from alluxiofuse import __version__
from alluxiofuse.backends.cluster.membership import parse_etcd_endpoints, parse_static_workers
from alluxiofuse.config import (
    OPTION_NAMES,
    MountConfig,
    build_config,
    default_cache_dir,
    default_log_file,
    load_config_file,
    parse_key_value,
    parse_ufs_option,
)
from alluxiofuse.errors import ConfigError
from alluxiofuse.mountinfo import mounts
from alluxiofuse.options import OPTIONS, Option, parse_duration

# The options of mount that locate and load take too: where options come from, and the
# Alluxio 3.x cluster's.
_CLUSTER_OPTIONS = tuple(option for option in OPTIONS if option.cluster)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="alluxiofuse",
        description="Mount a local directory, any fsspec under-storage or an Alluxio "
        "namespace as a directory.",
    )
    p.add_argument("--version", action="version", version=f"alluxiofuse {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("mount", help="mount SOURCE at MOUNTPOINT (writable unless "
                       "--read-only)")
    _add_options(m, OPTIONS)

    loc = sub.add_parser("locate", help="print each PATH's owning worker and preference list, "
                         "or its AIStore target (JSON)")
    loc.add_argument("paths", metavar="PATH", nargs="+",
                     help="a UFS URI, a local path, or a path inside an alluxiofuse mount")
    loc.add_argument("--count", type=int, default=3, metavar="N",
                     help="workers in each preference list (default 3)")
    _add_options(loc, _CLUSTER_OPTIONS)

    ld = sub.add_parser("load", help="load PATH into the cluster's cache (AIStore: prefetch), "
                        "showing progress; Ctrl-C stops the job")
    ld.add_argument("path", metavar="PATH",
                    help="a UFS URI, a local path, or a path inside an alluxiofuse mount")
    ld.add_argument("--poll", type=float, default=1.0, metavar="SECONDS",
                    help="how often progress is asked for (default 1)")
    _add_options(ld, _CLUSTER_OPTIONS)

    proxy_path = ("an alluxio-proxy://HOST[:PORT]/PATH URI, or a path inside an alluxiofuse "
                  "mount of one")
    fr = sub.add_parser("free", help="evict PATH's data from Alluxio storage (Alluxio 2.x; the "
                        "under-storage keeps it; prints each status after as JSON), or from "
                        "an AIStore cluster (a remote bucket's objects)")
    fr.add_argument("paths", metavar="PATH", nargs="+",
                    help=proxy_path + "; or an ais:// URI, or a path inside a mount of one")
    fr.add_argument("-r", "--recursive", action="store_true",
                    help="free a directory and everything below it")
    fr.add_argument("--forced", action="store_true", help="free pinned files too")
    fr.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="deadline of each call (default 60)")
    _add_options(fr, tuple(o for o in OPTIONS if o.name in ("config", "ufs_option",
                                                             "alluxio_property")))

    sa = sub.add_parser("setattr", help="set Alluxio attributes of PATH (Alluxio 2.x): pin, "
                        "TTL, replication; prints each status after as JSON")
    sa.add_argument("paths", metavar="PATH", nargs="+", help=proxy_path)
    pin = sa.add_mutually_exclusive_group()
    pin.add_argument("--pin", dest="pinned", action="store_const", const=True,
                     help="keep the data in Alluxio storage: never evicted")
    pin.add_argument("--unpin", dest="pinned", action="store_const", const=False,
                     help="let the data be evicted again")
    sa.add_argument("--ttl", metavar="DURATION",
                    help="act on the path once this long has passed since its creation "
                    "(1h, 30m, 3600; 'none' removes the TTL)")
    sa.add_argument("--ttl-action", choices=("free", "delete"),
                    help="what the TTL does: free the data (keeping it in the under-storage) "
                    "or delete the path (Alluxio's default)")
    sa.add_argument("--replication-min", type=int, metavar="N",
                    help="copies Alluxio keeps at least")
    sa.add_argument("--replication-max", type=int, metavar="N",
                    help="copies Alluxio keeps at most (-1: no limit)")
    sa.add_argument("-r", "--recursive", action="store_true",
                    help="set them on everything below a directory too")
    sa.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                    help="deadline of each call (default 60)")

    s = sub.add_parser("status", help="list the uploads a mount still owes its source")
    s.add_argument("target", metavar="MOUNTPOINT|SOURCE",
                   help="an alluxiofuse mountpoint, or the source it mounts")
    s.add_argument("--cache-dir", metavar="DIR",
                   help="the mount's --cache-dir, if it was given one")

    c = sub.add_parser("cache", help="what a disk page store (--disk-cache-dir) holds, or "
                       "empty it; safe while mounts use it")
    c.add_argument("action", choices=("stats", "clear"),
                   help="stats: its pages, bytes and the disk's free space; clear: remove "
                        "every page")
    c.add_argument("directory", metavar="DIR", help="the store: a mount's --disk-cache-dir")

    u = sub.add_parser("umount", help="unmount MOUNTPOINT")
    u.add_argument("mountpoint", metavar="MOUNTPOINT")
    u.add_argument("-z", "--lazy", action="store_true",
                   help="detach now even if busy (the daemon exits when the last user lets go)")

    h = sub.add_parser("install-mount-helper", help="install mount.alluxiofuse, so that "
                       "'mount -t alluxiofuse' and fstab entries work")
    h.add_argument("--sbin-dir", default="/sbin", metavar="DIR",
                   help="where mount(8) looks for helpers (default /sbin)")
    h.add_argument("--force", action="store_true",
                   help="replace (or remove) a mount.alluxiofuse this command did not write")
    h.add_argument("--uninstall", action="store_true", help="remove it instead")
    for command in sub.choices.values():  # a usage error is said with the command's usage
        command.set_defaults(command_parser=command)
    return p


def _add_options(p: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """The arguments of ``options`` (alluxiofuse/options.py), in their order; an option of
    the config file alone has none."""
    for option in options:
        if option.kind == "positional":
            p.add_argument(option.name, metavar=option.metavar, help=option.help)
        elif option.kind == "flag":
            p.add_argument(*filter(None, (option.short, option.string)), action="store_true",
                           default=None, help=option.help)
        elif option.kind == "repeated":
            p.add_argument(option.string, metavar=option.metavar, action="append", default=[],
                           help=option.help)
        elif option.kind == "value":
            p.add_argument(option.string, metavar=option.metavar, help=option.help)


def main(argv: Sequence[str] | None = None) -> int:
    args, unknown = parser().parse_known_args(argv)
    if unknown:  # said by the command's parser, with its usage, not the top-level one
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    try:
        if args.command == "mount":
            return cmd_mount(args)
        if args.command in ("locate", "load"):
            return cmd_cluster(args)
        if args.command == "install-mount-helper":
            return cmd_install_mount_helper(args.sbin_dir, force=args.force,
                                            uninstall=args.uninstall)
        if args.command in ("free", "setattr"):
            return cmd_proxy(args)
        if args.command == "cache":
            from alluxiofuse.cli import commands

            return commands.cache(args.action, args.directory)
        if args.command == "status":
            from alluxiofuse.cli import commands

            return commands.status(args.target, args.cache_dir or default_cache_dir())
        return cmd_umount(args.mountpoint, lazy=args.lazy)
    except ConfigError as e:
        print(f"alluxiofuse: {e}", file=sys.stderr)
        return 1


def config_from_args(args: argparse.Namespace) -> MountConfig:
    """Config file values, overridden by command-line values, validated."""
    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for name in OPTION_NAMES:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    mount = args.command == "mount"
    if mount:
        values["mountpoint"] = os.path.abspath(args.mountpoint)
        source = values.get("source")  # "" (an unset variable in a unit) is missing, not "."
        if source and "://" not in source:  # a local source, named the same way
            values["source"] = os.path.abspath(source)  # wherever it is used
    ufs = dict(parse_ufs_option(item) for item in args.ufs_option)
    properties = dict(parse_key_value(item, "--alluxio-property")
                      for item in args.alluxio_property)
    config = build_config(values, ufs, properties, mount=mount)
    if config.proxy:  # so is a proxy source that names no proxy
        from alluxiofuse.backends.proxy.backend import parse_source

        parse_source(config.source)
    if config.cluster:  # a bad worker list is a usage error, said before anything starts
        if config.workers:
            parse_static_workers(config.workers, config.worker_http_port)
        if config.etcd:
            parse_etcd_endpoints(config.etcd)
    return config


def cmd_cluster(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    paths = args.paths if args.command == "locate" else [args.path]
    from alluxiofuse.cli import commands

    if any(commands.is_ais(path) for path in paths):
        return cmd_ais(args, config, paths)
    if not config.cluster:
        raise ConfigError("name the workers: --workers, --etcd or --load-balance-domain")

    if args.command == "locate":
        if args.count < 1:
            raise ConfigError("--count must be at least 1")
        return commands.locate(config, args.paths, args.count)
    if not args.poll > 0:
        raise ConfigError("--poll must be positive")
    return commands.load(config, args.path, args.poll)


def cmd_ais(args: argparse.Namespace, config: MountConfig, paths: list[str]) -> int:
    """``locate``, ``load`` and ``free`` of objects of an AIStore cluster."""
    from alluxiofuse.cli import commands

    if not all(commands.is_ais(path) for path in paths):
        raise ConfigError("give ais:// paths alone, or no ais:// path")
    if args.command == "locate":
        return commands.ais_locate(config, paths)
    interval = getattr(args, "poll", 1.0)
    if not interval > 0:
        raise ConfigError("--poll must be positive")
    action = "prefetch-listrange" if args.command == "load" else "evict-listrange"
    for path in paths:
        code = commands.ais_job(config, action, path, interval)
        if code:
            return code
    return 0


def cmd_proxy(args: argparse.Namespace) -> int:
    """``free`` and ``setattr``: what an Alluxio 2.x proxy offers beyond POSIX (``free``
    of an AIStore object or prefix too)."""
    if not args.timeout > 0:
        raise ConfigError("--timeout must be positive")
    from alluxiofuse.cli import commands

    if args.command == "free" and any(commands.is_ais(path) for path in args.paths):
        return cmd_ais(args, config_from_args(args), args.paths)

    if args.command == "free":
        return commands.free(args.paths, recursive=args.recursive, forced=args.forced,
                             timeout=args.timeout)
    changes: dict[str, Any] = {}
    if args.pinned is not None:
        changes["pinned"] = args.pinned
    if args.ttl is not None:
        changes["ttl_ms"] = parse_ttl(args.ttl)
    if args.ttl_action is not None:
        changes["ttl_action"] = args.ttl_action.upper()
    for name in ("replication_min", "replication_max"):
        value = getattr(args, name)
        if value is not None:
            if value < -1 or (name == "replication_min" and value < 0):
                raise ConfigError(f"--{name.replace('_', '-')} cannot be {value}")
            changes[name] = value
    if not changes:
        raise ConfigError("setattr: nothing to set (--pin, --unpin, --ttl, --ttl-action, "
                          "--replication-min, --replication-max)")
    return commands.set_attributes(args.paths, timeout=args.timeout,
                                   recursive=args.recursive, **changes)


def parse_ttl(value: str) -> int:
    """``"1h"`` → 3,600,000 ms; ``"none"`` (or -1) → -1, which removes a TTL."""
    if value.strip().lower() in ("none", "-1"):
        return -1
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        raise ConfigError(f"--ttl: {e}") from None
    return round(seconds * 1000)


def cmd_mount(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    check_mountpoint(config.mountpoint)
    check_not_inside_source(config.source, config.mountpoint)
    from alluxiofuse.daemon import (
        process as daemon,  # imports pyfuse3: only once the options are known good
    )

    if config.foreground:
        return daemon.run(config)
    return _start_in_background(config)


def check_mountpoint(path: str) -> None:
    """Fail early, with a clear reason, for a mountpoint FUSE cannot use."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"mountpoint does not exist: {path}") from None
    except OSError as e:
        if e.errno == errno.ENOTCONN:
            raise ConfigError(
                f"mountpoint {path} is a dead mount: run 'alluxiofuse umount {path}' first"
            ) from None
        raise ConfigError(f"cannot use mountpoint {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"mountpoint is not a directory: {path}")
    if os.path.ismount(path):
        raise ConfigError(f"already mounted: {path}")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise ConfigError("cannot open /dev/fuse: is the fuse kernel module loaded "
                          "(modprobe fuse), or, in a container, is /dev/fuse passed in?")


def check_not_inside_source(source: str, mountpoint: str) -> None:
    """A mount inside its own local source would list itself, and every stat of the
    mountpoint would wait on the daemon that is asking."""
    protocol, sep, rest = source.partition("://")
    if sep and protocol != "file":
        return
    src = os.path.realpath(rest if sep else source)
    mnt = os.path.realpath(mountpoint)
    if mnt == src or mnt.startswith(src.rstrip("/") + "/"):
        raise ConfigError(f"mountpoint {mountpoint} is inside the source {source}")


def _start_in_background(config: MountConfig) -> int:
    """Fork the daemon, wait until it says the mount is live, and check that it is."""
    from alluxiofuse.daemon import process as daemon

    # The daemon has no stderr: its log must be writable before it starts, and the user
    # told where it is unless they chose it.
    log_file = config.log_file or default_log_file(config.mountpoint)
    try:
        os.makedirs(os.path.dirname(log_file), mode=0o750, exist_ok=True)
        with open(log_file, "a", encoding="utf-8"):
            pass
    except OSError as e:
        print(f"alluxiofuse: cannot write the log {log_file}: {e.strerror or e}"
              + ("" if config.log_file else " (choose one with --log-file)"), file=sys.stderr)
        return 1
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_fd)
        os.setsid()
        _detach_stdio()
        os._exit(daemon.run(config, notify_fd=write_fd))
    os.close(write_fd)
    deadline = time.monotonic() + config.io_timeout + 30
    warnings, message = _read_messages(read_fd, deadline)
    os.close(read_fd)
    for warning in warnings:  # the mount works, but not as asked
        print(f"alluxiofuse: warning: {warning}", file=sys.stderr)
    if message == "ready" and _wait_mounted(config.mountpoint, deadline):
        if not config.log_file:
            print(f"alluxiofuse: the daemon logs to {log_file}")
        return 0
    if message.startswith("error: "):
        reason = message.removeprefix("error: ")
    elif message == "ready":
        reason = f"the mount at {config.mountpoint} did not answer"
    else:
        reason = "the daemon exited or hung during start-up"
    _stop_daemon(pid, config.mountpoint)
    print(f"alluxiofuse: {reason}", file=sys.stderr)
    return 1


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _read_messages(fd: int, deadline: float) -> tuple[list[str], str]:
    """What the daemon says on the pipe: ``warning: ...`` lines, then ``ready`` or
    ``error: <reason>`` ("" if it exited or the deadline passed first)."""
    data = b""
    while True:
        lines = data.decode("utf-8", "replace").split("\n")
        warnings = [line.removeprefix("warning: ") for line in lines[:-1]
                    if line.startswith("warning: ")]
        final = [line for line in lines[:-1] if not line.startswith("warning: ")]
        if final:
            return warnings, final[0].strip()
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
            return warnings, ""
        chunk = os.read(fd, 4096)
        if not chunk:
            return warnings, ""
        data += chunk


def _wait_mounted(mountpoint: str, deadline: float) -> bool:
    """Whether ``mountpoint`` is a live mount; asked in a thread, as a hung mount blocks stat."""
    result: list[bool] = []
    probe = threading.Thread(target=lambda: result.append(os.path.ismount(mountpoint)),
                             daemon=True)
    probe.start()
    probe.join(max(1.0, deadline - time.monotonic()))
    return result == [True]


def _stop_daemon(pid: int, mountpoint: str) -> None:
    """Leave nothing behind after a failed start: no process, no dead mount."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            break
        for _ in range(50):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                break
            time.sleep(0.1)
        else:
            continue
        break
    _fusermount(mountpoint, lazy=True, quiet=True)


def cmd_umount(mountpoint: str, *, lazy: bool) -> int:
    path = _real_path(os.path.abspath(mountpoint))  # fusermount3 takes no symbolic link
    if not _mounted_at(path):  # fusermount3 would answer "Invalid argument"
        # lexists, only now: an lstat fails on a dead mount too.
        why = "not mounted" if os.path.lexists(path) else "no such file or directory"
        print(f"alluxiofuse: cannot unmount {path}: {why}", file=sys.stderr)
        return 1
    result = _fusermount(path, lazy=lazy, quiet=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["unmount failed"])[-1]
        print(f"alluxiofuse: cannot unmount {path}: {reason}", file=sys.stderr)
        return 1
    return 0


def _real_path(path: str) -> str:
    """``path`` without symbolic links, as the mount table names mountpoints. Its parent
    is resolved, and the path itself only if it is a symbolic link: what may be a hung or
    dead mount is never asked."""
    if os.path.islink(path):
        path = os.path.realpath(path)
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def _mounted_at(path: str) -> bool:
    """Whether something is mounted at ``path`` (a real path), as the kernel's mount table
    says: a stat of the path would hang on a hung mount, and fail on a dead one."""
    target = path.rstrip("/") or "/"
    return any(m.mountpoint == target for m in mounts())


def _fusermount(path: str, *, lazy: bool, quiet: bool) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("fusermount3") or shutil.which("fusermount")
    cmd = [tool, "-u"] if tool else ["umount"]
    if lazy:
        cmd.append("-z" if tool else "-l")
    if quiet and tool:
        cmd.append("-q")
    return subprocess.run([*cmd, path], capture_output=True, text=True, timeout=60, check=False)


_HELPER_MARK = "# Written by 'alluxiofuse install-mount-helper'."


def cmd_install_mount_helper(sbin_dir: str, *, force: bool, uninstall: bool) -> int:
    """Write (or remove) ``SBIN_DIR/mount.alluxiofuse``: a script that runs this Python on
    this copy of alluxiofuse, whatever else is installed or on PYTHONPATH when mount(8)
    runs it."""
    import shlex
    import tempfile

    path = os.path.join(sbin_dir, "mount.alluxiofuse")
    try:
        with open(path, encoding="utf-8") as f:
            ours: bool | None = _HELPER_MARK in f.read()
    except FileNotFoundError:
        ours = None
    except (OSError, UnicodeDecodeError):  # unreadable or binary: someone else's
        ours = False
    if ours is False and not force:
        raise ConfigError(f"{path} was not written by alluxiofuse (--force replaces it)")
    try:
        if uninstall:
            if ours is not None:
                os.remove(path)
                print(f"removed {path}")
            return 0
        code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from alluxiofuse.cli.mount_helper import main; sys.exit(main(sys.argv[1:]))")
        # The directory that holds the package: the script puts it first on sys.path.
        package_parent = os.path.dirname(os.path.dirname(os.path.abspath(alluxiofuse.__file__)))
        script = (f"#!/bin/sh\n{_HELPER_MARK}\n"
                  "# mount(8) runs it for 'mount -t alluxiofuse' and fstab entries of that type.\n"
                  f"exec {shlex.quote(sys.executable)} -P -c {shlex.quote(code)} "
                  f'{shlex.quote(package_parent)} "$@"\n')
        fd, temp = tempfile.mkstemp(prefix=".mount.alluxiofuse.", dir=sbin_dir)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(script)
            os.chmod(temp, 0o755)
            os.replace(temp, path)  # never a half-written helper
        finally:
            if os.path.exists(temp):
                os.remove(temp)
    except OSError as e:
        raise ConfigError(f"cannot write {path}: {e.strerror}") from None
    print(f"installed {path}")
    return 0
