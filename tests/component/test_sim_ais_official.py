"""The AIStore simulator held honest by the official SDK (``aistore==2.0.0``).

The SDK runs against :class:`SimAis` as it runs against a real cluster: it lists in pages
(MessagePack), reads whole objects and byte ranges through the proxy's redirect or directly at
the target its own copy of the HRW placement picks, heads, puts, deletes, prefetches and evicts
with jobs it waits for. What it sees must be what the simulator stores, checksums must be what
the test computes on its own, and the requests must land where the SDK's placement says.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import xxhash
from aistore.sdk import Client, ListObjectFlag
from aistore.sdk.errors import AISError, ErrBckNotFound, ErrObjNotFound, ErrRemoteBckNotFound
from aistore.sdk.retry_config import RetryConfig
from aistore.sdk.types import Smap
from tenacity import Retrying, stop_after_attempt
from urllib3.util import Retry

from tests.sim.ais import SimAis, uname

pytestmark = pytest.mark.timeout(60)

OBJECTS = {
    # no two bytes at a distance under 251 alike, so a range read off by one shows
    **{f"data/f{i:02d}.bin": bytes((i + k) % 251 for k in range(100 + 37 * i)) for i in range(25)},
    "data/sub/inner.txt": b"inner\n",
    "data/sub/deeper/leaf": b"leaf",
    "top.txt": b"top level\n",
    "empty": b"",
}


def retry(http_total: int = 0) -> RetryConfig:
    """No waiting: failures show at once, or after ``http_total`` immediate retries."""
    return RetryConfig(
        http_retry=Retry(total=http_total, backoff_factor=0,
                         status_forcelist=[500] if http_total else [], connect=0, read=0),
        network_retry=Retrying(stop=stop_after_attempt(1), reraise=True),
    )


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimAis]:
    with SimAis(tmp_path / "ais", targets=3) as s:
        s.create_bucket("bck")
        for name, data in OBJECTS.items():
            s.put_object("bck", name, data)
        yield s


@pytest.fixture
def client(sim: SimAis) -> Client:
    return Client(sim.url, retry_config=retry(), timeout=(5, 10))


def counted(sim: SimAis, key: str) -> int:
    return sim.stats().get(key, 0)


def test_smap_placement_is_the_sdk_placement(sim: SimAis, client: Client) -> None:
    smap: Smap = client.cluster().get_info()
    assert smap.proxy_si.public_net is not None
    assert smap.proxy_si.public_net.direct_url == sim.url
    assert {tid: n.public_net.direct_url for tid, n in smap.tmap.items()
            if n.public_net is not None} == sim.targets
    for tid, node in smap.tmap.items():
        assert node.id_digest == xxhash.xxh64_intdigest(tid.encode(), seed=1103515245)
    owners = set()
    for i in range(60):
        name = f"dir/obj-{i}"
        sdk = smap.get_target_for_object(uname("ais", "bck", name)).daemon_id
        assert sdk == sim.owner("bck", name)
        owners.add(sdk)
    assert owners == set(sim.targets)  # every target owns some of 60 names
    # through the proxy, each read lands on the owner
    for name, data in OBJECTS.items():
        assert client.bucket("bck").object(name).get_reader().read_all() == data
    for tid in sim.targets:
        owned = sum(1 for n in OBJECTS if sim.owner("bck", n) == tid)
        assert counted(sim, f"{tid}:redirected:get") == owned
    assert counted(sim, "redirect:get") == len(OBJECTS)


def test_list_in_pages_every_object_once_with_its_props(sim: SimAis, client: Client) -> None:
    before = time.time_ns()
    listed = list(client.bucket("bck").list_objects_iter(
        prefix="data/", props="name,size,checksum,version,atime", page_size=4))
    names = [e.name for e in listed]
    want = sorted(n for n in OBJECTS if n.startswith("data/"))
    assert names == want
    assert counted(sim, "list") == math.ceil(len(want) / 4)  # the page size was honored
    for e in listed:
        data = OBJECTS[e.name]
        assert e.size == len(data)
        assert e.checksum == xxhash.xxh64(data).hexdigest()
        assert e.version == "1"
        assert e.is_cached() and e.is_ok()
        atime = time.strptime(e.atime, "%d %b %y %H:%M UTC")  # Go's time.RFC822, in UTC
        assert abs(time.mktime(atime) - time.mktime(time.gmtime(before / 1e9))) < 120
    later = client.bucket("bck").list_all_objects(prefix="data/", start_after="data/f22.bin")
    assert [e.name for e in later] == ["data/f23.bin", "data/f24.bin", "data/sub/deeper/leaf",
                                       "data/sub/inner.txt"]
    # without props: name and size only
    bare = client.bucket("bck").list_objects(prefix="top").entries
    assert [(e.name, e.size, e.checksum, e.version) for e in bare] == [("top.txt", 10, "", "")]


def test_no_recursion_lists_virtual_directories(client: Client) -> None:
    bck = client.bucket("bck")
    top = bck.list_all_objects(flags=[ListObjectFlag.NO_RECURSION])
    assert [(e.name, e.flags & (1 << 8) != 0) for e in top] == [
        ("data/", True), ("empty", False), ("top.txt", False)]
    sub = bck.list_all_objects(prefix="data/sub/", flags=[ListObjectFlag.NO_RECURSION])
    assert [e.name for e in sub] == ["data/sub/deeper/", "data/sub/inner.txt"]
    nodirs = bck.list_all_objects(
        prefix="data/sub/", flags=[ListObjectFlag.NO_RECURSION, ListObjectFlag.NO_DIRS])
    assert [e.name for e in nodirs] == ["data/sub/inner.txt"]


def test_get_whole_and_byte_ranges(sim: SimAis, client: Client) -> None:
    name = "data/f20.bin"
    data = OBJECTS[name]
    obj = client.bucket("bck").object(name)
    assert obj.get_reader().read_all() == data
    for spec, want in [("bytes=0-9", data[:10]), ("bytes=10-", data[10:]),
                       ("bytes=-7", data[-7:]), ("bytes=100-100000", data[100:])]:
        assert obj.get_reader(byte_range=spec).read_all() == want, spec
    for spec in [f"bytes={len(data)}-", f"bytes={len(data) + 10}-{len(data) + 20}"]:
        with pytest.raises(AISError) as exc:
            obj.get_reader(byte_range=spec).read_all()
        assert exc.value.status_code == 416
    assert counted(sim, f"{sim.owner('bck', name)}:redirected:get") == 7
    # the headers the SDK does not surface from a GET, as the Go target sends them
    url = f"{sim.url}/v1/objects/bck/{name}?provider=ais"
    with httpx.Client(follow_redirects=True, timeout=10) as http:
        r = http.get(url, headers={"Range": "bytes=5-14"})
        assert r.status_code == 206 and r.content == data[5:15]
        assert r.headers["Content-Range"] == f"bytes 5-14/{len(data)}"
        assert r.headers["Content-Length"] == "10"
        assert r.headers["ais-checksum-value"] == xxhash.xxh64(data).hexdigest()  # whole object
        assert r.headers["ais-version"] == "1"
        r = http.get(url, headers={"Range": f"bytes={len(data)}-"})
        assert r.status_code == 416 and r.headers["Content-Range"] == f"bytes */{len(data)}"


def test_direct_get_is_served_by_the_owner_without_a_redirect(
    sim: SimAis, client: Client,
) -> None:
    names = [f"data/f{i:02d}.bin" for i in range(0, 25, 3)]
    for name in names:
        got = client.bucket("bck").object(name).get_reader(direct=True).read_all()
        assert got == OBJECTS[name]
    stats = sim.stats()
    assert stats.get("get") == len(names)  # nothing reached the proxy
    assert "redirect:get" not in stats
    for tid in sim.targets:
        owned = [n for n in names if sim.owner("bck", n) == tid]
        assert stats.get(f"{tid}:direct:get", 0) == len(owned)
        assert stats.get(f"{tid}:bytes_served", 0) == sum(len(OBJECTS[n]) for n in owned)


def test_direct_get_follows_a_target_that_joined(sim: SimAis, client: Client) -> None:
    smap = client.cluster().get_info()
    version = smap.version
    before = {n: sim.owner("bck", n) for n in OBJECTS}
    reader_client = Client(sim.url, retry_config=retry())
    # the reader's client caches the old smap
    assert reader_client.bucket("bck").object("top.txt").get_reader(direct=True).read_all()
    new = sim.add_target()
    moved = [n for n in OBJECTS if sim.owner("bck", n) == new and OBJECTS[n]]
    assert moved and all(before[n] != new for n in moved)
    assert client.cluster().get_info().version == version + 1
    name = moved[0]
    assert sim.holder("bck", name) == new  # the rebalance moved it
    was = sim.stats()
    got = reader_client.bucket("bck").object(name).get_reader(direct=True).read_all()
    assert got == OBJECTS[name]
    now = sim.stats()

    def delta(key: str) -> int:
        return now.get(key, 0) - was.get(key, 0)

    # the old owner answered 404, the SDK refetched the smap and went to the new owner
    assert delta(f"{before[name]}:direct:get") == 1
    assert delta(f"{new}:direct:get") == 1
    assert delta("smap") == 1
    sim.remove_target(new)
    assert sim.read_object("bck", name) == OBJECTS[name]


def test_head_props(sim: SimAis, client: Client) -> None:
    name = "data/f03.bin"
    meta = sim.meta("bck", name)
    assert meta is not None
    attrs = client.bucket("bck").object(name).head(props="checksum,atime,version")
    assert attrs.present
    assert attrs.size == len(OBJECTS[name])
    assert (attrs.checksum_type, attrs.checksum_value) == (
        "xxhash2", xxhash.xxh64(OBJECTS[name]).hexdigest())
    assert attrs.obj_version == "1"
    assert attrs.access_time == str(meta.atime)
    # a GET reports the atime it found and leaves its own (Go: set once the body is sent)
    assert client.bucket("bck").object(name).get_reader().read_all() == OBJECTS[name]
    after = client.bucket("bck").object(name).head(props="atime").access_time
    assert int(after) > meta.atime
    with httpx.Client(follow_redirects=True, timeout=10) as http:
        got = http.get(f"{sim.url}/v1/objects/bck/{name}?provider=ais")
    assert got.headers["ais-atime"] == after
    bare = client.bucket("bck").object(name).head()  # the SDK asks for name,size
    assert (bare.size, bare.checksum_value, bare.obj_version) == (len(OBJECTS[name]), "", "")
    with pytest.raises(AISError) as exc:  # a HEAD carries no body: the SDK cannot tell more
        client.bucket("bck").object("missing").head()
    assert exc.value.status_code == 404


@pytest.mark.parametrize("kind", ["xxhash2", "md5", "sha256", "crc32c"])
def test_put_content_then_read_back_with_its_checksum(tmp_path: Path, kind: str) -> None:
    data = bytes(range(256)) * 41 + b"tail"
    independent = {
        "xxhash2": xxhash.xxh64(data).hexdigest(),
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "crc32c": "",  # filled below: the test's own bitwise CRC-32C
    }
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    independent["crc32c"] = f"{crc ^ 0xFFFFFFFF:08x}"
    with SimAis(tmp_path / "ais", targets=2) as sim:
        sim.create_bucket("b", checksum=kind)
        client = Client(sim.url, retry_config=retry())
        obj = client.bucket("b").object("put/me")
        obj.get_writer().put_content(data)
        obj.get_writer().put_content(data + b"!")  # a second PUT: version 2
        obj.get_writer().put_content(data)
        reader = obj.get_reader()
        assert reader.read_all() == data
        attrs = reader.attributes
        assert (attrs.checksum_type, attrs.checksum_value) == (kind, independent[kind])
        assert attrs.obj_version == "3"
        assert sim.read_object("b", "put/me") == data
        assert counted(sim, "redirect:put") == 3


def test_a_corrupted_object_reads_back_against_its_recorded_checksum(
    sim: SimAis, client: Client,
) -> None:
    name = "data/f05.bin"
    sim.corrupt("bck", name)
    reader = client.bucket("bck").object(name).get_reader()
    got = reader.read_all()
    assert len(got) == len(OBJECTS[name]) and got != OBJECTS[name]
    recorded = reader.attributes.checksum_value
    assert recorded == xxhash.xxh64(OBJECTS[name]).hexdigest() != xxhash.xxh64(got).hexdigest()


def test_put_with_a_wrong_client_checksum_is_rejected(sim: SimAis) -> None:
    url = f"{sim.url}/v1/objects/bck/top.txt?provider=ais"
    good = hashlib.md5(b"new").hexdigest()
    with httpx.Client(follow_redirects=True, timeout=10) as http:
        bad = http.put(url, content=b"new", headers={"Ais-Checksum-Type": "md5",
                                                     "Ais-Checksum-Value": "0" * 32})
        assert bad.status_code == 400 and "BAD DATA CHECKSUM" in bad.json()["message"]
        assert sim.read_object("bck", "top.txt") == OBJECTS["top.txt"]
        ok = http.put(url, content=b"new", headers={"Ais-Checksum-Type": "md5",
                                                    "Ais-Checksum-Value": good})
        assert ok.status_code == 200
    assert sim.read_object("bck", "top.txt") == b"new"


def test_delete_then_not_found(sim: SimAis, client: Client) -> None:
    obj = client.bucket("bck").object("data/f11.bin")
    obj.delete()
    assert not sim.is_cached("bck", "data/f11.bin")
    with pytest.raises(ErrObjNotFound):
        obj.get_reader().read_all()
    with pytest.raises(ErrObjNotFound):
        obj.delete()
    with pytest.raises(ErrBckNotFound):
        client.bucket("nobucket").list_all_objects()
    with pytest.raises(ErrRemoteBckNotFound):
        client.bucket("nobucket", provider="aws").list_all_objects()


def test_prefetch_a_prefix_then_evict(sim: SimAis, client: Client) -> None:
    sim.create_bucket("remote", provider="aws")
    for i in range(6):
        sim.put_remote("remote", f"pre/{i}", f"remote {i}".encode() * 50, "aws")
    sim.put_remote("remote", "other/0", b"not prefetched", "aws")
    sim.job_delay = 0.2  # long enough to see the job running, even on a busy machine
    bck = client.bucket("remote", provider="aws")
    assert not any(e.is_cached() for e in bck.list_all_objects())
    job_id = bck.objects(obj_template="pre/").prefetch()
    job = client.job(job_id=job_id)
    assert job.status().end_time == 0
    result = job.wait(timeout=10)
    assert result.success
    cached = {e.name: e.is_cached() for e in bck.list_all_objects()}
    assert cached == {**{f"pre/{i}": True for i in range(6)}, "other/0": False}
    for i in range(6):
        name = f"pre/{i}"
        assert sim.is_cached("remote", name, "aws")
        meta = sim.meta("remote", name, "aws")
        assert meta is not None and meta.cksum_value == xxhash.xxh64(
            f"remote {i}".encode() * 50).hexdigest()
    sim.job_delay = 0.0
    evict_id = bck.objects(obj_template="pre/{1..3}").evict()
    assert client.job(job_id=evict_id, job_kind="evict-listrange").wait(timeout=10).success
    not_cached = {e.name for e in bck.list_all_objects(flags=[ListObjectFlag.NOT_CACHED])}
    assert not_cached == {"pre/1", "pre/2", "pre/3", "other/0"}
    assert not sim.is_cached("remote", "pre/2", "aws")
    # an evicted object is still readable: a cold GET brings it back
    assert bck.object("pre/2").get_reader().read_all() == b"remote 2" * 50
    assert sim.is_cached("remote", "pre/2", "aws")


def test_a_fault_on_one_target(sim: SimAis, client: Client) -> None:
    victim = sim.owner("bck", "data/f01.bin")
    fine = next(n for n in OBJECTS if OBJECTS[n] and sim.owner("bck", n) != victim)
    sim.set_faults(status=500, routes=["get"], nodes=[victim])
    with pytest.raises(AISError) as exc:
        client.bucket("bck").object("data/f01.bin").get_reader().read_all()
    assert exc.value.status_code == 500
    assert client.bucket("bck").object(fine).get_reader().read_all() == OBJECTS[fine]
    # one failure only: a client that retries once gets the data
    sim.set_faults(status=500, routes=["get"], nodes=[victim], count=1)
    patient = Client(sim.url, retry_config=retry(http_total=1))
    got = patient.bucket("bck").object("data/f01.bin").get_reader().read_all()
    assert got == OBJECTS["data/f01.bin"]
    assert counted(sim, f"{victim}:get") == 3
