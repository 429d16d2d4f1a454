"""The memory governor: the page cache bound it picks as the process grows and shrinks."""

from __future__ import annotations

from alluxiofuse.config import ALLOWANCE, GiB, MiB
from alluxiofuse.memory import MemoryGovernor


def governor(cgroup: int | None = None) -> MemoryGovernor:
    return MemoryGovernor(budget=256 * MiB, capacity=256 * MiB, floor=4 * MiB,
                          cgroup_limit=cgroup)


def test_within_budget_the_cache_keeps_its_bound() -> None:
    g = governor()
    assert g.update(resident=60 * MiB + 256 * MiB, cache_bytes=256 * MiB) == 256 * MiB


def test_the_cache_gives_up_what_the_rest_of_the_process_took() -> None:
    g = governor()
    # 200 MiB of handles and buffers: 72 MiB over the allowance, taken from the cache.
    assert g.update(resident=200 * MiB + 256 * MiB, cache_bytes=256 * MiB) == \
        256 * MiB + ALLOWANCE - 200 * MiB
    # However large the rest grows, a few pages stay.
    assert g.update(resident=2 * GiB, cache_bytes=0) == 4 * MiB


def test_the_cache_grows_back_in_steps() -> None:
    g = governor()
    g.update(resident=2 * GiB, cache_bytes=0)
    steps = []
    while g.current < 256 * MiB and len(steps) < 20:
        steps.append(g.update(resident=60 * MiB + g.current, cache_bytes=g.current))
    assert steps[0] == 4 * MiB + 32 * MiB  # an eighth of the bound per step
    assert steps[-1] == 256 * MiB
    assert len(steps) == 8


def test_a_cgroup_limit_lowers_the_ceiling() -> None:
    g = governor(cgroup=400 * MiB)
    assert g.ceiling == 360 * MiB  # 90% of the limit, below budget + allowance (384 MiB)
    assert g.update(resident=150 * MiB + 256 * MiB, cache_bytes=256 * MiB) == 210 * MiB
