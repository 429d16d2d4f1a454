"""``mount.alluxiofuse``: the mount(8) helper behind ``mount -t alluxiofuse`` and fstab entries.

mount(8) runs it as ``mount.alluxiofuse SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS] [-t TYPE]``
and passes on its exit status. Every option of ``alluxiofuse mount`` is an ``-o`` option
(``page_cache_size=2GiB``, ``allow_other``, ``ufs_option=anon=true``); so are mount(8)'s own
(``ro``, ``noexec``, ``_netdev``, ``nofail``, ...). Like ``alluxiofuse mount``, it returns
only once the mount is live. Exit statuses are mount(8)'s: 0 mounted, 1 bad invocation or
permissions, 2 system error, 32 mount failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import getopt
import io
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, TextIO

from alluxiofuse.cli import main as cli
from alluxiofuse.config import MountConfig
from alluxiofuse.daemon.logs import redact, secrets_of
from alluxiofuse.errors import ConfigError
from alluxiofuse.options import OPTIONS, Option

PROG = "mount.alluxiofuse"
USAGE = f"usage: {PROG} SOURCE DIR [-sfnv] [-o OPTION[,OPTION...]]"
FUSE_DEVICE = "/dev/fuse"

# mount(8)'s exit statuses.
EX_OK = 0
EX_USAGE = 1  # incorrect invocation or permissions
EX_SYSERR = 2  # system error
EX_FAIL = 32  # mount failure

# mount(8) flags handed to the kernel through libfuse, which accepts these (and refuses
# relatime, nodiratime, lazytime, nosymfollow, ...). Each names one setting; the last
# given wins, as with mount(8). libfuse itself defaults to nosuid,nodev.
KERNEL_FLAGS: dict[str, str] = {
    "suid": "suid", "nosuid": "suid",
    "dev": "dev", "nodev": "dev",
    "exec": "exec", "noexec": "exec",
    "sync": "sync", "async": "sync",
    "atime": "atime", "noatime": "atime",
    "dirsync": "dirsync",
}

_FOR_MOUNT8 = "mount(8) acts on it before running this helper"
_NO_ATIME = "the kernel keeps no access times on FUSE files (S_NOATIME): the source's are shown"
# mount(8) options accepted with no effect here, and why each has none.
IGNORED: dict[str, str] = {
    # mount(8) passes rw whenever ro is not given, so rw cannot undo a config file's
    # read_only = true: it means "the default".
    "rw": "read-write is the default",
    "defaults": "it only fills the fstab field (FUSE mounts stay nosuid,nodev)",
    "auto": "for mount -a", "noauto": "for mount -a",
    # Which users may mount an fstab entry: mount(8) checks it, runs this helper as that
    # user (the daemon then mounts through fusermount3, and the mount is that user's) and
    # adds noexec,nosuid,nodev itself, which arrive here as kernel flags.
    "user": _FOR_MOUNT8, "nouser": _FOR_MOUNT8, "users": _FOR_MOUNT8,
    "nousers": _FOR_MOUNT8, "owner": _FOR_MOUNT8, "noowner": _FOR_MOUNT8,
    "group": _FOR_MOUNT8, "nogroup": _FOR_MOUNT8,
    "_netdev": "for systemd and mount -a: mount once the network is up",
    "nofail": "for systemd and mount -a: boot neither waits for nor fails on this mount",
    "comment": "a note in fstab",
    "default_permissions": "always on: the kernel checks permissions",
    "relatime": _NO_ATIME, "norelatime": _NO_ATIME, "strictatime": _NO_ATIME,
    "nostrictatime": _NO_ATIME, "diratime": _NO_ATIME, "nodiratime": _NO_ATIME,
    "lazytime": _NO_ATIME, "nolazytime": _NO_ATIME,
    "silent": "it only quiets the kernel's log while mounting", "loud": "the default",
}
# Notes for other readers of fstab (x-systemd.automount, x-systemd.mount-timeout=...).
IGNORED_PREFIXES = ("x-", "X-")

REFUSED: dict[str, str] = {
    "remount": "remounting is not supported: unmount and mount again",
    "foreground": "mount(8) waits for its helper: run 'alluxiofuse mount -f' to stay in the "
                  "foreground",
}


class HelperError(Exception):
    """Why the helper stops; ``status`` is mount(8)'s exit status for it."""

    def __init__(self, message: str, status: int = EX_USAGE) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Invocation:
    """The command line mount(8) gives a helper."""

    source: str
    mountpoint: str
    options: str = ""
    fake: bool = False  # -f: check everything, mount nothing
    verbose: bool = False  # -v
    sloppy: bool = False  # -s: ignore unknown options, with a warning


@dataclass
class Plan:
    """What the ``-o`` options ask for."""

    cli_args: list[str] = field(default_factory=list)  # options of `alluxiofuse mount`
    kernel_flags: dict[str, str] = field(default_factory=dict)  # setting -> flag
    ignored: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # ignored too, under -s


class DaemonOption(NamedTuple):
    string: str  # "--page-cache-size"
    flag: bool  # takes no value


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if any(arg in ("-h", "--help") for arg in args):
        print(USAGE)
        return EX_OK
    try:
        return mount(parse_command_line(args))
    except HelperError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return e.status


def parse_command_line(argv: Sequence[str]) -> Invocation:
    """mount(8)'s helper calling convention: ``SOURCE DIR [-sfnv] [-N NS] [-o OPTIONS]
    [-t TYPE]``, flags before or after the two paths."""
    try:
        flags, paths = getopt.gnu_getopt(list(argv), "sfnvN:o:t:")
    except getopt.GetoptError as e:
        raise HelperError(f"{e} ({USAGE})") from None
    if len(paths) != 2:
        raise HelperError(USAGE)
    invocation = Invocation(source=paths[0], mountpoint=paths[1])
    options = []
    for flag, value in flags:
        if flag == "-o":
            options.append(value)
        elif flag == "-f":
            invocation.fake = True
        elif flag == "-v":
            invocation.verbose = True
        elif flag == "-s":
            invocation.sloppy = True
        elif flag == "-N":
            raise HelperError("-N (another mount namespace) is not supported: run mount in "
                              "that namespace (nsenter --mount=NS mount ...)")
        # -n: do not write /etc/mtab. This helper never does; mount(8) records what it
        # needs in /run/mount/utab itself once the helper succeeds.
        # -t: mount(8) passes it for a subtype (-t alluxiofuse.NAME), which selects nothing.
    invocation.options = ",".join(options)
    return invocation


def split_options(text: str) -> list[str]:
    """A mount(8) option string split into options, with quotes and escapes taken out.

    Options are separated by commas. A comma inside a value is either escaped as ``\\,``
    (a backslash makes any next character literal, as in libfuse) or inside double quotes
    (mount(8)'s way, as in ``context="a,b"``), which are removed. Empty options, from
    ``,,`` or a trailing comma, are skipped, as libmount does.
    """
    options: list[str] = []
    current: list[str] = []
    quoted = False
    chars = iter(text)
    for char in chars:
        if char == "\\":
            escaped = next(chars, None)
            if escaped is None:
                raise HelperError(f"the options end in a lone backslash: {text}")
            current.append(escaped)
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            options.append("".join(current))
            current = []
        else:
            current.append(char)
    if quoted:
        raise HelperError(f"a double quote is not closed in the options: {text}")
    options.append("".join(current))
    return [option for option in options if option]


def daemon_options(options: Sequence[Option] = OPTIONS) -> dict[str, DaemonOption]:
    """The options of ``alluxiofuse mount`` by name, with ``_`` for ``-``.

    Made from the same declarations as that command's parser (alluxiofuse/options.py), so
    that an option added there can be given with ``-o`` at once.
    """
    return {option.name: DaemonOption(option.string, flag=option.kind == "flag")
            for option in options if option.kind in ("value", "flag", "repeated")}


def plan(options: Sequence[str], daemon: Mapping[str, DaemonOption]) -> Plan:
    """Sort each option: for the daemon, for the kernel, ignored, or unknown; raise
    :class:`HelperError` for one that is malformed or refused."""
    result = Plan()
    for option in options:
        name, has_value, value = option.partition("=")
        known = daemon.get(name.replace("-", "_"))
        if name in REFUSED:
            raise HelperError(f"{name}: {REFUSED[name]}")
        if name in IGNORED or name.startswith(IGNORED_PREFIXES):
            result.ignored.append(option)
        elif name == "ro" or name in KERNEL_FLAGS:
            if has_value:
                raise HelperError(f"option {name} takes no value: {option}")
            if name == "ro":  # the daemon refuses changes (EROFS) and tells the kernel ro
                result.cli_args.append(daemon["read_only"].string)
            else:
                result.kernel_flags[KERNEL_FLAGS[name]] = name
        elif known is None:
            result.unknown.append(option)
        elif known.flag:
            if has_value:
                raise HelperError(f"option {name} takes no value: {option}")
            result.cli_args.append(known.string)
        else:
            if not has_value:
                raise HelperError(f"option {name} needs a value: {name}=VALUE")
            result.cli_args.append(f"{known.string}={value}")
    return result


def mount(invocation: Invocation) -> int:
    """Mount as ``invocation`` asks; mount(8)'s exit status."""
    options = plan(split_options(invocation.options), daemon_options())
    if options.unknown and not invocation.sloppy:
        raise HelperError(f"unknown option: {options.unknown[0]} (-s ignores unknown options)")
    for option in options.unknown:
        print(f"{PROG}: ignoring unknown option {option}", file=sys.stderr)
    config = build_config(invocation, options)
    if invocation.verbose:
        describe(invocation, options, config)
    if invocation.fake:
        return EX_OK
    check_fuse_device(FUSE_DEVICE)
    try:
        cli.check_mountpoint(config.mountpoint)
    except ConfigError as e:  # missing, not a directory, already mounted: as mount(8) says
        raise HelperError(str(e), EX_FAIL) from None
    try:
        cli.check_not_inside_source(config.source, config.mountpoint)
    except ConfigError as e:
        raise HelperError(str(e)) from None
    try:
        with contextlib.redirect_stderr(_Renamed(sys.stderr)):
            status = cli._start_in_background(config)
    except OSError as e:  # fork or pipe failed
        raise HelperError(f"cannot start the daemon: {e.strerror}", EX_SYSERR) from None
    return EX_OK if status == 0 else EX_FAIL


def build_config(invocation: Invocation, options: Plan) -> MountConfig:
    """The daemon's config, made as ``alluxiofuse mount`` makes it from the same options."""
    argv = ["mount", *options.cli_args, "--", invocation.source, invocation.mountpoint]
    try:
        args = cli.parser().parse_args(argv)
    except SystemExit:  # argparse has said why; every name was checked above
        raise HelperError("bad options", EX_USAGE) from None
    args.foreground = False  # even if a config file says otherwise: mount(8) is waiting
    try:
        config = cli.config_from_args(args)
    except ConfigError as e:
        raise HelperError(str(e)) from None
    return dataclasses.replace(config, kernel_flags=frozenset(options.kernel_flags.values()))


def check_fuse_device(path: str) -> None:
    if not os.path.exists(path):
        raise HelperError(f"{path} does not exist: load the fuse module (modprobe fuse), or, "
                          "in a container, pass /dev/fuse in", EX_SYSERR)
    if not os.access(path, os.R_OK | os.W_OK):
        raise HelperError(f"cannot open {path}: permission denied", EX_USAGE)


def describe(invocation: Invocation, options: Plan, config: MountConfig) -> None:
    """What -v prints: the equivalent command and what happens to mount(8)'s options."""
    command = ["alluxiofuse", "mount", invocation.source, invocation.mountpoint,
               *options.cli_args]
    print(f"{PROG}: {redact(shlex.join(command), secrets_of(config))}")
    if config.kernel_flags:
        print(f"{PROG}: kernel flags: {','.join(sorted(config.kernel_flags))}")
    if options.ignored:
        print(f"{PROG}: no effect here: {','.join(options.ignored)}")
    if invocation.fake:
        print(f"{PROG}: -f: not mounting")


class _Renamed(io.StringIO):
    """stderr while cli/main.py code runs: its one-line messages (``alluxiofuse: <reason>``)
    reach the real stderr under this command's name. Nothing is kept here, so the daemon,
    forked with this as its ``sys.stderr``, never accumulates anything."""

    def __init__(self, target: TextIO) -> None:
        super().__init__()
        self._target = target

    def write(self, text: str) -> int:
        if text.startswith("alluxiofuse: "):
            text = PROG + text.removeprefix("alluxiofuse")
        return self._target.write(text)

    def flush(self) -> None:
        self._target.flush()


if __name__ == "__main__":
    sys.exit(main())
