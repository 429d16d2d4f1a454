"""Real mounts reading through simulated Alluxio 3.x workers registered in a real etcd."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from alluxiofuse.backends.cluster.membership import WorkerAddress
from alluxiofuse.backends.cluster.ring import HashRing, WorkerIdentity, path_id
from tests.sim.cluster import CLUSTER, REPO, SimCluster, SimProcess, sim_cluster
from tests.support.etcdserver import etcd_server
from tests.support.mounts import MountFactory, make_tree, read_bytes, with_timeout

pytestmark = pytest.mark.integration

MiB = 1 << 20


# Tests take ``etcd`` before ``mount``: fixtures are torn down in the reverse order, so the
# mount ends before its etcd does (a membership refresh in between would find no etcd and
# log a warning the test did not declare).
@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "etcd").mkdir()
    with etcd_server(tmp_path / "etcd" / "data") as url:
        yield url


def _cluster_options(etcd: str, *extra: str) -> tuple[str, ...]:
    return ("--etcd", etcd, "--cluster-name", CLUSTER, *extra)


def _owner(cluster: SimCluster, rel: str) -> SimProcess:
    """The worker that owns ``rel`` on the ring of the cluster's live workers."""
    members = {WorkerIdentity(bytes.fromhex(w.identity), 1): WorkerAddress("127.0.0.1", w.port)
               for w in cluster.workers if w.proc.poll() is None}
    uri = f"file://{cluster.ufs}/{rel}" if rel else f"file://{cluster.ufs}"
    owner = HashRing(members, cluster.vnodes).owner(uri)
    return next(w for w in cluster.workers if w.port == owner.http_port)


def _pages(size: int) -> int:
    return -(-size // MiB)


def test_every_file_reads_right_through_three_workers(
    etcd: str, mount: MountFactory, tmp_path: Path,
) -> None:
    content = make_tree(tmp_path / "ufs", files=120)
    with sim_cluster(etcd, tmp_path / "ufs", tmp_path / "store", 3) as cluster:
        cluster.load()
        m = mount(cluster.ufs, *_cluster_options(etcd))
        for rel, data in content.items():
            got = read_bytes(m.path / rel)
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), rel
        served = [w.stats().get("file", 0) for w in cluster.workers]
        assert all(served), served  # every worker owns some files
        # Each page came from its worker once: nothing fell back to the under-storage.
        assert sum(served) == sum(_pages(len(d)) for d in content.values())


@pytest.mark.expect_log(r"^worker \S+ set aside for 30s, .*: cannot connect", count=1)
def test_a_worker_killed_mid_read_costs_no_error(
    etcd: str, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    data = os.urandom(48 * MiB)
    (ufs / "big.bin").write_bytes(data)
    with sim_cluster(etcd, ufs, tmp_path / "store", 3) as cluster:
        cluster.load()
        m = mount(cluster.ufs, *_cluster_options(etcd), "--max-readahead", "4MiB")
        owner = _owner(cluster, "big.bin")
        chunks = []

        def read() -> None:
            with open(m.path / "big.bin", "rb") as f:
                while chunk := f.read(256 * 1024):
                    chunks.append(chunk)
                    if len(chunks) == 16:  # 4 MiB in: the owner dies
                        owner.kill()

        with_timeout(read, 120)
        assert owner.proc.poll() is not None
        assert hashlib.sha256(b"".join(chunks)).digest() == hashlib.sha256(data).digest()
        assert "set aside" in m.log_text()


@pytest.mark.expect_log(r"^worker \S+ set aside for 30s, .*: no answer within 1\.0s$", count=1)
def test_a_stalled_worker_bounds_latency_then_falls_back(
    etcd: str, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    files = {f"f{i}.bin": os.urandom(100_000 + i) for i in range(30)}
    for name, data in files.items():
        (ufs / name).write_bytes(data)
    with sim_cluster(etcd, ufs, tmp_path / "store", 3) as cluster:
        cluster.load()
        timeout = 1.0
        m = mount(cluster.ufs, *_cluster_options(etcd, "--worker-timeout", str(timeout)),
                  "--dir-readahead", "0")
        stalled = _owner(cluster, "f0.bin")
        stalled.faults(stall=True, routes=["file"])
        mine = [n for n in files if _owner(cluster, n) is stalled]
        started = time.monotonic()
        for name in mine:
            assert read_bytes(m.path / name) == files[name]
        elapsed = time.monotonic() - started
        # One deadline for the first file; the rest go straight to the under-storage.
        assert elapsed < timeout * 3, (elapsed, len(mine))
        assert stalled.stats()["file"] == 1


def test_membership_changes_while_mounted_are_picked_up(
    etcd: str, mount: MountFactory, tmp_path: Path,
) -> None:
    content = make_tree(tmp_path / "ufs", files=60, seed=7)
    with sim_cluster(etcd, tmp_path / "ufs", tmp_path / "store", 2) as cluster:
        # Directory read-ahead off: this counts the pages the reads below fetch, and only
        # those (read-ahead of the next files in listing order could take some first).
        m = mount(cluster.ufs, *_cluster_options(etcd, "--membership-refresh", "0.2"),
                  "--dir-readahead", "0")
        joined = cluster.start_worker(lease_ttl=2)
        cluster.load()  # placed by the ring of three
        _wait_for(lambda: f"127.0.0.1:{joined.port}" in m.log_text().split("joined:")[-1])
        owned = [rel for rel in content if content[rel] and _owner(cluster, rel) is joined]
        assert owned
        for rel in owned:
            assert read_bytes(m.path / rel) == content[rel]
        assert joined.stats()["file"] == sum(_pages(len(content[rel])) for rel in owned)

        joined.kill()  # its lease runs out; the mount reads its files elsewhere
        _wait_for(lambda: f"left: 127.0.0.1:{joined.port}" in m.log_text(), timeout=30)
        for rel, data in content.items():
            assert read_bytes(m.path / rel) == data


def _wait_for(condition: object, timeout: float = 10.0) -> None:
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def test_locate_prints_the_owner_of_a_path_inside_the_mount(
    etcd: str, mount: MountFactory, tmp_path: Path,
) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    (ufs / "a.bin").write_bytes(b"a")
    with sim_cluster(etcd, ufs, tmp_path / "store", 3) as cluster:
        m = mount(cluster.ufs, *_cluster_options(etcd))
        result = subprocess.run(
            [sys.executable, "-m", "alluxiofuse", "locate", *_cluster_options(etcd),
             "--count", "3", str(m.path / "a.bin"), "s3://bucket/x"],
            capture_output=True, text=True, timeout=60, check=True)
        report = json.loads(result.stdout)
        assert report[0]["uri"] == f"file://{cluster.ufs}/a.bin"
        assert report[0]["owner"] == f"127.0.0.1:{_owner(cluster, 'a.bin').port}"
        assert len(set(report[0]["preference"])) == 3
        assert report[1]["uri"] == "s3://bucket/x"


def _load_cmd(etcd: str, path: Path) -> list[str]:
    return [sys.executable, "-m", "alluxiofuse", "load", *_cluster_options(etcd),
            "--poll", "0.05", str(path)]


def test_load_shows_progress_and_fills_the_owners_caches(etcd: str, tmp_path: Path) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    sizes = [i * 7000 for i in range(1, 21)]
    for i, size in enumerate(sizes):
        (ufs / f"f{i}").write_bytes(os.urandom(size))
    with sim_cluster(etcd, ufs, tmp_path / "store", 3, load_delay=0.02) as cluster:
        result = subprocess.run(_load_cmd(etcd, cluster.ufs), capture_output=True, text=True,
                                timeout=60, cwd=REPO)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        assert lines[-1] == f"load of file://{cluster.ufs}: SUCCEEDED"
        assert any("100%" in line and f"of {sum(sizes) / MiB:.1f}MiB" in line
                   for line in lines), lines
        cached = sorted((tmp_path / "store").glob("*/*/0"))
        assert len(cached) == len(sizes)  # page 0 of every file, at its owner
        for i in range(len(sizes)):
            assert (tmp_path / "store" / _owner(cluster, f"f{i}").identity /
                    path_id(f"file://{cluster.ufs}/f{i}") / "0").exists()


def test_ctrl_c_stops_the_load_job(etcd: str, tmp_path: Path) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    for i in range(40):
        (ufs / f"f{i}").write_bytes(b"x" * 1000)
    with sim_cluster(etcd, ufs, tmp_path / "store", 2, load_delay=0.5) as cluster:
        proc = subprocess.Popen(_load_cmd(etcd, cluster.ufs), stderr=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, text=True, cwd=REPO)
        try:
            assert proc.stderr is not None
            first = with_timeout(proc.stderr.readline, 30)
            assert str(first).startswith("RUNNING"), first
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 130
            rest = proc.stderr.read()
        finally:
            proc.kill()
            proc.wait(10)
        assert "stopped (job stopped)" in rest
        owner = _owner(cluster, "")
        uri = f"file://{cluster.ufs}"

        def state() -> str:
            return str(httpx.get(f"{owner.url}/v1/load", timeout=5, params={
                "path": uri, "opType": "progress"}).json()["jobState"])
        _wait_for(lambda: state() == "STOPPED")
        assert len(list((tmp_path / "store").glob("*/*/0"))) < 40


def test_load_reports_a_worker_that_fails_it(etcd: str, tmp_path: Path) -> None:
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    (ufs / "f").write_bytes(b"x")
    with sim_cluster(etcd, ufs, tmp_path / "store", 1) as cluster:
        cluster.workers[0].faults(drop=True, routes=["load"])
        result = subprocess.run(_load_cmd(etcd, cluster.ufs), capture_output=True, text=True,
                                timeout=60, cwd=REPO)
        assert result.returncode == 1
        assert "already running: following it" in result.stderr
        assert result.stderr.rstrip().splitlines()[-1].startswith(
            "alluxiofuse: load failed: http://127.0.0.1:")
        assert "Traceback" not in result.stderr


def test_worker_rest_metrics_count_the_calls_made(
    etcd: str, mount: MountFactory, tmp_path: Path,
) -> None:
    """Known reads through a worker move the REST histogram and result counters, under
    Alluxio's own names, by the pages read; an uncached file is counted as a fallback."""
    ufs = tmp_path / "ufs"
    ufs.mkdir()
    cached, uncached = os.urandom(3 * MiB), os.urandom(2 * MiB + 5)
    (ufs / "cached.bin").write_bytes(cached)
    (ufs / "uncached.bin").write_bytes(uncached)
    (ufs / "busy.bin").write_bytes(cached[:MiB])
    with sim_cluster(etcd, ufs, tmp_path / "store", 1) as cluster:
        cluster.load("cached.bin")
        cluster.load("busy.bin")
        m = mount(cluster.ufs, *_cluster_options(etcd))
        before = m.scrape()
        assert read_bytes(m.path / "cached.bin") == cached
        after = m.scrape()

        def delta(name: str, **labels: str) -> float:
            return after(name, **labels) - before.get(name, 0.0, **labels)

        assert delta("alluxio_http_server_result_total", method="page", state="success") == 3
        assert delta("alluxio_http_server_call_latency_ms_count", method="page",
                     success="true") == 3
        assert delta("alluxio_http_server_call_latency_ms_bucket", method="page",
                     success="true", le="+Inf") == 3
        assert delta("alluxiofuse_worker_read_bytes_total") == 3 * MiB
        assert delta("alluxiofuse_ufs_fallback_bytes_total") == 0
        assert cluster.workers[0].stats().get("file", 0) == 3

        before = after
        assert read_bytes(m.path / "uncached.bin") == uncached
        after = m.scrape()
        assert delta("alluxiofuse_ufs_fallback_bytes_total") == len(uncached)
        assert after.sum("alluxiofuse_ufs_fallback_total", op="read") - before.sum(
            "alluxiofuse_ufs_fallback_total", op="read") == 3
        assert delta("alluxiofuse_worker_read_bytes_total") == 0

        # A worker answering 503 is asked again, --worker-retries times, then read around.
        cluster.workers[0].faults(status=503, routes=["file"])
        before = after
        assert read_bytes(m.path / "busy.bin") == cached[:MiB]
        after = m.scrape()
        assert delta("alluxiofuse_worker_retries_total", method="page") == 2
        assert delta("alluxio_http_server_result_total", method="page", state="retryable") == 3
        assert delta("alluxio_http_server_call_latency_ms_count", method="page",
                     success="false") == 3
        assert delta("alluxiofuse_ufs_fallback_bytes_total") == MiB
