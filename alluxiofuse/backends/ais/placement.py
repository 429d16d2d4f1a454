"""Which AIStore target holds an object: highest random weight over the cluster map, as
the AIStore nodes and their official SDK compute it."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import xxhash

# The seed AIStore hashes names and node IDs with (its MLCG32 constant).
_SEED = 1103515245
_MASK = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# A target in maintenance or being decommissioned holds no objects (Snode flags).
_NOT_SERVING = 1 << 2 | 1 << 3


def digest(name: str) -> int:
    """XXH64 of ``name`` with AIStore's seed: an object's uname, or a node's ID."""
    return xxhash.xxh64_intdigest(name.encode("utf-8"), seed=_SEED)


def _mix(seed: int) -> int:
    """AIStore's 64-bit mixing of a node digest with a name digest (SplitMix64 steps,
    then xoshiro256**'s output scrambler)."""
    z = (seed + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z = ((z ^ (z >> 31)) + _GOLDEN) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    z = ((z ^ (z >> 31)) * 5) & _MASK
    z = ((z << 7) | (z >> 57)) & _MASK
    return (z * 9) & _MASK


@dataclass(frozen=True)
class Target:
    """One storage target of the cluster map."""

    daemon_id: str
    url: str  # its public endpoint, e.g. "http://10.0.0.5:51081"
    id_digest: int
    flags: int = 0

    @property
    def serving(self) -> bool:
        return not self.flags & _NOT_SERVING


def owner(targets: Iterable[Target], uname: str) -> Target | None:
    """The target that holds the object named ``uname`` ("ais/@#/bucket/object"), or
    None when no target serves."""
    name = digest(uname)
    best: Target | None = None
    best_weight = -1
    for target in targets:
        if not target.serving:
            continue
        weight = _mix(target.id_digest ^ name)
        if weight > best_weight:
            best, best_weight = target, weight
    return best
