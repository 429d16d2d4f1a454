"""The metrics module: what a scrape of the registry shows after updates."""

from __future__ import annotations

import pytest

from alluxiofuse.metrics import Metrics, new_registry


def test_op_latency_exports_cumulative_buckets_per_op() -> None:
    m = Metrics(new_registry())
    for seconds in (0.00005, 0.0001, 0.0003, 2.0, 100.0):
        m.fuse_op_seconds.observe("read", seconds)
    m.fuse_op_seconds.observe("lookup", 0.002)
    sample = m.registry.get_sample_value
    bucket = "alluxiofuse_fuse_op_seconds_bucket"
    assert sample(bucket, {"op": "read", "le": "0.0001"}) == 2  # an upper bound is inclusive
    assert sample(bucket, {"op": "read", "le": "0.0005"}) == 3
    assert sample(bucket, {"op": "read", "le": "1.0"}) == 3
    assert sample(bucket, {"op": "read", "le": "5.0"}) == 4
    assert sample(bucket, {"op": "read", "le": "+Inf"}) == 5
    assert sample("alluxiofuse_fuse_op_seconds_count", {"op": "read"}) == 5
    assert sample("alluxiofuse_fuse_op_seconds_sum", {"op": "read"}) == pytest.approx(102.00045)
    assert sample("alluxiofuse_fuse_op_seconds_count", {"op": "lookup"}) == 1


def test_counters_and_gauges_read_current_values_at_scrape() -> None:
    m = Metrics(new_registry())
    state = {"inodes": 3, "used": 10}
    m.watch_inodes(lambda: state["inodes"])
    m.watch_page_cache(lambda: state["used"], lambda: 4096)
    m.page_cache_hit_bytes.inc(100)
    m.page_cache_hit_bytes.inc(23)
    state["inodes"], state["used"] = 7, 20
    sample = m.registry.get_sample_value
    assert sample("alluxiofuse_page_cache_hit_bytes_total") == 123
    assert sample("alluxiofuse_readahead_wasted_bytes_total") == 0
    assert sample("alluxiofuse_inodes") == 7
    assert sample("alluxiofuse_page_cache_bytes") == 20
    assert sample("alluxiofuse_page_cache_capacity_bytes") == 4096
