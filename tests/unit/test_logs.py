"""Log lines: one per event, secrets redacted whoever wrote them."""

from __future__ import annotations

import logging
import logging.handlers
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from alluxiofuse.config import MountConfig, build_config, default_log_file, escape_path
from alluxiofuse.daemon import logs
from alluxiofuse.daemon.logs import REDACTED, OneLineFormatter, redact, secrets_of
from alluxiofuse.daemon.process import mount_options


def _config(**kwargs: object) -> MountConfig:
    return MountConfig(source="s3://bucket/data", mountpoint="/mnt", **kwargs)  # type: ignore[arg-type]


def test_secret_values_by_option_name_at_any_depth() -> None:
    c = _config(ufs_options={
        "key": "AKIAEXAMPLEKEY", "secret": "wJalrXUtnFEMI/K7MDENG", "anon": False,
        "client_kwargs": {"endpoint_url": "https://s3.example", "aws_session_token": "tok-123456"},
        "credentials": {"private_key_id": "abc", "nested": ["deep-secret-1"]},
        "region": "eu-west-1", "token": True,
    }, etcd_password="etcd-pass")
    assert set(secrets_of(c)) == {"AKIAEXAMPLEKEY", "wJalrXUtnFEMI/K7MDENG", "tok-123456",
                                  "deep-secret-1", "etcd-pass"}  # "abc": too short to redact


def test_redact_secrets_and_url_passwords() -> None:
    text = ("cannot reach https://alice:pa55word@host:8443/x with secret wJalrXUtnFEMI "
            "(ftp://bob@host/ has no password; region eu-west-1)")
    assert redact(text, ["wJalrXUtnFEMI"]) == (
        f"cannot reach https://alice:{REDACTED}@host:8443/x with secret {REDACTED} "
        "(ftp://bob@host/ has no password; region eu-west-1)")


def test_formatter_writes_one_line_with_the_traceback_and_no_secret() -> None:
    formatter = OneLineFormatter("%(levelname)s %(message)s", ["sekrit-value"])
    try:
        raise RuntimeError("failed with sekrit-value\nsecond line")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "upload: %s", ("boom",),
                                   sys.exc_info())
    line = formatter.format(record)
    assert "\n" not in line
    assert "sekrit-value" not in line
    assert line.startswith("ERROR upload: boom | Traceback")
    assert f"RuntimeError: failed with {REDACTED} | second line" in line


def test_a_password_in_the_source_url_stays_out_of_the_mount_table() -> None:
    """fsspec reads credentials from URLs (``ftp://user:password@host/``); /proc/mounts is
    world-readable, so the source shown there has the password replaced."""

    config = build_config({"source": "ftp://alice:pa55-w0rd@host/data", "mountpoint": "/m"})
    assert "fsname=ftp://alice:***@host/data" in mount_options(config)
    assert not any("pa55-w0rd" in option for option in mount_options(config))


# -- where a daemon in the background logs

ESCAPED = [("/mnt/data", "mnt-data"), ("/srv/my-data/", "srv-my\\x2ddata"), ("/", "-"),
           ("/a b/.hidden/ü", "a\\x20b-.hidden-\\xc3\\xbc"), ("/.x", "\\x2ex")]


@pytest.mark.parametrize(("path", "name"), ESCAPED)
def test_log_files_are_named_as_systemd_names_units(path: str, name: str) -> None:
    assert escape_path(path) == name
    if shutil.which("systemd-escape"):  # the tool itself agrees
        out = subprocess.run(["systemd-escape", "--path", path], capture_output=True,
                             text=True, check=True, timeout=10).stdout
        assert out.strip() == name


def test_default_log_file_for_root_and_for_others(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_log_file("/mnt/data") == "/var/log/alluxiofuse/mnt-data.log"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_STATE_HOME", "/home/u/state")
    assert default_log_file("/mnt/data") == "/home/u/state/alluxiofuse/mnt-data.log"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert default_log_file("/mnt/data") == "/home/u/.local/state/alluxiofuse/mnt-data.log"
    deep = default_log_file("/" + "/".join(["d" * 100] * 40))  # past NAME_MAX when escaped
    assert len(os.path.basename(deep)) <= 255
    assert deep != default_log_file("/" + "/".join(["d" * 100] * 41))


def test_a_background_daemon_without_log_file_logs_to_its_default_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    """Always to a file, bounded: with or without syslog on the host."""
    path = tmp_path / "logs" / "mnt.log"
    monkeypatch.setattr(logs, "default_log_file", lambda mountpoint: str(path))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logs.setup_logging(_config(), background=True)
        (handler,) = root.handlers
        assert isinstance(handler, logging.handlers.RotatingFileHandler)
        assert handler.maxBytes == logs.DEFAULT_LOG_MAX_BYTES and handler.backupCount == 1
        logging.getLogger("alluxiofuse.test").warning("where is this?")
        handler.flush()
        assert "WARNING alluxiofuse.test: where is this?" in path.read_text()
        handler.close()
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
