"""Which AIStore target holds an object, against the official SDK's own computation."""

from __future__ import annotations

import random

from aistore.sdk.types import NetInfo, Smap, Snode
from aistore.sdk.utils import get_digest

from alluxiofuse.backends.ais.placement import Target, digest, owner


def _cluster(n: int, rng: random.Random, flags: dict[int, int] | None = None,
             ) -> tuple[list[Target], Smap]:
    ids = [f"t{rng.getrandbits(40):010x}" for _ in range(n)]
    flags = flags or {}
    nodes = {
        daemon_id: Snode(daemon_id=daemon_id, daemon_type="target",
                         public_net=NetInfo(node_hostname="127.0.0.1", daemon_port=str(9000 + i),
                                            direct_url=f"http://127.0.0.1:{9000 + i}"),
                         id_digest=get_digest(daemon_id), flags=flags.get(i, 0))
        for i, daemon_id in enumerate(ids)
    }
    proxy = Snode(daemon_id="p1", daemon_type="proxy")
    smap = Smap(tmap=nodes, pmap={"p1": proxy}, proxy_si=proxy)
    targets = [Target(daemon_id=d, url=f"http://127.0.0.1:{9000 + i}", id_digest=digest(d),
                      flags=flags.get(i, 0)) for i, d in enumerate(ids)]
    return targets, smap


def test_node_digests_are_the_sdks() -> None:
    for name in ("t1", "ais/@#/bucket/a/b.jpg", "ünïcode/名前", ""):
        assert digest(name) == get_digest(name)


def test_every_object_goes_where_the_sdk_sends_it() -> None:
    rng = random.Random(21)
    for n in (1, 2, 3, 7, 16):
        targets, smap = _cluster(n, rng)
        for i in range(300):
            uname = f"ais/@#/train/shard-{rng.getrandbits(32):08x}/img{i}.jpg"
            got = owner(targets, uname)
            assert got is not None
            assert got.daemon_id == smap.get_target_for_object(uname).daemon_id


def test_targets_in_maintenance_hold_nothing() -> None:
    rng = random.Random(3)
    # Bits 2 and 3: maintenance, decommissioning.
    targets, smap = _cluster(4, rng, flags={0: 1 << 2, 1: 1 << 3})
    placed = {owner(targets, f"ais/@#/b/o{i}").daemon_id for i in range(200)}  # type: ignore[union-attr]
    assert placed == {targets[2].daemon_id, targets[3].daemon_id}
    assert placed == {smap.get_target_for_object(f"ais/@#/b/o{i}").daemon_id for i in range(200)}
    assert owner([t for t in targets[:2]], "ais/@#/b/o") is None
