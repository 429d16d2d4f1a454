"""Option parsing, the config file, and the merge/validation done by build_config."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest

from alluxiofuse import config
from alluxiofuse.config import (
    FOREVER,
    MountConfig,
    build_config,
    load_config_file,
    parse_ufs_option,
)
from alluxiofuse.errors import ConfigError
from alluxiofuse.limits import GiB, KiB, MemoryLimits, MiB
from alluxiofuse.options import (
    DEFAULT_METRICS_ADDR,
    OPTIONS,
    parse_duration,
    parse_metrics_addr,
    parse_mode,
    parse_size,
)

BASE = {"source": "/data", "mountpoint": "/mnt"}


@pytest.fixture
def fixed_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """build_config derives defaults from an 8 GiB limit, whatever this machine has."""
    monkeypatch.setattr(config, "memory_limits", lambda: MemoryLimits(8 * GiB, None))


# -- parse_size


@pytest.mark.parametrize("text", ["1M", "1MB", "1MiB", "1m", "1mib", " 1 MiB ", "1048576", 1048576])
def test_parse_size_one_mebibyte_spellings(text: Any) -> None:
    assert parse_size(text) == 1048576


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("512", 512),
        ("4K", 4 * KiB),
        ("4KiB", 4 * KiB),
        ("4kb", 4 * KiB),
        ("2G", 2 * GiB),
        ("2GiB", 2 * GiB),
        ("1T", 1024 * GiB),
        ("1.5MiB", 3 * MiB // 2),
        ("512KiB", 512 * KiB),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size_units(text: Any, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "M", "abc", "1X", "1 MiBs", "-1", "-1MiB", "1e6", True, -1])
def test_parse_size_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)


# -- parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1", 1.0),
        ("0.5", 0.5),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
        (" 10 MS ", 0.01),
    ],
)
def test_parse_duration(text: Any, expected: float) -> None:
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["-1", "-1s", "-500ms", -1, -0.5, "soon", "1d", "", True])
def test_parse_duration_rejects_negative_and_garbage(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


# -- parse_mode


@pytest.mark.parametrize(("text", "expected"), [("0644", 0o644), ("644", 0o644), (0o755, 0o755),
                                                ("4755", 0o4755), ("0", 0)])
def test_parse_mode(text: Any, expected: int) -> None:
    assert parse_mode(text) == expected


@pytest.mark.parametrize("bad", ["999", "rwx", "17777", 0o10000, -1])
def test_parse_mode_rejects(bad: Any) -> None:
    with pytest.raises(ValueError):
        parse_mode(bad)


# -- parse_ufs_option


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("anon=true", ("anon", True)),
        ("anon=false", ("anon", False)),
        ("retries=3", ("retries", 3)),
        ("ratio=0.5", ("ratio", 0.5)),
        ("region=eu-1", ("region", "eu-1")),
        ("endpoint_url=http://h:9000/x?a=b", ("endpoint_url", "http://h:9000/x?a=b")),
        ('quoted="3"', ("quoted", "3")),
        ('kw={"a": 1}', ("kw", {"a": 1})),
        ("empty=", ("empty", "")),
        (" key =value", ("key", "value")),
    ],
)
def test_parse_ufs_option(item: str, expected: tuple[str, Any]) -> None:
    key, value = parse_ufs_option(item)
    assert (key, value) == expected
    assert type(value) is type(expected[1])


@pytest.mark.parametrize("bad", ["anon", "", "=value", " =x"])
def test_parse_ufs_option_needs_key_and_equals(bad: str) -> None:
    with pytest.raises(ConfigError, match="key=value"):
        parse_ufs_option(bad)


# -- load_config_file


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "alluxiofuse.toml"
    path.write_text(text)
    return path


def test_load_config_file_keys_and_ufs_options(tmp_path: Path) -> None:
    path = write(tmp_path, """
page-size = "2MiB"
page_cache_size = "1GiB"
attr-timeout = 5
allow_other = true

[ufs_options]
anon = true
endpoint_url = "http://minio:9000"
""")
    values = load_config_file(path)
    assert values == {
        "page_size": "2MiB",
        "page_cache_size": "1GiB",
        "attr_timeout": 5,
        "allow_other": True,
        "ufs_options": {"anon": True, "endpoint_url": "http://minio:9000"},
    }


def test_load_config_file_dashed_ufs_options_table(tmp_path: Path) -> None:
    values = load_config_file(write(tmp_path, '[ufs-options]\nkey = "k"\n'))
    assert values == {"ufs_options": {"key": "k"}}


def test_load_config_file_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, 'page_size = "1MiB"\npage-sise = "2MiB"\n')
    with pytest.raises(ConfigError, match="page-sise"):
        load_config_file(path)


def test_load_config_file_ufs_options_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ufs_options"):
        load_config_file(write(tmp_path, 'ufs_options = "anon=true"\n'))


def test_load_config_file_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_config_file(missing)
    assert str(missing) in str(info.value)


def test_load_config_file_malformed(tmp_path: Path) -> None:
    path = write(tmp_path, "page_size = \n[[[")
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config_file(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value).strip()


def test_load_config_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        load_config_file(tmp_path)


def test_config_file_round_trip_through_build_config(
    tmp_path: Path, fixed_memory: None,
) -> None:
    values = load_config_file(write(tmp_path, """
source = "s3://bucket/data"
mountpoint = "/mnt/data"
page-size = "4MiB"
attr_timeout = "500ms"
file_mode = "0444"
[ufs_options]
anon = true
"""))
    c = build_config(values)
    assert c.source == "s3://bucket/data"
    assert c.page_size == 4 * MiB
    assert c.attr_timeout == 0.5
    assert c.file_mode == 0o444
    assert c.ufs_options == {"anon": True}


# -- build_config


def test_build_config_defaults(fixed_memory: None) -> None:
    c = build_config(BASE)
    assert isinstance(c, MountConfig)
    assert (c.source, c.mountpoint) == ("/data", "/mnt")
    assert c.page_size == MiB
    # An eighth of the (patched) 8 GiB limit, and a quarter of that, capped at 256 MiB.
    assert c.page_cache_size == GiB
    assert c.prefetch_budget == 256 * MiB
    assert c.ufs_options == {}
    assert c.logging_level == 20


@pytest.mark.parametrize(("values", "expected"), [
    ({}, 256 * MiB),  # a quarter of the 1 GiB budget
    ({"memory_budget": "32MiB"}, 16 * MiB),  # at least 16 MiB
    ({"metadata_cache_size": "5MiB"}, 5 * MiB),
])
def test_the_metadata_cache_is_a_quarter_of_the_memory_budget(
    values: dict[str, Any], expected: int, fixed_memory: None,
) -> None:
    assert build_config({**BASE, **values}).metadata_cache_size == expected


def test_build_config_prefetch_budget_is_a_quarter_of_a_small_cache(fixed_memory: None) -> None:
    c = build_config({**BASE, "page_cache_size": "64MiB"})
    assert c.page_cache_size == 64 * MiB
    assert c.prefetch_budget == 16 * MiB


def test_build_config_derived_cache_follows_memory_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "memory_limits", lambda: MemoryLimits(2 * GiB, None))
    c = build_config(BASE)
    assert c.memory_budget == c.page_cache_size == 256 * MiB
    assert c.prefetch_budget == 64 * MiB


def test_build_config_budget_from_the_cgroup_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config, "memory_limits", lambda: MemoryLimits(64 * GiB, 2 * GiB))
    c = build_config(BASE)
    assert c.memory_budget == c.page_cache_size == 1 * GiB


def test_build_config_memory_budget_override(fixed_memory: None) -> None:
    c = build_config({**BASE, "memory_budget": "300MiB"})
    assert c.memory_budget == c.page_cache_size == 300 * MiB
    c = build_config({**BASE, "memory_budget": "300MiB", "page_cache_size": "100MiB"})
    assert (c.memory_budget, c.page_cache_size) == (300 * MiB, 100 * MiB)
    # A cache bound alone sets the budget, as before there was one.
    c = build_config({**BASE, "page_cache_size": "100MiB"})
    assert c.memory_budget == 100 * MiB
    with pytest.raises(ConfigError, match="larger than --memory-budget"):
        build_config({**BASE, "memory_budget": "100MiB", "page_cache_size": "200MiB"})


def test_build_config_explicit_values_win(fixed_memory: None) -> None:
    c = build_config({**BASE, "page_cache_size": "100MiB", "prefetch_budget": "10MiB",
                      "io_threads": "4", "log_level": "DEBUG", "foreground": "yes"})
    assert c.page_cache_size == 100 * MiB
    assert c.prefetch_budget == 10 * MiB
    assert c.io_threads == 4
    assert c.log_level == "debug"
    assert c.logging_level == 10
    assert c.foreground is True


def test_build_config_prefetch_budget_holds_at_least_one_page(fixed_memory: None) -> None:
    c = build_config({**BASE, "page_size": "4MiB", "prefetch_budget": "1KiB"})
    assert c.prefetch_budget == 4 * MiB


def test_build_config_none_means_unset(fixed_memory: None) -> None:
    c = build_config({**BASE, "uid": None, "page_size": None})
    assert c.uid is None
    assert c.page_size == MiB


@pytest.mark.parametrize(
    ("values", "names"),
    [
        ({"page_size": "3000"}, "--page-size"),
        ({"page_size": "3MiB"}, "--page-size"),
        ({"page_size": "2KiB"}, "--page-size"),
        ({"page_size": "128MiB"}, "--page-size"),
        ({"page_size": "lots"}, "--page-size"),
        ({"page_cache_size": "3MiB"}, "--page-cache-size"),
        ({"io_threads": "0"}, "--io-threads"),
        ({"io_threads": "2000"}, "--io-threads"),
        ({"io_threads": "-1"}, "--io-threads"),
        ({"io_timeout": "0"}, "--io-timeout"),
        ({"attr_timeout": "-1"}, "--attr-timeout"),
        ({"uid": "-5"}, "--uid"),
        ({"gid": "x"}, "--gid"),
        ({"file_mode": "0999"}, "--file-mode"),
        ({"log_level": "loud"}, "--log-level"),
        ({"allow_other": "maybe"}, "--allow-other"),
        ({"metadata_cache_size": "-1"}, "--metadata-cache-size"),
        ({"io_threads": [1]}, "--io-threads"),
    ],
)
def test_build_config_errors_name_the_option(
    values: dict[str, Any], names: str, fixed_memory: None,
) -> None:
    with pytest.raises(ConfigError) as info:
        build_config({**BASE, **values})
    message = str(info.value)
    assert names in message
    assert "\n" not in message


def test_build_config_unknown_option_is_named(fixed_memory: None) -> None:
    with pytest.raises(ConfigError, match="no_such_option"):
        build_config({**BASE, "no_such_option": "1"})


@pytest.mark.parametrize("missing", ["source", "mountpoint"])
def test_build_config_needs_source_and_mountpoint(missing: str, fixed_memory: None) -> None:
    values = {k: v for k, v in BASE.items() if k != missing}
    with pytest.raises(ConfigError, match=missing.upper()):
        build_config(values)


def test_build_config_cli_ufs_options_override_file(fixed_memory: None) -> None:
    file_values = {**BASE, "ufs_options": {"anon": True, "region": "eu-1", "retries": 2}}
    c = build_config(file_values, {"region": "us-2", "key": "k"})
    assert c.ufs_options == {"anon": True, "region": "us-2", "retries": 2, "key": "k"}
    # The caller's mappings are not mutated.
    assert file_values["ufs_options"] == {"anon": True, "region": "eu-1", "retries": 2}


def test_build_config_accepts_minimum_cache(fixed_memory: None) -> None:
    c = build_config({**BASE, "page_size": "64KiB", "page_cache_size": "256KiB"})
    assert c.page_cache_size == 256 * KiB
    assert c.prefetch_budget == 64 * KiB


# -- metrics address


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9847", "127.0.0.1:9847"),
        (":9000", ":9000"),
        ("0.0.0.0:0", "0.0.0.0:0"),
        ("[::1]:9847", "[::1]:9847"),
        ("off", "off"),
        ("OFF", "off"),
        ("none", "off"),
    ],
)
def test_parse_metrics_addr(text: str, expected: str) -> None:
    assert parse_metrics_addr(text) == expected


@pytest.mark.parametrize("text", ["9847", "localhost", "host:port", "host:70000", "host:-1"])
def test_parse_metrics_addr_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_metrics_addr(text)


def test_slow_op_threshold_from_the_alluxio_property(fixed_memory: None) -> None:
    c = build_config(BASE, alluxio_properties={"alluxio.fuse.logging.threshold": "2s"})
    assert c.slow_op_threshold == 2.0
    assert build_config(BASE).slow_op_threshold == 10.0


# -- writes


def test_write_options_parse_and_default() -> None:
    c = build_config({"source": "/s", "mountpoint": "/m"})
    assert (c.write_type, c.read_only, c.upload_part_size) == ("THROUGH", False, 16 * MiB)
    assert os.path.isabs(c.cache_dir)
    c = build_config({"source": "/s", "mountpoint": "/m", "write_type": "async_through",
                      "cache_dir": "rel", "upload_part_size": "5MiB", "read_only": "yes"})
    assert (c.write_type, c.read_only, c.upload_part_size) == ("ASYNC_THROUGH", True, 5 * MiB)
    assert c.cache_dir == os.path.abspath("rel")
    c = build_config({"source": "/s", "mountpoint": "/m"},
                     alluxio_properties={"alluxio.user.file.writetype.default": "ASYNC_THROUGH"})
    assert c.write_type == "ASYNC_THROUGH"


@pytest.mark.parametrize(("values", "message"), [
    ({"write_type": "SOMETIMES"}, "not a write type"),
    ({"write_type": "MUST_CACHE"}, "only an Alluxio 2.x .alluxio-proxy://. source can"),
    ({"write_type": "CACHE_THROUGH"}, "name the 3.x workers with --workers"),
    ({"read_type": "SOMETIMES"}, "not a read type"),
    ({"source": "alluxio-proxy://h/p", "workers": "w1"}, "read through its proxy alone"),
    ({"source": "alluxio-proxy://h/p", "ufs_options": {"key": "k"}}, "no meaning for a"),
    ({"upload_part_size": "1MiB"}, "--upload-part-size must be between 5MiB and 5GiB"),
    ({"upload_threads": "0"}, "--upload-threads"),
])
def test_bad_write_options_are_refused_at_mount(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"source": "/s", "mountpoint": "/m", **values})


def test_proxy_sources_take_every_write_type_and_a_read_type() -> None:
    for kind in ("MUST_CACHE", "CACHE_THROUGH", "THROUGH", "ASYNC_THROUGH"):
        c = build_config({"source": "alluxio-proxy://h:39999/d", "mountpoint": "/m",
                          "write_type": kind})
        assert (c.proxy, c.cluster, c.write_type, c.read_type) == (True, False, kind, "CACHE")
    c = build_config({"source": "alluxio-proxy://h/", "mountpoint": "/m"},
                     alluxio_properties={"alluxio.user.file.readtype.default": "no_cache"})
    assert c.read_type == "NO_CACHE"
    assert not build_config({"source": "/alluxio-proxy:/x", "mountpoint": "/m"}).proxy


# -- what `alluxiofuse mount --help` says of each option is what the daemon does

_DEFAULT_CLAIM = re.compile(r"[(;] ?default ([^;,()\s]+)[;),]")
_CHOICE_DEFAULT = re.compile(r"(\w+) \(default[:)]")


def test_every_default_in_the_help_is_the_default() -> None:
    """Each "(default X)" in an option's help, parsed as that option, gives the value the
    daemon takes when the option is not given."""
    defaults = build_config(BASE)
    checked = []
    for option in OPTIONS:
        if option.kind != "value" or option.parse is None:
            continue
        found = _DEFAULT_CLAIM.search(option.help)
        if option.metavar in ("TYPE", "API"):  # "THROUGH (default: ...), CACHE_THROUGH ..."
            found = _CHOICE_DEFAULT.search(option.help)
        if found is None:  # derived defaults (1/8 of RAM, half the free disk ...)
            continue
        claimed = getattr(build_config({**BASE, option.name: found.group(1)}), option.name)
        actual = getattr(defaults, option.name)
        if option.name == "metrics_addr":
            actual = actual or DEFAULT_METRICS_ADDR
        assert claimed == actual, (option.name, found.group(1), actual)
        checked.append(option.name)
    assert len(checked) >= 20, checked


def test_the_help_says_what_mount_does() -> None:
    """The claims found false once: mounts are writable by default, and a mountpoint need
    not be empty (tests/integration/test_cli.py mounts over a non-empty one)."""
    from alluxiofuse.cli import main as cli

    parser = cli.parser()
    top = parser.format_help()
    mount_line = next(line for line in top.splitlines() if line.strip().startswith("mount "))
    assert "read-only)" not in mount_line and "writable" in mount_line, mount_line
    subparsers = next(a for a in parser._actions if a.choices and "mount" in a.choices)
    mount_help = " ".join(subparsers.choices["mount"].format_help().split())
    assert "empty" not in mount_help
    assert "MOUNTPOINT an existing directory" in mount_help
    assert build_config(BASE).read_only is False


def test_immutable_keeps_metadata_for_the_mounts_life() -> None:
    c = build_config({"source": "/s", "mountpoint": "/m", "immutable": "true"})
    timeouts = (c.attr_timeout, c.entry_timeout, c.negative_timeout, c.dir_timeout)
    assert timeouts == (FOREVER,) * 4
    assert FOREVER > 10 * 365 * 24 * 3600  # longer than any mount lives


@pytest.mark.parametrize("timeout", ["attr_timeout", "entry_timeout", "negative_timeout",
                                     "dir_timeout"])
def test_immutable_with_a_metadata_timeout_is_refused(timeout: str) -> None:
    option = "--" + timeout.replace("_", "-")
    with pytest.raises(ConfigError, match=f"--immutable .* leave out {option}"):
        build_config({"source": "/s", "mountpoint": "/m", "immutable": True, timeout: "5"})
