"""mount.alluxiofuse without mounting: its command line, option quoting, the sorting of
mount(8)'s and the daemon's options, exit statuses, and `alluxiofuse install-mount-helper`."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from alluxiofuse.cli import main as cli
from alluxiofuse.cli import mount_helper
from alluxiofuse.cli.mount_helper import (
    EX_FAIL,
    EX_OK,
    EX_SYSERR,
    EX_USAGE,
    HelperError,
    Invocation,
    build_config,
    daemon_options,
    parse_command_line,
    plan,
    split_options,
)
from alluxiofuse.limits import MiB
from alluxiofuse.options import OPTIONS, Option
from tests.support.needs import need

REPO = Path(__file__).resolve().parents[2]

# -- split_options: mount(8)'s quoting, and libfuse's backslash


@pytest.mark.parametrize(("text", "options"), [
    ("", []),
    ("ro", ["ro"]),
    ("ro,allow_other,page_size=64KiB", ["ro", "allow_other", "page_size=64KiB"]),
    (",ro,,rw,", ["ro", "rw"]),  # empty options skipped, as libmount does
    (r"log_file=/a\,b,ro", ["log_file=/a,b", "ro"]),
    (r"x=a\\,ro", ["x=a\\", "ro"]),  # an escaped backslash does not escape the comma
    (r"x=a\"b", ['x=a"b']),
    ('log_file="/a,b",ro', ["log_file=/a,b", "ro"]),
    ('"log_file=/a,b"', ["log_file=/a,b"]),
    ('x="",y', ["x=", "y"]),
    ('ufs_option="client_kwargs={\\"a\\":1,\\"b\\":2}",ro',
     ['ufs_option=client_kwargs={"a":1,"b":2}', "ro"]),
    ('x="a,\\"b,c\\",d"', ['x=a,"b,c",d']),
    ("comment=a b,x-systemd.automount", ["comment=a b", "x-systemd.automount"]),
])
def test_split_options(text: str, options: list[str]) -> None:
    assert split_options(text) == options


@pytest.mark.parametrize("text", ['x="a,b', 'x="a\\"', "x=a\\"])
def test_split_options_refuses_an_open_quote_or_a_lone_backslash(text: str) -> None:
    with pytest.raises(HelperError) as e:
        split_options(text)
    assert e.value.status == EX_USAGE


# -- the command line mount(8) gives its helpers


def test_command_line_as_mount8_gives_it() -> None:
    inv = parse_command_line(["/src", "/mnt", "-sfnv", "-o", "ro,x=1", "-t", "alluxiofuse.a"])
    assert inv == Invocation("/src", "/mnt", "ro,x=1", fake=True, verbose=True, sloppy=True)


def test_command_line_flags_anywhere_and_options_joined() -> None:
    inv = parse_command_line(["-o", "ro", "/src", "-v", "/mnt", "-o", "page_size=64KiB"])
    assert inv == Invocation("/src", "/mnt", "ro,page_size=64KiB", verbose=True)
    assert parse_command_line(["/src", "/mnt"]) == Invocation("/src", "/mnt")


@pytest.mark.parametrize("argv", [[], ["/src"], ["/src", "/mnt", "/x"], ["/src", "/mnt", "-q"],
                                  ["/src", "/mnt", "-o"], ["/src", "/mnt", "-N", "/proc/1/ns/mnt"]])
def test_bad_command_lines_are_usage_errors(argv: list[str]) -> None:
    with pytest.raises(HelperError) as e:
        parse_command_line(argv)
    assert e.value.status == EX_USAGE


# -- plan: every option goes to the daemon, the kernel, nowhere (with a reason) or is unknown


def _plan(text: str) -> mount_helper.Plan:
    return plan(split_options(text), daemon_options())


def test_every_option_of_alluxiofuse_mount_is_an_o_option() -> None:
    options = daemon_options()
    commands = next(a for a in cli.parser()._actions if a.choices and "mount" in a.choices)
    strings = [(string, action.nargs == 0) for action in commands.choices["mount"]._actions
               for string in action.option_strings
               if string.startswith("--") and string != "--help"]
    for string, flag in strings:
        assert options[string.removeprefix("--").replace("-", "_")] == (string, flag)
    assert len(options) == len(strings)
    assert options["page_cache_size"] == ("--page-cache-size", False)
    assert options["allow_other"] == ("--allow-other", True)
    for name in ("config", "ufs_option", "alluxio_property"):
        assert options[name] == (f"--{name.replace('_', '-')}", False)
    assert "help" not in options
    assert "virtual_nodes" not in options  # the config file's and Alluxio properties' only


def test_an_option_declared_is_settable_at_once() -> None:
    table = (*OPTIONS, Option("new_knob", "value", int, "N", "", "1"),
             Option("new_flag", "flag", bool, "", "", "off"))
    assert plan(split_options("new_knob=3,new-flag"), daemon_options(table)).cli_args == [
        "--new-knob=3", "--new-flag"]


def test_daemon_options_in_either_spelling() -> None:
    p = _plan("page_cache_size=256MiB,io-timeout=30,allow_other,read-only,config=/etc/a.toml,"
              "ufs_option=anon=true,ufs_option=region=eu-1,alluxio_property=alluxio.x=1")
    assert p.cli_args == [
        "--page-cache-size=256MiB", "--io-timeout=30", "--allow-other", "--read-only",
        "--config=/etc/a.toml", "--ufs-option=anon=true", "--ufs-option=region=eu-1",
        "--alluxio-property=alluxio.x=1",
    ]
    assert p.kernel_flags == {} and p.ignored == [] and p.unknown == []


def test_ro_is_read_only_and_rw_the_default() -> None:
    assert _plan("ro").cli_args == ["--read-only"]
    p = _plan("rw")
    assert p.cli_args == [] and p.ignored == ["rw"]


def test_kernel_flags_last_one_wins() -> None:
    p = _plan("noexec,nosuid,nodev,sync,noatime,dirsync,exec,suid")
    assert p.kernel_flags == {"exec": "exec", "suid": "suid", "dev": "nodev", "sync": "sync",
                              "atime": "noatime", "dirsync": "dirsync"}
    assert p.cli_args == []


@pytest.mark.parametrize("option", [
    "defaults", "auto", "noauto", "user", "user=alice", "nouser", "users", "owner", "group",
    "_netdev", "nofail", "x-systemd.automount", "x-systemd.mount-timeout=30", "X-mine",
    "comment=systemd.automount", "relatime", "strictatime", "nodiratime", "lazytime",
    "default_permissions", "silent",
])
def test_mount8_options_with_no_effect_here_are_accepted(option: str) -> None:
    p = _plan(option)
    assert p.ignored == [option]
    assert p.cli_args == [] and p.kernel_flags == {} and p.unknown == []


def test_unknown_options_are_collected() -> None:
    p = _plan("ro,nosuchoption,context=x")
    assert p.unknown == ["nosuchoption", "context=x"]
    assert p.cli_args == ["--read-only"]


@pytest.mark.parametrize(("option", "says"), [
    ("remount", "remount"),
    ("foreground", "alluxiofuse mount -f"),
    ("page_size", "needs a value"),
    ("allow_other=1", "takes no value"),
    ("ro=1", "takes no value"),
    ("noexec=yes", "takes no value"),
])
def test_refused_and_malformed_options(option: str, says: str) -> None:
    with pytest.raises(HelperError) as e:
        _plan(option)
    assert e.value.status == EX_USAGE
    assert says in str(e.value)


# -- the config the daemon gets


def _config(tmp_path: Path, options: str) -> mount_helper.MountConfig:
    inv = Invocation(str(tmp_path), "/mnt", options)
    return build_config(inv, plan(split_options(options), daemon_options()))


def test_config_from_o_options(tmp_path: Path) -> None:
    c = _config(tmp_path, r"ro,noexec,page_size=64KiB,attr-timeout=500ms,file_mode=0640,"
                r"log_file=/tmp/a\,b.log,cache_dir=" + '"/tmp/c,d"' + ",_netdev,allow_other")
    assert c.read_only and c.allow_other and not c.foreground
    assert c.kernel_flags == {"noexec"}
    assert (c.page_size, c.attr_timeout, c.file_mode) == (64 * 1024, 0.5, 0o640)
    assert (c.log_file, c.cache_dir) == ("/tmp/a,b.log", "/tmp/c,d")
    assert (c.source, c.mountpoint) == (str(tmp_path), "/mnt")


def test_config_file_then_o_options(tmp_path: Path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('page_size = "256KiB"\nread_only = true\nforeground = true\n'
                    'page_cache_size = "64MiB"\n')
    c = _config(tmp_path, f"config={toml},page_cache_size=128MiB,rw")
    assert c.page_size == 256 * 1024 and c.page_cache_size == 128 * MiB
    assert c.read_only  # rw is mount(8)'s default word: the file's read_only holds
    assert not c.foreground  # mount(8) waits for the helper


@pytest.mark.parametrize("options", ["page_size=3000", "log_level=loud", "ufs_option=novalue",
                                     "config=/no/such.toml"])
def test_bad_values_are_usage_errors(tmp_path: Path, options: str) -> None:
    with pytest.raises(HelperError) as e:
        _config(tmp_path, options)
    assert e.value.status == EX_USAGE


# -- main: one line on stderr, mount(8)'s exit status


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    status = mount_helper.main(list(argv))
    out, err = capsys.readouterr()
    return status, err.splitlines(), out


def test_fake_mount_checks_options_and_mounts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    status, err, out = _main(capsys, str(tmp_path), str(tmp_path / "no-such-dir"), "-fv",
                             "-o", "ro,noexec,page_size=64KiB,nofail")
    assert (status, err) == (EX_OK, [])
    assert "--read-only --page-size=64KiB" in out
    assert "kernel flags: noexec" in out and "no effect here: nofail" in out
    assert "-f: not mounting" in out


def test_verbose_output_shows_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    status, _, out = _main(capsys, "s3://alice:url-pa55word@bucket/data", str(tmp_path),
                           "-fv", "-o", "ufs_option=secret=hunter2-xyz,etcd_password=etcd-pw-1")
    assert status == EX_OK
    assert "hunter2-xyz" not in out and "url-pa55word" not in out and "etcd-pw-1" not in out
    assert "s3://alice:***@bucket/data" in out and "secret=***" in out


@pytest.mark.parametrize(("argv", "status", "says"), [
    (["{tmp}"], EX_USAGE, "usage: mount.alluxiofuse"),
    (["{tmp}", "{tmp}/mnt", "-o", "bogus"], EX_USAGE, "unknown option: bogus"),
    (["{tmp}", "{tmp}/mnt", "-o", "page_size=3000"], EX_USAGE, "--page-size"),
    (["{tmp}", "{tmp}/no-such-dir", "-o", "ro"], EX_FAIL, "mountpoint does not exist"),
    (["{tmp}", "{tmp}/afile"], EX_FAIL, "not a directory"),
    (["{tmp}", "{tmp}/sub"], EX_USAGE, "inside the source"),
])
def test_errors_are_one_line_with_mount8_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], status: int,
    says: str,
) -> None:
    need(os.access("/dev/fuse", os.R_OK | os.W_OK), "/dev/fuse is missing")
    (tmp_path / "afile").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    got, err, _ = _main(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert got == status
    assert len(err) == 1 and err[0].startswith("mount.alluxiofuse: "), err
    assert says in err[0]


def test_sloppy_ignores_unknown_options_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    status, err, _ = _main(capsys, str(tmp_path), "/mnt", "-sf", "-o", "bogus,ro")
    assert status == EX_OK
    assert err == ["mount.alluxiofuse: ignoring unknown option bogus"]


def test_missing_fuse_device_is_a_system_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mount_helper, "FUSE_DEVICE", str(tmp_path / "fuse"))
    (tmp_path / "mnt").mkdir()
    status, err, _ = _main(capsys, str(tmp_path / "mnt"), str(tmp_path / "mnt"))
    assert status == EX_SYSERR
    assert err == [f"mount.alluxiofuse: {tmp_path}/fuse does not exist: load the fuse module "
                   "(modprobe fuse), or, in a container, pass /dev/fuse in"]


def test_help(capsys: pytest.CaptureFixture[str]) -> None:
    status, err, out = _main(capsys, "-h")
    assert (status, err) == (EX_OK, [])
    assert out.startswith("usage: mount.alluxiofuse SOURCE DIR")


def test_renamed_stderr_rewrites_cli_messages_only(capsys: pytest.CaptureFixture[str]) -> None:
    stream = mount_helper._Renamed(sys.stderr)
    print("alluxiofuse: source does not exist: /x", file=stream)
    print("fuse: something", file=stream)
    assert capsys.readouterr().err.splitlines() == [
        "mount.alluxiofuse: source does not exist: /x", "fuse: something",
    ]
    assert stream.getvalue() == ""  # nothing kept


# -- alluxiofuse install-mount-helper


def _install(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = cli.main(["install-mount-helper", *args])
    out, err = capsys.readouterr()
    return status, out.strip(), err.strip()


def test_install_is_idempotent_and_runs_this_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    helper = tmp_path / "mount.alluxiofuse"
    assert _install(capsys, "--sbin-dir", str(tmp_path)) == (0, f"installed {helper}", "")
    first = helper.read_text()
    assert _install(capsys, "--sbin-dir", str(tmp_path)) == (0, f"installed {helper}", "")
    assert helper.read_text() == first
    assert os.stat(helper).st_mode & 0o777 == 0o755
    assert sys.executable in first
    assert first.endswith(f' {shlex.quote(str(REPO))} "$@"\n')  # the package's parent first
    assert sorted(os.listdir(tmp_path)) == ["mount.alluxiofuse"]  # no temporary file left
    # It runs this working copy's helper, with no PYTHONPATH and from anywhere.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run([str(helper), "-h"], capture_output=True, text=True, env=env,
                         cwd="/", timeout=60, check=False)
    assert (ran.returncode, ran.stderr) == (0, "")
    assert ran.stdout.startswith("usage: mount.alluxiofuse")
    ran = subprocess.run([str(helper), str(tmp_path), "/mnt", "-f", "-o", "no_such_option"],
                         capture_output=True, text=True, env=env, cwd="/", timeout=60,
                         check=False)
    assert ran.returncode == EX_USAGE
    assert ran.stderr == "mount.alluxiofuse: unknown option: no_such_option (-s ignores " \
                         "unknown options)\n"


def test_uninstall(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    helper = tmp_path / "mount.alluxiofuse"
    assert _install(capsys, "--sbin-dir", str(tmp_path))[0] == 0
    assert _install(capsys, "--sbin-dir", str(tmp_path), "--uninstall") == (
        0, f"removed {helper}", "")
    assert not helper.exists()
    assert _install(capsys, "--sbin-dir", str(tmp_path), "--uninstall") == (0, "", "")


def test_a_foreign_helper_is_kept_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    helper = tmp_path / "mount.alluxiofuse"
    helper.write_text("#!/bin/sh\necho someone else's\n")
    for args in ([], ["--uninstall"]):
        status, out, err = _install(capsys, "--sbin-dir", str(tmp_path), *args)
        assert (status, out) == (1, "")
        assert err == f"alluxiofuse: {helper} was not written by alluxiofuse (--force " \
                      "replaces it)"
        assert helper.read_text() == "#!/bin/sh\necho someone else's\n"
    assert _install(capsys, "--sbin-dir", str(tmp_path), "--force")[0] == 0
    assert "install-mount-helper" in helper.read_text()


def test_install_into_a_missing_directory_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    status, _, err = _install(capsys, "--sbin-dir", str(tmp_path / "nope"))
    assert status == 1
    assert err == f"alluxiofuse: cannot write {tmp_path}/nope/mount.alluxiofuse: " \
                  "No such file or directory"


def test_a_helper_script_written_before_the_cli_package_still_mounts() -> None:
    """/sbin/mount.alluxiofuse written by an earlier version imports
    alluxiofuse.mount_helper: an upgrade must not break fstab mounts."""
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from alluxiofuse.mount_helper import main; sys.exit(main(sys.argv[1:]))")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    ran = subprocess.run([sys.executable, "-P", "-c", code, str(REPO), "-h"],
                         capture_output=True, text=True, env=env, cwd="/", timeout=60,
                         check=False)
    assert (ran.returncode, ran.stderr) == (0, "")
    assert ran.stdout.startswith("usage: mount.alluxiofuse")
