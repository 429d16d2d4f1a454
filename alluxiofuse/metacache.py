"""Metadata cache: file statuses, known-missing paths and directory listings, each with a TTL.

All three are bounded by entries (a listing counts one entry per child) and expire on
their own timeout; a timeout of 0 turns that cache off. A listing also answers for its
children's statuses while it is younger than the status timeout: a child is kept once,
in its listing, not a second time as a status of its own (a directory of 100,000 files
would otherwise cost a cache entry, a path string and a node of the cache's expiry list
per file). Paths are mount-relative (``""`` is the root, ``"a/b"`` a child), as everywhere
above the backends.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cachetools import TTLCache

from alluxiofuse.model import FileStatus


def join(parent: str, name: str) -> str:
    """The mount-relative path of ``name`` inside ``parent``."""
    return f"{parent}/{name}" if parent else name


def parent_and_name(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


class _Ttl:
    """A TTLCache that is simply absent when its ttl or size is zero."""

    def __init__(
        self, maxsize: int, ttl: float, timer: Callable[[], float],
        getsizeof: Callable[[object], int] | None = None,
    ) -> None:
        self._cache: TTLCache[str, object] | None = None
        if ttl > 0 and maxsize > 0:
            self._cache = TTLCache(maxsize=maxsize, ttl=ttl, timer=timer, getsizeof=getsizeof)

    def get(self, key: str) -> object | None:
        return None if self._cache is None else self._cache.get(key)

    def put(self, key: str, value: object) -> bool:
        """Cache ``value``; False when it is not (the cache is off, or ``value`` is larger
        than the whole cache)."""
        if self._cache is None:
            return False
        try:
            self._cache[key] = value
        except ValueError:  # larger than the whole cache: not cached at all
            self._cache.pop(key, None)
            return False
        return True

    def pop(self, key: str) -> None:
        if self._cache is not None:
            self._cache.pop(key, None)

    def clear(self) -> None:
        if self._cache is not None:
            self._cache.clear()

    def pop_under(self, prefix: str) -> None:
        """Drop every key that starts with ``prefix``."""
        if self._cache is not None:
            for key in [k for k in self._cache if k.startswith(prefix)]:
                self._cache.pop(key, None)


class MetadataCache:
    """Statuses (``attr_ttl``), missing paths (``negative_ttl``), listings (``dir_ttl``)."""

    def __init__(
        self, *, attr_ttl: float, negative_ttl: float, dir_ttl: float, max_entries: int,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._status = _Ttl(max_entries, attr_ttl, timer)
        self._missing = _Ttl(max_entries, negative_ttl, timer)
        self._listing = _Ttl(max_entries, dir_ttl, timer, getsizeof=_listing_size)
        self._attr_ttl = attr_ttl if max_entries > 0 else 0.0
        self._timer = timer

    def status(self, path: str) -> FileStatus | None:
        """The status of ``path``: its own (a stat), else its entry in a listing of its
        parent younger than the status timeout; None when neither is cached or it is
        known to be missing."""
        value = self._status.get(path)
        if isinstance(value, FileStatus):
            return value
        if not path or self._attr_ttl <= 0 or self._missing.get(path) is not None:
            return None
        parent, name = parent_and_name(path)
        listing = self.listing(parent)
        if listing is None or self._timer() - listing.fetched_at >= self._attr_ttl:
            return None
        index = listing.position.get(name)
        return None if index is None else listing.entries[index]

    def is_missing(self, path: str) -> bool:
        """True when ``path`` is known not to exist: a negative entry, or a fresh listing of
        its parent that does not name it."""
        if self._missing.get(path) is not None:
            return True
        if not path:
            return False
        parent, name = parent_and_name(path)
        listing = self.listing(parent)
        return listing is not None and name not in listing.position

    def listing(self, path: str) -> Listing | None:
        value = self._listing.get(path)
        return value if isinstance(value, Listing) else None

    def put_status(self, path: str, status: FileStatus) -> None:
        self._missing.pop(path)
        self._status.put(path, status)

    def put_missing(self, path: str) -> None:
        self._status.pop(path)
        self._missing.put(path, True)

    def forget(self, path: str, *, tree: bool = False) -> None:
        """Drop what is cached about ``path``, the listing of its parent and, with
        ``tree``, everything under it: it changed through this mount."""
        for cache in (self._status, self._missing, self._listing):
            cache.pop(path)
            if tree:
                cache.pop_under(path + "/" if path else "")
        if path:
            self._listing.pop(parent_and_name(path)[0])

    def clear(self) -> None:
        """Forget everything: the next use of any path asks the backend."""
        for cache in (self._status, self._missing, self._listing):
            cache.clear()

    def put_listing(self, path: str, entries: Sequence[FileStatus]) -> Listing:
        """Cache a listing, which answers for each child's status from now on; but a
        child's complete status (S3: from a HEAD, with the object's metadata) is kept, its
        expiry too, when the listing names the same version of it without the attributes
        (``complete`` False): that metadata cannot change without a new version."""
        listing = Listing(entries, self._timer())
        # A listing not cached (--dir-timeout 0, or larger than the whole cache): each
        # child's status is kept as a stat's would be.
        each = not self._listing.put(path, listing)
        for entry in entries:
            child = join(path, entry.name)
            self._missing.pop(child)
            known = self._status.get(child)
            if (isinstance(known, FileStatus) and not entry.complete and known.complete
                    and known.kind is entry.kind and known.version == entry.version):
                continue
            if each:
                self._status.put(child, entry)
            elif known is not None:
                self._status.pop(child)  # the listing's is the newer word
        return listing


def _listing_size(value: object) -> int:
    return len(value) + 1 if isinstance(value, Listing) else 1


class Listing:
    """A directory's entries sorted by name, each name's position among them, and when
    the listing was made (the cache's timer)."""

    __slots__ = ("entries", "fetched_at", "position")

    def __init__(self, entries: Sequence[FileStatus], fetched_at: float = 0.0) -> None:
        self.entries = sorted(entries, key=lambda e: e.name)
        self.position = {e.name: i for i, e in enumerate(self.entries)}
        self.fetched_at = fetched_at

    def __len__(self) -> int:
        return len(self.entries)
