"""A real etcd server for tests: loopback only, its own data directory, stopped after."""

from __future__ import annotations

import base64
import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.needs import need


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def etcd_server(data_dir: Path) -> Iterator[str]:
    """Start etcd on free 127.0.0.1 ports; yield its client URL. Under CI=true a missing
    etcd binary fails the test (CI installs etcd-server); elsewhere it skips."""
    binary = shutil.which("etcd")
    need(binary, "etcd not installed (Debian: apt install etcd-server)")
    assert binary is not None
    client, peer = f"http://127.0.0.1:{_free_port()}", f"http://127.0.0.1:{_free_port()}"
    log = open(data_dir.parent / "etcd.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [binary, "--name", "test", "--data-dir", str(data_dir),
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"test={peer}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError):  # not up yet
                if httpx.get(f"{client}/health", timeout=1).json().get("health") == "true":
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"etcd did not start: {(data_dir.parent / 'etcd.log').read_text()}")
            time.sleep(0.1)
        yield client
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def register(client: str, key: str, value: str, ttl: int = 60, token: str = "") -> int:
    """Put ``key`` under a fresh lease, as a worker registers itself; the lease id."""
    headers = {"Authorization": token} if token else {}
    lease = int(httpx.post(f"{client}/v3/lease/grant", json={"TTL": ttl},
                           headers=headers).json()["ID"])
    httpx.post(f"{client}/v3/kv/put", headers=headers,
               json={"key": b64(key), "value": b64(value), "lease": lease}).raise_for_status()
    return lease


def enable_auth(client: str, password: str) -> str:
    """Turn on etcd authentication with user ``root``; a token for that user."""
    for path, body in (("user/add", {"name": "root", "password": password}),
                       ("role/add", {"name": "root"}),
                       ("user/grant", {"user": "root", "role": "root"}),
                       ("enable", {})):
        httpx.post(f"{client}/v3/auth/{path}", json=body).raise_for_status()
    reply = httpx.post(f"{client}/v3/auth/authenticate",
                       json={"name": "root", "password": password})
    reply.raise_for_status()
    return str(reply.json()["token"])


def revoke(client: str, lease: int) -> None:
    """End a lease: its keys go, as when a worker dies and its lease runs out."""
    httpx.post(f"{client}/v3/lease/revoke", json={"ID": lease}).raise_for_status()
