"""A simulated Alluxio 3.x cluster for tests: worker processes registered in a real etcd."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
CLUSTER = "SimCluster"


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    """Write ``files`` (relative path -> content) under ``root``; the resolved root."""
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root.resolve()


@dataclass
class SimProcess:
    proc: subprocess.Popen[str]
    port: int
    identity: str  # hex
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def faults(self, **faults: Any) -> None:
        httpx.post(f"{self.url}/_sim/faults", json=faults, timeout=5).raise_for_status()

    def stats(self) -> dict[str, int]:
        return dict(httpx.get(f"{self.url}/_sim/stats", timeout=5).json())

    def kill(self) -> None:
        """As a crash: no goodbye, the etcd lease runs out on its own."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@dataclass
class SimCluster:
    etcd: str
    ufs: Path
    store: Path
    mode: str = "oss"
    vnodes: int = 2000
    load_delay: float = 0.0
    workers: list[SimProcess] = field(default_factory=list)

    def start_worker(self, lease_ttl: int = 10) -> SimProcess:
        log = self.store.parent / f"worker-{len(self.workers)}.log"
        with open(log, "w") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", "tests.sim.worker", "--ufs", str(self.ufs),
                 "--store", str(self.store), "--mode", self.mode, "--vnodes", str(self.vnodes),
                 "--etcd", self.etcd, "--cluster", CLUSTER, "--lease-ttl", str(lease_ttl),
                 "--load-delay", str(self.load_delay)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "listening <port> <identity>", or EOF if it died
        if not line.startswith("listening "):
            proc.kill()
            raise RuntimeError(f"simulated worker did not start: {log.read_text()}")
        _, port, identity = line.split()
        worker = SimProcess(proc, int(port), identity, log)
        self.workers.append(worker)
        return worker

    def load(self, path: str = "") -> None:
        """Load ``path`` (relative to the UFS) into the cache of the workers owning it."""
        import time

        uri = f"file://{self.ufs}/{path}".rstrip("/")
        worker = self.workers[0].url
        reply = httpx.get(f"{worker}/v1/load", params={"path": uri, "opType": "submit"},
                          timeout=10)
        assert reply.json()["success"], reply.text
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = httpx.get(f"{worker}/v1/load", params={"path": uri, "opType": "progress"},
                              timeout=10).json()["jobState"]
            if state != "RUNNING":
                assert state == "SUCCEEDED", state
                return
            time.sleep(0.05)
        raise TimeoutError(f"loading {uri}")

    def stop(self) -> None:
        for worker in self.workers:
            if worker.proc.poll() is None:
                worker.proc.terminate()
        for worker in self.workers:
            try:
                worker.proc.wait(10)
            except subprocess.TimeoutExpired:
                worker.proc.kill()
                worker.proc.wait(10)
            if worker.proc.stdout:
                worker.proc.stdout.close()


@contextmanager
def sim_cluster(etcd: str, ufs: Path, store: Path, n: int, **kwargs: Any) -> Iterator[SimCluster]:
    cluster = SimCluster(etcd, ufs.resolve(), store, **kwargs)
    try:
        for _ in range(n):
            cluster.start_worker()
        yield cluster
    finally:
        cluster.stop()
