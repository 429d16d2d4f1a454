"""The simulator held honest by the official clients.

``alluxio==1.0.0`` (OSS 3.x API) and ``alluxiofs==1.0.17`` (the last alluxiofs with etcd
discovery and the hash ring) run against three SimWorkers registered in a real etcd, as
real workers register themselves (PROTOCOL.md 2.2). What they list, stat, load and read
must be what the under-storage holds, and each call must land on the worker their own
ring picks, which must be the worker alluxiofuse's ``HashRing`` picks with the clients'
5 virtual nodes. Whatever passes here, the simulator answers as the clients expect a real
worker to, so tests of alluxiofuse against the simulator say something about real workers.

Loads: both clients poll progress once and then every 10 s. A delay on the ``load``
route (a fault the simulator offers) lets the tiny load finish before the first poll, so
no test waits 10 s; if a slow machine loses that race, the test is only slower.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.cluster.ring import HashRing, WorkerIdentity, path_id
from tests.sim.cluster import write_tree
from tests.sim.worker import SimWorker, etcd_members, register_in_etcd
from tests.support.etcdserver import etcd_server

with warnings.catch_warnings():  # etcd3's generated protobuf modules use deprecated calls
    warnings.simplefilter("ignore", DeprecationWarning)
    from alluxio import AlluxioFileSystem as ApyFileSystem
    from alluxio.const import ALLUXIO_CLUSTER_NAME_KEY, ALLUXIO_PAGE_SIZE_KEY
    from alluxiofs import AlluxioFileSystem as FsspecFileSystem

pytestmark = pytest.mark.timeout(60)

CLUSTER = "SimCluster"  # not the default, so the clients must be told, as they can be
PAGE = 64 * 1024
VNODES = 5  # the default of both official clients
LOAD_DELAY = 1.0  # the whole tree loads in well under this, even on a busy machine

FILES = {
    "small.txt": b"hello official clients\n",
    "empty": b"",
    "dir/three-pages.bin": os.urandom(3 * PAGE - 5),
    "dir/exact.bin": os.urandom(2 * PAGE),
    "dir/sub/inner.txt": b"inner\n",
    **{f"many/f{i}.bin": os.urandom(PAGE // 2 + i) for i in range(6)},
}
DIRS = ["", "dir", "dir/sub", "many"]


@dataclass
class Cluster:
    etcd: str
    ufs: Path
    sims: list[SimWorker]

    @property
    def etcd_port(self) -> int:
        return int(self.etcd.rsplit(":", 1)[1])

    def uri(self, rel: str = "") -> str:
        return f"file://{self.ufs}/{rel}" if rel else f"file://{self.ufs}"

    def ring(self) -> HashRing[WorkerAddress]:
        """alluxiofuse's ring over the workers live in etcd."""
        members = etcd_members(self.etcd, CLUSTER)()
        assert len(members) == len(self.sims)
        return HashRing(members, VNODES)

    def sim(self, address: WorkerAddress) -> SimWorker:
        return next(s for s in self.sims if s.address == address)

    def owner(self, rel: str) -> SimWorker:
        return self.sim(self.ring().owner(self.uri(rel)))

    def counts(self, route: str) -> dict[int, int]:
        return {s.port: s.stats[route] for s in self.sims}

    def requests(self) -> dict[int, list[str]]:
        return {s.port: list(s.requests) for s in self.sims}

    def delay_loads(self, delay: float) -> None:
        for s in self.sims:
            if delay:
                s.set_faults(delay=delay, routes=["load"])
            else:
                s.set_faults()


def stop(sim: SimWorker) -> None:
    """``sim.stop()``, less its race with the simulator's own shutdown: closing the server
    can end the event loop while ``stop()`` still schedules task cancellations on it
    ("Event loop is closed"). The worker has stopped then all the same."""
    with contextlib.suppress(RuntimeError):
        sim.stop()


@contextmanager
def cluster(tmp_path: Path, mode: str, node_shape: str = "object") -> Iterator[Cluster]:
    ufs = write_tree(tmp_path / "ufs", FILES)
    assert re.fullmatch(r"[A-Za-z0-9_./-]+", str(ufs)), ufs  # no character needs quoting
    with etcd_server(tmp_path / "etcd") as etcd:
        sims = [SimWorker(ufs, tmp_path / "store", mode=mode, members=etcd_members(etcd, CLUSTER),
                          vnodes=VNODES, page_size=PAGE, node_shape=node_shape)
                for _ in range(3)]
        leases = []
        try:
            for sim in sims:
                sim.start_in_thread()
                leases.append(register_in_etcd(etcd, CLUSTER, sim, ttl=30))
            yield Cluster(etcd, ufs, sims)
        finally:
            for lease in leases:
                lease.set()
            for sim in sims:
                stop(sim)


def plus_encoded(value: str) -> str:
    """``quote_plus`` spelled out for the characters our paths use."""
    return value.replace(":", "%3A").replace("/", "%2F")


def whole_file_page_reads(size: int) -> int:
    """Page requests of the clients' whole-file reader: until a short page, or an error
    after page 0 (a file of whole pages costs one request past its end)."""
    return size // PAGE + 1


def children(ufs: Path, rel: str) -> list[str]:
    return sorted(os.listdir(ufs / rel))


# --- alluxio 1.0.0 against OSS workers ------------------------------------------------


@pytest.fixture
def oss(tmp_path: Path) -> Iterator[Cluster]:
    with cluster(tmp_path, "oss") as c:
        yield c


@pytest.fixture
def apy(oss: Cluster) -> Iterator[ApyFileSystem]:
    fs = ApyFileSystem(
        etcd_hosts="127.0.0.1", etcd_port=oss.etcd_port, etcd_refresh_workers_interval=0,
        options={ALLUXIO_CLUSTER_NAME_KEY: CLUSTER, ALLUXIO_PAGE_SIZE_KEY: "64KB"})
    assert fs.page_size == PAGE
    try:
        yield fs
    finally:
        fs.session.close()


def apy_choice(fs: ApyFileSystem, uri: str, count: int = 1) -> list[WorkerAddress]:
    return [WorkerAddress(w.host, w.http_server_port)
            for w in fs.hash_provider.get_multiple_workers(uri, count)]


def test_apy_ring_is_alluxiofuse_ring(oss: Cluster, apy: ApyFileSystem) -> None:
    ring = oss.ring()
    keys = [oss.uri(rel) for rel in [*FILES, *DIRS]]
    assert {ring.owner(k) for k in keys} <= {s.address for s in oss.sims}
    for key in keys:
        assert apy_choice(apy, key, 3) == ring.preference(key, 3), key


def test_apy_listdir_and_file_status_match_the_ufs(oss: Cluster, apy: ApyFileSystem) -> None:
    for rel in DIRS:
        listing = {s.name: s for s in apy.listdir(oss.uri(rel))}
        assert sorted(listing) == children(oss.ufs, rel), rel
        for name, status in listing.items():
            child = f"{rel}/{name}".lstrip("/")
            st = (oss.ufs / child).stat()
            is_dir = (oss.ufs / child).is_dir()
            assert status.type == ("directory" if is_dir else "file")
            assert status.length == (0 if is_dir else st.st_size)
            assert status.path == f"/{child}"
            assert status.ufs_path == oss.uri(child)
            assert status.last_modification_time_ms == st.st_mtime_ns // 10**6

    for rel in [*FILES, "dir"]:
        before = oss.counts("info")
        status = apy.get_file_status(oss.uri(rel))
        assert status.name == rel.rpartition("/")[2]
        assert status.length == len(FILES.get(rel, b""))
        assert status.type == ("directory" if rel == "dir" else "file")
        assert status.ufs_path == oss.uri(rel)
        owner = oss.owner(rel)
        assert apy_choice(apy, oss.uri(rel)) == [owner.address]
        assert {p: n - before[p] for p, n in oss.counts("info").items()} == {
            s.port: int(s is owner) for s in oss.sims}
        # PROTOCOL.md 1.3: params={"path": p}, quote_plus-encoded by requests.
        assert owner.requests[-1] == f"GET /v1/info?path={plus_encoded(oss.uri(rel))}"

    with pytest.raises(Exception, match="Error when getting file status"):
        apy.get_file_status(oss.uri("missing"))  # the OSS worker closes the connection


def test_apy_human_readable_sizes_of_small_files(oss: Cluster, apy: ApyFileSystem) -> None:
    assert apy.get_file_status(oss.uri("small.txt")).human_readable_file_size == "23B"
    assert apy.get_file_status(oss.uri("empty")).human_readable_file_size == "0B"


def test_apy_human_readable_sizes_of_large_files(oss: Cluster, apy: ApyFileSystem) -> None:
    status = apy.get_file_status(oss.uri("dir/three-pages.bin"))
    assert status.human_readable_file_size == "192.00KB"


def test_apy_load_then_read_whole_files_from_their_owners(
    oss: Cluster, apy: ApyFileSystem,
) -> None:
    oss.delay_loads(LOAD_DELAY)
    assert apy.load(oss.uri()) is True
    oss.delay_loads(0)
    root_owner = oss.owner("")
    assert [r for r in root_owner.requests if "/v1/load" in r][:2] == [
        f"GET /v1/load?path={plus_encoded(oss.uri())}&opType=submit",
        f"GET /v1/load?path={plus_encoded(oss.uri())}&opType=progress",
    ]

    for rel, data in FILES.items():
        owner = oss.owner(rel)
        assert apy_choice(apy, oss.uri(rel)) == [owner.address]
        before = oss.counts("file")
        assert apy.read(oss.uri(rel)) == data, rel
        assert {p: n - before[p] for p, n in oss.counts("file").items()} == {
            s.port: whole_file_page_reads(len(data)) if s is owner else 0 for s in oss.sims}, rel
        fid = path_id(oss.uri(rel))
        assert owner.requests[-1].startswith(f"GET /v1/file/{fid}/page/")
        assert "?" not in owner.requests[-1]  # a whole page: no offset, no length


def test_apy_read_range_across_page_boundaries(oss: Cluster, apy: ApyFileSystem) -> None:
    oss.delay_loads(LOAD_DELAY)
    assert apy.load(oss.uri("dir")) is True
    oss.delay_loads(0)
    rel = "dir/three-pages.bin"
    data, owner = FILES[rel], oss.owner(rel)
    size = len(data)
    before = oss.counts("file")
    cases = [(0, 10), (PAGE - 10, 20), (PAGE - 10, PAGE + 20), (10, size - 10),
             (2 * PAGE, size - 2 * PAGE), (PAGE, PAGE), (size - 1, 1)]
    for offset, length in cases:
        assert apy.read_range(oss.uri(rel), offset, length) == data[offset:offset + length], (
            offset, length)
    assert apy.read_range(oss.uri(rel), PAGE - 10, -1) == data[PAGE - 10:]
    assert apy.read_range(oss.uri(rel), PAGE - 10, 3 * PAGE) == data[PAGE - 10:]  # past EOF
    reads = {p: n - before[p] for p, n in oss.counts("file").items()}
    assert reads[owner.port] > len(cases) and sum(reads.values()) == reads[owner.port]

    # Each page asked for its part only: offset and length within the page.
    fid, seen = path_id(oss.uri(rel)), len(owner.requests)
    assert apy.read_range(oss.uri(rel), PAGE - 10, PAGE + 20) == data[PAGE - 10:2 * PAGE + 10]
    assert list(owner.requests)[seen:] == [
        f"GET /v1/file/{fid}/page/0?offset={PAGE - 10}&length=10",
        f"GET /v1/file/{fid}/page/1?offset=0&length={PAGE}",
        f"GET /v1/file/{fid}/page/2?offset=0&length=10",
    ]


def test_apy_cannot_read_what_an_oss_worker_has_not_cached(
    oss: Cluster, apy: ApyFileSystem,
) -> None:
    owner = oss.owner("small.txt")
    with pytest.raises(Exception, match="Error when reading page 0"):
        apy.read(oss.uri("small.txt"))
    assert owner.stats["file"] == 1
    assert sum(oss.counts("file").values()) == 1


# --- alluxiofs 1.0.17 against Enterprise workers ---------------------------------------


@pytest.fixture
def enterprise(tmp_path: Path) -> Iterator[Cluster]:
    # alluxiofs 1.0.15-1.0.17 read /v1/node's older block-location list (PROTOCOL.md 1.4).
    with cluster(tmp_path, "enterprise", node_shape="list") as c:
        yield c


@contextmanager
def alluxiofs(c: Cluster, **kwargs: object) -> Iterator[FsspecFileSystem]:
    fs = FsspecFileSystem(
        etcd_hosts="127.0.0.1", etcd_port=c.etcd_port, cluster_name=CLUSTER, page_size="64KB",
        hash_node_per_worker=VNODES, etcd_refresh_workers_interval=0,
        logger=logging.getLogger("tests.alluxiofs"), skip_instance_cache=True, **kwargs)
    assert fs.alluxio.config.page_size == PAGE
    try:
        yield fs
    finally:
        fs.alluxio.session.close()


@pytest.fixture
def afs(enterprise: Cluster) -> Iterator[FsspecFileSystem]:
    # No under-storage to fall back to: whatever alluxiofs returns came from the workers.
    with alluxiofs(enterprise) as fs:
        yield fs


def afs_choice(fs: FsspecFileSystem, uri: str, count: int = 1) -> list[WorkerAddress]:
    return [WorkerAddress(w.host, w.http_server_port)
            for w in fs.alluxio.hash_provider.get_multiple_workers(uri, count)]


def test_alluxiofs_ring_is_alluxiofuse_ring(enterprise: Cluster, afs: FsspecFileSystem) -> None:
    ring = enterprise.ring()
    for key in [enterprise.uri(rel) for rel in [*FILES, *DIRS]]:
        assert afs_choice(afs, key, 3) == ring.preference(key, 3), key


def test_alluxiofs_ls_info_exists_match_the_ufs(
    enterprise: Cluster, afs: FsspecFileSystem,
) -> None:
    for rel in DIRS:
        detailed = {e["name"]: e for e in afs.ls(enterprise.uri(rel), detail=True)}
        assert sorted(detailed) == children(enterprise.ufs, rel), rel
        for name, entry in detailed.items():
            child = f"{rel}/{name}".lstrip("/")
            is_dir = (enterprise.ufs / child).is_dir()
            assert entry["type"] == ("directory" if is_dir else "file")
            assert entry["size"] == (0 if is_dir else len(FILES[child]))
            assert entry["ufs_path"] == enterprise.uri(child)
            assert entry["last_modification_time_ms"] == \
                (enterprise.ufs / child).stat().st_mtime_ns // 10**6
            if not is_dir:
                assert entry["content_hash"] == hashlib.md5(FILES[child]).hexdigest()
        assert sorted(afs.ls(enterprise.uri(rel), detail=False)) == [
            f"/{rel}/{n}".replace("//", "/") for n in children(enterprise.ufs, rel)]

    for rel, data in FILES.items():
        uri = enterprise.uri(rel)
        before = enterprise.requests()
        info = afs.info(uri)
        assert (info["size"], info["type"], info["ufs_path"]) == (len(data), "file", uri)
        assert info["content_hash"] == hashlib.md5(data).hexdigest()
        # The ring's pick was asked /v1/node (raw path), named itself, and answered /v1/info.
        owner = enterprise.owner(rel)
        assert afs_choice(afs, uri) == [owner.address]
        new = {p: r[len(before[p]):] for p, r in enterprise.requests().items()}
        assert new == {s.port: [f"GET /v1/node?path={uri}",
                                f"GET /v1/info?path={plus_encoded(uri)}"] if s is owner else []
                       for s in enterprise.sims}, rel

    assert afs.exists(enterprise.uri("small.txt")) is True
    assert afs.exists(enterprise.uri("missing")) is False
    assert afs.isdir(enterprise.uri("dir")) is True
    assert afs.isdir(enterprise.uri("small.txt")) is False
    assert afs.get_error_metrics()["error_counts"] == {}


def test_alluxiofs_load_fills_the_owners_caches(
    enterprise: Cluster, afs: FsspecFileSystem,
) -> None:
    enterprise.delay_loads(LOAD_DELAY)
    assert afs.load_file_from_ufs_to_alluxio(enterprise.uri("dir")) is True
    enterprise.delay_loads(0)
    root_owner = enterprise.owner("dir")
    encoded = plus_encoded(enterprise.uri("dir"))
    assert [r for r in root_owner.requests if "/v1/load" in r][:2] == [
        f"GET /v1/load?path={encoded}&opType=submit&verbose=true",
        f"GET /v1/load?path={encoded}&opType=progress&verbose=true",
    ]
    # Cached on each file's owner: served without ufsFullPath, which an uncached page needs.
    for rel in ("dir/three-pages.bin", "dir/exact.bin", "dir/sub/inner.txt"):
        owner, fid, data = enterprise.owner(rel), path_id(enterprise.uri(rel)), FILES[rel]
        for index in range(-(-len(data) // PAGE)):
            page = httpx.get(f"{owner.address.url()}/v1/file/{fid}/page/{index}", timeout=10)
            assert page.status_code == 200, (rel, index)
            assert page.content == data[index * PAGE:(index + 1) * PAGE], (rel, index)
    fid = path_id(enterprise.uri("small.txt"))
    owner = enterprise.owner("small.txt")
    assert httpx.get(f"{owner.address.url()}/v1/file/{fid}/page/0", timeout=10).status_code == 500


def test_alluxiofs_page_reads_read_through_on_the_owner(
    enterprise: Cluster, afs: FsspecFileSystem,
) -> None:
    """alluxiofs 1.0.17's page readers, the same /v1/file templates with ufsFullPath that
    alluxiofuse's Enterprise reads use. No public 1.0.17 method reaches them any more
    (reads go to /v1/range and /v1/chunk, see below), so they are called directly."""
    client = afs.alluxio
    for rel, data in FILES.items():
        uri, fid = enterprise.uri(rel), path_id(enterprise.uri(rel))
        owner = enterprise.owner(rel)
        host, port = client._get_preferred_worker_address(uri)
        assert WorkerAddress(host, port) == owner.address
        before = enterprise.counts("file")
        assert b"".join(client._all_page_generator(host, port, fid, uri)) == data, rel
        assert {p: n - before[p] for p, n in enterprise.counts("file").items()} == {
            s.port: whole_file_page_reads(len(data)) if s is owner else 0
            for s in enterprise.sims}, rel
        assert f"GET /v1/file/{fid}/page/0?ufsFullPath={uri}" in owner.requests

    rel = "dir/three-pages.bin"
    uri, fid, data = enterprise.uri(rel), path_id(enterprise.uri(rel)), FILES[rel]
    host, port = client._get_preferred_worker_address(uri)
    for offset, length in [(PAGE - 10, 20), (10, len(data) - 10), (PAGE - 10, 3 * PAGE)]:
        got = b"".join(client._range_page_generator(host, port, fid, uri, offset, length))
        assert got == data[offset:offset + length], (offset, length)
    assert (f"GET /v1/file/{fid}/page/0?offset={PAGE - 10}&length=10&ufsFullPath={uri}"
            in enterprise.owner(rel).requests)


def test_alluxiofs_reads_use_enterprise_endpoints_the_sim_does_not_have(
    enterprise: Cluster,
) -> None:
    """What alluxiofs 1.0.17 cannot do against the simulator: ``cat_file`` reads through
    ``/v1/range`` and ``open().read()`` through ``/v1/chunk``, Enterprise endpoints that
    alluxiofuse does not use and the simulator does not serve (HTTP 500 in its Enterprise
    mode). With the local file system as target, ``cat_file`` falls back to it."""
    rel = "dir/three-pages.bin"
    uri, fid, data = enterprise.uri(rel), path_id(enterprise.uri(rel)), FILES[rel]
    owner = enterprise.owner(rel)
    with alluxiofs(enterprise, target_protocol="file") as fs:
        assert fs.cat_file(uri) == data  # from the under-storage
        assert fs.get_error_metrics()["error_counts"] == {"cat_file_Exception": 1}
        assert (f"GET /v1/range/{fid}?ufsFullPath={uri}&offset=0&length={len(data)}"
                in owner.requests)
        with pytest.raises(Exception, match="500 Server Error"), fs.open(uri, "rb") as f:
            f.read()
        assert f"GET /v1/chunk/{fid}?ufsFullPath={uri}&chunkSize=1048576" in owner.requests
    assert owner.stats["file"] == 0


def test_identities_round_trip_through_etcd(enterprise: Cluster) -> None:
    """The registration the simulator writes is the one the clients and alluxiofuse read."""
    members = etcd_members(enterprise.etcd, CLUSTER)()
    assert members == {s.identity: s.address for s in enterprise.sims}
    assert all(isinstance(i, WorkerIdentity) and len(i.identifier) == 16 for i in members)
