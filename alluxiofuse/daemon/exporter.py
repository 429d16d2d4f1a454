"""The daemon's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``, on one thread.

It runs in a thread of its own (stdlib ``wsgiref`` with a thread per request), not on the
event loop: a scrape must answer while the loop is busy. ``/healthz`` and ``/readyz``
report what the event loop last recorded in :class:`Health` (plain attributes, written by
the loop, read here), so a loop stuck for good makes ``/healthz`` fail.
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

log = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


# /healthz fails once the event loop has not beaten for this long: a loop stuck this long
# serves no request, and a restart is the only way out.
STALL_LIMIT = 30.0
_SHUTDOWN_POLL = 0.02  # seconds between the serving loop's looks for a shutdown


class Health:
    """What ``/healthz`` and ``/readyz`` report: the event loop beating, mounted, and the
    backend answering its last probe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.mounted = False
        self.stopping = False
        self.backend_error: str | None = "not probed yet"
        self._clock = clock
        self._last_beat = clock()

    def beat(self) -> None:
        """Called by the event loop every second."""
        self._last_beat = self._clock()

    def stall(self) -> str | None:
        """Why the process is not healthy (its event loop stuck), or None."""
        quiet = self._clock() - self._last_beat
        return f"event loop stalled for {quiet:.0f}s" if quiet > STALL_LIMIT else None

    def problem(self) -> str | None:
        """Why the mount is not ready, or None when it is."""
        if self.stopping:
            return "unmounting"
        if not self.mounted:
            return "not mounted yet"
        if self.backend_error is not None:
            return f"backend unreachable: {self.backend_error}"
        return None


def wsgi_app(registry: CollectorRegistry, health: Health) -> Callable[..., Iterable[bytes]]:
    """/metrics from ``registry``; /healthz and /readyz as plain text; 404 elsewhere."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            stall = health.stall()
            if stall is not None:
                return _text(start_response, "503 Service Unavailable", stall)
            return _text(start_response, "200 OK", "ok")
        if path == "/readyz":
            problem = health.problem()
            if problem is None:
                return _text(start_response, "200 OK", "ready")
            return _text(start_response, "503 Service Unavailable", problem)
        return _text(start_response, "404 Not Found", "try /metrics, /healthz or /readyz")

    return app


def _text(start_response: StartResponse, status: str, body: str) -> list[bytes]:
    data = (body + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(data)))])
    return [data]


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a slow scraper must not hold up the daemon's exit
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: type[WSGIRequestHandler]) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _QuietHandler(WSGIRequestHandler):
    """Access lines at debug level: one per scrape would drown the daemon's own log."""

    timeout = 10  # seconds a client may take to send its request: a stalled one is dropped

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class Exporter:
    """Serves :func:`wsgi_app` at ``(host, port)`` until :meth:`close`; port 0 picks one,
    host "" every interface (IPv6 and IPv4 where the kernel has IPv6, else IPv4)."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, health: Health) -> None:
        # Binding here, in the caller, makes a busy port an error the caller can report.
        app = wsgi_app(registry, health)
        try:
            self._server = make_server(host or "::", port, app, server_class=_Server,
                                       handler_class=_QuietHandler)
        except OSError as e:
            if host or e.errno not in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                raise
            self._server = make_server("0.0.0.0", port, app, server_class=_Server,
                                       handler_class=_QuietHandler)
        # shutdown() waits for the serving loop to see it: at the default half-second
        # poll, every unmount would wait that long to exit.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        args=(_SHUTDOWN_POLL,), name="alluxiofuse-exporter",
                                        daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://[{name}]:{port}" if ":" in name else f"http://{name}:{port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
