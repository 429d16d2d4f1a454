"""Log lines: one per event, secrets redacted whoever wrote them."""

from __future__ import annotations

import logging
import sys

from alluxiofuse.config import MountConfig, build_config
from alluxiofuse.daemon import mount_options
from alluxiofuse.logs import REDACTED, OneLineFormatter, redact, secrets_of


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
