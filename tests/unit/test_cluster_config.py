"""Cluster options: Alluxio properties, worker lists, etcd endpoints, operator helpers."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from alluxiofuse.backends.cluster.client import LoadProgress
from alluxiofuse.backends.cluster.discovery import DnsWorkers, StaticWorkers
from alluxiofuse.backends.cluster.membership import WorkerAddress, parse_etcd_endpoints
from alluxiofuse.backends.cluster.ring import WorkerIdentity
from alluxiofuse.cli.commands import ProgressBar, reported_size, to_uri
from alluxiofuse.config import build_config
from alluxiofuse.errors import BackendError, ConfigError

BASE = {"source": "/src", "mountpoint": "/mnt"}
VNODES_KEY = "alluxio.user.worker.selection.policy.consistent.hash.virtual.node.count.per.worker"
OSS_VNODES_KEY = "alluxio.user.consistent.hash.virtual.node.count.per.worker"


def test_defaults_are_alluxios() -> None:
    c = build_config(BASE)
    assert not c.cluster
    assert (c.virtual_nodes, c.worker_http_port, c.worker_page_size, c.cluster_name) == (
        2000, 28080, 1 << 20, "DefaultAlluxioCluster")


@pytest.mark.parametrize("key", [VNODES_KEY, OSS_VNODES_KEY])
def test_virtual_nodes_take_either_alluxio_property_name(key: str) -> None:
    assert build_config(BASE, alluxio_properties={key: "5"}).virtual_nodes == 5


def test_properties_set_options_and_explicit_options_win() -> None:
    props = {"alluxio.worker.page.store.page.size": "4MB", "alluxio.cluster.name": "prod",
             "alluxio.worker.http.server.port": "29000", "alluxio.etcd.endpoints": "e1"}
    c = build_config({**BASE, "cluster_name": "staging"}, alluxio_properties=props)
    assert (c.worker_page_size, c.cluster_name, c.worker_http_port, c.etcd) == (
        4 << 20, "staging", 29000, "e1")
    assert c.cluster


def test_properties_from_the_config_file_table_merge_under_the_command_line() -> None:
    c = build_config({**BASE, "alluxio_properties": {VNODES_KEY: 7, "alluxio.cluster.name": "a"}},
                     alluxio_properties={"alluxio.cluster.name": "b"})
    assert (c.virtual_nodes, c.cluster_name) == (7, "b")


@pytest.mark.parametrize("props,message", [
    ({"alluxio.user.consistent.hash.virtual.node.count": "5"}, "unknown Alluxio property"),
    ({VNODES_KEY: "0"}, "at least 1"),
    ({VNODES_KEY: "5", OSS_VNODES_KEY: "6"}, "twice"),
    ({"alluxio.worker.http.server.port": "70000"}, "port"),
])
def test_bad_properties_are_refused(props: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(BASE, alluxio_properties=props)


@pytest.mark.parametrize("values,message", [
    ({"workers": "a", "etcd": "b"}, "one way"),
    ({"worker_api": "java"}, "oss or enterprise"),
    ({"worker_timeout": "0"}, "positive"),
    ({"worker_page_size": "1KiB"}, "between"),
    ({"membership_refresh": "0"}, "positive"),
])
def test_bad_cluster_options_are_refused(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({**BASE, **values})


def test_commands_without_a_mount_need_no_source() -> None:
    assert build_config({"etcd": "e"}, mount=False).cluster
    with pytest.raises(ConfigError, match="SOURCE"):
        build_config({"etcd": "e"})


@pytest.mark.parametrize("spec,urls", [
    ("e1", ["http://e1:2379"]),
    ("e1:1234, http://e2:5,https://e3:6/", ["http://e1:1234", "http://e2:5", "https://e3:6"]),
    ("[::1]:7,[fe80::2]", ["http://[::1]:7", "http://[fe80::2]:2379"]),
])
def test_etcd_endpoints(spec: str, urls: list[str]) -> None:
    assert parse_etcd_endpoints(spec) == urls


@pytest.mark.parametrize("spec", ["", "a,", "ftp://x:1", "h:port", "h:99999"])
def test_bad_etcd_endpoints(spec: str) -> None:
    with pytest.raises(ConfigError, match="--etcd"):
        parse_etcd_endpoints(spec)


async def test_static_workers_describe_themselves() -> None:
    source = StaticWorkers({WorkerIdentity(b"\1" * 16): WorkerAddress("h", 1)})
    assert source.description == "workers h:1"
    assert await source.workers() == {WorkerIdentity(b"\1" * 16): WorkerAddress("h", 1)}


async def test_dns_workers_are_the_addresses_a_name_resolves_to() -> None:
    workers = await DnsWorkers("localhost", 28081).workers()
    assert WorkerAddress("127.0.0.1", 28081) in workers.values()
    assert WorkerIdentity.for_static_host("127.0.0.1") in workers


async def test_an_unresolvable_name_is_a_backend_error() -> None:
    with pytest.raises(BackendError, match=r"no-such-host\.invalid"):
        await DnsWorkers("no-such-host.invalid", timeout=5).workers()


def test_to_uri_translates_paths_inside_alluxiofuse_mounts(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "36 35 0:31 / /mnt/data rw - fuse.alluxiofuse s3://bucket/set rw\n"
        "37 35 0:32 / /mnt/data/local\\040dir rw - fuse.alluxiofuse /srv/d rw\n"
        "38 35 0:33 / /mnt/other rw - fuse.sshfs host:/x rw\n")
    assert to_uri("/mnt/data/a/b.bin", str(mountinfo)) == "s3://bucket/set/a/b.bin"
    assert to_uri("/mnt/data", str(mountinfo)) == "s3://bucket/set"
    assert to_uri("/mnt/data/local dir/x", str(mountinfo)) == "file:///srv/d/x"
    assert to_uri("/mnt/other/x", str(mountinfo)) == "file:///mnt/other/x"
    assert to_uri("gs://b/k", str(mountinfo)) == "gs://b/k"


@pytest.mark.parametrize("text,size", [("1234B", 1234), ("12.50MB", 12.5 * (1 << 20)),
                                        ("2 GiB out of 4GiB", 2 << 30), ("n/a", None)])
def test_parse_size(text: str, size: int | None) -> None:
    assert reported_size(text) == size


def test_progress_bar_draws_the_fraction_once_the_total_is_known() -> None:
    out = io.StringIO()
    now = [0.0]
    bar = ProgressBar(out, "s3://b/p", clock=lambda: now[0])
    running = LoadProgress("RUNNING", "", {"Bytes Loaded": "512B", "Files Processed": "1"})
    bar.update(running)
    bar.update(running)  # unchanged: not drawn again
    bar.total = 2048
    now[0] = 1.0
    bar.update(LoadProgress("RUNNING", "", {"Bytes Loaded": "1024B", "Files Processed": "2"}))
    bar.finish("SUCCEEDED")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("RUNNING") and "512B 1 files" in lines[0]
    assert "[###############...............]  50% 1.0KiB of 2.0KiB 2 files, 1.0KiB/s" in lines[1]
    assert lines[2:] == ["load of s3://b/p: SUCCEEDED"]


@pytest.mark.parametrize("argv,message", [
    (["locate", "s3://b/k"], "name the workers"),
    (["locate", "--workers", "w1", "--count", "0", "s3://b/k"], "--count must be at least 1"),
    (["load", "--etcd", "e", "--poll", "0", "s3://b/k"], "--poll must be positive"),
    (["locate", "--workers", "w1,w1", "s3://b/k"], "names host 'w1' twice"),
    (["load", "--etcd", "ftp://e", "s3://b/k"], "not an http"),
    (["locate", "--workers", "w", "--alluxio-property", "nokey", "x"], "needs key=value"),
])
def test_cluster_commands_refuse_bad_usage(argv: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from alluxiofuse.cli.main import main

    assert main(argv) == 1
    assert message in capsys.readouterr().err


def test_locate_prints_owners_for_a_static_list(capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from alluxiofuse.cli.main import main

    hosts = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert main(["locate", "--workers", ",".join(hosts), "--count", "4", "--alluxio-property",
                 f"{OSS_VNODES_KEY}=5", "s3://bucket/a.txt"]) == 0
    [report] = json.loads(capsys.readouterr().out)
    # PROTOCOL.md 2.6, row 1: .1 > .2 > .3 > .4 with 5 virtual nodes
    assert report["preference"] == [f"{h}:28080" for h in hosts]
    assert report["owner"] == "10.0.0.1:28080"
    assert report["file_id"] == "e67b7b993c608a4ed7a7acb69ada26b4bbcfc98db96795b064d4f453bd1fb81f"
