"""The option declarations: README.md's table is the one they make, and they match MountConfig."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from alluxiofuse.config import ALLUXIO_PROPERTIES, OPTION_NAMES, MountConfig, build_config
from alluxiofuse.options import (
    DEFAULT_METRICS_ADDR,
    OPTIONS,
    README_BEGIN,
    README_END,
    readme_table,
    with_readme_table,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_table_is_the_one_the_options_make() -> None:
    """Fails when an option is added or changed in alluxiofuse/options.py and the README is
    not made again: run ``python -m alluxiofuse.options README.md``."""
    text = README.read_text(encoding="utf-8")
    table = text.partition(README_BEGIN + "\n")[2].partition(README_END)[0]
    assert table, f"README.md has no {README_BEGIN!r} ... {README_END!r}"
    assert table == readme_table(), "run: python -m alluxiofuse.options README.md"
    assert with_readme_table(text) == text


def test_making_the_table_again_replaces_it_alone() -> None:
    stale = f"# Options\n\n{README_BEGIN}\n| old |\n{README_END}\n\nafter\n"
    assert with_readme_table(stale) == (
        f"# Options\n\n{README_BEGIN}\n{readme_table()}{README_END}\n\nafter\n")
    with pytest.raises(ValueError, match="options table"):
        with_readme_table("# no table here\n")


def test_each_config_key_is_a_field_of_mount_config() -> None:
    """Every field but what the command line gathers (ufs_options from --ufs-option) or
    mount.alluxiofuse sets (kernel_flags) is declared, once, and nothing else is a key."""
    names = [option.name for option in OPTIONS]
    assert len(names) == len(set(names))
    fields = {f.name for f in dataclasses.fields(MountConfig)}
    assert fields - {"ufs_options", "kernel_flags"} == OPTION_NAMES
    assert {"config", "ufs_option", "alluxio_property"} == set(names) - OPTION_NAMES


def test_alluxio_properties_set_declared_options() -> None:
    assert set(ALLUXIO_PROPERTIES.values()) <= OPTION_NAMES
    assert ALLUXIO_PROPERTIES["alluxio.user.file.writetype.default"] == "write_type"
    assert len(ALLUXIO_PROPERTIES) == sum(len(option.properties) for option in OPTIONS)


def test_every_default_in_the_readme_is_the_default() -> None:
    """Each default column that is a value of its option is the value the daemon takes."""
    defaults = build_config({"source": "/data", "mountpoint": "/mnt"})
    checked = []
    for option in OPTIONS:
        if option.parse is None or option.kind == "positional" or option.default == "none":
            continue
        if " " in option.default:  # said in words (1/8 of RAM, from the source, ...)
            continue
        claimed = option.parse(option.default)
        actual = getattr(defaults, option.name)
        if option.name == "metrics_addr":
            actual = actual or DEFAULT_METRICS_ADDR
        if option.kind == "flag":
            actual = bool(actual)
        assert claimed == actual, (option.name, option.default, actual)
        checked.append(option.name)
    assert len(checked) >= 30, checked


def test_the_readme_says_each_default_once() -> None:
    """The default column says it: a meaning copied from the help would say it again."""
    rows = readme_table().splitlines()[2:]
    assert [row for row in rows if "(default" in row] == []
    assert len(rows) == sum(option.kind != "positional" for option in OPTIONS)
