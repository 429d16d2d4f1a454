"""The memory limits of this process, and the memory budget drawn from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from alluxiofuse.limits import (
    GiB,
    MemoryLimits,
    MiB,
    cgroup_memory_limit,
    default_memory_budget,
    memory_limits,
)


@pytest.mark.parametrize(
    ("ram", "cgroup", "expected"),
    [
        (0, None, 64 * MiB),
        (512 * MiB, None, 64 * MiB),
        (1 * GiB, None, 128 * MiB),
        (8 * GiB, None, 1 * GiB),
        (32 * GiB, None, 4 * GiB),
        (1024 * GiB, None, 4 * GiB),
        (1024 * GiB, 2 * GiB, 1 * GiB),  # a container on a large host: half its limit
        (1024 * GiB, 64 * GiB, 4 * GiB),  # never more than the host rule gives
        (8 * GiB, 256 * MiB, 256 * MiB * 9 // 10 - 128 * MiB),  # room for the rest: 102 MiB
        (8 * GiB, 16 * MiB, 16 * MiB),  # a floor, however tight the limit
    ],
)
def test_default_memory_budget(ram: int, cgroup: int | None, expected: int) -> None:
    assert default_memory_budget(MemoryLimits(ram, cgroup)) == expected


def test_memory_limits_of_this_machine() -> None:
    limits = memory_limits()
    assert limits.ram > 0
    assert limits.cgroup is None or limits.cgroup > 0


def _cgroup_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


def test_cgroup_v2_limit_is_the_tightest_on_the_path(tmp_path: Path) -> None:
    """A systemd unit's MemoryMax= is on the process's own cgroup; a slice above it may be
    tighter; memory.high counts too; "max" means no limit; siblings do not count."""
    proc = tmp_path / "cgroup"
    proc.write_text("0::/system.slice/alluxiofuse@mnt-data.service\n")
    root = tmp_path / "fs"
    _cgroup_tree(root, {
        "memory.max": "max\n",  # not normally there at the root: harmless
        "system.slice/memory.max": "8589934592\n",
        "system.slice/memory.high": "max\n",
        "system.slice/alluxiofuse@mnt-data.service/memory.max": "2147483648\n",
        "system.slice/alluxiofuse@mnt-data.service/memory.high": "max\n",
        "system.slice/other.service/memory.max": "1048576\n",
    })
    assert cgroup_memory_limit(str(proc), str(root)) == 2 * GiB
    (root / "system.slice/memory.high").write_text("1073741824\n")
    assert cgroup_memory_limit(str(proc), str(root)) == 1 * GiB


def test_cgroup_v2_in_a_container_namespace(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/\n")
    root = tmp_path / "fs"
    _cgroup_tree(root, {"memory.max": "536870912\n", "memory.high": "max\n"})
    assert cgroup_memory_limit(str(proc), str(root)) == 512 * MiB


def test_cgroup_v1_memory_controller(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("12:cpu,cpuacct:/x\n4:memory:/kubepods/pod1/c1\n0::/\n")
    root = tmp_path / "fs"
    _cgroup_tree(root, {
        "memory/memory.limit_in_bytes": "9223372036854771712\n",  # the root: unlimited
        "memory/kubepods/memory.limit_in_bytes": "9223372036854771712\n",
        "memory/kubepods/pod1/c1/memory.limit_in_bytes": "805306368\n",
    })
    assert cgroup_memory_limit(str(proc), str(root)) == 768 * MiB


def test_no_cgroup_limit(tmp_path: Path) -> None:
    proc = tmp_path / "cgroup"
    proc.write_text("0::/user.slice\n")
    root = tmp_path / "fs"
    _cgroup_tree(root, {"user.slice/memory.max": "max\n", "memory.max": "garbage\n"})
    assert cgroup_memory_limit(str(proc), str(root)) is None
    assert cgroup_memory_limit(str(tmp_path / "missing"), str(tmp_path / "none")) is None
