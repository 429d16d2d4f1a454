"""The spool: local files holding what programs wrote, and the journal of uploads owed.

One directory per mounted source under ``--cache-dir``, locked by the daemon that uses it::

    <cache-dir>/<sha256(source)[:16]>/
        lock            flock()ed while a daemon runs; holds the source's URL
        data/N.data     the bytes of one file being written (sparse where not yet held)
        journal/N.json  an upload a program was told is done but the under-storage may
                        lack (ASYNC_THROUGH, or a close whose upload failed)
        journal/N.error why the last attempt at that upload failed (for ``status``)
        journal/N.unreadable  a record the next daemon could not read (torn by a disk
                        fault): set aside with a warning, never uploaded
        orphaned/N.data the bytes of a file being written when a daemon died (never closed),
                        or of one closed with a failed upload that cannot be journaled
        commits/.alluxiofuse-*  a local commit in progress: its temporary file in the
                        source, named so that the next daemon removes what a crash left

A journal record is written to a temporary name, fsynced and renamed into place, and the
directory fsynced, only after its data file and data/ (the file's name there) are
fsynced: a record that exists after a crash, a power loss too, always names complete,
durable bytes; a failure on the way removes what it wrote, so a record exists only once
``journal`` returned. A record that cannot be read anyway (a disk that lied about a
write) is detected by its shape (JSON of exactly the fields of :class:`Record`, naming the
data file of its own number), skipped by every reader, and set aside at the next start.
Every method here does blocking disk I/O: callers run them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from alluxiofuse.errors import ConfigError, NoSpace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Record:
    """One upload owed to the under-storage: the content of ``data`` becomes ``path``."""

    data: str  # file name in data/
    path: str  # mount-relative path
    size: int
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    mtime_ns: int | None = None
    closed_ns: int = 0  # when the program was told the file was written

    @property
    def seq(self) -> int:
        return int(self.data.partition(".")[0])


def spool_dir(cache_dir: str, source: str) -> str:
    """The directory the spool of ``source`` lives in (the same across restarts)."""
    digest = hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return os.path.join(cache_dir, digest)


class Spool:
    """The spool of one mounted source, bounded to ``limit`` bytes of staged data."""

    def __init__(self, root: str, limit: int, lock_fd: int) -> None:
        self.root = root
        self.limit = limit
        self.used = 0
        self._lock_fd = lock_fd
        self._data = os.path.join(root, "data")
        self._journal = os.path.join(root, "journal")
        self.commits = os.path.join(root, "commits")
        self._orphaned = os.path.join(root, "orphaned")
        # Data file names are never reused while an orphan keeps one: a file set aside
        # later must not land on an older orphan's name.
        highest = 0
        for name in (*os.listdir(self._journal), *os.listdir(self._data),
                     *os.listdir(self._orphaned)):
            with contextlib.suppress(ValueError):
                highest = max(highest, int(name.partition(".")[0]))
        self._seq = itertools.count(highest + 1)

    @classmethod
    def open(cls, cache_dir: str, source: str, limit: int = 0) -> Spool:
        """Create or reopen the spool of ``source`` and lock it; ConfigError if another
        daemon holds it. A ``limit`` of 0 is half the disk's free space now."""
        root = spool_dir(cache_dir, source)
        try:
            for sub in ("data", "journal", "orphaned", "commits"):
                os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
            fd = os.open(os.path.join(root, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise ConfigError(f"cannot use --cache-dir {cache_dir}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another alluxiofuse daemon is writing {source} through the "
                              f"spool {root}: give this mount its own --cache-dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, source.encode("utf-8", "surrogateescape") + b"\n", 0)
        if not limit:
            limit = shutil.disk_usage(root).free // 2
        return cls(root, limit, fd)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1

    # -- data files

    def data_path(self, name: str) -> str:
        return os.path.join(self._data, name)

    def create(self) -> tuple[str, int]:
        """A new, empty data file: its name and a read-write descriptor."""
        name = f"{next(self._seq)}.data"
        fd = os.open(self.data_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     0o600)
        return name, fd

    def copy(self, fd: int, size: int) -> tuple[str, int]:
        """A new data file with the first ``size`` bytes of ``fd`` (copied in the kernel;
        its holes stay holes, so a sparse file's copy takes no more disk than it does)."""
        name, new = self.create()
        try:
            _copy_data(fd, new, size)
            os.ftruncate(new, size)
        except OSError:
            os.close(new)
            self.remove(name)
            raise
        return name, new

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.data_path(name))

    def reserve(self, nbytes: int, *, refusable: bool = True) -> None:
        """Count ``nbytes`` more (negative: fewer) staged bytes; NoSpace past the limit,
        unless not ``refusable`` (a count of bytes already on disk)."""
        if refusable and nbytes > 0 and self.used + nbytes > self.limit:
            raise NoSpace(f"the spool {self.root} is full ({self.limit} bytes); "
                          f"raise --cache-size or close files being written")
        self.used += nbytes

    # -- the journal

    def journal(self, record: Record) -> None:
        """Record an upload owed, durably (the data file must be fsynced already; its
        name in data/ is made durable here, before the record that promises it)."""
        _fsync_dir(self._data)
        final = os.path.join(self._journal, f"{record.seq}.json")
        temp = final + ".tmp"
        renamed = False
        try:
            with open(temp, "w", encoding="utf-8") as f:
                json.dump(asdict(record), f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(temp, final)
            renamed = True
            _fsync_dir(self._journal)
        except BaseException:
            # ENOSPC, EIO: the close that wanted this record fails, so no record may
            # promise its upload (a half-written one would only be removed at the next
            # start). Best effort: the disk may refuse this too.
            with contextlib.suppress(OSError):
                os.unlink(final if renamed else temp)
            raise

    def settle(self, record: Record, *, keep_data: bool = False) -> None:
        """The upload of ``record`` is done: drop the record, then (unless ``keep_data``)
        its data file."""
        for suffix in (".json", ".error"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self._journal, f"{record.seq}{suffix}"))
        _fsync_dir(self._journal)
        if not keep_data:
            self.remove(record.data)

    def note_error(self, record: Record, message: str) -> None:
        """Say why the last attempt failed, for ``alluxiofuse status`` (best effort)."""
        with contextlib.suppress(OSError), open(
            os.path.join(self._journal, f"{record.seq}.error"), "w", encoding="utf-8",
        ) as f:
            f.write(message)

    def records(self) -> list[Record]:
        return [record for record, _ in read_journal(self.root)]

    def set_aside_unreadable(self) -> list[tuple[str, str]]:
        """Rename each journal record that cannot be read to ``N.unreadable``, so that no
        reader meets it again; (its new path, why) for each. A record is written whole
        before it is renamed into place, so one that is not whole was never promised:
        its data file, named by no record now, is set aside as an orphan after this."""
        moved = []
        for name in sorted(os.listdir(self._journal)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self._journal, name)
            try:
                _load_record(path)
                continue
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as e:
                why = str(e)
            target = path[:-len(".json")] + ".unreadable"
            try:
                os.rename(path, target)
            except OSError as e:
                log.warning("cannot set aside the unreadable journal record %s: %s", path, e)
                continue
            moved.append((target, why))
        if moved:
            _fsync_dir(self._journal)
        return moved

    def create_many(self, count: int) -> list[tuple[str, int]]:
        """``count`` new data files at once (one worker-thread job for several files)."""
        return [self.create() for _ in range(count)]

    def set_aside(self, name: str) -> str:
        """Move data file ``name``, which no record names and nobody will commit, to
        orphaned/ (its bytes kept for whoever wants them); its new path."""
        target = os.path.join(self._orphaned, name)
        os.rename(self.data_path(name), target)
        _fsync_dir(self._orphaned)
        return target

    def set_aside_orphans(self) -> list[str]:
        """Move data files no record names (files being written when a daemon died, never
        closed) to orphaned/, so they cost no spool space; their paths, for a log line.
        Removed instead: empty ones (made ahead, never used), and those whose bytes are
        committed already (a data file linked into the source as the file's new
        content: its other link is that file). Records half written by a crash (never
        promised: the close had not returned) are removed too."""
        for name in os.listdir(self._journal):
            if name.endswith(".json.tmp"):
                os.unlink(os.path.join(self._journal, name))
        named = {r.data for r in self.records()}
        moved = []
        for name in sorted(os.listdir(self._data)):
            if name in named:
                continue
            st = os.stat(self.data_path(name))
            if st.st_nlink > 1:
                log.info("%s: a data file the last daemon left is a file of the source now "
                         "(committed, linked into place): removed from the spool",
                         self.data_path(name))
            if st.st_size == 0 or st.st_nlink > 1:
                self.remove(name)
                continue
            target = os.path.join(self._orphaned, name)
            os.rename(self.data_path(name), target)
            moved.append(target)
        if moved:  # the orphans' new names must outlast a power loss, as the old ones did
            _fsync_dir(self._orphaned)
            _fsync_dir(self._data)
        return moved


def spool_in_use(root: str) -> bool:
    """Whether a daemon holds the spool at ``root`` now."""
    try:
        fd = os.open(os.path.join(root, "lock"), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _copy_data(src: int, dst: int, size: int) -> None:
    """Copy the data in the first ``size`` bytes of ``src`` to the same offsets of ``dst``,
    skipping holes (``copy_file_range`` alone would write them out as zeros)."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(src, offset, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # a hole from ``offset`` to the end
                return
            raise
        end = min(os.lseek(src, start, os.SEEK_HOLE), size)
        while start < end:
            copied = os.copy_file_range(src, dst, end - start, start, start)
            if copied == 0:  # the file shrank meanwhile
                return
            start += copied
        offset = end


def owed_uploads(root: str) -> list[tuple[Record, str | None]]:
    """The uploads owed through the spool at ``root``, oldest first, each with its last
    error: the journal's records, not what a daemon's uploader holds in memory (a record
    whose data file is lost, or that could not be dropped, is owed and never queued).
    ``alluxiofuse status`` and the pending-upload metrics both count these, so they agree.
    Readable without the lock, from any thread."""
    return list(read_journal(root))


def read_journal(root: str) -> Iterator[tuple[Record, str | None]]:
    """The records of the spool at ``root`` in the order they were made, each with the
    last error noted for it. Readable without the lock (``alluxiofuse status``)."""
    journal = os.path.join(root, "journal")
    try:
        names = os.listdir(journal)
    except FileNotFoundError:
        return
    found = []
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            record = _load_record(os.path.join(journal, name))
        except FileNotFoundError:  # settled since the listing: owed no more
            continue
        except (OSError, ValueError) as e:
            # Set aside at the next start (``Spool.set_aside_unreadable``), which says so.
            log.debug("unreadable journal record %s: %s", os.path.join(journal, name), e)
            continue
        error = None
        with contextlib.suppress(OSError), open(
            os.path.join(journal, f"{record.seq}.error"), encoding="utf-8",
        ) as f:
            error = f.read().strip() or None
        found.append((record, error))
    yield from sorted(found, key=lambda item: item[0].seq)


# The type of each field of a record, as JSON holds it.
_FIELDS: dict[str, tuple[type, ...]] = {
    "data": (str,), "path": (str,), "size": (int,), "mode": (int, type(None)),
    "uid": (int, type(None)), "gid": (int, type(None)), "mtime_ns": (int, type(None)),
    "closed_ns": (int,),
}


def _load_record(path: str) -> Record:
    """The record in file ``path`` (``N.json``); ValueError if it is not one whole record
    of data file ``N.data``: cut short, zeros or another file's bytes where it should be
    (a disk that lost a write), or of a shape no version wrote."""
    with open(path, "rb") as f:
        raw = f.read()
    fields = json.loads(raw.decode("utf-8"))
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    missing = {"data", "path", "size"} - fields.keys()
    if missing or not fields.keys() <= _FIELDS.keys():
        raise ValueError(f"fields {sorted(fields)} are not a record's")
    for key, value in fields.items():
        # bool is an int to isinstance, and is never one of these.
        if isinstance(value, bool) or not isinstance(value, _FIELDS[key]):
            raise ValueError(f"{key} is {value!r}")
    seq = os.path.basename(path).partition(".")[0]
    if fields["data"] != f"{seq}.data" or not seq.isdigit() or fields["size"] < 0:
        raise ValueError(f"a record of {fields['data']!r} of {fields['size']} bytes in {seq}.json")
    return Record(**fields)


def _fsync_dir(path: str) -> None:
    """Make the names in directory ``path`` durable (made, renamed, removed)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
