"""Metadata cache: file statuses, known-missing paths and directory listings, each with a TTL.

All three share one bound in bytes (an estimate of what each entry holds: a listing its
columns, see listing.py) and each expires on its own timeout; a timeout of 0 turns that
kind off. A listing is kept past its timeout, until the bound needs its room, for directory
read-ahead (``recent_listing``): which files come next does not go stale the way attributes
do, and every file fetched ahead is checked by version. A listing also answers for its
children's statuses while it is younger than the status timeout: a child is kept once, in
its listing, not a second time as a status of its own. Paths are mount-relative (``""`` is
the root, ``"a/b"`` a child), as everywhere above the backends.
"""

from __future__ import annotations

import enum
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from cachetools import Cache, TLRUCache

from alluxiofuse.listing import Listing
from alluxiofuse.model import FileStatus

# What a cached status and a cached missing name hold, in bytes (the path, the status
# object and its integers, the cache's own bookkeeping), measured as RSS growth per entry.
STATUS_BYTES = 900
MISSING_BYTES = 400


def join(parent: str, name: str) -> str:
    """The mount-relative path of ``name`` inside ``parent``."""
    return f"{parent}/{name}" if parent else name


def parent_and_name(path: str) -> tuple[str, str]:
    parent, _, name = path.rpartition("/")
    return parent, name


class _Kind(enum.Enum):
    STATUS = "status"
    MISSING = "missing"
    LISTING = "listing"


_Key = tuple[_Kind, str]


class _Cache(TLRUCache[_Key, object]):
    """The cache, counting the statuses and missing names it holds of each directory's
    children, however they leave (removed, expired, evicted): a new listing of a directory
    none of whose children is cached on its own need not look for each of them (much of
    the time a large listing took to cache, bench/RESULTS.md)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.children: Counter[str] = Counter()

    def __setitem__(self, key: _Key, value: object) -> None:
        self.expire()  # first, so that an expired entry of this key is gone, counted
        new = not Cache.__contains__(self, key)
        super().__setitem__(key, value)
        if new and Cache.__contains__(self, key):
            self._count(key, 1)

    def __delitem__(self, key: _Key) -> None:
        held = Cache.__contains__(self, key)
        try:
            super().__delitem__(key)  # KeyError if it had expired: removed all the same
        finally:
            if held:
                self._count(key, -1)

    def expire(self, time: float | None = None) -> list[tuple[_Key, object]]:
        expired = list(super().expire(time))
        for key, _ in expired:
            self._count(key, -1)
        return expired

    def clear(self) -> None:
        super().clear()
        self.children.clear()

    def _count(self, key: _Key, change: int) -> None:
        if key[0] is not _Kind.LISTING:
            parent = parent_and_name(key[1])[0]
            self.children[parent] += change
            if self.children[parent] <= 0:
                del self.children[parent]


class MetadataCache:
    """Statuses (``attr_ttl``), missing paths (``negative_ttl``), listings (``dir_ttl``),
    together at most ``max_bytes``."""

    def __init__(
        self, *, attr_ttl: float, negative_ttl: float, dir_ttl: float, max_bytes: int,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = {_Kind.STATUS: attr_ttl, _Kind.MISSING: negative_ttl,
                     _Kind.LISTING: math.inf}
        self._cache = _Cache(
            maxsize=max_bytes, timer=timer, getsizeof=_size,
            ttu=lambda key, value, now: now + self._ttl[key[0]])
        self._attr_ttl = attr_ttl if max_bytes > 0 else 0.0
        self._dir_ttl = dir_ttl
        self._timer = timer

    @property
    def nbytes(self) -> int:
        """What the cached entries hold, as estimated for the bound."""
        return int(self._cache.currsize)

    @property
    def max_bytes(self) -> int:
        return int(self._cache.maxsize)

    def status(self, path: str) -> FileStatus | None:
        """The status of ``path``: its own (a stat), else its entry in a listing of its
        parent younger than the status timeout; None when neither is cached or it is
        known to be missing."""
        value = self._cache.get((_Kind.STATUS, path))
        if isinstance(value, FileStatus):
            return value
        if not path or self._attr_ttl <= 0 or (_Kind.MISSING, path) in self._cache:
            return None
        parent, name = parent_and_name(path)
        listing = self.listing(parent)
        if listing is None or self._timer() - listing.fetched_at >= self._attr_ttl:
            return None
        index = listing.find(name)
        return None if index is None else listing[index]

    def is_missing(self, path: str) -> bool:
        """True when ``path`` is known not to exist: a negative entry, or a fresh listing of
        its parent that does not name it."""
        if (_Kind.MISSING, path) in self._cache:
            return True
        if not path:
            return False
        parent, name = parent_and_name(path)
        listing = self.listing(parent)
        return listing is not None and listing.find(name) is None

    def listing(self, path: str) -> Listing | None:
        """The listing of ``path`` younger than the listing timeout."""
        listing = self.recent_listing(path)
        if listing is None or self._timer() - listing.fetched_at >= self._dir_ttl:
            return None
        return listing

    def recent_listing(self, path: str) -> Listing | None:
        """The last listing of ``path`` still cached, however old."""
        value = self._cache.get((_Kind.LISTING, path))
        return value if isinstance(value, Listing) else None

    def put_status(self, path: str, status: FileStatus) -> None:
        self._cache.pop((_Kind.MISSING, path), None)
        self._put(_Kind.STATUS, path, status)

    def put_missing(self, path: str) -> None:
        self._cache.pop((_Kind.STATUS, path), None)
        self._put(_Kind.MISSING, path, True)

    def forget(self, path: str, *, tree: bool = False) -> None:
        """Drop what is cached about ``path``, the listing of its parent and, with
        ``tree``, everything under it: it changed through this mount."""
        for kind in _Kind:
            self._cache.pop((kind, path), None)
        if tree:
            prefix = path + "/" if path else ""
            for key in [k for k in self._cache if k[1].startswith(prefix)]:
                self._cache.pop(key, None)
        if path:
            self._cache.pop((_Kind.LISTING, parent_and_name(path)[0]), None)

    def clear(self) -> None:
        """Forget everything: the next use of any path asks the backend."""
        self._cache.clear()

    def put_listing(self, path: str, entries: Sequence[FileStatus] | Listing) -> Listing:
        """Cache a listing (made of ``entries``, or ``entries`` itself), which answers for
        each child's status from now on; but a child's complete status (S3: from a HEAD,
        with the object's metadata) is kept, its expiry too, when the listing names the
        same version of it without the attributes (``complete`` False): that metadata
        cannot change without a new version."""
        listing = entries if isinstance(entries, Listing) else Listing(entries)
        listing.fetched_at = self._timer()
        # A listing not cached (larger than the whole cache) or never fresh (--dir-timeout
        # 0): each child's status is kept as a stat's would be.
        each = not self._put(_Kind.LISTING, path, listing) or self._dir_ttl <= 0
        if not each and path not in self._cache.children:
            return listing  # no child of it is cached on its own: nothing to replace
        for index, name in enumerate(listing.names()):
            child = join(path, name)
            self._cache.pop((_Kind.MISSING, child), None)
            known = self._cache.get((_Kind.STATUS, child))
            if known is None and not each:
                continue
            entry = listing[index]
            if (isinstance(known, FileStatus) and not entry.complete and known.complete
                    and known.kind is entry.kind and known.version == entry.version):
                continue
            if each:
                self._put(_Kind.STATUS, child, entry)
            elif known is not None:
                self._cache.pop((_Kind.STATUS, child), None)  # the listing's is the newer word
        return listing

    def _put(self, kind: _Kind, path: str, value: object) -> bool:
        """Cache ``value``; False when it is not (that kind is off, or ``value`` is larger
        than the whole cache)."""
        if self._ttl[kind] <= 0 or self._cache.maxsize <= 0:
            return False
        key = (kind, path)
        try:
            self._cache[key] = value
        except ValueError:  # larger than the whole cache: not cached at all
            self._cache.pop(key, None)
            return False
        return True


def _size(value: object) -> int:
    if isinstance(value, Listing):
        return value.nbytes
    return STATUS_BYTES if isinstance(value, FileStatus) else MISSING_BYTES
