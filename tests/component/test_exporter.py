"""The HTTP endpoint on a real loopback socket: /metrics, /healthz, /readyz."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator

import httpx
import pytest

from alluxiofuse.daemon.exporter import Exporter, Health
from alluxiofuse.metrics import Metrics, new_registry


@pytest.fixture
def served() -> Iterator[tuple[Exporter, Metrics, Health]]:
    metrics, health = Metrics(new_registry()), Health()
    exporter = Exporter("127.0.0.1", 0, metrics.registry, health)
    try:
        yield exporter, metrics, health
    finally:
        exporter.close()


def test_metrics_are_the_registry(served: tuple[Exporter, Metrics, Health]) -> None:
    exporter, metrics, _ = served
    metrics.page_cache_hit_bytes.inc(4096)
    metrics.fuse_op_seconds.observe("read", 0.002)
    r = httpx.get(exporter.url + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    assert "alluxiofuse_page_cache_hit_bytes_total 4096.0" in r.text
    assert 'alluxiofuse_fuse_op_seconds_bucket{le="0.005",op="read"} 1.0' in r.text
    assert "process_resident_memory_bytes" in r.text
    # OpenMetrics when asked for, as Prometheus does.
    r = httpx.get(exporter.url + "/metrics", timeout=10,
                  headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_health_and_readiness(served: tuple[Exporter, Metrics, Health]) -> None:
    exporter, _, health = served

    def get(path: str) -> tuple[int, str]:
        r = httpx.get(exporter.url + path, timeout=10)
        return r.status_code, r.text.strip()

    assert get("/healthz") == (200, "ok")
    assert get("/readyz") == (503, "not mounted yet")
    health.mounted = True
    assert get("/readyz") == (503, "backend unreachable: not probed yet")
    health.backend_error = None
    assert get("/readyz") == (200, "ready")
    health.backend_error = "BackendTimeout: no answer in 10s"
    assert get("/readyz") == (503, "backend unreachable: BackendTimeout: no answer in 10s")
    health.stopping = True
    assert get("/readyz") == (503, "unmounting")
    assert get("/healthz") == (200, "ok")
    assert get("/nothing")[0] == 404


def test_a_busy_port_is_an_error_and_close_frees_it() -> None:
    health, registry = Health(), new_registry()
    first = Exporter("127.0.0.1", 0, registry, health)
    port = int(first.url.rsplit(":", 1)[1])
    try:
        with pytest.raises(OSError):
            Exporter("127.0.0.1", port, registry, health)
    finally:
        first.close()
    with socket.create_server(("127.0.0.1", port)):  # free again
        pass


def test_a_stalled_client_does_not_block_others(
    served: tuple[Exporter, Metrics, Health],
) -> None:
    exporter, _, _ = served
    host, port = exporter.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10):  # sends nothing
        assert httpx.get(exporter.url + "/healthz", timeout=10).status_code == 200


def test_healthz_fails_when_the_event_loop_stops_beating() -> None:
    now = [100.0]
    health, registry = Health(clock=lambda: now[0]), new_registry()
    exporter = Exporter("127.0.0.1", 0, registry, health)
    try:
        def get() -> tuple[int, str]:
            r = httpx.get(exporter.url + "/healthz", timeout=10)
            return r.status_code, r.text.strip()

        now[0] += 29
        assert get() == (200, "ok")
        now[0] += 2
        assert get() == (503, "event loop stalled for 31s")
        health.beat()
        assert get() == (200, "ok")
    finally:
        exporter.close()


def test_every_interface_is_reachable_over_ipv4_and_ipv6() -> None:
    exporter = Exporter("", 0, new_registry(), Health())
    try:
        port = int(exporter.url.rsplit(":", 1)[1])
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
        if socket.has_ipv6 and os.path.exists("/proc/net/if_inet6"):
            assert httpx.get(f"http://[::1]:{port}/healthz", timeout=10).status_code == 200
    finally:
        exporter.close()


def test_a_busy_port_stops_the_mount_only_when_it_was_asked_for(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    from alluxiofuse.config import build_config
    from alluxiofuse.daemon import process as daemon

    with socket.create_server(("127.0.0.1", 0)) as busy:
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        asked = build_config({"source": "/s", "mountpoint": "/m", "metrics_addr": addr})
        with pytest.raises(daemon.StartupError, match=f"cannot serve metrics on {addr}"):
            daemon.start_exporter(asked, Metrics(new_registry()), Health())
        # The default address taken (another mount on the host): served elsewhere, and said.
        monkeypatch.setattr(daemon, "DEFAULT_METRICS_ADDR", addr)
        default = build_config({"source": "/s", "mountpoint": "/m"})
        caplog.set_level(logging.INFO)
        exporter = daemon.start_exporter(default, Metrics(new_registry()), Health())
        assert exporter is not None
        try:
            assert exporter.url.startswith("http://127.0.0.1:") and exporter.url != f"http://{addr}"
            assert httpx.get(f"{exporter.url}/healthz", timeout=10).status_code == 200
        finally:
            exporter.close()
        assert f"cannot serve metrics on {addr}" in caplog.text
        assert f"serving metrics at {exporter.url}/metrics" in caplog.text
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
