"""Domain exceptions, each carrying the errno a FUSE request must answer with.

The tree::

    AlluxioFuseError                 errno
    ├── NotFound                     ENOENT
    ├── AlreadyExists                EEXIST
    ├── NotADirectory                ENOTDIR
    ├── IsADirectory                 EISDIR
    ├── DirectoryNotEmpty            ENOTEMPTY
    ├── PermissionDenied             EACCES
    ├── ReadOnly                     EROFS
    ├── NotSupported                 ENOTSUP
    ├── InvalidArgument              EINVAL
    │   └── Refused                           (not in the path's present state: an Alluxio
    │                                          FAILED_PRECONDITION, e.g. a directory not
    │                                          empty, a file not persisted or pinned)
    ├── NameTooLong                  ENAMETOOLONG
    ├── NoSpace                      ENOSPC   (the spool or the disk is full)
    ├── FileTooLarge                 EFBIG    (past the largest file the store keeps)
    ├── StaleFile                    ESTALE   (the file changed under an open handle)
    └── BackendError                 EIO      (``reason`` labels the metric)
        ├── BackendUnavailable                (connection refused, DNS, 5xx after retries)
        │   └── ServerError                   (the server answered with an error status)
        ├── BackendTimeout                    (a deadline passed)
        ├── ProtocolError                     (a reply that cannot be right)
        ├── ConnectionDropped                 (closed without a reply: how an OSS Alluxio
        │                                      worker fails a request, e.g. a page it lacks)
        └── ContentMismatch                   (bytes that do not match their content hash)

    ConfigError                      (bad options: a one-line message, never an errno)

Lower layers raise these; ``ops.py`` alone turns them into ``pyfuse3.FUSEError``.
Anything that is not an ``AlluxioFuseError`` is a bug or an unmapped backend error: it
becomes EIO with a log line and a metric, and is re-raised under ``--strict``.
"""

from __future__ import annotations

import errno


class AlluxioFuseError(Exception):
    """Base of every error that maps to an errno."""

    errno: int = errno.EIO


class NotFound(AlluxioFuseError):
    errno = errno.ENOENT


class AlreadyExists(AlluxioFuseError):
    errno = errno.EEXIST


class NotADirectory(AlluxioFuseError):
    errno = errno.ENOTDIR


class IsADirectory(AlluxioFuseError):
    errno = errno.EISDIR


class DirectoryNotEmpty(AlluxioFuseError):
    errno = errno.ENOTEMPTY


class PermissionDenied(AlluxioFuseError):
    errno = errno.EACCES


class ReadOnly(AlluxioFuseError):
    errno = errno.EROFS


class NotSupported(AlluxioFuseError):
    errno = errno.ENOTSUP


class InvalidArgument(AlluxioFuseError):
    errno = errno.EINVAL


class Refused(InvalidArgument):
    """Not in the path's present state (an Alluxio proxy's FAILED_PRECONDITION)."""


class NameTooLong(AlluxioFuseError):
    errno = errno.ENAMETOOLONG


class NoSpace(AlluxioFuseError):
    errno = errno.ENOSPC


class FileTooLarge(AlluxioFuseError):
    errno = errno.EFBIG


class StaleFile(AlluxioFuseError):
    errno = errno.ESTALE


class BackendError(AlluxioFuseError):
    """The backend could not answer; ``reason`` is a short metric label."""

    errno = errno.EIO
    reason = "error"


class BackendUnavailable(BackendError):
    reason = "unavailable"


class ServerError(BackendUnavailable):
    reason = "server_error"


class BackendTimeout(BackendError):
    reason = "timeout"


class ProtocolError(BackendError):
    reason = "protocol"


class ConnectionDropped(BackendError):
    reason = "dropped"


class ContentMismatch(BackendError):
    reason = "content_mismatch"


class ConfigError(Exception):
    """An option, config file or source that cannot work; the message is one line."""


_BY_ERRNO: dict[int, type[AlluxioFuseError]] = {
    errno.ENOENT: NotFound,
    errno.EEXIST: AlreadyExists,
    errno.ENOTDIR: NotADirectory,
    errno.EISDIR: IsADirectory,
    errno.ENOTEMPTY: DirectoryNotEmpty,
    errno.EACCES: PermissionDenied,
    errno.EPERM: PermissionDenied,
    errno.EROFS: ReadOnly,
    errno.ENOTSUP: NotSupported,
    errno.EINVAL: InvalidArgument,
    errno.ENAMETOOLONG: NameTooLong,
    errno.ENOSPC: NoSpace,
    errno.EDQUOT: NoSpace,
    errno.EFBIG: FileTooLarge,
    errno.ESTALE: StaleFile,
    errno.ETIMEDOUT: BackendTimeout,
    errno.ECONNREFUSED: BackendUnavailable,
    errno.ECONNRESET: BackendUnavailable,
    errno.EHOSTUNREACH: BackendUnavailable,
    errno.ENETUNREACH: BackendUnavailable,
}

_BY_OSERROR_TYPE: tuple[tuple[type[OSError], type[AlluxioFuseError]], ...] = (
    (FileNotFoundError, NotFound),
    (FileExistsError, AlreadyExists),
    (NotADirectoryError, NotADirectory),
    (IsADirectoryError, IsADirectory),
    (PermissionError, PermissionDenied),
    (TimeoutError, BackendTimeout),
    (ConnectionError, BackendUnavailable),
)


def from_oserror(exc: OSError) -> AlluxioFuseError:
    """The domain error for an ``OSError`` raised by an under-storage library.

    The errno wins when there is one; otherwise the exception's type decides (fsspec
    implementations often raise ``FileNotFoundError(path)`` with no errno). An OSError
    that says nothing we recognise is a backend failure: EIO.
    """
    cls = _BY_ERRNO.get(exc.errno) if exc.errno else None
    if cls is None:
        cls = next((c for t, c in _BY_OSERROR_TYPE if isinstance(exc, t)), BackendError)
    err = cls(str(exc))
    err.__cause__ = exc
    return err
