"""Alluxio 3.x worker selection: worker identities, the consistent-hash ring, file ids.

The same algorithm as Alluxio's own clients (Java ``ConsistentHashProvider``, the Python
``alluxio`` client's ``worker_ring``): MurmurHash3 x86_32 with seed 0, read as a signed
32-bit int; worker ``W`` owns the ring points ``murmur3(W.identifier ‖ le32(W.version) ‖
le32(i))`` for ``i`` in ``0 … vnodes-1``; a key (the file's full UFS URI) is looked up with
``murmur3(utf8(key) ‖ le32(attempt))`` for ``attempt = 1, 2, …``, taking the first point at or
after the hash (wrapping around), until enough distinct workers are found. The first one
owns the file. Pure computation, no I/O.
"""

from __future__ import annotations

import bisect
import hashlib
import struct
from collections.abc import Iterable, Mapping
from typing import Generic, NamedTuple, TypeVar

W = TypeVar("W")

# Virtual nodes per worker: Alluxio's documented default, and the property names that set it
# (the Enterprise key first; the OSS clients' key, whose default there is 5, second).
DEFAULT_VNODES = 2000
VNODES_PROPERTIES = (
    "alluxio.user.worker.selection.policy.consistent.hash.virtual.node.count.per.worker",
    "alluxio.user.consistent.hash.virtual.node.count.per.worker",
)
_MAX_ATTEMPTS = 100  # as the official clients: a lookup gives up after this many hashes

_C1, _C2, _MASK = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
_LE32 = struct.Struct("<i")


class WorkerIdentity(NamedTuple):
    """What a worker is on the ring: its identifier bytes and the identifier's version."""

    identifier: bytes
    version: int = 1

    @classmethod
    def for_static_host(cls, host: str) -> WorkerIdentity:
        """A statically listed worker's identity: Java's ``UUID.nameUUIDFromBytes(host)``
        (MD5 of the host name, version nibble 3, IETF variant), identity version 1."""
        b = bytearray(hashlib.md5(host.encode("utf-8"), usedforsecurity=False).digest())
        b[6] = (b[6] & 0x0F) | 0x30
        b[8] = (b[8] & 0x3F) | 0x80
        return cls(bytes(b), 1)


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32 of ``data``, as a signed 32-bit int (Guava's ``asInt()``)."""
    h, n = seed & _MASK, len(data)
    end = n - n % 4
    for (k,) in struct.iter_unpack("<I", data[:end]):
        k = (k * _C1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        h ^= (k * _C2) & _MASK
        h = ((h << 13) | (h >> 19)) & _MASK
        h = (h * 5 + 0xE6546B64) & _MASK
    if n % 4:
        k = (int.from_bytes(data[end:], "little") * _C1) & _MASK
        k = ((k << 15) | (k >> 17)) & _MASK
        h ^= (k * _C2) & _MASK
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h - (1 << 32) if h & 0x80000000 else h


def path_id(ufs_uri: str) -> str:
    """The id a worker files a UFS file under: lower-case hex SHA-256 of the URI."""
    return hashlib.sha256(ufs_uri.encode("utf-8")).hexdigest()


class HashRing(Generic[W]):
    """The ring over a set of workers, each known by its identity; immutable.

    ``workers`` maps each identity to whatever the caller uses to reach the worker (an
    address); lookups return those values.
    """

    def __init__(self, workers: Mapping[WorkerIdentity, W], vnodes: int = DEFAULT_VNODES) -> None:
        if vnodes < 1:
            raise ValueError(f"virtual nodes per worker must be at least 1, not {vnodes}")
        points: dict[int, WorkerIdentity] = {}
        for identity in workers:  # a later worker wins a (vanishingly rare) collision, as in Java
            prefix = identity.identifier + _LE32.pack(identity.version)
            for i in range(vnodes):
                points[murmur3_32(prefix + _LE32.pack(i))] = identity
        self._keys = sorted(points)
        self._owners = [points[k] for k in self._keys]
        self._workers = dict(workers)
        self.vnodes = vnodes

    def __len__(self) -> int:
        return len(self._workers)

    def preference(self, key: str, count: int) -> list[W]:
        """Up to ``count`` distinct workers for ``key`` (a full UFS URI), owner first."""
        chosen: list[WorkerIdentity] = []
        count = min(count, len(self._workers))
        encoded = key.encode("utf-8")
        attempt = 0
        while len(chosen) < count and attempt < _MAX_ATTEMPTS:
            attempt += 1
            h = murmur3_32(encoded + _LE32.pack(attempt))
            owner = self._owners[bisect.bisect_left(self._keys, h) % len(self._keys)]
            if owner not in chosen:
                chosen.append(owner)
        return [self._workers[identity] for identity in chosen]

    def owner(self, key: str) -> W:
        """The worker that owns ``key``; LookupError on a ring without workers."""
        workers = self.preference(key, 1)
        if not workers:
            raise LookupError("the ring has no workers")
        return workers[0]

    @classmethod
    def of_static_hosts(cls, hosts: Iterable[str], vnodes: int = DEFAULT_VNODES,
                        ) -> HashRing[str]:
        """The ring of statically listed workers, each reached by its host name."""
        return HashRing({WorkerIdentity.for_static_host(h): h for h in hosts}, vnodes)
