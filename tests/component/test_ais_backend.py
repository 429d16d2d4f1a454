"""The ais:// backend against the simulated AIStore cluster (tests/sim/ais.py), no kernel."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from alluxiofuse.backends.ais.backend import AisBackend, open_ais
from alluxiofuse.backends.ais.client import parse_time
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.errors import (
    BackendTimeout,
    BackendUnavailable,
    ConfigError,
    ContentMismatch,
    NotFound,
    StaleFile,
)
from alluxiofuse.model import Kind
from tests.sim.ais import SimAis

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[SimAis]:
    root = tmp_path / "ais"
    root.mkdir()
    with SimAis(root, targets=3) as cluster:
        cluster.create_bucket("b")
        yield cluster


def backend(sim: SimAis, source: str = "ais://b", timeout: float = 10.0,
            **options: Any) -> AisBackend:
    opened = open_ufs(source, {"endpoint": sim.url, **options}, trio.CapacityLimiter(4), timeout)
    assert isinstance(opened, AisBackend)
    return opened


async def test_listings_come_in_pages_with_every_status_field(sim: SimAis) -> None:
    names = [f"d/{i:02d}.bin" for i in range(23)]
    for i, name in enumerate(names):
        sim.put_object("b", name, bytes([i]) * (i + 1))
    sim.put_object("b", "d/sub/x", b"x")
    sim.put_object("b", "d/empty/", b"")  # a directory's marker
    be = backend(sim)
    be.list_page_keys = 5
    pages = []
    async for page in be.list_pages("d"):
        pages.append(page)
    entries = {e.name: e for page in pages for e in page}
    assert len(pages) >= 5
    assert sorted(entries) == sorted([n[2:] for n in names] + ["sub", "empty"])
    assert entries["sub"].kind is Kind.DIRECTORY and entries["empty"].kind is Kind.DIRECTORY
    f = entries["07.bin"]
    assert f.kind is Kind.FILE and f.size == 8 and f.etag == "1" and f.atime_ns
    assert f.mtime_ns is None  # not AIStore's access time: a read moves it
    # The listing names the version a HEAD names: a cached page stays valid.
    assert (await be.stat("d/07.bin")).version == f.version
    with pytest.raises(NotFound):
        await be.list("nothing")
    assert (await be.stat("d/empty")).kind is Kind.DIRECTORY
    with pytest.raises(NotFound):
        await be.stat("d/0")  # a prefix of names, not a directory
    await be.aclose()


async def test_reads_check_the_version_the_target_sent(sim: SimAis) -> None:
    data = random.Random(1).randbytes(100_000)
    sim.put_object("b", "f", data)
    be = backend(sim)
    status = await be.stat("f")
    assert await be.read("f", 10, 1000, status.version) == data[10:1010]
    assert await be.read("f", 0, 200_000, status.version) == data
    got = await be.stat_and_read("f", 4096)
    assert got is not None and got[0].version == status.version and got[1] == data[:4096]
    sim.put_object("b", "f", data[::-1])  # a new version, same size
    with pytest.raises(StaleFile):
        await be.read("f", 0, 1000, status.version)
    await be.aclose()


@pytest.mark.expect_log(r"^f: the bytes read do not match their xxhash2 checksum", count=1)
async def test_a_mismatch_is_read_again_once(sim: SimAis, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(5000)
    sim.put_object("b", "f", data)
    be = backend(sim)
    status = await be.stat("f")
    real_get = be.client.get
    calls = 0

    def flaky_get(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        got, props = real_get(*args)
        return (b"\0" + got[1:] if calls == 1 else got), props

    monkeypatch.setattr(be.client, "get", flaky_get)
    assert await be.read("f", 0, len(data), status.version) == data
    assert calls == 2
    await be.aclose()


@pytest.mark.expect_log(r"^f: the bytes read .*do not match", count=2)
async def test_a_corrupt_object_fails_and_is_not_read_again(sim: SimAis) -> None:
    sim.put_object("b", "f", os.urandom(5000))
    sim.corrupt("b", "f")
    be = backend(sim)
    status = await be.stat("f")
    for _ in range(3):
        with pytest.raises(ContentMismatch):
            await be.read("f", 0, 5000, status.version)
    assert sim.stats()["get"] == 2
    # Nor any part of it (a part has no checksum of its own to be checked against).
    with pytest.raises(ContentMismatch):
        await be.read("f", 100, 100, status.version)
    assert sim.stats()["get"] == 2
    await be.aclose()


async def test_commits_are_one_put_with_a_checksum_the_target_checks(sim: SimAis,
                                                                     tmp_path: Path) -> None:
    staged = tmp_path / "staged"
    staged.write_bytes(os.urandom(3 * 1024 * 1024 + 1))
    be = backend(sim)
    await be.commit("out/model.pt", str(staged), size=staged.stat().st_size)
    assert sim.read_object("b", "out/model.pt") == staged.read_bytes()
    assert sim.stats()["put"] == 1
    real_put = be.client.put

    def tampered(*args: Any, checksum: tuple[str, str] | None = None) -> None:
        assert checksum is not None
        real_put(*args, checksum=(checksum[0], "0" * 16))

    be.client.put = tampered  # type: ignore[method-assign]
    with pytest.raises(ContentMismatch):  # refused by the target: nothing published
        await be.commit("out/other.pt", str(staged), size=staged.stat().st_size)
    assert sim.meta("b", "out/other.pt") is None
    await be.aclose()


async def test_busy_targets_are_retried_and_stalled_ones_time_out(sim: SimAis) -> None:
    sim.put_object("b", "f", b"abc")
    be = backend(sim, timeout=1.0)
    status = await be.stat("f")
    sim.set_faults(status=503, routes=["get"], count=2)
    assert await be.read("f", 0, 3, status.version) == b"abc"
    sim.set_faults(stall=True, routes=["get"])
    with trio.fail_after(10), pytest.raises(BackendTimeout):
        await be.read("f", 0, 3, status.version)
    sim.set_faults()
    await be.aclose()


async def test_an_unreachable_cluster_is_an_error_not_a_hang(tmp_path: Path) -> None:
    with SimAis(tmp_path, targets=1) as gone:
        url = gone.url
    be = open_ufs("ais://b", {"endpoint": url}, trio.CapacityLimiter(1), 5.0)
    with trio.fail_after(10), pytest.raises(BackendUnavailable):
        await be.stat("")
    await be.aclose()


@pytest.mark.parametrize(("source", "options", "said"), [
    ("ais://b", {"endpoint": "http://127.0.0.1:1", "region": "x"}, "unknown --ufs-option"),
    ("ais://", {"endpoint": "http://127.0.0.1:1"}, "give a bucket"),
    ("ais://@remais/b", {"endpoint": "http://127.0.0.1:1"}, "give a bucket"),
    ("ais://b", {"endpoint": "ftp://host"}, "not an http(s):// URL"),
    ("ais://b", {"endpoint": "http://127.0.0.1:1", "direct": "maybe"}, "true or false"),
    ("ais://b", {}, "AIS_ENDPOINT"),
])
def test_bad_options_are_said_before_mounting(
    source: str, options: dict[str, str], said: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("AIS_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match=said.replace("(", r"\(").replace(")", r"\)")):
        open_ais(source, options, trio.CapacityLimiter(1), 5.0)


def test_listing_times_parse_to_the_nanosecond() -> None:
    assert parse_time("2026-12-06T10:00:00.123456789Z") == 1796551200_123456789
    assert parse_time("2026-12-06T11:00:00.5+01:00") == 1796551200_500000000
    assert parse_time("2026-12-06T10:00:00Z") == 1796551200_000000000
    assert parse_time("") is None and parse_time("06 Dec 26 10:00 UTC") is None


async def test_empty_objects_and_copies_larger_than_memory_holds(sim: SimAis) -> None:
    sim.put_object("b", "empty", b"")
    big = random.Random(2).randbytes(8 * 1024 * 1024 * 2 + 5)  # three ranged GETs
    sim.put_object("b", "big", big)
    be = backend(sim)
    got = await be.stat_and_read("empty", 4096)
    assert got is not None and got[0].size == 0 and got[1] == b""
    await be.rename("empty", "empty2", 0)
    assert sim.read_object("b", "empty2") == b"" and sim.meta("b", "empty") is None
    before = sim.stats().get("get", 0)
    await be.rename("big", "moved/big", 0)
    assert sim.read_object("b", "moved/big") == big and sim.meta("b", "big") is None
    assert sim.stats()["get"] - before == 3
    await be.aclose()


@pytest.mark.parametrize("kind", ["xxhash", "xxhash2", "md5", "sha256", "sha512"])
@pytest.mark.expect_log(r"^f: the bytes read .*do not match", count=2)
async def test_every_checksum_type_is_checked(tmp_path: Path, kind: str) -> None:
    with SimAis(tmp_path, targets=2) as cluster:
        cluster.create_bucket("b", checksum=kind)
        data = os.urandom(7000)
        cluster.put_object("b", "ok", data)
        cluster.put_object("b", "f", data)
        cluster.corrupt("b", "f")
        be = backend(cluster)
        ok = await be.stat("ok")
        assert await be.read("ok", 0, 7000, ok.version) == data
        bad = await be.stat("f")
        with pytest.raises(ContentMismatch):
            await be.read("f", 0, 7000, bad.version)
        await be.aclose()
