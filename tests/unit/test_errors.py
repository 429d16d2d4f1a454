"""The domain exception tree and the OSError → domain error mapping."""

from __future__ import annotations

import errno

import pytest

from alluxiofuse import errors
from alluxiofuse.errors import (
    AlluxioFuseError,
    BackendError,
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    from_oserror,
)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (errors.AlluxioFuseError, errno.EIO),
        (errors.NotFound, errno.ENOENT),
        (errors.AlreadyExists, errno.EEXIST),
        (errors.NotADirectory, errno.ENOTDIR),
        (errors.IsADirectory, errno.EISDIR),
        (errors.DirectoryNotEmpty, errno.ENOTEMPTY),
        (errors.PermissionDenied, errno.EACCES),
        (errors.ReadOnly, errno.EROFS),
        (errors.NotSupported, errno.ENOTSUP),
        (errors.InvalidArgument, errno.EINVAL),
        (errors.NameTooLong, errno.ENAMETOOLONG),
        (errors.FileTooLarge, errno.EFBIG),
        (errors.StaleFile, errno.ESTALE),
        (errors.BackendError, errno.EIO),
        (errors.BackendUnavailable, errno.EIO),
        (errors.BackendTimeout, errno.EIO),
        (errors.ProtocolError, errno.EIO),
    ],
)
def test_errno_of_each_class(cls: type[AlluxioFuseError], code: int) -> None:
    assert cls.errno == code
    assert cls("x").errno == code
    assert issubclass(cls, AlluxioFuseError)


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (errors.BackendError, "error"),
        (errors.BackendUnavailable, "unavailable"),
        (errors.BackendTimeout, "timeout"),
        (errors.ProtocolError, "protocol"),
    ],
)
def test_backend_error_reasons(cls: type[BackendError], reason: str) -> None:
    assert issubclass(cls, BackendError)
    assert cls.reason == reason


def test_config_error_is_not_an_errno_error() -> None:
    assert not issubclass(ConfigError, AlluxioFuseError)
    assert issubclass(ConfigError, Exception)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (errno.ENOENT, errors.NotFound),
        (errno.EEXIST, errors.AlreadyExists),
        (errno.ENOTDIR, errors.NotADirectory),
        (errno.EISDIR, errors.IsADirectory),
        (errno.ENOTEMPTY, errors.DirectoryNotEmpty),
        (errno.EACCES, errors.PermissionDenied),
        (errno.EPERM, errors.PermissionDenied),
        (errno.EROFS, errors.ReadOnly),
        (errno.ENOTSUP, errors.NotSupported),
        (errno.EINVAL, errors.InvalidArgument),
        (errno.ENAMETOOLONG, errors.NameTooLong),
        (errno.ESTALE, errors.StaleFile),
        (errno.ETIMEDOUT, errors.BackendTimeout),
        (errno.ECONNREFUSED, errors.BackendUnavailable),
        (errno.ECONNRESET, errors.BackendUnavailable),
        (errno.EHOSTUNREACH, errors.BackendUnavailable),
        (errno.ENETUNREACH, errors.BackendUnavailable),
        (errno.EIO, errors.BackendError),
        (errno.ENOSPC, errors.NoSpace),
        (errno.EDQUOT, errors.NoSpace),
        (errno.EFBIG, errors.FileTooLarge),
        (errno.EXDEV, errors.BackendError),
    ],
)
def test_from_oserror_by_errno(code: int, cls: type[AlluxioFuseError]) -> None:
    exc = OSError(code, "boom")
    err = from_oserror(exc)
    assert type(err) is cls
    assert err.__cause__ is exc


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (FileNotFoundError("/bucket/key"), errors.NotFound),
        (FileExistsError("x"), errors.AlreadyExists),
        (NotADirectoryError("x"), errors.NotADirectory),
        (IsADirectoryError("x"), errors.IsADirectory),
        (PermissionError("x"), errors.PermissionDenied),
        (TimeoutError(), errors.BackendTimeout),
        (TimeoutError("slow"), errors.BackendTimeout),
        (ConnectionRefusedError(), errors.BackendUnavailable),
        (ConnectionResetError("reset"), errors.BackendUnavailable),
        (BrokenPipeError(), errors.BackendUnavailable),
        (OSError("x"), errors.BackendError),
        (OSError(), errors.BackendError),
    ],
)
def test_from_oserror_by_type_without_errno(exc: OSError, cls: type[AlluxioFuseError]) -> None:
    assert exc.errno is None
    err = from_oserror(exc)
    assert type(err) is cls
    assert err.__cause__ is exc


def test_from_oserror_errno_wins_over_type() -> None:
    # A PermissionError subclass carrying ENOENT is a missing file, whatever its class says.
    err = from_oserror(PermissionError(errno.ENOENT, "gone"))
    assert type(err) is errors.NotFound


def test_from_oserror_unknown_errno_falls_back_to_type() -> None:
    err = from_oserror(FileNotFoundError(errno.EIO, "odd"))
    assert type(err) is errors.NotFound


def test_from_oserror_keeps_message() -> None:
    exc = FileNotFoundError(errno.ENOENT, "No such file", "/data/x")
    err = from_oserror(exc)
    assert "/data/x" in str(err)
    assert err.errno == errno.ENOENT


def test_from_oserror_timeout_is_a_backend_error() -> None:
    err = from_oserror(TimeoutError())
    assert isinstance(err, BackendTimeout)
    assert isinstance(err, BackendError)
    assert err.reason == "timeout"
    assert isinstance(from_oserror(ConnectionRefusedError()), BackendUnavailable)
