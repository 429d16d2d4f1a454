"""The disk page store: pages of file content kept on a local disk, shared by the daemons of a node.

One directory, used at once by any number of daemons (processes) of the node::

    <directory>/
        lock                flock()ed while a daemon reserves room, evicts or clears; its
                            first 8 bytes count the bytes the pages use, for all the daemons
        pages/XX/<hex>      one page, named by the sha256 of its key (XX: its first two digits)
        pages/XX/.tmp-...   a page being written, or left by a daemon that died writing it

A page file is a header (magic, format, key length, data length, CRC-32 of key and data),
the key, then the data. It is written under a temporary name and renamed over its final
one, so a reader finds the old page, the new one or none, never a torn one. Nothing is
fsynced: a page lost or torn by a power cut fails its length or checksum check on read,
is removed, and is fetched again; the store is a cache, and an fsync per page would cost
more than the fetch it saves.

A page is read back only for the key it was stored under: the file holds the whole key,
so two keys whose names clash can never serve each other's bytes. A key names one
content (its file's version is part of it), so a page already there is never rewritten.

Nothing here raises for a missing, corrupt or unwritable page: a read that cannot be
served is a miss, a write that cannot be done returns False, and each kind of I/O error
is logged once. Every method does blocking disk I/O: callers run them in worker threads.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from alluxiofuse.model import Data, Version

log = logging.getLogger(__name__)

# A page's key: the caller's own bytes, or (source id, path, version, page index).
DiskKey = bytes | tuple[str, str, Version, int]

_MAGIC = b"AFPG"
_FORMAT = 1
# magic, format, key length, data length, CRC-32 of key then data. A CRC and the lengths,
# not a cryptographic digest: what they must catch is a truncated, zeroed or bit-flipped
# page, not an adversary (whoever can write the directory can write any page), and a CRC
# catches those at a fraction of a digest's cost on every hit. The stored key, compared
# whole, is what keeps one key's page from being served for another.
_HEADER = struct.Struct("<4sB3xIQI")
_MAX_KEY = 1 << 16  # far above any key: a longer length in a header is garbage
_TMP = ".tmp-"
_STALE_TMP = 60.0  # seconds: a temporary file this old was left by a daemon that died
_LOW_WATER = 0.9  # eviction goes down to this fraction of the capacity, not every put evicts
# Pages being written at once, by all daemons, that the free-space floor keeps room for
# (and that eviction at the floor frees at least, so that it does not run at every put).
_IN_FLIGHT_PAGES = 8
_TOUCH_AFTER = 60.0  # seconds: a page read again sooner keeps its time (one write fewer)


def encode_key(key: DiskKey) -> bytes:
    """The bytes a page file stores for ``key``; distinct keys give distinct bytes."""
    if isinstance(key, bytes):
        return b"b" + key
    source, path, version, index = key
    etag = "-" if version.etag is None else "e" + version.etag
    fields = (source, path, str(version.size), str(version.mtime_ns), etag, str(index))
    encoded = (f.encode("utf-8", "surrogateescape") for f in fields)
    return b"t" + b"".join(b"%d:%s," % (len(f), f) for f in encoded)


@dataclass
class DiskCounters:
    """What this store object did, for the metrics."""

    hits: int = 0
    hit_bytes: int = 0
    misses: int = 0
    corrupt: int = 0  # pages that failed a check on read, removed
    evicted_pages: int = 0
    evicted_bytes: int = 0
    written_bytes: int = 0
    errors: int = 0  # I/O errors other than a missing page


@dataclass(frozen=True)
class DiskStats:
    """The whole store, as ``alluxiofuse cache stats`` shows it."""

    pages: int
    used: int  # bytes of the page files, and of those being written
    capacity: int
    free: int  # bytes free on the disk


class _Entry(NamedTuple):
    mtime_ns: int
    size: int
    path: str


class DiskPages:
    """Pages on disk under ``directory``, within ``capacity_bytes`` for all its daemons.
    A daemon opens it with :meth:`open`; built directly, it touches nothing until asked
    (``alluxiofuse cache stats`` and ``clear`` look at a store that way).

    Eviction is LRU by file mtime (a hit sets it), done by whichever daemon needs room,
    under the lock. The file system is the only index: an in-memory LRU would be one
    daemon's view, lost at each restart, while mtimes are shared by every daemon and
    survive them. The lock file's counter says when a scan is needed, so a put does not
    scan the tree; a scan also runs every ``rescan_interval`` seconds, to correct the
    counter for what a daemon that died had reserved and never wrote.

    Besides ``capacity_bytes``, a put never leaves less than ``min_free_fraction`` of
    the disk free: it evicts, or skips the page when evicting cannot make the room.
    Raises OSError only when ``directory`` cannot be made or its lock file opened (by
    :meth:`open`, :meth:`stats` or :meth:`clear`).
    """

    def __init__(
        self, directory: str, capacity_bytes: int, *, page_size: int,
        min_free_fraction: float = 0.05, rescan_interval: float = 300.0,
    ) -> None:
        self.directory = directory
        self.capacity = capacity_bytes
        self.page_size = page_size
        self.min_free_fraction = min_free_fraction
        self.rescan_interval = rescan_interval
        self.counters = DiskCounters()
        self._pages = os.path.join(directory, "pages")
        self._lock_path = os.path.join(directory, "lock")
        self._tag = secrets.token_hex(4)  # temporary names differ between store objects
        self._seq = itertools.count()
        self._counting = threading.Lock()
        self._warned: set[str] = set()
        self._scanned = 0.0

    @classmethod
    def open(
        cls, directory: str, capacity_bytes: int, *, page_size: int,
        min_free_fraction: float = 0.05, rescan_interval: float = 300.0,
    ) -> DiskPages:
        """The store in ``directory``, made if there is none, rid of what a crash left and
        evicted down to ``capacity_bytes`` (0: half of what its disk has free, counting
        what the store holds already): what a daemon uses."""
        store = cls(directory, capacity_bytes, page_size=page_size,
                    min_free_fraction=min_free_fraction, rescan_interval=rescan_interval)
        os.makedirs(store._pages, mode=0o700, exist_ok=True)
        with store._locked() as fd:
            if not capacity_bytes:
                st = os.statvfs(directory)
                store.capacity = (st.f_bavail * st.f_frsize + _read_used(fd)) // 2
            store._make_room(fd, 0, 0)
        return store

    def get(self, key: DiskKey) -> Data | None:
        """The page's data, or None when it is not there or fails a check (then removed).
        The whole file is read in one call, and the data handed out without a copy."""
        encoded = encode_key(key)
        path = self._path(encoded)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            self._bump("misses")
            return None
        except OSError as e:
            self._failed("read a page", e)
            self._bump("misses")
            return None
        try:
            st = None
            data = None
            try:
                st = os.fstat(fd)
                if st.st_size <= _HEADER.size + _MAX_KEY + self.page_size:  # else garbage
                    data = self._parse(os.read(fd, st.st_size), st.st_size, encoded)
            except OSError:  # EIO: the file is as bad as a corrupt one
                data = None
            if st is None or data is None:
                self._drop(path, st.st_ino if st else None)
                self._bump("corrupt")
                self._bump("misses")
                return None
            if time.time() - st.st_mtime > _TOUCH_AFTER:
                with contextlib.suppress(OSError):  # best effort: a read-only store still serves
                    os.utime(fd)
        finally:
            os.close(fd)
        self._bump("hits")
        self._bump("hit_bytes", len(data))
        return data

    def put(self, key: DiskKey, data: Data) -> bool:
        """Store the page; False when it could not be (no room, an I/O error), never raises
        for those. ValueError if ``data`` is longer than a page."""
        return self.put_many([(key, data)])[0]

    def put_many(self, pages: Sequence[tuple[DiskKey, Data]]) -> list[bool]:
        """``put`` of each page, with room reserved for them all at once (one trip through
        the lock for a read-ahead run's pages)."""
        for _, data in pages:
            if len(data) > self.page_size:
                raise ValueError(f"a page holds at most {self.page_size} bytes, not {len(data)}")
        todo = []  # (index, encoded key, final path, file size)
        done = [True] * len(pages)
        for i, (key, data) in enumerate(pages):
            encoded = encode_key(key)
            path = self._path(encoded)
            if not os.path.exists(path):
                todo.append((i, encoded, path, _HEADER.size + len(encoded) + len(data)))
        if not todo:
            return done
        try:
            reserved = self._reserve(sum(size for *_, size in todo))
        except OSError as e:
            self._failed("reserve room", e)
            reserved = False
        if not reserved:
            for i, *_ in todo:
                done[i] = False
            return done
        unused = 0
        for i, encoded, path, size in todo:
            tmp = f"{os.path.dirname(path)}/{_TMP}{os.getpid()}-{self._tag}-{next(self._seq)}"
            try:
                self._write(tmp, encoded, pages[i][1])
                os.rename(tmp, path)
            except OSError as e:
                self._failed("write a page", e)
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                done[i] = False
                unused += size
                continue
            self._bump("written_bytes", size)
        if unused:
            with contextlib.suppress(OSError), self._locked() as fd:
                _write_used(fd, _read_used(fd) - unused)
        return done

    def used(self) -> int:
        """Bytes the pages of all the daemons use, as their shared count says (no scan)."""
        try:
            fd = os.open(self._lock_path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return 0
        try:
            return _read_used(fd)
        finally:
            os.close(fd)

    def stats(self) -> DiskStats:
        """The pages and bytes of all the daemons, and the disk's free space."""
        entries, used = self._scan()
        st = os.statvfs(self.directory)
        return DiskStats(len(entries), used, self.capacity, st.f_bavail * st.f_frsize)

    def clear(self) -> int:
        """Remove every page, under the lock; how many were removed. Pages being written
        stay: their daemons rename them in afterwards."""
        with self._locked() as fd:
            entries, used = self._scan()
            removed = [e for e in entries if self._remove(e.path)]
            _write_used(fd, used - sum(e.size for e in removed))
            self._scanned = time.monotonic()
        return len(removed)

    def _path(self, encoded: bytes) -> str:
        name = hashlib.sha256(encoded).hexdigest()
        return f"{self._pages}/{name[:2]}/{name}"

    def _parse(self, raw: bytes, size: int, encoded: bytes) -> memoryview | None:
        """The data of a page file read whole (``size`` bytes, as fstat said), or None
        if any check fails."""
        if len(raw) != size or size < _HEADER.size:
            return None
        magic, fmt, key_len, data_len, crc = _HEADER.unpack_from(raw)
        if (
            magic != _MAGIC or fmt != _FORMAT or key_len > _MAX_KEY
            or data_len > self.page_size or size != _HEADER.size + key_len + data_len
        ):
            return None
        view = memoryview(raw)
        start = _HEADER.size + key_len
        # The key: a name clash, or a file moved under another name, is refused.
        if view[_HEADER.size:start] != encoded:
            return None
        data = view[start:]
        if zlib.crc32(data, zlib.crc32(encoded)) != crc:
            return None
        return data

    def _write(self, tmp: str, encoded: bytes, data: Data) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileNotFoundError:  # the first page of its subdirectory
            os.makedirs(os.path.dirname(tmp), mode=0o700, exist_ok=True)
            fd = os.open(tmp, flags, 0o600)
        try:
            crc = zlib.crc32(data, zlib.crc32(encoded))
            header = _HEADER.pack(_MAGIC, _FORMAT, len(encoded), len(data), crc)
            parts = [memoryview(header + encoded), memoryview(data)]
            while parts:  # one call, unless the disk takes less
                written = os.writev(fd, parts)
                while parts and written >= len(parts[0]):
                    written -= len(parts[0])
                    parts.pop(0)
                if parts:
                    parts[0] = parts[0][written:]
        finally:
            os.close(fd)

    def _reserve(self, size: int) -> bool:
        """Count ``size`` more bytes in the shared counter, evicting first if they would
        not fit; False when no eviction makes room."""
        with self._locked() as fd:
            used = _read_used(fd)
            deficit = self._disk_deficit(size)
            due = time.monotonic() - self._scanned >= self.rescan_interval
            if used + size > self.capacity or deficit > 0 or due:
                room = self._make_room(fd, size, deficit)
                if room is None:
                    return False
                used = room
            _write_used(fd, used + size)
        return True

    def _disk_deficit(self, size: int) -> int:
        """Bytes to free so that writing ``size`` leaves the disk its free-space floor.

        The free space statvfs tells does not yet count the pages other puts (of this
        daemon and the others) have reserved room for and are still writing, nor the
        rounding of files up to whole blocks: a few pages' room is kept on top of the
        floor for them, so that puts racing at the floor do not run into ENOSPC."""
        st = os.statvfs(self.directory)
        floor = self.min_free_fraction * st.f_blocks * st.f_frsize
        margin = _IN_FLIGHT_PAGES * (self.page_size + st.f_frsize)
        return max(0, int(floor + margin + size - st.f_bavail * st.f_frsize))

    def _make_room(self, fd: int, size: int, deficit: int) -> int | None:
        """Scan the store and evict, oldest first, so that ``size`` more bytes fit in the
        capacity (going down to the low-water mark) and ``deficit`` bytes leave the disk.
        The bytes used after, or None when that cannot be done (nothing is evicted then)."""
        entries, used = self._scan()
        self._scanned = time.monotonic()
        evictable = sum(e.size for e in entries)
        need = 0
        if used + size > self.capacity:
            need = used + size - int(self.capacity * _LOW_WATER)
        if deficit:  # with a margin, so that a disk at its floor is not scanned at every put
            need = max(need, min(deficit + max(used // 10, _IN_FLIGHT_PAGES * self.page_size),
                                 evictable))
        if size > self.capacity or need > evictable or deficit > evictable:
            _write_used(fd, used)
            if deficit > evictable:
                self._warn_once(
                    "floor", "disk page store %s: the disk is nearly full; pages are "
                    "not stored until it has room (logged once)", self.directory,
                )
            return None
        entries.sort()
        freed = 0
        for e in entries:
            if freed >= need:
                break
            if self._remove(e.path):
                freed += e.size
                self._bump("evicted_pages")
                self._bump("evicted_bytes", e.size)
        _write_used(fd, used - freed)
        return used - freed if freed >= need else None

    def _scan(self) -> tuple[list[_Entry], int]:
        """Every page (removing temporary files a crash left) and the bytes all files use."""
        entries: list[_Entry] = []
        used = 0
        stale = time.time() - _STALE_TMP
        try:
            subdirs = [d.path for d in os.scandir(self._pages) if d.is_dir(follow_symlinks=False)]
        except OSError as e:
            self._failed("list the pages", e)
            return entries, used
        for subdir in subdirs:
            try:
                with os.scandir(subdir) as it:
                    files = list(it)
            except FileNotFoundError:
                continue
            except OSError as e:
                self._failed("list the pages", e)
                continue
            for file in files:
                try:
                    st = file.stat(follow_symlinks=False)
                except OSError:  # removed meanwhile
                    continue
                if file.name.startswith(_TMP):
                    if st.st_mtime < stale:
                        self._remove(file.path)
                    else:
                        used += st.st_size
                    continue
                entries.append(_Entry(st.st_mtime_ns, st.st_size, file.path))
                used += st.st_size
        return entries, used

    def _remove(self, path: str) -> bool:
        """Remove a file; True if it is gone (whoever removed it)."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            return True
        except OSError as e:
            self._failed("remove a page", e)
            return False
        return True

    def _drop(self, path: str, ino: int | None) -> None:
        """Remove a bad page, unless another daemon has just renamed a new one over it."""
        try:
            if ino is None or os.stat(path).st_ino == ino:
                os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            self._failed("remove a page", e)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[int]:
        """The lock file, flock()ed. Opened anew each time: a flock belongs to an open
        file, so threads sharing one descriptor would not exclude each other."""
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self._lock_path, flags, 0o600)
        except FileNotFoundError:  # the store was removed under the daemon: make it again
            os.makedirs(self._pages, mode=0o700, exist_ok=True)
            fd = os.open(self._lock_path, flags, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)  # releases the flock

    def _bump(self, counter: str, n: int = 1) -> None:
        with self._counting:
            setattr(self.counters, counter, getattr(self.counters, counter) + n)

    def _failed(self, doing: str, err: OSError) -> None:
        self._bump("errors")
        kind = errno.errorcode.get(err.errno or 0, type(err).__name__)
        self._warn_once(
            kind, "disk page store %s: cannot %s: %s; pages are read from the source "
            "instead (logged once per kind of error)", self.directory, doing, err,
        )

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        with self._counting:
            if kind in self._warned:
                return
            self._warned.add(kind)
        log.warning(message, *args)


def _read_used(fd: int) -> int:
    raw = os.pread(fd, 8, 0)
    return int.from_bytes(raw, "little") if len(raw) == 8 else 0


def _write_used(fd: int, used: int) -> None:
    os.pwrite(fd, max(0, used).to_bytes(8, "little"), 0)
