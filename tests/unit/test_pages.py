"""The page cache: LRU bound in bytes, version keys, single-flight misses, metrics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial

import pytest
import trio
import trio.testing
from prometheus_client import CollectorRegistry

from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import Version

V1 = Version(size=10_000, mtime_ns=1)
V2 = Version(size=10_000, mtime_ns=2)


def key(page: int, ino: int = 7, version: Version = V1) -> PageKey:
    return PageKey(ino, version, page)


class Fetcher:
    """A fetch function that records its calls and can be held on an event."""

    def __init__(self, data: bytes = b"x" * 100, gate: trio.Event | None = None) -> None:
        self.data = data
        self.gate = gate
        self.calls = 0
        self.error: Exception | None = None

    async def __call__(self) -> bytes:
        self.calls += 1
        if self.gate is not None:
            with trio.fail_after(5):  # broken single-flight fails the test, never hangs it
                await self.gate.wait()
        else:
            await trio.lowlevel.checkpoint()
        if self.error is not None:
            raise self.error
        return self.data


class Env:
    def __init__(self, capacity: int) -> None:
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.cache = PageCache(capacity, self.metrics)

    async def get(
        self, key: PageKey, fetch: Fetcher, *, served: int = 0, prefetch: bool = False,
    ) -> bytes:
        """``cache.get`` with the page length the fetcher will return as ``expected``."""
        return await self.cache.get(
            key, fetch, expected=len(fetch.data), served=served, prefetch=prefetch,
        )

    def sample(self, name: str) -> float:
        value = self.registry.get_sample_value(name)
        assert value is not None, name
        return value

    @property
    def hit(self) -> float:
        return self.sample("alluxiofuse_page_cache_hit_bytes_total")

    @property
    def miss(self) -> float:
        return self.sample("alluxiofuse_page_cache_miss_bytes_total")

    @property
    def evicted(self) -> float:
        return self.sample("alluxiofuse_page_cache_evicted_bytes_total")

    @property
    def ra_used(self) -> float:
        return self.sample("alluxiofuse_readahead_used_bytes_total")

    @property
    def ra_wasted(self) -> float:
        return self.sample("alluxiofuse_readahead_wasted_bytes_total")

    @property
    def gauge(self) -> float:
        return self.sample("alluxiofuse_page_cache_bytes")


def page_of(n: int, size: int = 100) -> Fetcher:
    return Fetcher(bytes([n % 256]) * size)


async def test_miss_then_hit() -> None:
    env = Env(1000)
    fetch = Fetcher(b"abc")
    assert key(0) not in env.cache
    assert await env.get(key(0), fetch) == b"abc"
    assert await env.get(key(0), fetch) == b"abc"
    assert fetch.calls == 1
    assert key(0) in env.cache
    assert env.cache.used == 3
    assert env.gauge == 3
    assert env.sample("alluxiofuse_page_cache_capacity_bytes") == 1000


async def test_version_is_part_of_the_key() -> None:
    env = Env(1000)
    old, new = Fetcher(b"old"), Fetcher(b"new")
    assert await env.get(key(0, version=V1), old) == b"old"
    assert await env.get(key(0, version=V2), new) == b"new"
    assert await env.get(key(0, version=V1), new) == b"old"
    assert (old.calls, new.calls) == (1, 1)
    assert await env.get(key(0, ino=8), new) == b"new"
    assert new.calls == 2


async def test_byte_bound_and_lru_order() -> None:
    env = Env(1000)  # ten 100-byte pages
    await env.get(key(0), page_of(0))
    for i in range(1, 40):
        await env.get(key(i), page_of(i))
        assert env.cache.used <= env.cache.capacity
        assert env.gauge == env.cache.used
        # Keep page 0 recently used: it must survive every eviction.
        assert await env.get(key(0), Fetcher(b"refetched")) == bytes([0]) * 100
    assert env.cache.used == 1000
    assert key(0) in env.cache
    cached = [i for i in range(40) if key(i) in env.cache]
    assert cached == [0, *range(31, 40)]
    assert env.evicted == 30 * 100


async def test_uneven_pages_never_exceed_capacity() -> None:
    env = Env(1000)
    sizes = [1, 999, 500, 501, 250, 250, 250, 250, 1000, 3, 700]
    for i, size in enumerate(sizes):
        await env.get(key(i), page_of(i, size))
        assert env.cache.used <= 1000
    assert key(len(sizes) - 1) in env.cache


async def test_bytes_in_flight_count_against_the_bound() -> None:
    env = Env(1000)
    for i in range(8):
        await env.get(key(i), page_of(i))
    assert env.cache.used == 800
    gate = trio.Event()
    fetchers = [Fetcher(b"f" * 100, gate=gate) for _ in range(3)]
    async with trio.open_nursery() as nursery:
        for i, fetch in enumerate(fetchers):
            nursery.start_soon(env.get, key(100 + i), fetch)
        await trio.testing.wait_all_tasks_blocked()
        assert env.cache.reserved == 300
        assert env.cache.used + env.cache.reserved <= env.cache.capacity
        assert key(0) not in env.cache  # the least recently used page made room
        assert key(1) in env.cache
        gate.set()
    assert env.cache.reserved == 0
    assert env.cache.used == 1000
    assert env.evicted == 100
    assert all(key(100 + i) in env.cache for i in range(3))


async def test_page_larger_than_capacity_is_returned_not_cached() -> None:
    env = Env(100)
    fetch = Fetcher(b"y" * 101)
    assert await env.get(key(0), fetch) == b"y" * 101
    assert env.cache.used == 0
    assert key(0) not in env.cache
    await env.get(key(0), fetch)
    assert fetch.calls == 2


async def test_single_flight() -> None:
    env = Env(1000)
    fetch = Fetcher(b"z" * 100, gate=trio.Event())
    results: list[bytes] = []

    async def reader() -> None:
        results.append(await env.get(key(3), fetch, served=7))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert fetch.calls == 1
        assert key(3) in env.cache  # in flight counts as present
        assert fetch.gate is not None
        fetch.gate.set()
    assert results == [b"z" * 100] * 10
    assert fetch.calls == 1
    assert env.miss == 100  # one fetch of the whole page
    assert env.hit == 9 * 7  # every waiter is a hit for what it serves
    assert env.cache.used == 100


async def test_fetch_error_reaches_all_waiters_and_is_not_cached() -> None:
    env = Env(1000)
    fetch = Fetcher(gate=trio.Event())
    fetch.error = OSError("backend down")
    errors: list[BaseException] = []

    async def reader() -> None:
        try:
            await env.get(key(1), fetch)
        except OSError as e:
            errors.append(e)

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert fetch.gate is not None
        fetch.gate.set()
    assert len(errors) == 5
    assert all(str(e) == "backend down" for e in errors)
    assert fetch.calls == 1
    assert key(1) not in env.cache
    assert env.cache.used == 0
    assert env.cache.reserved == 0
    # The error was not cached: the next reader fetches again, and succeeds.
    fetch.error = None
    assert await env.get(key(1), fetch) == b"x" * 100
    assert fetch.calls == 2


async def test_cancelled_fetcher_lets_a_waiter_fetch() -> None:
    env = Env(1000)
    stuck = Fetcher(b"first", gate=trio.Event())  # never released
    second = Fetcher(b"second")
    got: list[bytes] = []

    async def waiter() -> None:
        got.append(await env.get(key(2), second, served=6))

    async with trio.open_nursery() as nursery:
        scope = trio.CancelScope()

        async def fetcher() -> None:
            with scope:
                await env.get(key(2), stuck)

        nursery.start_soon(fetcher)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        assert second.calls == 0
        scope.cancel()
    assert scope.cancelled_caught
    assert got == [b"second"]
    assert (stuck.calls, second.calls) == (1, 1)
    assert env.cache.reserved == 0
    assert await env.get(key(2), stuck) == b"second"


async def test_cancelled_waiter_does_not_disturb_the_fetch() -> None:
    env = Env(1000)
    fetch = Fetcher(b"data", gate=trio.Event())
    got: list[bytes] = []

    async def fetcher() -> None:
        got.append(await env.get(key(4), fetch))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(fetcher)
        await trio.testing.wait_all_tasks_blocked()
        with trio.move_on_after(0.01) as scope:
            await env.get(key(4), fetch)
        assert scope.cancelled_caught
        assert fetch.gate is not None
        fetch.gate.set()
    assert got == [b"data"]
    assert fetch.calls == 1
    assert key(4) in env.cache


async def test_drop_file_removes_every_page_of_an_inode() -> None:
    env = Env(10_000)
    for page in range(3):
        await env.get(key(page, ino=1), page_of(page))
        await env.get(key(page, ino=1, version=V2), page_of(page))
        await env.get(key(page, ino=2), page_of(page))
    assert env.cache.used == 900
    env.cache.drop_file(1)
    assert not any(key(p, ino=1, version=v) in env.cache for p in range(3) for v in (V1, V2))
    assert all(key(p, ino=2) in env.cache for p in range(3))
    assert env.cache.used == 300
    assert env.gauge == 300
    assert env.evicted == 0  # dropped, not evicted
    env.cache.drop_file(99)  # nothing cached: no error
    # Pages fetched again after a drop are counted once.
    fetch = Fetcher()
    await env.get(key(0, ino=1), fetch)
    assert fetch.calls == 1
    assert env.cache.used == 400


async def test_hit_and_miss_metrics() -> None:
    env = Env(1000)
    await env.get(key(0), Fetcher(b"a" * 100), served=10)
    assert (env.miss, env.hit) == (100, 0)
    await env.get(key(0), Fetcher(), served=30)
    assert (env.miss, env.hit) == (100, 30)
    await env.get(key(1), Fetcher(b"b" * 40), served=40)
    assert (env.miss, env.hit) == (140, 30)


async def test_eviction_metric() -> None:
    env = Env(250)
    for i in range(3):
        await env.get(key(i), page_of(i))
    assert env.evicted == 100
    assert env.cache.used == 200
    assert env.gauge == 200


async def test_readahead_used() -> None:
    env = Env(1000)
    await env.get(key(0), Fetcher(b"p" * 100), prefetch=True)
    assert (env.miss, env.hit, env.ra_used) == (0, 0, 0)  # a prefetch is neither
    await env.get(key(0), Fetcher(), served=5)
    assert (env.hit, env.ra_used) == (5, 100)
    await env.get(key(0), Fetcher(), served=5)
    assert (env.hit, env.ra_used) == (10, 100)  # only the first read pays it off
    env.cache.drop_file(7)
    assert env.ra_wasted == 0


async def test_readahead_used_when_demand_read_waits_on_prefetch() -> None:
    env = Env(1000)
    fetch = Fetcher(b"q" * 100, gate=trio.Event())
    got: list[bytes] = []

    async def demand() -> None:
        got.append(await env.get(key(0), Fetcher(b"wrong"), served=20))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: env.get(key(0), fetch, prefetch=True))
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(demand)
        await trio.testing.wait_all_tasks_blocked()
        assert fetch.gate is not None
        fetch.gate.set()
    assert got == [b"q" * 100]
    assert (env.miss, env.hit, env.ra_used, env.ra_wasted) == (0, 20, 100, 0)


@pytest.mark.parametrize("how", ["evicted", "dropped"])
async def test_readahead_wasted(how: str) -> None:
    env = Env(200)
    await env.get(key(0), Fetcher(b"r" * 100), prefetch=True)
    await env.get(key(1), Fetcher(b"s" * 60), prefetch=True)
    await env.get(key(1), Fetcher(), served=60)  # page 1 is used
    if how == "evicted":
        await env.get(key(2), page_of(2))
        assert key(0) not in env.cache
        assert env.evicted == 100
    else:
        env.cache.drop_file(7)
    assert env.ra_wasted == 100
    assert env.ra_used == 60


# -- fill: read-ahead of several pages with one call


class BatchFetcher:
    """fetch_all for PageCache.fill: records the keys asked for, can be held on a gate."""

    def __init__(self, results: dict[PageKey, bytes | Exception]) -> None:
        self.results = results
        self.gate = trio.Event()
        self.asked: list[list[PageKey]] = []
        self.error: Exception | None = None
        self.short = False

    async def __call__(self, keys: list[PageKey]) -> list[bytes | Exception]:
        self.asked.append(keys)
        with trio.fail_after(5):
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        out = [self.results[k] for k in keys]
        return out[:-1] if self.short else out


async def test_fill_fetches_once_and_waiting_readers_share_the_batch() -> None:
    env = Env(capacity=10_000)
    batch = BatchFetcher({key(0): b"a" * 100, key(1): b"b" * 100})
    demand = Fetcher(b"z" * 100)
    got: list[bytes] = []
    async with trio.open_nursery() as n:
        n.start_soon(env.cache.fill, [(key(0), 100), (key(1), 100)], batch)
        await trio.testing.wait_all_tasks_blocked()
        assert env.cache.reserved == 200  # in flight counts against the bound
        n.start_soon(lambda: _append(got, env.get(key(1), demand, served=100)))
        await trio.testing.wait_all_tasks_blocked()
        batch.gate.set()
    assert got == [b"b" * 100] and demand.calls == 0
    assert batch.asked == [[key(0), key(1)]]
    assert env.cache.reserved == 0 and env.cache.used == 200
    assert env.sample("alluxiofuse_readahead_used_bytes_total") == 100
    await env.cache.fill([(key(0), 100)], batch)  # cached already: not asked again
    assert len(batch.asked) == 1


async def _append(out: list[bytes], call: object) -> None:
    out.append(await call)  # type: ignore[misc]


async def test_fill_failures_reach_waiters_and_are_not_cached() -> None:
    env = Env(capacity=10_000)
    batch = BatchFetcher({key(0): b"a" * 100, key(1): ValueError("page 1 broke")})
    batch.gate.set()
    await env.cache.fill([(key(0), 100), (key(1), 100)], batch)
    assert key(0) in env.cache and key(1) not in env.cache
    # The whole call failing, or answering for fewer pages than asked: an error for every
    # page, to the filler and to a reader waiting for one of them (never a hang).
    for breakage in ("raise", "short"):
        batch = BatchFetcher({key(2): b"c" * 100, key(3): b"d" * 100})
        batch.error = OSError("store down") if breakage == "raise" else None
        batch.short = breakage == "short"
        errors: list[Exception] = []

        async def capture(call: Callable[[], Awaitable[object]], out: list[Exception] = errors,
                          ) -> None:
            try:
                await call()
            except Exception as e:
                out.append(e)

        async with trio.open_nursery() as n:
            n.start_soon(capture, partial(env.cache.fill, [(key(2), 100), (key(3), 100)], batch))
            await trio.testing.wait_all_tasks_blocked()
            n.start_soon(capture, partial(env.get, key(3), Fetcher(gate=trio.Event())))
            await trio.testing.wait_all_tasks_blocked()
            batch.gate.set()
        assert len(errors) == 2 and type(errors[0]) is type(errors[1]), breakage
        assert key(2) not in env.cache and env.cache.reserved == 0


async def test_a_cancelled_fill_lets_a_waiter_fetch_the_page_itself() -> None:
    env = Env(capacity=10_000)
    batch = BatchFetcher({key(0): b"a" * 100})
    demand = Fetcher(b"z" * 100)
    got: list[bytes] = []
    with trio.fail_after(5):  # a waiter left hanging by the cancelled fill fails here
        async with trio.open_nursery() as n:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    inner.start_soon(env.cache.fill, [(key(0), 100)], batch)
                    await trio.testing.wait_all_tasks_blocked()
                    n.start_soon(_append, got, env.get(key(0), demand))  # waits for the fill
                    await trio.testing.wait_all_tasks_blocked()
                    assert demand.calls == 0
                    scope.cancel()
    assert got == [b"z" * 100] and demand.calls == 1
    assert env.cache.reserved == 0


async def test_resize_evicts_what_no_longer_fits_and_clear_drops_everything() -> None:
    env = Env(capacity=1000)
    for page in range(10):
        await env.get(key(page), Fetcher(), served=100)
    assert env.cache.used == 1000
    env.cache.resize(300)
    assert env.cache.used == 300
    assert env.sample("alluxiofuse_page_cache_evicted_bytes_total") == 700
    assert env.sample("alluxiofuse_page_cache_capacity_bytes") == 300
    assert [p for p in range(10) if key(p) in env.cache] == [7, 8, 9]  # the most recent
    env.cache.resize(1000)
    await env.get(key(0), Fetcher(), served=100)
    assert env.cache.used == 400
    env.cache.clear()
    assert env.cache.used == 0
    assert not any(key(p) in env.cache for p in range(10))
    fetch = Fetcher()
    await env.get(key(9), fetch, served=100)
    assert fetch.calls == 1  # fetched again after the drop
