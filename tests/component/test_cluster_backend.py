"""The cluster backend against simulated workers: owners, fallback, cool-off, content hashes."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio

from alluxiofuse.backends.cluster.backend import (
    MTIME_UNIT_NS,
    ClusterBackend,
    Membership,
    WorkerHealth,
)
from alluxiofuse.backends.cluster.client import WorkerClient
from alluxiofuse.backends.cluster.discovery import StaticWorkers
from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.cluster.ring import HashRing, WorkerIdentity, path_id
from alluxiofuse.backends.local import LocalUfs
from alluxiofuse.errors import BackendUnavailable, ContentMismatch, NotFound
from alluxiofuse.metrics import Metrics, new_registry
from alluxiofuse.model import Kind
from tests.sim.cluster import write_tree
from tests.sim.worker import SimWorker

PAGE = 64 * 1024
VNODES = 50


@dataclass
class Cluster:
    ufs: Path
    store: Path
    sims: list[SimWorker]
    members: dict[WorkerIdentity, WorkerAddress]

    def uri(self, rel: str) -> str:
        return f"file://{self.ufs}/{rel}" if rel else f"file://{self.ufs}"

    def owner(self, rel: str) -> SimWorker:
        address = HashRing(self.members, VNODES).owner(self.uri(rel))
        return next(s for s in self.sims if s.address == address)

    def load(self, rel: str = "") -> None:
        sim = self.sims[0]
        params = {"path": self.uri(rel), "opType": "submit"}
        assert httpx.get(f"{sim.address.url()}/v1/load", params=params).json()["success"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            params["opType"] = "progress"
            state = httpx.get(f"{sim.address.url()}/v1/load", params=params).json()["jobState"]
            if state != "RUNNING":
                assert state == "SUCCEEDED"
                return
            time.sleep(0.01)
        raise TimeoutError("load")


FILES = {
    "small.txt": b"hello cluster\n",
    "dir/three-pages.bin": os.urandom(3 * PAGE - 5),
    "dir/exact.bin": os.urandom(2 * PAGE),
    "dir/with space.bin": os.urandom(PAGE + 3),
    "empty": b"",
}


def _cluster(tmp_path: Path, mode: str) -> Iterator[Cluster]:
    ufs = write_tree(tmp_path / "ufs", FILES)
    members: dict[WorkerIdentity, WorkerAddress] = {}
    sims = [SimWorker(ufs, tmp_path / "store", mode=mode, members=lambda: members,
                      vnodes=VNODES, page_size=PAGE) for _ in range(3)]
    try:
        for sim in sims:
            sim.start_in_thread()
            members[sim.identity] = sim.address
        yield Cluster(ufs.resolve(), tmp_path / "store", sims, members)
    finally:
        for sim in sims:
            sim.stop()


@pytest.fixture
def oss(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, "oss")


@pytest.fixture
def enterprise(tmp_path: Path) -> Iterator[Cluster]:
    yield from _cluster(tmp_path, "enterprise")


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(new_registry())


async def _backend(
    cluster: Cluster, metrics: Metrics, *, deadline: float = 5.0, cooloff: float = 30.0,
    enterprise: bool = False, members: dict[WorkerIdentity, WorkerAddress] | None = None,
) -> ClusterBackend:
    ufs = LocalUfs(str(cluster.ufs), trio.CapacityLimiter(4), 10, description="test",
                   mtime_unit_ns=MTIME_UNIT_NS)
    membership = Membership(StaticWorkers(cluster.members if members is None else members),
                            vnodes=VNODES)
    await membership.refresh()
    client = WorkerClient(timeout=deadline, retries=1, metrics=metrics)
    return ClusterBackend(ufs, membership, client, WorkerHealth(cooloff, metrics),
                          metrics=metrics, enterprise=enterprise, page_size=PAGE)


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def _read_all(backend: ClusterBackend, rel: str) -> bytes:
    status = await backend.stat(rel)
    parts = [await backend.read(rel, off, PAGE, status.version)
             for off in range(0, status.size, PAGE)]
    return b"".join(parts)


async def test_loaded_files_come_from_their_owners(oss: Cluster, metrics: Metrics) -> None:
    oss.load()
    backend = await _backend(oss, metrics)
    try:
        for rel, data in FILES.items():
            before = {id(s): s.stats["file"] for s in oss.sims}
            assert await _read_all(backend, rel) == data
            pages = max(1, -(-len(data) // PAGE)) if data else 0
            owner = oss.owner(rel)
            served = {id(s): s.stats["file"] - before[id(s)] for s in oss.sims}
            assert served == {id(s): pages if s is owner else 0 for s in oss.sims}, rel
        assert _value(metrics, "alluxiofuse_ufs_fallback_total", op="read",
                      reason="dropped") == 0
        assert _value(metrics, "alluxiofuse_worker_read_bytes_total") == sum(
            map(len, FILES.values()))
    finally:
        await backend.aclose()


async def test_metadata_from_the_owner_and_unexpressible_paths_from_the_ufs(
    oss: Cluster, metrics: Metrics,
) -> None:
    backend = await _backend(oss, metrics)
    try:
        status = await backend.stat("dir/three-pages.bin")
        st = (oss.ufs / "dir/three-pages.bin").stat()
        assert (status.size, status.kind) == (len(FILES["dir/three-pages.bin"]), Kind.FILE)
        assert status.mtime_ns == st.st_mtime_ns - st.st_mtime_ns % MTIME_UNIT_NS
        assert oss.owner("dir/three-pages.bin").stats["info"] == 1
        names = {s.name: s.kind for s in await backend.list("dir")}
        assert names == {"three-pages.bin": Kind.FILE, "exact.bin": Kind.FILE,
                         "with space.bin": Kind.FILE}
        # A space cannot be said in an OSS worker's path= parameter: the UFS answers, and
        # the version is the same as the worker would have given.
        spaced = await backend.stat("dir/with space.bin")
        listed = {s.name: s for s in await backend.list("dir")}
        assert spaced.version == listed["with space.bin"].version
        assert _value(metrics, "alluxiofuse_ufs_fallback_total", op="stat",
                      reason="unexpressible") == 1
        with pytest.raises(NotFound):
            await backend.stat("missing")  # the worker drops, the UFS says ENOENT
    finally:
        await backend.aclose()


async def test_a_page_the_worker_lacks_is_read_from_the_ufs(oss: Cluster, metrics: Metrics,
                                                              ) -> None:
    backend = await _backend(oss, metrics)  # nothing loaded: every page misses
    try:
        assert await _read_all(backend, "dir/three-pages.bin") == FILES["dir/three-pages.bin"]
        assert _value(metrics, "alluxiofuse_ufs_fallback_total", op="read",
                      reason="dropped") == 3
        assert _value(metrics, "alluxiofuse_ufs_fallback_bytes_total") == 3 * PAGE - 5
        assert _value(metrics, "alluxiofuse_workers_marked_down_total") == 0  # a miss is an answer
    finally:
        await backend.aclose()


@pytest.mark.expect_log(r"^worker \S+ set aside for 30s, .*: cannot connect", count=1)
async def test_a_dead_worker_costs_one_failure_then_is_set_aside(
    oss: Cluster, metrics: Metrics,
) -> None:
    oss.load()
    rel = "dir/three-pages.bin"
    oss.owner(rel).stop()  # connections are refused from now on
    backend = await _backend(oss, metrics)
    try:
        status = await backend.stat(rel)  # refused: marked down, answered by the UFS
        assert _value(metrics, "alluxiofuse_workers_marked_down_total") == 1
        assert await _read_all(backend, rel) == FILES[rel]
        assert _value(metrics, "alluxio_http_server_result_total", method="page",
                      state="unavailable") == 0  # no page was even tried
        assert _value(metrics, "alluxiofuse_ufs_fallback_total", op="read",
                      reason="worker_down") == 3
        assert status.size == len(FILES[rel])
    finally:
        await backend.aclose()


@pytest.mark.expect_log(r"^worker \S+ set aside for 30s, .*: no answer within 0\.5s$", count=1)
async def test_a_stalled_worker_costs_one_timeout_then_reads_go_to_the_ufs(
    oss: Cluster, metrics: Metrics,
) -> None:
    oss.load()
    rel = "dir/three-pages.bin"
    backend = await _backend(oss, metrics, deadline=0.5)
    try:
        status = await backend.stat(rel)
        oss.owner(rel).set_faults(stall=True)
        started = trio.current_time()
        data = b"".join([await backend.read(rel, off, PAGE, status.version)
                         for off in range(0, status.size, PAGE)])
        elapsed = trio.current_time() - started
        assert data == FILES[rel]
        assert elapsed < 0.5 * 4  # one deadline, not one per page
        assert _value(metrics, "alluxio_http_server_result_total", method="page",
                      state="timeout") == 1
        assert _value(metrics, "alluxiofuse_workers_marked_down_total") == 1
    finally:
        await backend.aclose()


@pytest.mark.expect_log(r"^worker \S+ set aside for 0\.3s, .*: no answer within 0\.3s$", count=1)
async def test_a_worker_back_after_its_cooloff_is_used_again(oss: Cluster, metrics: Metrics,
                                                              ) -> None:
    oss.load()
    rel = "small.txt"
    owner = oss.owner(rel)
    backend = await _backend(oss, metrics, deadline=0.3, cooloff=0.3)
    try:
        status = await backend.stat(rel)
        owner.set_faults(stall=True)
        assert await backend.read(rel, 0, PAGE, status.version) == FILES[rel]
        owner.set_faults()
        served = owner.stats["file"]
        assert await backend.read(rel, 0, PAGE, status.version) == FILES[rel]
        assert owner.stats["file"] == served  # still set aside
        await trio.sleep(0.35)
        assert await backend.read(rel, 0, PAGE, status.version) == FILES[rel]
        assert owner.stats["file"] == served + 1
    finally:
        await backend.aclose()


@pytest.mark.parametrize("fault,kind", [("wrong_length", "wrong_length"),
                                        ("truncate", "truncated")])
async def test_unusable_page_replies_never_reach_the_reader(
    oss: Cluster, metrics: Metrics, fault: str, kind: str,
) -> None:
    oss.load()
    rel = "dir/exact.bin"
    backend = await _backend(oss, metrics)
    try:
        status = await backend.stat(rel)
        oss.owner(rel).set_faults(**{fault: True, "routes": ["file"]})
        assert await backend.read(rel, PAGE, PAGE, status.version) == FILES[rel][PAGE:]
        assert _value(metrics, "alluxiofuse_worker_bad_replies_total", kind=kind) == 1
        assert _value(metrics, "alluxiofuse_ufs_fallback_total", op="read",
                      reason="protocol") == 1
    finally:
        await backend.aclose()


async def test_ranges_within_pages_use_offset_and_length(oss: Cluster, metrics: Metrics) -> None:
    oss.load()
    rel = "dir/three-pages.bin"
    backend = await _backend(oss, metrics)
    try:
        status = await backend.stat(rel)
        data = await backend.read(rel, PAGE - 10, 30, status.version)
        assert data == FILES[rel][PAGE - 10:PAGE + 20]
        assert await backend.read(rel, 0, PAGE, status.version) == FILES[rel][:PAGE]
        assert await backend.read(rel, 2 * PAGE, PAGE, status.version) == FILES[rel][2 * PAGE:]
        targets = [r for r in oss.owner(rel).requests if "/page/" in r]
        file_id = path_id(oss.uri(rel))
        assert sorted(targets[-4:-2]) == [  # the two spans of one read go concurrently
            f"GET /v1/file/{file_id}/page/0?offset={PAGE - 10}&length=10",
            f"GET /v1/file/{file_id}/page/1?offset=0&length=20"]
        assert targets[-2:] == [f"GET /v1/file/{file_id}/page/0",  # whole pages: no query
                                f"GET /v1/file/{file_id}/page/2"]  # the short last one too
    finally:
        await backend.aclose()


async def test_no_workers_reads_the_ufs(oss: Cluster, metrics: Metrics) -> None:
    backend = await _backend(oss, metrics, members={})
    try:
        assert await _read_all(backend, "small.txt") == FILES["small.txt"]
        assert _value(metrics, "alluxiofuse_ufs_fallback_total", op="read",
                      reason="no_workers") == 1
    finally:
        await backend.aclose()


async def test_enterprise_reads_through_and_asks_node_once(enterprise: Cluster,
                                                           metrics: Metrics) -> None:
    backend = await _backend(enterprise, metrics, enterprise=True)
    rel = "dir/three-pages.bin"
    try:
        assert await _read_all(backend, rel) == FILES[rel]  # nothing loaded: read-through
        assert await _read_all(backend, rel) == FILES[rel]
        owner = enterprise.owner(rel)
        assert owner.stats["node"] == 1  # the answer is cached
        assert owner.stats["file"] == 6
        assert any("ufsFullPath=file://" in r for r in owner.requests)
        assert _value(metrics, "alluxiofuse_ufs_fallback_bytes_total") == 0
    finally:
        await backend.aclose()


@pytest.mark.expect_log(r"^small\.txt: the bytes read do not match content hash", count=2)
async def test_content_hash_mismatch_is_never_served(enterprise: Cluster,
                                                     metrics: Metrics) -> None:
    backend = await _backend(enterprise, metrics, enterprise=True)
    rel = "small.txt"
    try:
        status = await backend.stat(rel)  # the worker reports the MD5 of the content
        # Corrupt the worker's cached copy: the reader still gets the file's bytes.
        page = enterprise.store / enterprise.owner(rel).identity.identifier.hex() / path_id(
            enterprise.uri(rel)) / "0"
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_bytes(b"HELLO CLUSTER\n")
        assert await backend.read(rel, 0, PAGE, status.version) == FILES[rel]
        assert _value(metrics, "alluxiofuse_content_hash_mismatches_total", source="worker") == 1
        # Now the under-storage changes behind the same size and mtime: no source has bytes
        # matching the hash, and the read fails instead of returning them.
        path = enterprise.ufs / rel
        st = path.stat()
        path.write_bytes(b"HELLO CLUSTER\n")
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        with pytest.raises(ContentMismatch):
            await backend.read(rel, 0, PAGE, status.version)
        assert _value(metrics, "alluxiofuse_content_hash_mismatches_total", source="ufs") == 1
        assert hashlib.md5(FILES[rel]).hexdigest() not in page.read_bytes().hex()
    finally:
        await backend.aclose()


async def test_membership_swaps_the_ring_and_keeps_it_when_unreadable(
    oss: Cluster, metrics: Metrics,
) -> None:
    class Flaky(StaticWorkers):
        fail = False

        async def workers(self) -> dict[WorkerIdentity, WorkerAddress]:
            if self.fail:
                raise BackendUnavailable("etcd is away")
            return await super().workers()

    source = Flaky(dict(list(oss.members.items())[:2]))
    membership = Membership(source, vnodes=VNODES)
    assert await membership.refresh() is True
    assert len(membership) == 2
    assert await membership.refresh() is False  # unchanged: the ring is kept as it is
    ring = membership.ring
    source._workers = dict(oss.members)
    assert await membership.refresh() is True
    assert membership.ring is not ring and len(membership) == 3
    source.fail = True
    with pytest.raises(BackendUnavailable):
        await membership.refresh()
    assert len(membership) == 3


async def test_files_this_mount_changed_are_read_from_the_ufs_and_cached_on_request(
    oss: Cluster, metrics: Metrics, tmp_path: Path,
) -> None:
    """The owner still holds the old pages of an overwritten file: never served again."""
    oss.load()
    backend = await _backend(oss, metrics)
    try:
        new = os.urandom(2 * PAGE + 9)
        staged = tmp_path / "staged"
        staged.write_bytes(new)
        done = await backend.commit("dir/three-pages.bin", str(staged))
        owner = oss.owner("dir/three-pages.bin")
        before = owner.stats["file"]
        assert await _read_all(backend, "dir/three-pages.bin") == new
        assert owner.stats["file"] == before  # not a page from the stale cache
        assert done.status.size == len(new)
        # CACHE_THROUGH: the owner is asked to load the new content for everyone else.
        await backend.cache("dir/three-pages.bin")
        assert any(r.startswith("GET /v1/load?") and "opType=submit" in r
                   and "three-pages.bin" in r for r in owner.requests)
        # Names this mount created or removed are listed from the UFS too.
        await backend.unlink("small.txt")
        assert "small.txt" not in [s.name for s in await backend.list("")]
        with pytest.raises(NotFound):
            await backend.stat("small.txt")
        # Untouched files still come from their owners.
        other = oss.owner("dir/exact.bin")
        before = other.stats["file"]
        assert await _read_all(backend, "dir/exact.bin") == FILES["dir/exact.bin"]
        assert other.stats["file"] == before + 2
    finally:
        await backend.aclose()
