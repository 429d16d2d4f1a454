"""Prometheus instruments of one daemon, registered on a registry the caller injects.

Instruments updated on every request (op latency, page-cache byte counters) are plain
additions exported by a collector at scrape time: prometheus_client's own instruments take
a lock and scan their label table on each update, which costs more than a cached read.
Only the event-loop thread updates them; a scrape from another thread reads a snapshot
that may be one update behind. Gauges are computed at scrape time from the state they
describe. Rare events (errors) use prometheus_client's counters as they are.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# FUSE ops answer from memory in microseconds or wait on an under-storage for seconds.
_OP_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
# The buckets of Alluxio's own REST call histogram, kept so that dashboards carry over.
_REST_BUCKETS_MS = (10.0, 40.0, 160.0, 640.0)


def new_registry() -> CollectorRegistry:
    """A fresh registry for one daemon (never prometheus_client's global one)."""
    return CollectorRegistry(auto_describe=True)


class FastCounter:
    """A monotonic counter whose update is one addition."""

    __slots__ = ("documentation", "name", "value")

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class OpLatency:
    """A latency histogram per FUSE op; ``observe`` is a bisect and two additions."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self._bounds = buckets
        self._counts: dict[str, list[int]] = {}  # per op: one count per bucket, then +Inf
        self._sums: dict[str, float] = {}

    def observe(self, op: str, seconds: float) -> None:
        counts = self._counts.get(op)
        if counts is None:
            counts = self._counts[op] = [0] * (len(self._bounds) + 1)
            self._sums[op] = 0.0
        counts[bisect_left(self._bounds, seconds)] += 1
        self._sums[op] += seconds

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["op"])
        for op, counts in list(self._counts.items()):
            cumulative, buckets = 0, []
            for bound, count in zip((*map(str, self._bounds), "+Inf"), counts, strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            family.add_metric([op], buckets, self._sums[op])
        return family


class _HotCollector(Collector):
    def __init__(self, latency: OpLatency, counters: list[FastCounter]) -> None:
        self._latency = latency
        self._counters = counters

    def collect(self) -> Iterator[Metric]:
        yield self._latency.family()
        for c in self._counters:
            yield CounterMetricFamily(c.name, c.documentation, value=c.value)


class _FunctionCounter(Collector):
    """A counter whose value a function gives at scrape time (0 until one is set)."""

    def __init__(self, name: str, documentation: str) -> None:
        self._name = name
        self._documentation = documentation
        self.function: Callable[[], float] = lambda: 0

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.function())


# The disk page store's counters: name (after alluxiofuse_disk_cache_) -> what it counts.
_DISK_COUNTERS = {
    "hits": "Pages read from the disk page store",
    "misses": "Pages looked for in the disk page store and not found there",
    "hit_bytes": "Bytes read from the disk page store",
    "written_bytes": "Bytes written to the disk page store",
    "skipped_bytes": "Bytes of fetched pages not written to the disk page store: too "
                     "many were waiting to be",
    "evicted_pages": "Pages this daemon evicted from the disk page store",
    "evicted_bytes": "Bytes this daemon evicted from the disk page store",
    "corrupt_pages": "Pages of the disk page store that failed a check on read (removed, "
                     "fetched again)",
    "errors": "I/O errors of the disk page store (the read went to the source)",
}


class _DiskCollector(Collector):
    """The disk page store's counters and gauges, read at scrape time (zeros without one,
    so that dashboards find every series)."""

    def __init__(self) -> None:
        self.counters: Callable[[], Mapping[str, float]] = lambda: dict.fromkeys(
            _DISK_COUNTERS, 0)
        self.used: Callable[[], float] = lambda: 0
        self.capacity = 0.0

    def collect(self) -> Iterator[Metric]:
        values = self.counters()
        for name, documentation in _DISK_COUNTERS.items():
            yield CounterMetricFamily(f"alluxiofuse_disk_cache_{name}", documentation,
                                      value=values[name])
        yield GaugeMetricFamily("alluxiofuse_disk_cache_bytes", "Bytes the disk page store "
                                "holds, for all the daemons sharing it", value=self.used())
        yield GaugeMetricFamily("alluxiofuse_disk_cache_capacity_bytes",
                                "The disk page store's bound (0: no store)",
                                value=self.capacity)


class Metrics:
    """Every instrument the daemon updates; one instance per daemon, never global."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.fuse_op_seconds = OpLatency(
            "alluxiofuse_fuse_op_seconds", "FUSE request latency by op", _OP_BUCKETS,
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
        self.page_cache_hit_bytes = FastCounter(
            "alluxiofuse_page_cache_hit_bytes", "Bytes served from the page cache",
        )
        self.page_cache_miss_bytes = FastCounter(
            "alluxiofuse_page_cache_miss_bytes", "Bytes fetched into the page cache on demand",
        )
        self.page_cache_evicted_bytes = FastCounter(
            "alluxiofuse_page_cache_evicted_bytes", "Bytes evicted from the page cache",
        )
        self.readahead_used_bytes = FastCounter(
            "alluxiofuse_readahead_used_bytes", "Prefetched bytes later read",
        )
        self.readahead_wasted_bytes = FastCounter(
            "alluxiofuse_readahead_wasted_bytes", "Prefetched bytes evicted or dropped unread",
        )
        registry.register(_HotCollector(self.fuse_op_seconds, [
            self.page_cache_hit_bytes, self.page_cache_miss_bytes, self.page_cache_evicted_bytes,
            self.readahead_used_bytes, self.readahead_wasted_bytes,
        ]))
        self._page_cache_bytes = Gauge(
            "alluxiofuse_page_cache_bytes", "Bytes held by the page cache", registry=registry,
        )
        self._page_cache_capacity_bytes = Gauge(
            "alluxiofuse_page_cache_capacity_bytes", "Page cache bound", registry=registry,
        )
        self._memory_budget_bytes = Gauge(
            "alluxiofuse_memory_budget_bytes", "Memory the page cache and read-ahead may hold",
            registry=registry,
        )
        self._memory_used_bytes = Gauge(
            "alluxiofuse_memory_used_bytes", "Memory the page cache and read-ahead hold, pages "
            "being fetched included", registry=registry,
        )
        self.memory_pressure_shrinks = Counter(
            "alluxiofuse_memory_pressure_shrinks", "Times the page cache was shrunk below its "
            "bound because the process grew past the memory budget", registry=registry,
        )
        self.cache_drops = Counter(
            "alluxiofuse_cache_drops", "Times the metadata and page caches were dropped (SIGHUP)",
            registry=registry,
        )
        self._pending_uploads = Gauge(
            "alluxiofuse_pending_uploads", "Uploads owed to the under-storage (ASYNC_THROUGH, "
            "and failed commits being retried)", registry=registry,
        )
        self._pending_upload_bytes = Gauge(
            "alluxiofuse_pending_upload_bytes", "Bytes of the uploads owed to the under-storage",
            registry=registry,
        )
        self._upload_failures = _FunctionCounter(
            "alluxiofuse_upload_failures", "Background upload attempts that failed (each is "
            "retried)",
        )
        registry.register(self._upload_failures)
        self._disk = _DiskCollector()
        registry.register(self._disk)
        # process_resident_memory_bytes and friends, from /proc/self at scrape time.
        ProcessCollector(registry=registry)
        self._inodes = Gauge("alluxiofuse_inodes", "Inodes the kernel holds", registry=registry)
        self._metadata_cache_bytes = Gauge(
            "alluxiofuse_metadata_cache_bytes", "Bytes held by cached statuses, missing names "
            "and listings (as estimated for their bound)", registry=registry,
        )
        self._metadata_cache_capacity_bytes = Gauge(
            "alluxiofuse_metadata_cache_capacity_bytes", "Metadata cache bound",
            registry=registry,
        )
        self._open_handles = Gauge(
            "alluxiofuse_open_handles", "Open file and directory handles", registry=registry,
        )

        # Alluxio worker calls, under the names Alluxio's own REST metrics use.
        self.rest_call_latency_ms = Histogram(
            "alluxio_http_server_call_latency_ms", "Alluxio worker REST call latency (ms)",
            ["method", "success"], buckets=_REST_BUCKETS_MS, registry=registry,
        )
        self.rest_results = Counter(
            "alluxio_http_server_result", "Alluxio worker REST calls by outcome",
            ["method", "state"], registry=registry,
        )
        self.rest_retries = Counter(
            "alluxiofuse_worker_retries", "Worker REST calls sent again after a failure",
            ["method"], registry=registry,
        )
        self.bad_replies = Counter(
            "alluxiofuse_worker_bad_replies",
            "Worker replies rejected as unusable (bad JSON, wrong length, truncated body)",
            ["kind"], registry=registry,
        )
        self.fallback_reads = Counter(
            "alluxiofuse_ufs_fallback", "Calls served by the under-storage instead of a worker",
            ["op", "reason"], registry=registry,
        )
        self.fallback_bytes = Counter(
            "alluxiofuse_ufs_fallback_bytes", "Bytes read from the under-storage instead of a "
            "worker", registry=registry,
        )
        self.worker_read_bytes = Counter(
            "alluxiofuse_worker_read_bytes", "Bytes read from Alluxio workers", registry=registry,
        )
        self.content_mismatches = Counter(
            "alluxiofuse_content_hash_mismatches", "Reads whose bytes did not match the file's "
            "content hash", ["source"], registry=registry,
        )
        self.workers_marked_down = Counter(
            "alluxiofuse_workers_marked_down", "Times a failing worker was set aside for its "
            "cool-off period", registry=registry,
        )
        self._workers = Gauge(
            "alluxiofuse_workers", "Workers in the current membership", registry=registry,
        )

    def observe_rest_call(self, method: str, success: bool, seconds: float, state: str) -> None:
        self.rest_call_latency_ms.labels(method, "true" if success else "false").observe(
            seconds * 1000)
        self.rest_results.labels(method, state).inc()

    def watch_workers(self, count: Callable[[], float]) -> None:
        self._workers.set_function(count)

    def watch_page_cache(self, used: Callable[[], float], capacity: Callable[[], float]) -> None:
        self._page_cache_bytes.set_function(used)
        self._page_cache_capacity_bytes.set_function(capacity)

    def watch_memory(self, budget: float, used: Callable[[], float]) -> None:
        self._memory_budget_bytes.set(budget)
        self._memory_used_bytes.set_function(used)

    def watch_uploads(self, count: Callable[[], float], size: Callable[[], float],
                      failures: Callable[[], float]) -> None:
        self._pending_uploads.set_function(count)
        self._pending_upload_bytes.set_function(size)
        self._upload_failures.function = failures

    def watch_inodes(self, count: Callable[[], float]) -> None:
        self._inodes.set_function(count)

    def watch_metadata_cache(self, used: Callable[[], float], capacity: float) -> None:
        self._metadata_cache_bytes.set_function(used)
        self._metadata_cache_capacity_bytes.set(capacity)

    def watch_handles(self, count: Callable[[], float]) -> None:
        self._open_handles.set_function(count)

    def watch_disk_cache(self, counters: Callable[[], Mapping[str, float]],
                         used: Callable[[], float], capacity: float) -> None:
        self._disk.counters = counters
        self._disk.used = used
        self._disk.capacity = capacity
