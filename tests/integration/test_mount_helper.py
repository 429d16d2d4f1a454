"""``mount -t alluxiofuse`` and fstab entries, through the real mount(8) and /sbin helper."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from alluxiofuse.cli import main as cli
from alluxiofuse.cli.mount_helper import daemon_options, parse_command_line, plan, split_options
from alluxiofuse.config import parse_ufs_option
from tests.support.checklogs import watch
from tests.support.mounts import (
    CLI,
    REPO,
    _require_fuse,
    daemon_pids,
    errno_of,
    fusermount_u,
    ismount,
    read_bytes,
    run,
    wait_until,
)
from tests.support.needs import need
from tests.support.s3server import moto_s3

pytestmark = pytest.mark.integration

HELPER = Path("/sbin/mount.alluxiofuse")
# -o options every mount here adds (e.g. one turning off a daemon feature that would need
# a fixed port); empty as long as the daemon needs none.
EXTRA_OPTIONS: list[str] = ["metrics_addr=off"]
TIMEOUT = 90.0


@pytest.fixture
def helper() -> Iterator[Path]:
    """/sbin/mount.alluxiofuse, installed by `alluxiofuse install-mount-helper` for the
    test; removed afterwards, or whatever was there before put back."""
    _require_fuse()
    before = HELPER.read_bytes() if HELPER.exists() else None
    mode = HELPER.stat().st_mode if before is not None else 0
    run([*CLI, "install-mount-helper", "--force"])
    try:
        yield HELPER
    finally:
        if before is None:
            run([*CLI, "install-mount-helper", "--uninstall"])
        else:
            HELPER.write_bytes(before)
            HELPER.chmod(mode & 0o7777)


@pytest.fixture
def cleanup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Path]]:
    """Mountpoints to unmount, and daemons to end, whatever the test did; then the check
    that the daemons logged no warnings, unless the test declares them."""
    mountpoints: list[Path] = []
    yield mountpoints
    for mnt in mountpoints:
        fusermount_u(mnt)
        for pid in daemon_pids(mnt):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for log in tmp_path.glob("*.log"):
        watch(request.node, log)


def mount8(*args: str | Path, env: dict[str, str] | None = None,
           ) -> subprocess.CompletedProcess[str]:
    """The real mount(8), without the PYTHONPATH of the tests: the helper needs none."""
    environ = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(["mount", *map(str, args)], capture_output=True, text=True,
                          env={**environ, "LC_ALL": "C", **(env or {})}, cwd="/",
                          timeout=TIMEOUT, check=False)


def umount8(mnt: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["umount", str(mnt)], capture_output=True, text=True,
                          timeout=TIMEOUT, check=False)


def _source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "hello").write_bytes(b"hello\n")
    (src / "sub" / "inner").write_bytes(b"inner\n")
    (src / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (src / "run.sh").chmod(0o755)
    return src


def _mountpoint(tmp_path: Path, cleanup: list[Path], name: str = "mnt") -> Path:
    mnt = tmp_path / name
    mnt.mkdir()
    cleanup.append(mnt)
    return mnt


def _options(tmp_path: Path, *options: str, name: str = "daemon") -> str:
    """``-o`` options: these, and a spool and log under tmp_path (never /var/cache)."""
    return ",".join([*options, f"cache_dir={tmp_path}/cache", f"log_file={tmp_path}/{name}.log",
                     *EXTRA_OPTIONS])


def _mount_entry(mnt: Path) -> tuple[str, str, list[str]]:
    """(source, type, options) of ``mnt`` in /proc/mounts."""
    for line in Path("/proc/mounts").read_text().splitlines():
        source, target, fstype, options, *_ = line.split()
        if target == str(mnt):
            return source, fstype, options.split(",")
    raise AssertionError(f"{mnt} is not in /proc/mounts")


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")


def _gone(mnt: Path) -> bool:
    return wait_until(lambda: not daemon_pids(mnt), 10)


def test_mount_t_is_live_when_mount_returns_and_umount_ends_the_daemon(
    helper: Path, tmp_path: Path, cleanup: list[Path],
) -> None:
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    options = _options(tmp_path, "page_size=64KiB", "uid=1234", "gid=4321", "attr-timeout=5",
                       "dir_mode=0750")
    result = mount8("-t", "alluxiofuse", src, mnt, "-o", options)
    assert (result.returncode, result.stderr) == (0, "")
    # Live the moment mount(8) returns: no polling.
    assert read_bytes(mnt / "sub" / "inner") == b"inner\n"
    assert sorted(os.listdir(mnt)) == ["hello", "run.sh", "sub"]
    # The daemon's options took effect ...
    st = os.stat(mnt / "hello")
    assert (st.st_blksize, st.st_uid, st.st_gid) == (64 * 1024, 1234, 4321)
    assert os.stat(mnt / "sub").st_mode & 0o777 == 0o750
    ran = subprocess.run([str(mnt / "run.sh")], capture_output=True, timeout=30, check=False)
    assert (ran.returncode, ran.stdout) == (0, b"ran\n")  # exec, as mount(8)'s default
    # ... in one daemon of its own, with the options it was given.
    source, fstype, flags = _mount_entry(mnt)
    assert (source, fstype) == (str(src), "fuse.alluxiofuse")
    assert {"rw", "nosuid", "nodev"} <= set(flags) and "noexec" not in flags, flags
    (pid,) = daemon_pids(mnt)
    assert os.getsid(pid) == pid
    assert any("attr-timeout=5" in arg for arg in _cmdline(pid)), _cmdline(pid)
    assert "mounted" in (tmp_path / "daemon.log").read_text()

    result = umount8(mnt)
    assert (result.returncode, result.stderr) == (0, "")
    assert not ismount(mnt)
    assert _gone(mnt), daemon_pids(mnt)
    assert os.listdir(mnt) == []


def test_fstab_entry(helper: Path, tmp_path: Path, cleanup: list[Path]) -> None:
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    options = _options(
        tmp_path, "defaults", "_netdev", "nofail", "x-systemd.automount",
        "x-systemd.mount-timeout=30", "comment=x", "ro", "allow_other", "noexec", "nosuid",
        "nodev", "noatime", "file_mode=0755", "page-size=128KiB",
    )
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# a test fstab\n{src} {mnt} alluxiofuse {options} 0 0\n")
    result = mount8("-T", fstab, mnt)
    assert (result.returncode, result.stderr) == (0, "")
    assert read_bytes(mnt / "hello") == b"hello\n"
    st = os.stat(mnt / "hello")
    assert (st.st_blksize, st.st_mode & 0o777) == (128 * 1024, 0o755)
    # ro: refused by the daemon, and said to the kernel.
    assert errno_of(lambda: (mnt / "new").write_bytes(b"x")) == errno.EROFS
    assert not (src / "new").exists()
    _, fstype, flags = _mount_entry(mnt)
    assert fstype == "fuse.alluxiofuse"
    assert {"ro", "noexec", "nosuid", "nodev", "noatime", "allow_other"} <= set(flags), flags
    # noexec: the kernel refuses to run the (0755) script.
    with pytest.raises(PermissionError):
        subprocess.run([str(mnt / "run.sh")], capture_output=True, timeout=30, check=False)
    # mount -a knows the entry is mounted: no second daemon.
    again = mount8("-a", "-T", fstab)
    assert (again.returncode, again.stderr) == (0, "")
    assert len(daemon_pids(mnt)) == 1

    assert umount8(mnt).returncode == 0
    assert not ismount(mnt)
    assert _gone(mnt), daemon_pids(mnt)


def test_commas_in_values_reach_the_daemon_intact(
    helper: Path, tmp_path: Path, cleanup: list[Path],
) -> None:
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    # Escaped with a backslash on the command line, double-quoted in fstab.
    result = mount8("-t", "alluxiofuse", src, mnt, "-o",
                    rf"log_file={tmp_path}/a\,b.log,cache_dir={tmp_path}/c\,d" + "".join(
                        f",{o}" for o in EXTRA_OPTIONS))
    assert (result.returncode, result.stderr) == (0, "")
    (mnt / "written").write_bytes(b"w")  # a writable mount: the spool is in use
    assert read_bytes(src / "written") == b"w"
    assert "mounted" in (tmp_path / "a,b.log").read_text()
    assert (tmp_path / "c,d").is_dir() and os.listdir(tmp_path / "c,d")
    assert umount8(mnt).returncode == 0

    mnt2 = _mountpoint(tmp_path, cleanup, "mnt2")
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f'{src} {mnt2} alluxiofuse ro,log_file="{tmp_path}/e,f.log",'
        rf"cache_dir={tmp_path}/g\,h" + "".join(f",{o}" for o in EXTRA_OPTIONS) + " 0 0\n")
    result = mount8("-T", fstab, mnt2)
    assert (result.returncode, result.stderr) == (0, "")
    assert read_bytes(mnt2 / "hello") == b"hello\n"
    assert "mounted" in (tmp_path / "e,f.log").read_text()
    assert umount8(mnt2).returncode == 0
    assert _gone(mnt2)


@pytest.mark.timeout(180)
def test_json_under_storage_options_in_double_quotes(
    helper: Path, tmp_path: Path, cleanup: list[Path],
) -> None:
    """Options whose values are JSON with commas, nesting and quotes, as an S3 mount needs."""
    mnt = _mountpoint(tmp_path, cleanup)
    with moto_s3() as s3:
        s3.fs().pipe_file(f"{s3.bucket}/tree/x.bin", b"from s3")
        ufs = []
        for key, value in s3.ufs_options.items():
            text = value if isinstance(value, str) else json.dumps(value)
            quoted = text.replace("\\", "\\\\").replace('"', '\\"')
            ufs.append(f'ufs_option="{key}={quoted}"')
        assert any("," in u and "{" in u for u in ufs)  # config_kwargs: nested, with commas
        result = mount8("-t", "alluxiofuse", s3.url("tree"), mnt, "-o",
                        _options(tmp_path, *ufs), env=s3.env)
        try:
            assert (result.returncode, result.stderr) == (0, "")
            assert read_bytes(mnt / "x.bin") == b"from s3"
        finally:
            assert umount8(mnt).returncode == 0
        assert _gone(mnt)


# -- failures: one line, mount(8)'s exit status, nothing left mounted or running


@pytest.mark.parametrize(("options", "source", "status", "says"), [
    ("bogus", "{src}", 1, "unknown option: bogus"),
    ("page_size=3000", "{src}", 1, "--page-size"),
    ("allow_other=1", "{src}", 1, "takes no value"),
    pytest.param("", "{tmp}/no-such-source", 32, "source does not exist", marks=[
        pytest.mark.expect_log(r"^source does not exist: ", count=1, level="ERROR")]),
    pytest.param(
        "ufs_option=endpoint_url=http://127.0.0.1:9,ufs_option=key=k,ufs_option=secret=s,"
        'ufs_option="config_kwargs={\\"retries\\": {\\"max_attempts\\": 1}}"',
        "s3://bucket/x", 32, "cannot reach source", marks=[
            pytest.mark.expect_log(r"^cannot reach source s3://bucket/x: ", count=1,
                                   level="ERROR")]),
])
def test_failures_exit_with_mount8_status(
    helper: Path, tmp_path: Path, cleanup: list[Path], options: str, source: str, status: int,
    says: str,
) -> None:
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    result = mount8("-t", "alluxiofuse", source.format(src=src, tmp=tmp_path), mnt, "-o",
                    _options(tmp_path, options) if options else _options(tmp_path))
    lines = result.stderr.splitlines()
    assert result.returncode == status, lines
    assert len(lines) == 1 and lines[0].startswith("mount.alluxiofuse: "), lines
    assert says in lines[0]
    assert not ismount(mnt)
    assert _gone(mnt)


def test_missing_mountpoint_is_a_mount_failure(helper: Path, tmp_path: Path) -> None:
    result = mount8("-t", "alluxiofuse", _source(tmp_path), tmp_path / "nope", "-o",
                    _options(tmp_path))
    assert result.returncode == 32
    assert result.stderr == f"mount.alluxiofuse: mountpoint does not exist: {tmp_path}/nope\n"


def test_already_mounted_is_a_mount_failure(
    helper: Path, tmp_path: Path, cleanup: list[Path],
) -> None:
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    assert mount8("-t", "alluxiofuse", src, mnt, "-o", _options(tmp_path)).returncode == 0
    (first,) = daemon_pids(mnt)
    again = mount8("-t", "alluxiofuse", src, mnt, "-o", _options(tmp_path, name="again"))
    assert again.returncode == 32
    assert again.stderr == f"mount.alluxiofuse: already mounted: {mnt}\n"
    assert daemon_pids(mnt) == [first]  # the first mount is untouched
    assert read_bytes(mnt / "hello") == b"hello\n"
    assert umount8(mnt).returncode == 0
    assert _gone(mnt)


def test_missing_dev_fuse_is_a_system_error(
    helper: Path, tmp_path: Path, cleanup: list[Path],
) -> None:
    """In a mount namespace of its own, where an empty /dev hides /dev/fuse."""
    need(shutil.which("unshare"), "unshare(1) is not installed (util-linux)")
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    script = (f"mount -t tmpfs none /dev && exec mount -t alluxiofuse {src} {mnt} "
              f"-o {_options(tmp_path)}")
    result = run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
                 check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.decode() == (
        "mount.alluxiofuse: /dev/fuse does not exist: load the fuse module (modprobe fuse), "
        "or, in a container, pass /dev/fuse in\n")
    assert os.path.exists("/dev/fuse")  # only hidden in there
    assert not ismount(mnt)


def test_fake_mount_mounts_nothing(helper: Path, tmp_path: Path, cleanup: list[Path]) -> None:
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    # -n: or mount(8) would record the fake mount in /run/mount/utab (for its _netdev).
    result = mount8("-f", "-n", "-v", "-t", "alluxiofuse", src, mnt, "-o",
                    _options(tmp_path, "ro", "page_size=64KiB", "_netdev"))
    assert (result.returncode, result.stderr) == (0, "")
    assert (f"mount.alluxiofuse: alluxiofuse mount {src} {mnt} --read-only --page-size=64KiB "
            in result.stdout), result.stdout
    assert "no effect here: _netdev" in result.stdout
    assert not ismount(mnt) and not daemon_pids(mnt)
    utab = Path("/run/mount/utab")
    assert not utab.exists() or str(mnt) not in utab.read_text()
    # The options are checked all the same.
    bad = mount8("-f", "-t", "alluxiofuse", src, mnt, "-o", "page_size=3000")
    assert bad.returncode == 1 and bad.stderr.startswith("mount.alluxiofuse: --page-size")


def test_sloppy_mount_ignores_unknown_options(
    helper: Path, tmp_path: Path, cleanup: list[Path],
) -> None:
    src = _source(tmp_path)
    mnt = _mountpoint(tmp_path, cleanup)
    result = mount8("-s", "-t", "alluxiofuse", src, mnt, "-o",
                    _options(tmp_path, "bogus", "ro"))
    assert result.returncode == 0
    assert result.stderr == "mount.alluxiofuse: ignoring unknown option bogus\n"
    assert read_bytes(mnt / "hello") == b"hello\n"
    assert "ro" in _mount_entry(mnt)[2]
    assert umount8(mnt).returncode == 0
    assert _gone(mnt)


# -- the README's own fstab lines, through mount(8)'s fstab parser


def _readme_fstab_lines() -> list[str]:
    """Every line of type alluxiofuse in the README's untagged code blocks (fstab's; the
    shell's are tagged sh)."""
    found = []
    fence: str | None = None  # the tag of the code block we are in, if in one
    for line in (REPO / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
        elif fence == "" and len(line.split()) >= 4 and line.split()[2] == "alluxiofuse":
            found.append(line)
    return found


def test_the_readmes_fstab_lines_reach_the_helper_as_meant(tmp_path: Path) -> None:
    """mount(8) parses each README fstab line (fields end at whitespace; \\040 and the like
    are decoded) and runs the helper (here a stand-in of a type of its own, which records
    what it is given, under -f: nothing is mounted). The options it gets, parsed as
    mount.alluxiofuse parses them, are the ones the README means."""
    _require_fuse()  # root, to write in /sbin
    lines = _readme_fstab_lines()
    assert len(lines) >= 2, lines
    assert any("ufs_option=" in line for line in lines)
    fstype = f"alluxiofusereadme{os.getpid()}"
    capture = Path(f"/sbin/mount.{fstype}")
    argv_file = tmp_path / "argv.json"
    capture.write_text(f"#!{sys.executable}\nimport json, sys\n"
                       f"open({str(argv_file)!r}, 'w').write(json.dumps(sys.argv[1:]))\n")
    capture.chmod(0o755)
    try:
        for n, line in enumerate(lines):
            source, _, _, options, *rest = line.split()
            mnt = tmp_path / f"mnt{n}"
            mnt.mkdir()
            fstab = tmp_path / f"fstab{n}"
            # The mountpoint must exist, and the helper is the stand-in: the rest verbatim.
            fstab.write_text(" ".join([source, str(mnt), fstype, options, *rest]) + "\n")
            argv_file.unlink(missing_ok=True)
            result = mount8("-T", fstab, "-f", "-n", "-v", mnt)
            assert result.returncode == 0, (line, result.stderr)
            invocation = parse_command_line(json.loads(argv_file.read_text()))
            assert (invocation.source, invocation.mountpoint) == (source, str(mnt))
            planned = plan(split_options(invocation.options), daemon_options())
            assert not planned.unknown, planned
            args = cli.parser().parse_args(["mount", *planned.cli_args, "--", source, str(mnt)])
            assert args.read_only, line
            ufs = dict(parse_ufs_option(item) for item in args.ufs_option)
            if "region_name" in line:
                assert ufs == {"client_kwargs": {"region_name": "eu-west-1"}}, line
            if "config=" in line:
                assert args.config == "/etc/alluxiofuse/datasets.toml", line
    finally:
        capture.unlink()
