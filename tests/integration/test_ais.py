"""An AIStore bucket mounted through AIStore's native API (``ais://``), for real.

The cluster is tests/sim/ais.py (one proxy, three targets) in this process; the daemon is
a process of its own. What the simulator counts says which node served which request.
"""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.sim.ais import SimAis
from tests.support.mounts import CLI, MountFactory, errno_of, read_bytes, run, wait_until

pytestmark = pytest.mark.integration

MiB = 1 << 20


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimAis]:
    root = tmp_path / "ais"
    root.mkdir()
    with SimAis(root, targets=3) as cluster:
        yield cluster


def _tree(sim: SimAis, bucket: str = "data", provider: str = "ais") -> dict[str, bytes]:
    rng = random.Random(21)
    files = {f"train/{i:03d}.jpg": rng.randbytes(rng.randrange(1, 40_000)) for i in range(60)}
    files["shards/shard-0.tar"] = rng.randbytes(9 * MiB + 123)  # more than one read-ahead run
    files["top.txt"] = b"hello\n"
    sim.create_bucket(bucket, provider)
    for name, data in files.items():
        if provider == "ais":
            sim.put_object(bucket, name, data)
        else:
            sim.put_remote(bucket, name, data, provider)
    return files


def _serving(sim: SimAis, route: str) -> dict[str, int]:
    """Requests of ``route`` by how they reached a target: directly, or redirected."""
    stats = sim.stats()
    return {"direct": stats.get(f"direct:{route}", 0),
            "redirect": stats.get(f"redirect:{route}", 0)}


def test_reads_match_the_objects_and_go_straight_to_their_targets(
    sim: SimAis, mount: MountFactory,
) -> None:
    files = _tree(sim)
    m = mount("ais://data", f"--ufs-option=endpoint={sim.url}")
    walked = {os.path.relpath(os.path.join(top, name), m.path)
              for top, _, names in os.walk(m.path) for name in names}
    assert walked == set(files)
    for name, data in files.items():
        st = os.stat(m.path / name)
        assert st.st_size == len(data)
        assert read_bytes(m.path / name) == data, name
    stats = sim.stats()
    # One listing page per directory, and no HEAD: the listings said it all.
    assert stats.get("list", 0) <= 4, stats
    heads = [r for r in sim.requests() if " HEAD /v1/objects/" in r]
    assert heads == [], heads
    # The client placed every object itself, as the cluster does: no redirects.
    gets = _serving(sim, "get")
    assert gets["direct"] >= len(files) and gets["redirect"] == 0, stats
    targets_used = {key.split(":")[0] for key in stats if key.endswith(":direct:get")}
    assert len(targets_used) == 3  # the objects are spread over every target


def test_without_direct_placement_the_proxy_redirects(sim: SimAis, mount: MountFactory) -> None:
    files = _tree(sim)
    m = mount("ais://data/train", f"--ufs-option=endpoint={sim.url}", "--ufs-option=direct=false")
    for name in sorted(os.listdir(m.path))[:10]:
        assert read_bytes(m.path / name) == files[f"train/{name}"]
    gets = _serving(sim, "get")
    assert gets["redirect"] >= 10 and gets["direct"] == 0, sim.stats()


@pytest.mark.expect_log(r"^train/007\.jpg: the bytes read .*do not match", count=2)  # and again
@pytest.mark.expect_log(r"^read: ContentMismatch: train/007\.jpg")  # each EIO answered
def test_a_corrupt_object_is_eio_never_wrong_bytes(sim: SimAis, mount: MountFactory) -> None:
    files = _tree(sim)
    sim.corrupt("data", "train/007.jpg")
    m = mount("ais://data", f"--ufs-option=endpoint={sim.url}")
    for _ in range(3):  # a reader that retries gets EIO each time, never other bytes
        assert errno_of(lambda: read_bytes(m.path / "train/007.jpg")) == errno.EIO
    assert read_bytes(m.path / "train/008.jpg") == files["train/008.jpg"]


def test_writes_become_objects_published_whole(
    sim: SimAis, mount: MountFactory, tmp_path: Path,
) -> None:
    sim.create_bucket("out")
    m = mount("ais://out", f"--ufs-option=endpoint={sim.url}")
    data = random.Random(5).randbytes(3 * MiB + 7)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    shutil.copyfile(local, m.path / "big.bin")
    os.makedirs(m.path / "runs/1")
    (m.path / "runs/1/metrics.json").write_text('{"loss": 0.1}')
    assert sim.read_object("out", "big.bin") == data
    assert sim.read_object("out", "runs/1/metrics.json") == b'{"loss": 0.1}'
    meta = sim.meta("out", "big.bin")
    assert meta is not None and meta.size == len(data)
    # The PUT carried the file's checksum, which the target checked before publishing.
    puts = [r for r in sim.requests() if " PUT " in r and "big.bin" in r]
    assert puts
    os.rename(m.path / "runs", m.path / "old-runs")
    assert sorted(os.listdir(m.path)) == ["big.bin", "old-runs"]
    assert sim.read_object("out", "old-runs/1/metrics.json") == b'{"loss": 0.1}'
    assert not sim.is_cached("out", "runs/1/metrics.json")
    os.unlink(m.path / "big.bin")
    assert sim.meta("out", "big.bin") is None
    assert errno_of(lambda: os.rmdir(m.path / "old-runs")) == errno.ENOTEMPTY


def test_a_target_leaving_the_cluster_costs_no_read(sim: SimAis, mount: MountFactory) -> None:
    files = _tree(sim)
    m = mount("ais://data", f"--ufs-option=endpoint={sim.url}")
    names = sorted(files)
    for name in names[:5]:
        assert read_bytes(m.path / name) == files[name]
    gone = sim.owner("data", names[10])
    sim.remove_target(gone)  # its objects move; the daemon's map is now stale
    for name in names:
        assert read_bytes(m.path / name) == files[name], name


def test_load_free_and_locate_drive_the_cluster(sim: SimAis, mount: MountFactory) -> None:
    files = _tree(sim, bucket="remote", provider="aws")
    options = [f"--ufs-option=endpoint={sim.url}", "--ufs-option=provider=aws"]
    train = [name for name in files if name.startswith("train/")]
    assert not any(sim.is_cached("remote", name, "aws") for name in files)
    loaded = run([*CLI, "load", "ais://remote/train", *options, "--poll", "0.1"])
    assert b"SUCCEEDED" in loaded.stderr
    assert all(sim.is_cached("remote", name, "aws") for name in train)
    assert not sim.is_cached("remote", "top.txt", "aws")  # only what was asked for

    located = json.loads(run([*CLI, "locate", "ais://remote/train/001.jpg", *options]).stdout)
    assert located[0]["owner"] == sim.owner("remote", "train/001.jpg", "aws")

    m = mount("ais://remote", *options)
    assert read_bytes(m.path / "top.txt") == files["top.txt"]  # a cold read caches it
    assert sim.is_cached("remote", "top.txt", "aws")
    freed = run([*CLI, "free", str(m.path / "train"), *options])
    assert freed.returncode == 0
    assert wait_until(lambda: not any(sim.is_cached("remote", n, "aws") for n in train), 10)
    assert sim.is_cached("remote", "top.txt", "aws")


def test_an_unreachable_cluster_or_missing_bucket_is_said_at_mount(
    sim: SimAis, tmp_path: Path,
) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    logs = ["--cache-dir", str(tmp_path / "c"), "--log-file", str(tmp_path / "log")]
    missing = run([*CLI, "mount", "ais://nope", str(mnt), f"--ufs-option=endpoint={sim.url}",
                   *logs], check=False)
    assert missing.returncode != 0
    assert b"ais://nope" in missing.stderr and b"does not exist" in missing.stderr
    no_endpoint = run([*CLI, "mount", "ais://data", str(mnt), *logs], check=False,
                      env={"AIS_ENDPOINT": ""})
    assert no_endpoint.returncode != 0 and b"AIS_ENDPOINT" in no_endpoint.stderr


def test_a_second_epoch_is_served_by_the_kernel_cache(sim: SimAis, mount: MountFactory) -> None:
    """Reads move AIStore's access time; that must not make the kernel drop what it cached
    (the daemon's own cache here is too small to hold the files)."""
    sim.create_bucket("data")
    files = {f"e/{i:02d}.bin": random.Random(i).randbytes(256 * 1024) for i in range(40)}
    for name, data in files.items():
        sim.put_object("data", name, data)
    m = mount("ais://data", f"--ufs-option=endpoint={sim.url}", "--page-cache-size", "4MiB",
              "--attr-timeout", "0.2", "--entry-timeout", "0.2")
    for name, data in files.items():
        assert read_bytes(m.path / name) == data
    first = sim.stats().get("get", 0)
    assert first >= len(files)
    time.sleep(0.5)  # past the attribute timeout: the next stats ask again
    for name, data in files.items():
        assert os.stat(m.path / name).st_size == len(data)
        assert read_bytes(m.path / name) == data
    assert sim.stats().get("get", 0) == first
