"""Tell systemd how the daemon is doing: readiness, status lines, stopping, watchdog pings.

The protocol (sd_notify(3)) is one datagram of newline-separated ``NAME=value`` lines
sent to the AF_UNIX socket named by ``$NOTIFY_SOCKET``; a name starting with ``@`` is in
the abstract namespace. Nothing here raises: a daemon must serve its mount whether or
not the service manager hears it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping, MutableMapping

import trio

log = logging.getLogger(__name__)

# What systemd hands a service for this protocol. Removed from the environment once read
# (as sd_notify's unset_environment does), so that no process the daemon starts takes
# itself for the service and talks to systemd in its name.
ENVIRONMENT = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    """Messages to the service manager named in ``environ``; a no-op where none is named.

    Built from a mapping, not read from ``os.environ`` at import, so that tests can build
    several and the daemon decides when the variables are taken (:meth:`take`).
    """

    def __init__(self, environ: Mapping[str, str], pid: int | None = None) -> None:
        self.address = _address(environ.get("NOTIFY_SOCKET", ""))
        # Seconds between WATCHDOG=1 pings: half the period systemd allows, so that one
        # late wake-up of the event loop does not cost the service its life.
        self.watchdog_interval: float | None = None
        usec = _watchdog_usec(environ, os.getpid() if pid is None else pid)
        if self.address is not None and usec is not None:
            self.watchdog_interval = usec / 2 / 1_000_000

    @classmethod
    def take(cls, environ: MutableMapping[str, str]) -> Notifier:
        """A notifier from ``environ`` (``os.environ`` in the daemon), which then no longer
        holds the variables: children of the daemon must not inherit them."""
        notifier = cls(environ)
        for name in ENVIRONMENT:
            environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """Whether a service manager is listening."""
        return self.address is not None

    def send(self, *assignments: str) -> None:
        """Send ``NAME=value`` lines in one datagram (so ``READY=1`` and its ``STATUS=``
        arrive together). Failures are logged at debug level, never raised."""
        if self.address is None or not assignments:
            return
        # A newline inside a value would start a new assignment: "STATUS=x\nREADY=1" in
        # an error message must not tell systemd the mount is ready.
        lines = (a.replace("\r", " ").replace("\n", " ") for a in assignments)
        data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                # Never wait on a full queue: this runs on the event loop's thread.
                s.setblocking(False)
                s.sendto(data, self.address)
        except OSError as e:
            log.debug("sd_notify to %r failed: %s", self.address, e)

    async def keep_watchdog(self) -> None:
        """Send ``WATCHDOG=1`` every half period until cancelled; returns at once without
        a watchdog. Run on the daemon's event loop: each ping proves the loop is alive."""
        if self.watchdog_interval is None:
            return
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(self.watchdog_interval)


def _address(name: str) -> bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None if none or not understood."""
    if name.startswith("@"):  # abstract namespace: a leading NUL byte instead of '@'
        return b"\0" + os.fsencode(name[1:])
    if name.startswith("/"):
        return os.fsencode(name)
    if name:  # e.g. systemd's vsock: addresses, for VMs; a local daemon never gets one
        log.debug("NOTIFY_SOCKET %r is not an AF_UNIX socket: not notifying", name)
    return None


def _watchdog_usec(environ: Mapping[str, str], pid: int) -> int | None:
    """``$WATCHDOG_USEC`` when the watchdog is meant for process ``pid``, else None."""
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):  # meant for another process (one that started us)
        return None
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    return usec if usec > 0 else None
