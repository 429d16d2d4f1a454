"""The memory governor: the page cache bound it picks as the process grows and shrinks."""

from __future__ import annotations

import trio
import trio.testing
from prometheus_client import CollectorRegistry

from alluxiofuse.daemon.memory import MemoryGovernor
from alluxiofuse.fs.pages import PageCache, PageKey
from alluxiofuse.limits import ALLOWANCE, GiB, MiB
from alluxiofuse.metrics import Metrics
from alluxiofuse.model import Version


class Cache:
    def __init__(self, used: int) -> None:
        self.used = used


def governor(cgroup: int | None = None) -> MemoryGovernor:
    return MemoryGovernor(budget=256 * MiB, capacity=256 * MiB, floor=4 * MiB,
                          cgroup_limit=cgroup)


def test_within_budget_the_cache_keeps_its_bound() -> None:
    g = governor()
    assert g.update(resident=60 * MiB + 256 * MiB, cache=Cache(256 * MiB)) == 256 * MiB


def test_the_cache_gives_up_what_the_rest_of_the_process_took() -> None:
    g = governor()
    # 200 MiB of handles and buffers: 72 MiB over the allowance, taken from the cache.
    assert g.update(resident=200 * MiB + 256 * MiB, cache=Cache(256 * MiB)) == \
        256 * MiB + ALLOWANCE - 200 * MiB
    # However large the rest grows, a few pages stay.
    assert g.update(resident=2 * GiB, cache=Cache(0)) == 4 * MiB


def test_the_cache_grows_back_in_steps() -> None:
    g = governor()
    g.update(resident=2 * GiB, cache=Cache(0))
    steps = []
    while g.current < 256 * MiB and len(steps) < 20:
        steps.append(g.update(resident=60 * MiB + g.current, cache=Cache(g.current)))
    assert steps[0] == 4 * MiB + 32 * MiB  # an eighth of the bound per step
    assert steps[-1] == 256 * MiB
    assert len(steps) == 8


def test_a_cgroup_limit_lowers_the_ceiling() -> None:
    g = governor(cgroup=400 * MiB)
    assert g.ceiling == 360 * MiB  # 90% of the limit, below budget + allowance (384 MiB)
    assert g.update(resident=150 * MiB + 256 * MiB, cache=Cache(256 * MiB)) == 210 * MiB


async def test_pages_being_fetched_do_not_make_room_for_more() -> None:
    """A page being fetched counts against the bound, but its buffer is resident only once
    its bytes have arrived: were it taken for the cache's share of the resident size, the
    rest would look that much smaller, the bound would grow by it, and the process would
    stand above the ceiling once the fetches landed."""
    cache = PageCache(256 * MiB, Metrics(CollectorRegistry()))
    g = governor(cgroup=400 * MiB)  # ceiling 360 MiB
    arrive = trio.Event()

    async def fetch() -> bytes:
        await arrive.wait()
        return bytes(MiB)

    async def read_ahead(page: int) -> None:
        await cache.get(PageKey(1, Version(64 * MiB, 1), page), fetch, expected=MiB,
                        prefetch=True)

    rest = 150 * MiB
    async with trio.open_nursery() as nursery:
        for page in range(64):  # 64 MiB of read-ahead on its way, none of it arrived
            nursery.start_soon(read_ahead, page)
        await trio.testing.wait_all_tasks_blocked()
        assert cache.reserved == 64 * MiB
        bound = g.update(resident=rest + cache.used, cache=cache)
        assert bound == 360 * MiB - rest  # 210 MiB, not 64 MiB more
        cache.resize(bound)
        arrive.set()
    assert rest + cache.used <= g.ceiling
