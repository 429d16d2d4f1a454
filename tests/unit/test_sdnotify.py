"""The sd_notify client: addresses, datagram format, watchdog settings, the environment."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from alluxiofuse.daemon.sdnotify import ENVIRONMENT, Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A datagram socket bound in tmp_path, and the NOTIFY_SOCKET value naming it."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(path))
        s.settimeout(5)
        yield s, str(path)


def test_one_datagram_of_lines(listener: tuple[socket.socket, str]) -> None:
    s, name = listener
    n = Notifier({"NOTIFY_SOCKET": name})
    assert n.enabled
    n.send("READY=1", "STATUS=serving x at /mnt/ü")
    assert s.recv(4096) == "READY=1\nSTATUS=serving x at /mnt/ü\n".encode()


def test_a_newline_in_a_value_cannot_add_an_assignment(
    listener: tuple[socket.socket, str],
) -> None:
    s, name = listener
    Notifier({"NOTIFY_SOCKET": name}).send("STATUS=failed: bad\nREADY=1")
    assert s.recv(4096) == b"STATUS=failed: bad READY=1\n"


def test_abstract_namespace() -> None:
    name = f"alluxiofuse-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(b"\0" + name.encode())
        s.settimeout(5)
        Notifier({"NOTIFY_SOCKET": "@" + name}).send("STOPPING=1")
        assert s.recv(4096) == b"STOPPING=1\n"


@pytest.mark.parametrize("value", ["", "vsock:2:1234", "relative/path"])
def test_no_socket_is_a_no_op(value: str) -> None:
    n = Notifier({"NOTIFY_SOCKET": value} if value else {})
    assert not n.enabled
    n.send("READY=1")  # nothing to send to, nothing raised


def test_a_failed_send_is_logged_at_debug_never_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, "alluxiofuse.daemon.sdnotify")
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}).send("READY=1")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG]
    assert "sd_notify" in caplog.records[0].getMessage()


@pytest.mark.parametrize(("environ", "interval"), [
    ({"WATCHDOG_USEC": "3000000"}, 1.5),
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4242"}, 1.5),  # ours
    ({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "4243"}, None),  # another process's
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval_is_half_the_period(
    environ: dict[str, str], interval: float | None,
) -> None:
    n = Notifier({"NOTIFY_SOCKET": "/run/x", **environ}, pid=4242)
    assert n.watchdog_interval == interval


def test_no_watchdog_without_a_socket() -> None:
    assert Notifier({"WATCHDOG_USEC": "3000000"}).watchdog_interval is None


async def test_keep_watchdog_pings_until_cancelled(listener: tuple[socket.socket, str]) -> None:
    s, name = listener
    s.setblocking(False)
    n = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "20000"})  # a ping every 10 ms
    with trio.move_on_after(0.2):
        await n.keep_watchdog()
    pings = []
    while True:
        try:
            pings.append(s.recv(4096))
        except BlockingIOError:
            break
    assert len(pings) >= 5, pings
    assert set(pings) == {b"WATCHDOG=1\n"}


async def test_keep_watchdog_returns_without_a_watchdog() -> None:
    with trio.fail_after(1):
        await Notifier({"NOTIFY_SOCKET": "/run/x"}).keep_watchdog()


def test_take_removes_the_variables_from_the_environment() -> None:
    environ = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "1000000",
               "WATCHDOG_PID": str(os.getpid()), "PATH": "/bin"}
    n = Notifier.take(environ)
    assert n.enabled and n.watchdog_interval == 0.5
    assert environ == {"PATH": "/bin"}


def test_taken_variables_do_not_reach_a_child(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.setenv(name, "/run/x" if name == "NOTIFY_SOCKET" else "1000000")
    Notifier.take(os.environ)
    child = subprocess.run(
        [sys.executable, "-c",
         f"import os; print([n for n in {ENVIRONMENT!r} if n in os.environ])"],
        capture_output=True, text=True, timeout=30, check=True,
    )
    assert child.stdout.strip() == "[]"
