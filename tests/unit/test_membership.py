"""Worker lists from --workers and from the workers' etcd registrations."""

from __future__ import annotations

import json

import pytest

from alluxiofuse.backends.cluster.membership import (
    WorkerAddress,
    etcd_prefix,
    parse_static_workers,
    parse_worker_entity,
)
from alluxiofuse.backends.cluster.ring import HashRing, WorkerIdentity
from alluxiofuse.errors import ConfigError, ProtocolError

# PROTOCOL.md 2.2: what a live worker puts under /ServiceDiscovery/<cluster>/worker-<uuid>.
REGISTRATION = {
    "Identity": {"version": 1, "identifier": "190dafab69703a67a21c1226360de7dc"},
    "WorkerNetAddress": {"Host": "10.0.0.1", "ContainerHost": "", "RpcPort": 29999,
                         "DataPort": 29997, "SecureRpcPort": 0, "NettyDataPort": 29997,
                         "WebPort": 30000, "DomainSocketPath": "", "HttpServerPort": 28081},
    "State": "AUTHORIZED", "GenerationNumber": -1,
    "ServiceEntityName": "worker-190dafab-6970-3a67-a21c-1226360de7dc",
}


def test_static_workers_get_alluxios_identities_and_default_port() -> None:
    workers = parse_static_workers("10.0.0.1, 10.0.0.2:29080,[::1]:28082,fe80::1")
    assert list(workers.values()) == [
        WorkerAddress("10.0.0.1"), WorkerAddress("10.0.0.2", 29080),
        WorkerAddress("::1", 28082), WorkerAddress("fe80::1"),
    ]
    assert next(iter(workers)) == WorkerIdentity(
        bytes.fromhex("190dafab69703a67a21c1226360de7dc"), 1)  # PROTOCOL.md 2.6
    assert WorkerAddress("::1", 28082).url() == "http://[::1]:28082"
    assert WorkerAddress("w1").url() == "http://w1:28080"


@pytest.mark.parametrize("spec", [
    "", "a,,b", "a:", "a:0", "a:65536", "a:http", ":80", "[::1", "[::1]x", "a,b,a:29000",
])
def test_bad_static_lists_are_config_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        parse_static_workers(spec)


def test_a_registration_gives_identity_and_http_address() -> None:
    identity, address = parse_worker_entity(json.dumps(REGISTRATION).encode())
    assert identity == WorkerIdentity(bytes.fromhex("190dafab69703a67a21c1226360de7dc"), 1)
    assert address == WorkerAddress("10.0.0.1", 28081)
    # Registered or static, one host is one identity, so one place on the ring.
    assert identity == WorkerIdentity.for_static_host("10.0.0.1")
    ring = HashRing({identity: address}, 5)
    assert ring.owner("s3://bucket/a.txt") == address


def test_a_registration_without_address_fields_takes_the_defaults() -> None:
    bare = {"Identity": {"version": 0, "identifier": "0011223344556677"}}
    identity, address = parse_worker_entity(json.dumps(bare))
    assert identity == WorkerIdentity(bytes.fromhex("0011223344556677"), 0)
    assert address == WorkerAddress("localhost", 28080)


@pytest.mark.parametrize("value", [
    b"", b"not json", b"[]", b"{}", b'{"Identity": null}',
    b'{"Identity": {"version": 1, "identifier": "zz"}}',
    b'{"Identity": {"version": 1, "identifier": "0011"}}',  # too short for a UUID
    b'{"Identity": {"version": 7, "identifier": "0011223344556677"}}',
    b'{"Identity": {"version": [1], "identifier": "0011223344556677"}}',
    *(json.dumps({**REGISTRATION, "WorkerNetAddress": address}).encode() for address in (
        {"Host": "h", "HttpServerPort": "80"}, {"Host": "h", "HttpServerPort": 0},
        {"Host": 5}, ["h"],
    )),
    b"\xff\xfe",
])
def test_malformed_registrations_are_protocol_errors(value: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a worker registration"):
        parse_worker_entity(value)


def test_etcd_prefix() -> None:
    assert etcd_prefix() == "/ServiceDiscovery/DefaultAlluxioCluster/"
    assert etcd_prefix("prod") == "/ServiceDiscovery/prod/"
