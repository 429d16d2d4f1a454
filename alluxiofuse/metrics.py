"""Prometheus instruments of one daemon, registered on a registry the caller injects."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# FUSE ops answer from memory in microseconds or wait on an under-storage for seconds.
_OP_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)


def new_registry() -> CollectorRegistry:
    """A fresh registry for one daemon (never prometheus_client's global one)."""
    return CollectorRegistry(auto_describe=True)


class Metrics:
    """Every instrument the daemon updates; one instance per daemon, never global."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.fuse_op_seconds = Histogram(
            "alluxiofuse_fuse_op_seconds", "FUSE request latency by op", ["op"],
            buckets=_OP_BUCKETS, registry=registry,
        )
        self.fuse_errors = Counter(
            "alluxiofuse_fuse_errors", "FUSE requests answered with an error", ["op", "errno"],
            registry=registry,
        )
        self.unexpected_errors = Counter(
            "alluxiofuse_unexpected_errors", "Exceptions no domain error covered (answered EIO)",
            ["op", "type"], registry=registry,
        )
        self.backend_errors = Counter(
            "alluxiofuse_backend_errors", "Under-storage calls that failed", ["reason"],
            registry=registry,
        )
        self.page_cache_hit_bytes = Counter(
            "alluxiofuse_page_cache_hit_bytes", "Bytes served from the page cache",
            registry=registry,
        )
        self.page_cache_miss_bytes = Counter(
            "alluxiofuse_page_cache_miss_bytes", "Bytes fetched into the page cache on demand",
            registry=registry,
        )
        self.page_cache_evicted_bytes = Counter(
            "alluxiofuse_page_cache_evicted_bytes", "Bytes evicted from the page cache",
            registry=registry,
        )
        self.readahead_used_bytes = Counter(
            "alluxiofuse_readahead_used_bytes", "Prefetched bytes later read", registry=registry,
        )
        self.readahead_wasted_bytes = Counter(
            "alluxiofuse_readahead_wasted_bytes", "Prefetched bytes evicted or dropped unread",
            registry=registry,
        )
        self.page_cache_bytes = Gauge(
            "alluxiofuse_page_cache_bytes", "Bytes held by the page cache", registry=registry,
        )
        self.page_cache_capacity_bytes = Gauge(
            "alluxiofuse_page_cache_capacity_bytes", "Page cache bound", registry=registry,
        )
        self.inodes = Gauge("alluxiofuse_inodes", "Inodes the kernel holds", registry=registry)
        self.open_handles = Gauge(
            "alluxiofuse_open_handles", "Open file and directory handles", registry=registry,
        )
