"""The memory this process may use (RAM, cgroup limits) and the memory budget drawn from it.

Also the byte units, here in the bottom layer so that every module can share them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclass(frozen=True)
class MemoryLimits:
    """The memory this process may use."""

    ram: int
    cgroup: int | None  # the tightest cgroup limit over this process; None: unlimited


def memory_limits() -> MemoryLimits:
    return MemoryLimits(_read_meminfo_total(), cgroup_memory_limit())


# Limits at or above this mean "no limit" (cgroup v1 writes 2**63 rounded down to a page).
_UNLIMITED = 1 << 62


def cgroup_memory_limit(proc_cgroup: str = "/proc/self/cgroup",
                        root: str = "/sys/fs/cgroup") -> int | None:
    """The tightest memory limit of the cgroups this process is in, and their ancestors.

    cgroup v2: ``memory.max`` and ``memory.high`` (past which the kernel throttles);
    cgroup v1: ``memory.limit_in_bytes``. The process's own cgroup is read from
    ``/proc/self/cgroup``, so a systemd unit's ``MemoryMax=`` counts as much as a
    container's limit; in a container with its own cgroup namespace that path is "/".
    None when no limit is set anywhere.
    """
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        lines = []
    v2 = ("memory.max", "memory.high")
    v1 = ("memory.limit_in_bytes",)
    places: list[tuple[Path, str, tuple[str, ...]]] = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            places.append((Path(root), path, v2))
        elif "memory" in controllers.split(","):
            places.append((Path(root) / "memory", path, v1))
    if not places:
        places = [(Path(root), "/", v2), (Path(root) / "memory", "/", v1)]
    limits = [limit for base, path, names in places
              for directory in _cgroup_ancestors(base, path)
              for name in names
              if (limit := _read_limit(directory / name)) is not None]
    return min(limits) if limits else None


def _cgroup_ancestors(base: Path, path: str) -> list[Path]:
    """``base/path`` and each directory above it, up to ``base``."""
    directory = base / path.strip("/")
    found = [directory]
    while directory != base and base in directory.parents:
        directory = directory.parent
        found.append(directory)
    return found


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) < _UNLIMITED else None


def _read_meminfo_total() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return 4 * GiB


# What the process may hold beyond its memory budget: Python with the daemon's libraries
# loaded (its resident size at rest is in bench/RESULTS.md), threads, buffers and
# allocator slack.
ALLOWANCE = 128 * MiB


def cgroup_ceiling(limit: int) -> int:
    """The resident size to keep under in a cgroup of this limit: 90%, leaving the kernel
    room for the spool's page cache before it reclaims or kills."""
    return limit * 9 // 10


def default_memory_budget(limits: MemoryLimits) -> int:
    """What the caches may hold unless --memory-budget says.

    On a host: an eighth of RAM, between 64 MiB and 4 GiB, leaving room for the programs
    reading through the mount. Under a cgroup limit (a container, a systemd unit's
    MemoryMax=): at most half of it, as the daemon is then usually the cgroup's main
    tenant, and no more than leaves the rest of the process its allowance below the
    cgroup ceiling (which matters under small limits: 256 MiB gives 102 MiB).
    """
    budget = max(64 * MiB, min(4 * GiB, limits.ram // 8))
    if limits.cgroup is not None:
        budget = min(budget, limits.cgroup // 2, cgroup_ceiling(limits.cgroup) - ALLOWANCE)
    return max(16 * MiB, budget)
