"""The memory budget: how large the page cache may be now, given how large the process is.

The page cache and read-ahead are bounded by the memory budget. Everything else the
process holds (the interpreter, thread stacks, open handles, inodes, HTTP buffers,
allocator slack) is not, and can grow: many open files, millions of inodes, a burst of
large requests. Rather than let the process grow past what its cgroup allows, the page
cache (and read-ahead with it) gives up what the rest took, and takes it back, in steps,
once the rest shrinks. No I/O here: the daemon reads the resident size and applies the
bound.
"""

from __future__ import annotations

from typing import Protocol

from alluxiofuse.limits import ALLOWANCE, cgroup_ceiling


class CacheSize(Protocol):
    """What the governor reads of the page cache (:class:`alluxiofuse.fs.pages.PageCache`)."""

    @property
    def used(self) -> int:
        """Bytes of cached pages (not those being fetched)."""


class MemoryGovernor:
    """Chooses the page cache bound from the process's resident size."""

    def __init__(self, budget: int, capacity: int, floor: int, cgroup_limit: int | None) -> None:
        self.budget = budget
        self.capacity = capacity  # the configured bound: never exceeded
        self.floor = floor  # the smallest useful cache (a few pages)
        self.cgroup_limit = cgroup_limit
        self.current = capacity

    @property
    def ceiling(self) -> int:
        """The resident size the process keeps under: the budget plus the allowance, and
        below the cgroup's limit, past which the kernel would reclaim or kill."""
        ceiling = self.budget + ALLOWANCE
        if self.cgroup_limit is not None:
            ceiling = min(ceiling, cgroup_ceiling(self.cgroup_limit))
        return ceiling

    def update(self, resident: int, cache: CacheSize) -> int:
        """The page cache bound for a process of ``resident`` bytes: what the ceiling leaves
        beside everything that is not the cache's.

        Only the cached pages are taken for the cache's share of ``resident``. Pages being
        fetched are bounded too, but how much of them is resident yet is not known (a buffer
        is touched as its bytes arrive): what they hold now is counted as the rest's.
        Counted as the cache's, bytes not yet arrived made the rest look smaller than it
        was: the bound grew by them, and once they landed the process stood above the
        ceiling by as much (read-ahead landing between two checks took a daemon past its
        cgroup limit: OOM-killed).

        The bound shrinks at once and grows back by an eighth of the configured bound per
        call, so that memory freed by one eviction is not handed straight back.
        """
        others = max(0, resident - cache.used)
        target = max(self.floor, min(self.capacity, self.ceiling - others))
        if target > self.current:
            target = min(target, self.current + max(self.capacity // 8, self.floor))
        self.current = target
        return target
