"""The local source: a directory read and changed with ``os`` directly, every path
relative to a descriptor of its root (long ones walked a piece at a time with ``openat``)."""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import logging
import os
import stat as statmod
from collections.abc import Callable, Iterator, Sequence

import trio

from alluxiofuse.backends.base import is_temp_name, temp_name
from alluxiofuse.backends.local_probes import CacheProbes
from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.errors import AlluxioFuseError, NotFound, StaleFile, from_oserror
from alluxiofuse.listing import Columns, Listing, kind_code
from alluxiofuse.model import (
    NAME_MAX,
    Attrs,
    Commit,
    Data,
    FileStatus,
    FsStats,
    Kind,
    Version,
    WriteSupport,
)

log = logging.getLogger(__name__)

# Small local reads per worker-thread job in read_many: a job asks the kernel for all of
# its files at once, so the disk overlaps them; one job per directory read-ahead batch
# (bench/RESULTS.md).
_READS_PER_JOB = 32
# The longest path one system call takes, its final NUL included (Linux's PATH_MAX).
_PATH_MAX = 4096
# Directories opened to walk a long path: descriptors usable only as a place to start from.
_WALK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class LocalUfs(UfsBackend):
    """A local directory, read with ``os`` directly: the embedded default's fast path.

    Every path is resolved relative to a descriptor of the root opened at start-up, so the
    mount keeps serving that directory (like a bind mount) even if its path is later
    renamed or replaced. Reads check the file's size and mtime after ``pread`` on the same
    descriptor, so a page is never taken from a different version of the file than the
    one opened. What the kernel has cached is answered on the event loop, without a
    worker thread (:mod:`alluxiofuse.backends.local_probes`).
    """

    def __init__(
        self, root: str, limiter: trio.CapacityLimiter, timeout: float, *, description: str,
        mtime_unit_ns: int = 1,
    ) -> None:
        super().__init__(None, root, limiter, timeout, description=description,
                         mtime_unit_ns=mtime_unit_ns)
        self.warms = False  # True once the cache-only probes can answer the reads
        self._root_fd: int | None = None
        self._root_error: OSError | None = None
        self._probes: CacheProbes | None = None
        try:
            self._root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:  # reported by the first call: check_source's stat of the root
            self._root_error = e
            return
        self._probes = CacheProbes.for_root(root)
        self.warms = self._probes is not None

    def uri(self, path: str) -> str:
        return f"file://{self.full_path(path)}"

    async def aclose(self) -> None:
        if self._probes is not None:
            self._probes.close()
            self._probes = None
        if self._root_fd is not None:
            os.close(self._root_fd)
            self._root_fd = None

    def stat_nowait(self, path: str) -> FileStatus | None:
        if self._probes is None or not path:
            return None
        try:
            st = self._probes.lstat(path)
        except FileNotFoundError:
            raise NotFound(path) from None
        if st is None:
            return None
        status = status_from_stat(path.rpartition("/")[2], st)
        if status is None:
            raise NotFound(f"{path!r} is of a type Linux does not make, which is not served")
        return self._reported(status)

    async def warm(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        """``POSIX_FADV_WILLNEED`` for each range, in one worker job: the kernel reads
        them in the background, and ``read_nowait`` then finds them cached. Cheaper than
        reading them here: no copy into Python, and fewer system calls per file
        (bench/RESULTS.md)."""
        try:
            await self._call(self._warm_sync, reads)
        except AlluxioFuseError as e:  # only a hint: the reads report real failures
            log.debug("warming %d files failed: %s", len(reads), e)

    def _warm_sync(self, reads: Sequence[tuple[str, int, int, Version]]) -> None:
        for path, offset, length, _ in reads:
            try:
                fd = self._open(path)
            except OSError:
                continue
            try:
                with contextlib.suppress(OSError):  # only a hint
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            finally:
                os.close(fd)

    def read_nowait(self, path: str, offset: int, length: int, version: Version) -> bytes | None:
        if self._probes is None:
            return None
        try:
            got = self._probes.pread(path, offset, max(0, min(length, version.size - offset)))
        except FileNotFoundError:
            raise StaleFile(f"{path} was removed while open") from None
        if got is None:
            return None
        data, st = got
        if st.st_size != version.size or not self._same_mtime(st.st_mtime_ns, version):
            raise StaleFile(f"{path} changed while open")
        return data

    def _root(self) -> int:
        if self._root_fd is None:
            raise self._root_error or FileNotFoundError(errno.ENOENT, "closed", self.root)
        return self._root_fd

    def _stat_sync(self, path: str) -> FileStatus:
        if path:
            with self._at(path) as (fd, name):
                st = os.lstat(name, dir_fd=fd)
        elif self._root_fd is not None:
            st = os.fstat(self._root_fd)
        else:  # say what is there instead (nothing, a file) rather than why it cannot open
            st = os.stat(self.root)
            if statmod.S_ISDIR(st.st_mode):
                self._root()
        status = status_from_stat(path.rpartition("/")[2], st)
        if status is None:  # a type Linux does not make; hidden from listings too
            raise NotFound(f"{path!r} is a special file, which is not served")
        return self._reported(status)

    def _list_sync(self, path: str) -> Listing:
        """The listing, made straight from the stat results into columns: no status object
        per entry, whose making cost a large directory's listing much of its time, and
        whose leftovers much of the memory it kept. One call for the whole directory: in
        pages, each a worker-thread call, the entries listed first reached the kernel
        sooner, but a whole ``ls -l`` took longer, and the pages were kept beside the
        whole listing (bench/RESULTS.md)."""
        columns = Columns()
        unit = self.mtime_unit_ns
        with self._at(path) as (at, name):
            fd = os.open(name or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=at)
        try:
            with os.scandir(fd) as it:  # reads a duplicate of fd
                for entry in it:
                    if is_temp_name(entry.name):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:  # removed while listing
                        continue
                    kind = _KIND_OF_TYPE.get(statmod.S_IFMT(st.st_mode))
                    if kind is None:
                        continue
                    rdev = st.st_rdev if statmod.S_IFMT(st.st_mode) in _DEVICES else None
                    columns.add(entry.name, kind, st.st_size,
                                st.st_mtime_ns - st.st_mtime_ns % unit, st.st_ctime_ns,
                                st.st_atime_ns, statmod.S_IMODE(st.st_mode), st.st_uid,
                                st.st_gid, st.st_nlink, st.st_blocks, rdev, _file_id(st), None)
        finally:
            os.close(fd)
        return Listing.from_columns(columns)

    def _read_sync(self, path: str, offset: int, length: int, version: Version) -> bytes:
        fd = self._open(path)
        try:
            return self._read_fd(fd, path, offset, length, version)
        finally:
            os.close(fd)

    def _open(self, path: str) -> int:
        with self._at(path) as (fd, name):
            return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)

    @contextlib.contextmanager
    def _at(self, path: str, *, room: int = 0) -> Iterator[tuple[int, str]]:
        """``path`` as a directory descriptor and a name relative to it that one system
        call takes, for the ``*at`` calls (``dir_fd=``).

        Almost every path fits in one call as it is, relative to the root descriptor: that
        is the hot path, with no extra call. PATH_MAX counts from the mount's root here,
        not from the caller's directory as on the mount, so a deep tree that a caller
        reaches with relative paths can be longer: its parent directory is then opened
        first (``_open_dir``), and the name is relative to that. ``room`` bytes more must
        fit too (a commit's temporary name beside ``path``).
        """
        root = self._root()
        # A character takes at most 4 bytes: the encoding is needed only near the limit.
        if (len(path) * 4 + room < _PATH_MAX
                or len(os.fsencode(path)) + room < _PATH_MAX):
            yield root, path
            return
        parent, _, name = path.rpartition("/")
        fd = self._open_dir(parent)
        try:
            yield fd, name
        finally:
            if fd != root:
                os.close(fd)

    def _open_dir(self, path: str) -> int:
        """A descriptor of directory ``path`` (the root's own for ""), opened a piece of
        up to PATH_MAX bytes at a time, each piece from the last one's descriptor. Each
        piece resolves as a whole path would in one call, so a long path means what a
        short one does; only the last component of a piece must not be a symbolic link."""
        root = fd = self._root()
        try:
            for piece in _pieces(os.fsencode(path)):
                opened = os.open(piece, _WALK_FLAGS, dir_fd=fd)
                if fd != root:
                    os.close(fd)
                fd = opened
        except BaseException:
            if fd != root:
                os.close(fd)
            raise
        return fd

    def _read_fd(self, fd: int, path: str, offset: int, length: int, version: Version) -> bytes:
        data = pread_all(fd, length, offset)
        st = os.fstat(fd)
        if st.st_size != version.size or not self._same_mtime(st.st_mtime_ns, version):
            raise StaleFile(f"{path} changed while open")
        return data

    async def read_many(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> builtins.list[Data | AlluxioFuseError]:
        """Reads in worker-thread jobs of a few each: locally the hand-off to a thread
        costs more than reading a small file, so a job pays it once for several, and the
        jobs run side by side so that the disk's latencies overlap."""
        chunks = [reads[i:i + _READS_PER_JOB] for i in range(0, len(reads), _READS_PER_JOB)]
        results: builtins.list[Sequence[bytes | AlluxioFuseError]] = [()] * len(chunks)

        async def job(i: int) -> None:
            results[i] = await self._call(self._read_many_sync, chunks[i])

        async with trio.open_nursery() as nursery:
            for i in range(len(chunks)):
                nursery.start_soon(job, i)
        return [result for chunk in results for result in chunk]

    def _read_many_sync(
        self, reads: Sequence[tuple[str, int, int, Version]],
    ) -> builtins.list[bytes | AlluxioFuseError]:
        """Open every file and tell the kernel which ranges follow, then read them: the
        disk works on all of them at once instead of one after another."""
        opened: builtins.list[int | AlluxioFuseError] = []
        try:
            for path, offset, length, _ in reads:
                try:
                    fd = self._open(path)
                except OSError as e:
                    opened.append(self._read_error(path, e))
                    continue
                opened.append(fd)
                with contextlib.suppress(OSError):  # only a hint
                    os.posix_fadvise(fd, offset, length, os.POSIX_FADV_WILLNEED)
            return [self._read_opened(item, *read)
                    for item, read in zip(opened, reads, strict=True)]
        finally:
            for item in opened:
                if isinstance(item, int):
                    os.close(item)

    def _read_opened(
        self, opened: int | AlluxioFuseError, path: str, offset: int, length: int,
        version: Version,
    ) -> bytes | AlluxioFuseError:
        if not isinstance(opened, int):
            return opened
        try:
            return self._read_fd(opened, path, offset, length, version)
        except OSError as e:
            return self._read_error(path, e)
        except AlluxioFuseError as e:
            return e

    @staticmethod
    def _read_error(path: str, e: OSError) -> AlluxioFuseError:
        if isinstance(e, FileNotFoundError):
            return StaleFile(f"{path} was removed while open")
        return from_oserror(e)

    async def readlink(self, path: str) -> str:
        def readlink() -> str:
            with self._at(path) as (fd, name):
                return os.readlink(name, dir_fd=fd)
        return await self._call(readlink)

    # -- changes: the local system calls, relative to the root descriptor

    writes = WriteSupport(modes=True, owners=True, times=True, symlinks=True, nodes=True,
                          links=True,
                          rename_noreplace=True, rename_exchange=True, needs_parent=True)

    async def mkdir(self, path: str, mode: int, owner: tuple[int, int] | None) -> FileStatus:
        def mkdir() -> FileStatus:
            with self._at(path) as (fd, name):
                os.mkdir(name, mode, dir_fd=fd)
            self._give(path, owner)
            status = self._stat_sync(path)
            made = status.mode if status.mode is not None else mode
            if made & 0o777 != mode & 0o777:
                # mkdir(2) took the daemon's umask away as well, but the kernel had applied
                # the caller's already: the mode asked for is final. (A set-group-ID bit
                # inherited from the parent stays.)
                return self._setattr_sync(path, Attrs(mode=made & ~0o777 | mode & 0o777))
            return status
        return await self._call(mkdir)

    async def rmdir(self, path: str) -> None:
        def rmdir() -> None:
            with self._at(path) as (fd, name):
                os.rmdir(name, dir_fd=fd)
        await self._call(rmdir)

    async def unlink(self, path: str) -> None:
        def unlink() -> None:
            with self._at(path) as (fd, name):
                os.unlink(name, dir_fd=fd)
        await self._call(unlink)

    async def rename(self, old: str, new: str, flags: int) -> None:
        await self._call(self._rename_sync, old, new, flags)

    async def symlink(self, path: str, target: str, owner: tuple[int, int] | None) -> FileStatus:
        def symlink() -> FileStatus:
            with self._at(path) as (fd, name):
                os.symlink(target, name, dir_fd=fd)
            self._give(path, owner)
            return self._stat_sync(path)
        return await self._call(symlink)

    async def mknod(
        self, path: str, mode: int, rdev: int, owner: tuple[int, int] | None,
    ) -> FileStatus:
        def mknod() -> FileStatus:
            with self._at(path) as (fd, name):
                os.mknod(name, mode, rdev, dir_fd=fd)
            self._give(path, owner)
            status = self._stat_sync(path)
            if status.mode is not None and status.mode & 0o777 != mode & 0o777:
                # As for mkdir: the kernel applied the caller's umask, the daemon's is not
                # the caller's to apply.
                return self._setattr_sync(path, Attrs(mode=status.mode & ~0o777 | mode & 0o777))
            return status
        return await self._call(mknod)

    async def link(self, path: str, new: str) -> FileStatus:
        def link() -> FileStatus:
            with self._at(path) as (old_at, old_name), self._at(new) as (new_at, new_name):
                os.link(old_name, new_name, src_dir_fd=old_at, dst_dir_fd=new_at,
                        follow_symlinks=False)
            return self._stat_sync(new)
        return await self._call(link)

    async def setattr(self, path: str, attrs: Attrs) -> FileStatus:
        return await self._call(self._setattr_sync, path, attrs)

    async def commit(
        self, path: str, staged: str, *, mode: int | None = None,
        owner: tuple[int, int] | None = None, mtime_ns: int | None = None,
        durable: bool = True, size: int = 0,
    ) -> Commit:
        """Put ``staged`` beside ``path`` under a temporary name (a hard link when the
        spool is on the same file system: no copy; else a copy in the kernel), give it
        ``mode``, ``owner`` and ``mtime_ns``, and rename it over ``path``: ``path`` is the
        old content or the new, never a mix. With ``durable``, the file is fsynced first
        and the directory after, so that this holds across a crash too."""
        ticket = self._fence.begin(path)
        return await self._call(self._fenced, path, ticket, self._commit_local, path, staged,
                                mode, owner, mtime_ns, durable, ticket,
                                within=self._commit_deadline(size))

    async def sync(self, path: str) -> None:
        def sync() -> None:
            fd = self._open(path)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            with self._at(path) as (at, name):
                _fsync_dir(name.rpartition("/")[0] or ".", at)
        await self._call(sync)

    def _commit_local(
        self, path: str, staged: str, mode: int | None, owner: tuple[int, int] | None,
        mtime_ns: int | None, durable: bool, ticket: int,
    ) -> Commit:
        with self._at(path, room=NAME_MAX) as (at, name):
            return self._commit_at(at, name, path, staged, mode, owner, mtime_ns, durable,
                                   ticket)

    def _commit_at(
        self, root: int, name: str, path: str, staged: str, mode: int | None,
        owner: tuple[int, int] | None, mtime_ns: int | None, durable: bool, ticket: int,
    ) -> Commit:
        """``_commit_local`` with ``path`` named ``name`` relative to ``root`` (``_at``)."""
        try:
            st = os.lstat(name, dir_fd=root)
        except FileNotFoundError:
            st = None
        if st is not None and statmod.S_ISREG(st.st_mode) and st.st_nlink > 1:
            return self._commit_in_place(root, name, path, staged, mode, owner, mtime_ns,
                                         durable, ticket)
        parent, _, _ = name.rpartition("/")
        leaf = temp_name()
        temp = f"{parent}/{leaf}" if parent else leaf
        src = os.open(staged, os.O_RDWR | os.O_CLOEXEC)
        # The note names the temporary file from the source's root (``temp`` is relative
        # to ``root``, which is a directory below it when ``path`` is long).
        path_parent = path.rpartition("/")[0]
        note = self._note_commit(f"{path_parent}/{leaf}" if path_parent else leaf)
        try:
            linked = self._link_or_copy(staged, src, temp, root)
            dst = src if linked else os.open(temp, os.O_WRONLY | os.O_CLOEXEC, dir_fd=root)
            try:
                _finish(dst, mode, owner, mtime_ns, durable)
            finally:
                if dst != src:
                    os.close(dst)
            with self._fence.publishing(path, ticket):  # never over a newer commit
                os.rename(temp, name, src_dir_fd=root, dst_dir_fd=root)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=root)
            raise
        finally:
            os.close(src)
            if note is not None:
                with contextlib.suppress(OSError):
                    os.unlink(note)
        if durable:
            _fsync_dir(parent or ".", root)
        return Commit(self._stat_sync(path), linked)

    def _commit_in_place(
        self, root: int, name: str, path: str, staged: str, mode: int | None,
        owner: tuple[int, int] | None, mtime_ns: int | None, durable: bool, ticket: int,
    ) -> Commit:
        """A file with hard links is written where it is: a new file renamed over one of
        its names would make that name another file, and leave the others the old
        content. Not atomic, as no write in place is: a crash in the middle leaves the
        file part old, part new (fsync, or the close of a ``durable`` commit, says when
        it is whole)."""
        src = os.open(staged, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with self._fence.publishing(path, ticket):  # never over a newer commit
                dst = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root)
                try:
                    size = os.fstat(src).st_size
                    _copy_all(src, dst, size)
                    os.ftruncate(dst, size)
                    _finish(dst, mode, owner, mtime_ns, durable)
                finally:
                    os.close(dst)
        finally:
            os.close(src)
        return Commit(self._stat_sync(path), False)

    def note_commits(self, directory: str) -> builtins.list[str]:
        removed = []
        for name in os.listdir(directory):
            note = os.path.join(directory, name)
            try:
                if is_temp_name(name):
                    with open(note, "rb") as f:
                        temp = os.fsdecode(f.read())
                    # Only the file the note names, carrying this project's temporary name.
                    if temp.rpartition("/")[2] == name:
                        with (contextlib.suppress(FileNotFoundError),  # renamed into place
                              self._at(temp) as (at, leaf)):
                            os.unlink(leaf, dir_fd=at)
                            removed.append(temp)
                            log.info("removed %s, the temporary file of a commit that a "
                                     "crash interrupted", self.full_path(temp))
                os.unlink(note)
            except OSError as e:  # the note stays: tried again at the next mount
                log.warning("cannot remove the temporary file that %s names, left by a "
                            "crash: %s", note, e.strerror)
        self._commit_notes = directory
        return removed

    def _note_commit(self, temp: str) -> str | None:
        """Name ``temp`` in the spool while it may exist, so that after a crash the next
        daemon removes it (``note_commits``); the note's path. Best effort: a note that
        cannot be written costs only that tidying."""
        if self._commit_notes is None:
            return None
        note = os.path.join(self._commit_notes, temp.rpartition("/")[2])
        try:
            # A note cut short names no file of that name: the next daemon just drops it.
            with open(note, "xb") as f:
                f.write(os.fsencode(temp))
        except OSError as e:
            log.debug("cannot note the commit of %s in the spool: %s", temp, e)
            return None
        return note

    def _link_or_copy(self, staged: str, src: int, temp: str, root: int) -> bool:
        """Make ``temp`` (relative to ``root``) hold ``staged``'s bytes: a hard link (True)
        or a copy (False)."""
        try:
            os.link(staged, temp, dst_dir_fd=root)
            return True
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
        dst = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                      dir_fd=root)
        try:
            _copy_all(src, dst, os.fstat(src).st_size)
        finally:
            os.close(dst)
        return False

    def _give(self, path: str, owner: tuple[int, int] | None) -> None:
        """A new entry belongs to whoever made it (the daemon can say so only as root)."""
        if owner is not None and os.geteuid() == 0:
            with self._at(path) as (fd, name):
                os.chown(name, *owner, dir_fd=fd, follow_symlinks=False)

    def _rename_sync(self, old: str, new: str, flags: int) -> None:
        with self._at(old) as (old_at, old_name), self._at(new) as (new_at, new_name):
            if not flags:
                os.rename(old_name, new_name, src_dir_fd=old_at, dst_dir_fd=new_at)
                return
            if _renameat2(old_at, os.fsencode(old_name), new_at, os.fsencode(new_name),
                          flags) != 0:
                code = ctypes.get_errno()
                raise OSError(code, os.strerror(code), old)

    def _setattr_sync(self, path: str, attrs: Attrs) -> FileStatus:
        with self._at(path) as (fd, name):
            if attrs.mode is not None:
                os.chmod(name, attrs.mode, dir_fd=fd)
            if attrs.uid is not None or attrs.gid is not None:
                os.chown(name, -1 if attrs.uid is None else attrs.uid,
                         -1 if attrs.gid is None else attrs.gid, dir_fd=fd,
                         follow_symlinks=False)
            if attrs.atime_ns is not None or attrs.mtime_ns is not None:
                st = os.lstat(name, dir_fd=fd)
                times = (st.st_atime_ns if attrs.atime_ns is None else attrs.atime_ns,
                         st.st_mtime_ns if attrs.mtime_ns is None else attrs.mtime_ns)
                os.utime(name, ns=times, dir_fd=fd, follow_symlinks=False)
        return self._stat_sync(path)

    async def statfs(self) -> FsStats:
        st = await self._call(lambda: os.statvfs(self._root()))
        return FsStats(
            block_size=st.f_frsize, blocks=st.f_blocks, blocks_free=st.f_bfree,
            blocks_avail=st.f_bavail, files=st.f_files, files_free=st.f_ffree,
            name_max=st.f_namemax,
        )


def pread_all(fd: int, length: int, offset: int) -> bytes:
    """Up to ``length`` bytes at ``offset`` (fewer only at the end of the file)."""
    chunks = []
    while length > 0:
        chunk = os.pread(fd, length, offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        length -= len(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _finish(
    fd: int, mode: int | None, owner: tuple[int, int] | None, mtime_ns: int | None,
    durable: bool,
) -> None:
    """Give a commit's file (open as ``fd``) its mode, owner (as root) and mtime, and
    fsync it when the commit is ``durable``."""
    if mode is not None:
        os.fchmod(fd, mode)
    if owner is not None and os.geteuid() == 0:
        os.fchown(fd, *owner)
    if mtime_ns is not None:
        os.utime(fd, ns=(mtime_ns, mtime_ns))
    if durable:
        os.fsync(fd)


# copy_file_range(2) refusals that only mean "not between these two files": two file
# systems (EXDEV, before Linux 5.3 and again since 5.19 for most pairs), or one that does
# not offer it.
_NO_COPY_RANGE = (errno.EXDEV, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_COPY_CHUNK = 1 << 20


def _copy_all(src: int, dst: int, size: int) -> None:
    """Copy ``size`` bytes from the start of ``src`` to the start of ``dst``: inside the
    kernel (copy_file_range), or by reads and writes where the kernel cannot copy between
    the two (the spool on another file system than the source)."""
    offset = 0
    while offset < size:
        try:
            copied = os.copy_file_range(src, dst, size - offset, offset, offset)
        except OSError as e:
            if e.errno not in _NO_COPY_RANGE:
                raise
            _copy_by_reads(src, dst, offset, size)
            return
        if copied == 0:
            raise OSError(errno.EIO, f"staged file ended at {offset} of {size} bytes")
        offset += copied


def _copy_by_reads(src: int, dst: int, offset: int, size: int) -> None:
    while offset < size:
        data = os.pread(src, min(_COPY_CHUNK, size - offset), offset)
        if not data:
            raise OSError(errno.EIO, f"staged file ended at {offset} of {size} bytes")
        view = memoryview(data)
        while view:
            written = os.pwrite(dst, view, offset)
            view = view[written:]
            offset += written


def _pieces(path: bytes) -> builtins.list[bytes]:
    """``path`` cut at slashes into pieces that each fit in one system call."""
    pieces: builtins.list[bytes] = []
    for component in path.split(b"/"):
        if pieces and len(pieces[-1]) + 1 + len(component) < _PATH_MAX:
            pieces[-1] += b"/" + component
        else:
            pieces.append(component)
    return [piece for piece in pieces if piece]


def _fsync_dir(path: str, dir_fd: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_renameat2() -> Callable[[int, bytes, int, bytes, int], int]:
    """renameat2(2) from libc (glibc 2.28+), for RENAME_NOREPLACE and RENAME_EXCHANGE."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        def missing(*_: object) -> int:
            ctypes.set_errno(errno.ENOSYS)
            return -1
        return missing
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_renameat2 = _load_renameat2()


# The kind code (listing.kind_code) of each file type served; others are not.
_KINDS = {
    statmod.S_IFDIR: Kind.DIRECTORY, statmod.S_IFREG: Kind.FILE, statmod.S_IFLNK: Kind.SYMLINK,
    statmod.S_IFIFO: Kind.FIFO, statmod.S_IFSOCK: Kind.SOCKET, statmod.S_IFCHR: Kind.CHAR_DEVICE,
    statmod.S_IFBLK: Kind.BLOCK_DEVICE,
}
_KIND_OF_TYPE = {file_type: kind_code(kind) for file_type, kind in _KINDS.items()}
_DEVICES = (statmod.S_IFCHR, statmod.S_IFBLK)


def status_from_stat(name: str, st: os.stat_result) -> FileStatus | None:
    """A local ``stat`` result as a status; ``None`` for a type no status has (none that
    Linux makes)."""
    kind = _KINDS.get(statmod.S_IFMT(st.st_mode))
    if kind is None:
        return None
    return FileStatus(
        name=name, kind=kind, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns,
        atime_ns=st.st_atime_ns, mode=statmod.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
        nlink=st.st_nlink, blocks=st.st_blocks,
        rdev=st.st_rdev if kind in (Kind.CHAR_DEVICE, Kind.BLOCK_DEVICE) else None,
        file_id=_file_id(st),
    )


def _file_id(st: os.stat_result) -> int | None:
    """What identifies the file of a name that is one of its hard links (None for one
    with a single link, and for directories, whose link count says something else)."""
    if st.st_nlink < 2 or statmod.S_ISDIR(st.st_mode):
        return None
    return (st.st_dev << 48 ^ st.st_ino) & ((1 << 63) - 1)
