"""Worker selection against vectors produced by the official Alluxio Python client.

``tests/data/ring-vectors.json`` comes from ``shared/alluxio/``: the preference lists that
``alluxio==1.0.0``'s ConsistentHashProvider computes for static worker lists, plus the
identities and file ids; PROTOCOL.md section 2.6 checks the same lists against Guava.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from alluxiofuse.backends.cluster.ring import (
    DEFAULT_VNODES,
    HashRing,
    WorkerIdentity,
    murmur3_32,
    path_id,
)

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent.parent / "data" / "ring-vectors.json").read_text())


@pytest.mark.parametrize("case", VECTORS["cases"], ids=lambda c: c["name"])
def test_preference_lists_match_the_official_client(case: dict[str, Any]) -> None:
    ring = HashRing.of_static_hosts(case["hosts"], case["vnodes"])
    assert len(case["preference"]) >= 20
    for key, expected in case["preference"].items():
        assert ring.preference(key, len(expected)) == expected, key
        assert ring.owner(key) == expected[0]


def test_static_identities_and_file_ids_match() -> None:
    for host, identifier in VECTORS["identities"].items():
        assert WorkerIdentity.for_static_host(host) == WorkerIdentity(bytes.fromhex(identifier), 1)
    for uri, digest in VECTORS["path_ids_sha256"].items():
        assert path_id(uri) == digest


def test_murmur3_known_values() -> None:
    # PROTOCOL.md 2.6, and the reference values of MurmurHash3 x86_32 itself.
    assert murmur3_32(b"s3://bucket/a.txt" + (1).to_bytes(4, "little")) == -560135248
    identity = WorkerIdentity.for_static_host("10.0.0.1")
    points = [murmur3_32(identity.identifier + (1).to_bytes(4, "little") + i.to_bytes(4, "little"))
              for i in range(5)]
    assert points == [-474588726, 1160800608, 2076491281, 888240558, -1610613348]
    assert murmur3_32(b"") == 0
    assert murmur3_32(b"", seed=1) == 0x514E28B7
    assert murmur3_32(b"hello") == 0x248BFA47
    assert murmur3_32(b"The quick brown fox jumps over the lazy dog") == 0x2E4FF723


def test_removing_a_worker_moves_only_the_files_it_owned() -> None:
    hosts = [f"10.0.0.{i}" for i in range(1, 5)]
    keys = [f"s3://bucket/data/file-{i:04d}.bin" for i in range(500)]
    before = HashRing.of_static_hosts(hosts, 64)
    after = HashRing.of_static_hosts(hosts[:3], 64)
    moved = [k for k in keys if before.owner(k) != after.owner(k)]
    assert moved and all(before.owner(k) == "10.0.0.4" for k in moved)
    assert len(moved) == sum(before.owner(k) == "10.0.0.4" for k in keys)


def test_counts_are_capped_and_an_empty_ring_has_no_owner() -> None:
    ring = HashRing.of_static_hosts(["a", "b"], 5)
    assert sorted(ring.preference("s3://x/y", 10)) == ["a", "b"]
    assert ring.vnodes == 5 and len(ring) == 2
    assert HashRing.of_static_hosts(["a"]).vnodes == DEFAULT_VNODES == 2000
    empty: HashRing[str] = HashRing({}, 5)
    assert empty.preference("s3://x/y", 3) == []
    with pytest.raises(LookupError):
        empty.owner("s3://x/y")
    with pytest.raises(ValueError):
        HashRing.of_static_hosts(["a"], 0)


def test_ring_values_are_whatever_reaches_the_worker() -> None:
    identity = WorkerIdentity(bytes.fromhex("b785d1f0" * 4), 1)
    ring = HashRing({identity: ("10.1.2.3", 28080)}, 5)
    assert ring.owner("s3://bucket/a.txt") == ("10.1.2.3", 28080)
