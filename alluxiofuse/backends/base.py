"""The interface every backend offers to the file layer."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import re
import secrets
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol, TypeVar

import trio

from alluxiofuse.errors import AlluxioFuseError, BackendTimeout, from_oserror
from alluxiofuse.model import Attrs, Commit, Data, FileStatus, FsStats, Version, WriteSupport

T = TypeVar("T")

# The name a file's new content is written under, beside it, until it is renamed into
# place: fixed length (a long name plus a suffix could pass NAME_MAX), never listed.
_TEMP_PREFIX = ".alluxiofuse-"
_TEMP_NAME = re.compile(r"\.alluxiofuse-[0-9a-f]{16}\Z")


def temp_name() -> str:
    return f"{_TEMP_PREFIX}{secrets.token_hex(8)}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a commit in progress (or one a crash left behind): not listed."""
    # The prefix first: a listing asks this of every name in it.
    return name.startswith(_TEMP_PREFIX) and _TEMP_NAME.match(name) is not None


class ByteStream(Protocol):
    """A file's bytes in order, from where the stream was opened."""

    async def read(self, n: int) -> Data:
        """The next ``n`` bytes; fewer only at the end of the file. ``n`` bytes may be
        allocated up front: ask for what is due."""
        ...

    async def aclose(self) -> None:
        ...


class Backend(Protocol):
    """Read access to a tree of files, by mount-relative path (``""`` is the root).

    Every method raises only :mod:`alluxiofuse.errors` exceptions for conditions it
    understands; each call is bounded by a deadline.
    """

    description: str
    # True when the operating system caches this backend's data, so that hinting what
    # will be read (``warm``) is all read-ahead has to do: the reads themselves are then
    # answered from that cache by ``read_nowait``.
    warms: bool

    # Bytes of a file that one request reads well at once: ``read_many`` then takes
    # contiguous pages of one file (read-ahead) in one request up to this many bytes, and
    # a sequential reader's read-ahead is asked for in such runs. 0: page by page.
    span: int

    # True when an open file is best read through a stream of its own, kept from one read
    # to the next (``open_stream``): a read at an offset costs the bytes before it.
    streams: bool

    async def stat(self, path: str) -> FileStatus:
        """The status of ``path`` (``NotFound`` if there is none)."""
        ...

    async def list(self, path: str) -> list[FileStatus]:
        """The entries of directory ``path``, without ``.`` and ``..``."""
        ...

    def list_pages(self, path: str) -> AsyncGenerator[Sequence[FileStatus], None]:
        """``list``, in the pages the source lists in (S3: 1,000 keys each), as they come
        (one page where the source lists all at once)."""
        ...

    async def read(self, path: str, offset: int, length: int, version: Version) -> Data:
        """``length`` bytes at ``offset`` of ``version`` of the file (fewer only at EOF).

        Raises ``StaleFile`` when the file is no longer that version.
        """
        ...

    async def open_stream(self, path: str, offset: int, version: Version) -> ByteStream:
        """The bytes of ``version`` of the file from ``offset`` on (only where ``streams``;
        ``StaleFile`` when the file is no longer that version)."""
        ...

    async def stat_and_read(
        self, path: str, length: int, *, ahead: bool = False,
    ) -> tuple[FileStatus, Data] | None:
        """The status of file ``path`` (all that ``stat`` tells of it) and its first
        ``length`` bytes, of that status's version, in one request; None where the
        backend has no such request (then ``stat`` and ``read`` it). ``ahead``: for
        read-ahead, which a backend may serve after the requests readers wait for."""
        ...

    def stat_nowait(self, path: str) -> FileStatus | None:
        """The status of ``path`` if the backend can tell without waiting for I/O (from
        the operating system's caches), else None. Runs on the event loop."""
        ...

    def read_nowait(self, path: str, offset: int, length: int, version: Version) -> bytes | None:
        """``read(path, offset, length, version)`` if it can be answered without waiting
        for I/O, else None. Runs on the event loop."""
        ...

    async def warm(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        """Ask for these ranges to be brought into the operating system's cache soon
        (only where ``warms``); never raises for a range it cannot warm."""
        ...

    async def read_many(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> Sequence[Data | AlluxioFuseError]:
        """Several ``read(path, offset, length, version)`` at once; each result is the
        bytes or the error that read alone would have raised. This is read-ahead: a
        backend may serve ``read`` (a reader waiting) before it."""
        ...

    async def readlink(self, path: str) -> str:
        ...

    async def statfs(self) -> FsStats:
        ...

    async def aclose(self) -> None:
        ...

    # -- changes. What ``writes`` says is unsupported raises NotSupported; the caller has
    # checked existence and the POSIX rules (kinds, empty directories) first.

    writes: WriteSupport

    async def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        ...

    async def rmdir(self, path: str) -> None:
        ...

    async def unlink(self, path: str) -> None:
        ...

    async def rename(self, old: str, new: str, flags: int) -> None:
        """Move ``old`` to ``new`` (replacing it); ``flags`` are RENAME_NOREPLACE or
        RENAME_EXCHANGE where ``writes`` allows them."""
        ...

    async def symlink(self, path: str, target: str, owner: tuple[int, int] | None) -> FileStatus:
        ...

    async def mknod(
        self, path: str, mode: int, rdev: int, owner: tuple[int, int] | None,
    ) -> FileStatus:
        """A FIFO, socket or device node (``mode``'s type bits; ``rdev``: a device's
        number), where ``writes.nodes``."""
        ...

    async def link(self, path: str, new: str) -> FileStatus:
        """One more name, ``new``, for the file ``path`` (where ``writes.links``); the
        file's status after."""
        ...

    async def setattr(self, path: str, attrs: Attrs) -> FileStatus:
        ...

    async def commit(
        self, path: str, staged: str, *, mode: int | None = None,
        owner: tuple[int, int] | None = None, mtime_ns: int | None = None,
        durable: bool = True, size: int = 0,
    ) -> Commit:
        """Make the local file ``staged`` (``size`` bytes: the deadline grows with it) the
        whole content of ``path``, replacing any old content only once the new is
        complete (untouched if this fails). Without
        ``durable``, a store that can (a local disk) may leave it in its page cache, as
        a close(2) on that disk would."""
        ...

    async def sync(self, path: str) -> None:
        """fsync(2) of ``path`` and its directory, where the store has such a thing."""
        ...

    async def cache(self, path: str) -> None:
        """Ask the cache in front of the under-storage to hold ``path`` (best effort)."""
        ...


async def run_blocking(
    fn: Callable[..., T], *args: Any, limiter: trio.CapacityLimiter, deadline: float,
    what: str,
) -> T:
    """``fn(*args)`` in a worker thread under ``limiter`` and ``deadline``: BackendTimeout
    past it (naming ``what``), and OSErrors as the domain errors they stand for."""
    try:
        with trio.fail_after(deadline):
            return await trio.to_thread.run_sync(
                fn, *args, limiter=limiter, abandon_on_cancel=True,
            )
    except trio.TooSlowError:
        raise BackendTimeout(f"{what}: no answer within {deadline:g}s") from None
    except OSError as e:
        raise from_oserror(e) from e


async def read_concurrently(
    read: Callable[[str, int, int, Version], Awaitable[Data]],
    reads: Sequence[tuple[str, int, int, Version]],
) -> list[Data | AlluxioFuseError]:
    """``read_many`` for a backend whose reads overlap well on their own: every read at
    once, each result the bytes or the error that read raised."""
    results: list[Data | AlluxioFuseError] = [b""] * len(reads)

    async def one(i: int) -> None:
        try:
            results[i] = await read(*reads[i])
        except AlluxioFuseError as e:
            results[i] = e

    async with trio.open_nursery() as nursery:
        for i in range(len(reads)):
            nursery.start_soon(one, i)
    return results


async def run_on_loop(
    coroutine: Callable[[], Coroutine[Any, Any, T]], loop: asyncio.AbstractEventLoop, *,
    deadline: float, what: str,
) -> T:
    """``await coroutine()`` on ``loop``, an asyncio loop running in a thread of its own
    (fsspec's async filesystems have one), without a worker thread waiting for it: the
    loop wakes this task when it is done. Past ``deadline`` (BackendTimeout, naming
    ``what``) or cancelled, the coroutine is cancelled on its loop too; OSErrors come out
    as the domain errors they stand for."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()

    def wake(_: concurrent.futures.Future[T]) -> None:
        with contextlib.suppress(trio.RunFinishedError):  # nobody waits any more
            token.run_sync_soon(done.set)

    future = asyncio.run_coroutine_threadsafe(coroutine(), loop)
    future.add_done_callback(wake)
    try:
        with trio.fail_after(deadline):
            await done.wait()
    except trio.TooSlowError:
        future.cancel()
        raise BackendTimeout(f"{what}: no answer within {deadline:g}s") from None
    except BaseException:
        future.cancel()
        raise
    try:
        return future.result()
    except OSError as e:
        raise from_oserror(e) from e
