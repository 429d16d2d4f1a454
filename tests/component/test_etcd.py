"""Worker membership read from a real etcd server, with workers registered under leases."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from alluxiofuse.backends.cluster.etcd import EtcdMembership
from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.cluster.ring import HashRing, WorkerIdentity
from alluxiofuse.errors import BackendError, ProtocolError
from tests.support.etcdserver import enable_auth, etcd_server, register, revoke

PREFIX = "/ServiceDiscovery/DefaultAlluxioCluster/"


def registration(host: str, port: int = 28080) -> str:
    identity = WorkerIdentity.for_static_host(host).identifier.hex()
    return json.dumps({"Identity": {"version": 1, "identifier": identity},
                       "WorkerNetAddress": {"Host": host, "RpcPort": 29999,
                                            "HttpServerPort": port}})


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    with etcd_server(tmp_path / "etcd") as client:
        yield client


@pytest.mark.expect_log(r"^etcd key \S+/worker-broken.: not a worker registration", count=3)
async def test_registered_workers_are_read_and_departures_seen(
    etcd: str, caplog: pytest.LogCaptureFixture,
) -> None:
    leases = {h: register(etcd, f"{PREFIX}worker-{h}", registration(h, 28081))
              for h in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4")}
    register(etcd, "/ServiceDiscovery/OtherCluster/worker-x", registration("10.9.9.9"))
    register(etcd, f"{PREFIX}worker-broken", "{not json")
    membership = EtcdMembership([etcd.removeprefix("http://")])
    try:
        workers = await membership.workers()
        assert sorted(workers.values()) == [WorkerAddress(f"10.0.0.{i}", 28081)
                                            for i in range(1, 5)]
        assert "worker-broken" in caplog.text  # skipped, and said so
        keys = [f"s3://bucket/data/file-{i:03d}.bin" for i in range(200)]
        before = HashRing(workers, 64)
        revoke(etcd, leases["10.0.0.4"])  # the worker died and its lease ran out
        after = HashRing(await membership.workers(), 64)
        assert len(after) == 3
        moved = [k for k in keys if before.owner(k) != after.owner(k)]
        assert moved and all(before.owner(k).host == "10.0.0.4" for k in moved)
        register(etcd, f"{PREFIX}worker-10.0.0.4", registration("10.0.0.4", 28081))
        rejoined = HashRing(await membership.workers(), 64)
        assert all(rejoined.owner(k) == before.owner(k) for k in keys)
    finally:
        await membership.aclose()


async def test_the_first_endpoint_that_answers_is_used(etcd: str) -> None:
    register(etcd, f"{PREFIX}worker-a", registration("10.0.0.1"))
    membership = EtcdMembership(["127.0.0.1:1", etcd], timeout=2)  # port 1: refused
    try:
        assert list((await membership.workers()).values()) == [WorkerAddress("10.0.0.1")]
    finally:
        await membership.aclose()


async def test_no_reachable_endpoint_is_a_backend_error() -> None:
    membership = EtcdMembership(["127.0.0.1:1", "127.0.0.1:2"], timeout=2)
    try:
        with pytest.raises(BackendError, match="no etcd endpoint answered"):
            await membership.workers()
    finally:
        await membership.aclose()


async def test_user_and_password_are_used_when_etcd_wants_them(etcd: str) -> None:
    token = enable_auth(etcd, "s3cret")
    register(etcd, f"{PREFIX}worker-a", registration("10.0.0.1"), token=token)
    anonymous = EtcdMembership([etcd])
    good = EtcdMembership([etcd], username="root", password="s3cret")
    bad = EtcdMembership([etcd], username="root", password="wrong")
    try:
        with pytest.raises(ProtocolError):  # etcd refuses reads without a token
            await anonymous.workers()
        assert list((await good.workers()).values()) == [WorkerAddress("10.0.0.1")]
        good._token = "stale-token"  # an expired token is replaced once, transparently
        assert list((await good.workers()).values()) == [WorkerAddress("10.0.0.1")]
        with pytest.raises(ProtocolError, match="refused user 'root'"):
            await bad.workers()
    finally:
        for m in (anonymous, good, bad):
            await m.aclose()
