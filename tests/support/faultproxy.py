"""A loopback HTTP proxy in front of an S3 server that injects faults at set rates."""

# How it works. Each connection accepted on 127.0.0.1 gets a thread and a connection of its
# own to the upstream server, made again whenever the upstream closed it or it sat idle;
# the client's is kept alive as S3 keeps it (moto closes after every reply). The proxy
# counts the upstream's own 5xx replies apart and names them. It reads each request's
# head, draws one fault for it (a seeded RNG, so that a run is repeatable given the same
# order of requests), and then either answers it itself or passes it on, streaming the
# body both ways by its HTTP framing (Content-Length or chunked; a reply may also run to
# the close). The faults, by kind:
#
#   slowdown   503 SlowDown with S3's XML error body; the request is not passed on
#   internal   500 InternalError, likewise
#   reset      passed on; the reply's head and part of its body sent, then a TCP reset
#   truncate   passed on; the reply's head (its Content-Length honest) and part of its
#              body sent, then the connection closed
#   stall      nothing for ``stall_seconds``, then passed on
#   flip       (PUT with a body only, drawn apart from the others) one byte of the body
#              inverted on its way up: the data of the first aws-chunked chunk if the body
#              is aws-chunked, anywhere in it otherwise
#   nosuchupload  (only on request: ``inject``) 404 NoSuchUpload, as S3 answers a request
#              naming a multipart upload that is over; not passed on
#
# A reset or truncation of a reply without a body (a HEAD's, a PUT's) cuts its head
# instead. A request that says ``Expect: 100-continue`` is answered "100 Continue" by the
# proxy itself (the upstream never sees the header), after a stall and unless it is
# answered with an error (then the connection is closed: the body was never sent).
#
#     with FaultProxy(("127.0.0.1", port), Rates(slowdown=0.1, reset=0.02), seed=1) as p:
#         endpoint = p.url          # http://127.0.0.1:PORT
#         p.set_rates(Rates())       # no faults from now on
#         p.inject("reset", method="GET", target=r"/f\.bin")  # the next such request's
#         p.counts()                 # {"requests": ..., "connections": ..., "slowdown": ...}
#
# At most ``max_connections`` are served at once (the rest wait to be accepted). close()
# cuts every connection, wakes every stall, and fails if a thread is still running.

from __future__ import annotations

import contextlib
import random
import re
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

KINDS = ("slowdown", "internal", "reset", "truncate", "stall", "flip")
# Faults given only on request (``inject``), never at a rate.
INJECTED_ONLY = ("nosuchupload",)
_CHUNK = 1 << 20  # bytes moved per system call at most
_HEAD_MAX = 64 << 10  # the longest request or reply head accepted
# An upstream connection idle this long is replaced before it carries a request: servers
# close idle keep-alive connections (node's after 5 s), and a request sent into one that
# is closing could not be sent again (its body has gone).
_UPSTREAM_IDLE = 1.0
_CONNECT_TIMEOUT = 10.0
_FAILURES_KEPT = 100
_ERRORS = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (500, "Internal Server Error", "InternalError",
                 "We encountered an internal error. Please try again."),
    # What S3 answers a request naming a multipart upload that is over (a repeated
    # CompleteMultipartUpload, say): moto answers a repeated one as the first.
    "nosuchupload": (404, "Not Found", "NoSuchUpload",
                     "The specified upload does not exist. The upload ID may be invalid, "
                     "or the upload may have been aborted or completed."),
}


@dataclass(frozen=True)
class Rates:
    """The share of requests that get each fault (drawn once per request; ``flip`` is
    drawn apart, for PUTs with a body that no other fault took)."""

    slowdown: float = 0.0
    internal: float = 0.0
    reset: float = 0.0
    truncate: float = 0.0
    stall: float = 0.0
    flip: float = 0.0
    stall_seconds: float = 5.0

    def __post_init__(self) -> None:
        shares = [getattr(self, k) for k in KINDS]
        if any(not 0 <= r <= 1 for r in shares) or sum(shares) - self.flip > 1:
            raise ValueError(f"rates must be shares of requests summing to at most 1: {self}")
        if self.stall_seconds < 0:
            raise ValueError("stall_seconds must be >= 0")


@dataclass
class _Scripted:
    """Faults asked for by ``FaultProxy.inject``: ``times`` more to give."""

    kind: str
    times: int
    method: str | None
    target: str | None
    header: str | None

    def matches(self, request: _Message) -> bool:
        return ((self.method is None or request.first[0] == self.method)
                and (self.target is None or re.search(self.target, request.first[1]) is not None)
                and (self.header is None or re.search(self.header, request.encode().decode(
                    "latin-1"), re.IGNORECASE) is not None))


class _Closed(Exception):
    """The peer closed the connection (between requests: the normal end)."""


class _Conn:
    """A socket with a read buffer: heads by line, bodies by count."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.used = time.monotonic()

    def _fill(self) -> None:
        data = self.sock.recv(_CHUNK)
        if not data:
            raise _Closed
        self.buf += data

    def head(self) -> bytes | None:
        """The next head, through its blank line; None if the peer closed before one."""
        while (end := self.buf.find(b"\r\n\r\n")) < 0:
            if len(self.buf) > _HEAD_MAX:
                raise ValueError("head too long")
            try:
                self._fill()
            except _Closed:
                if self.buf:
                    raise
                return None
        head = bytes(self.buf[:end + 4])
        del self.buf[:end + 4]
        return head

    def line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            if len(self.buf) > _HEAD_MAX:
                raise ValueError("line too long")
            self._fill()
        line = bytes(self.buf[:end + 2])
        del self.buf[:end + 2]
        return line

    def some(self, n: int) -> bytes:
        """Between 1 and ``n`` bytes."""
        if not self.buf:
            self._fill()
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.used = time.monotonic()


@dataclass
class _Message:
    """A parsed head: the first line's words and the headers (names lowered)."""

    first: list[str]
    headers: list[tuple[str, str]]

    @classmethod
    def parse(cls, head: bytes) -> _Message:
        lines = head.decode("latin-1").split("\r\n")
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip().lower(), value.strip()))
        return cls(lines[0].split(" ", 2), headers)

    def get(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n == name), None)

    def without(self, name: str) -> _Message:
        return _Message(self.first, [(n, v) for n, v in self.headers if n != name])

    def encode(self) -> bytes:
        lines = [" ".join(self.first), *(f"{n}: {v}" for n, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def chunked(self) -> bool:
        return "chunked" in (self.get("transfer-encoding") or "").lower()

    def length(self) -> int | None:
        value = self.get("content-length")
        return int(value) if value is not None else None

    def keeps_alive(self) -> bool:
        connection = (self.get("connection") or "").lower()
        version = self.first[0] if self.first[0].startswith("HTTP/") else self.first[-1]
        return "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)


class _Flipper:
    """Inverts one byte of a body as it streams past: at ``share`` of its length; of an
    aws-chunked body, at ``share`` of its first chunk's data (located once its first line
    has passed); of a chunked body of unknown length, its first byte."""

    def __init__(self, share: float, length: int | None, aws_chunked: bool) -> None:
        self.share, self.aws = share, aws_chunked
        self.target = None if aws_chunked or length is None else int(share * length)
        self.seen = 0
        self.first = bytearray()  # aws-chunked: the body until its first line's end
        self.done = False

    def __call__(self, data: bytes) -> bytes:
        if self.done or not data:
            return data
        if self.target is None and not self.aws:
            self.target = self.seen
        elif self.target is None:
            self.first += data
            end = self.first.find(b"\r\n")
            if end >= 0:
                size = int(bytes(self.first[:end]).split(b";")[0], 16)
                self.target = end + 2 + int(self.share * size)
                self.done = size == 0
            elif len(self.first) > _HEAD_MAX:
                raise ValueError("aws-chunked line too long")
        if self.target is not None and self.seen <= self.target < self.seen + len(data):
            i = self.target - self.seen
            data = data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1:]
            self.done = True
        self.seen += len(data)
        return data


class FaultProxy:
    """The proxy, listening on 127.0.0.1 (a port the OS picks: ``port``, ``url``) from
    ``start()`` (or entering) until ``close()`` (or leaving), which ends every thread."""

    def __init__(self, upstream: tuple[str, int], rates: Rates | None = None, *, seed: int = 0,
                 max_connections: int = 256) -> None:
        self.upstream = upstream
        self._rates = rates or Rates()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(
            ("requests", "connections", *KINDS, *INJECTED_ONLY, "upstream 5xx"), 0)
        # The requests the upstream itself failed (5xx), the first _FAILURES_KEPT of them.
        self.upstream_failures: list[str] = []
        self._scripted: list[_Scripted] = []
        self._slots = threading.BoundedSemaphore(max_connections)
        self._stop = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._threads: set[threading.Thread] = set()
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=max_connections)
        self.port: int = self._listener.getsockname()[1]
        self._acceptor = threading.Thread(target=self._accept, name="faultproxy-accept")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control

    def set_rates(self, rates: Rates) -> None:
        """The rates of the requests that come from now on."""
        with self._lock:
            self._rates = rates

    @property
    def rates(self) -> Rates:
        with self._lock:
            return self._rates

    def inject(self, kind: str, *, times: int = 1, method: str | None = None,
               target: str | None = None, header: str | None = None) -> None:
        """Give fault ``kind`` to the next ``times`` requests that match, whatever the rates:
        ``method`` (GET, PUT, ...), ``target`` (a regular expression searched for in the
        request's target: path and query), ``header`` (one searched for in its head)."""
        if kind not in KINDS + INJECTED_ONLY:
            raise ValueError(f"no fault {kind!r}: one of {KINDS + INJECTED_ONLY}")
        with self._lock:
            self._scripted.append(_Scripted(kind, times, method, target, header))

    def counts(self) -> dict[str, int]:
        """Requests seen, connections accepted, faults injected by kind, and replies the
        upstream itself failed (5xx; ``upstream_failures`` names them), so far."""
        with self._lock:
            return dict(self._counts)

    def start(self) -> FaultProxy:
        self._acceptor.start()
        return self

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, cut every connection, and wait for every thread to end."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        if self._acceptor.is_alive():
            self._acceptor.join(timeout)
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        left = [t.name for t in [self._acceptor, *threads] if t.is_alive()]
        if left:
            raise RuntimeError(f"fault proxy threads still running after {timeout}s: {left}")

    # -- serving

    def _accept(self) -> None:
        while not self._stop.is_set():
            # At most max_connections at once: the next waits in the backlog.
            while not self._slots.acquire(timeout=0.1):
                if self._stop.is_set():
                    return
            try:
                client, _ = self._listener.accept()
            except OSError:
                self._slots.release()
                return  # closed
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                n = self._counts["connections"]
            thread = threading.Thread(target=self._serve, args=(client,),
                                      name=f"faultproxy-{n}")
            with self._lock:
                self._counts["connections"] += 1
                self._threads = {t for t in self._threads if t.is_alive()}
                self._threads.add(thread)
                self._sockets.add(client)
            thread.start()

    def _track(self, sock: socket.socket | None, add: bool) -> None:
        if sock is None:
            return
        with self._lock:
            if add:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)
        if not add:
            sock.close()

    def _draw(self, request: _Message) -> str | None:
        """The fault of this request, counted; None to pass it on as it is."""
        with self._lock:
            self._counts["requests"] += 1
            for scripted in self._scripted:
                if scripted.times > 0 and scripted.matches(request):
                    scripted.times -= 1
                    self._counts[scripted.kind] += 1
                    return scripted.kind
            rates = self._rates
            x = self._rng.random()
            fault = None
            for kind in KINDS[:-1]:
                share = getattr(rates, kind)
                if x < share:
                    fault = kind
                    break
                x -= share
            upload = (request.first[0] == "PUT" and request.get("x-amz-copy-source") is None
                      and (request.chunked() or (request.length() or 0) > 0))
            if fault is None and upload and self._rng.random() < rates.flip:
                fault = "flip"
            if fault is not None:
                self._counts[fault] += 1
            return fault

    def _serve(self, client_sock: socket.socket) -> None:
        client = _Conn(client_sock)
        upstream: _Conn | None = None
        try:
            while not self._stop.is_set():
                head = client.head()
                if head is None:
                    return
                request = _Message.parse(head)
                fault = self._draw(request)
                rates = self.rates
                if fault == "stall" and self._stop.wait(rates.stall_seconds):
                    return
                expects = (request.get("expect") or "").lower() == "100-continue"
                request = request.without("expect")
                if fault in _ERRORS:
                    if expects:  # the body never comes: answer, and close
                        client.send(_error(fault, request, close=True))
                        return
                    self._body(client, request, lambda data: None, None)
                    client.send(_error(fault, request, close=not request.keeps_alive()))
                    if not request.keeps_alive():
                        return
                    continue
                if expects:
                    client.send(b"HTTP/1.1 100 Continue\r\n\r\n")
                if upstream is not None and time.monotonic() - upstream.used > _UPSTREAM_IDLE:
                    self._track(upstream.sock, add=False)
                    upstream = None
                if upstream is None:
                    sock = socket.create_connection(self.upstream, timeout=_CONNECT_TIMEOUT)
                    sock.settimeout(None)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    upstream = _Conn(sock)
                    self._track(sock, add=True)
                flip = None
                if fault == "flip":
                    with self._lock:
                        share = self._rng.random()
                    aws = "aws-chunked" in (request.get("content-encoding") or "")
                    flip = _Flipper(share, request.length(), aws)
                up = upstream
                up.send(request.encode())
                self._body(client, request, up.send, flip)
                reply_head = up.head()
                while reply_head is not None and reply_head.split(b" ", 2)[1:2] == [b"100"]:
                    reply_head = up.head()  # an interim reply the client did not ask for
                if reply_head is None:
                    return  # the upstream closed: so does the client's connection
                reply = _Message.parse(reply_head)
                status = int(reply.first[1])
                if status >= 500:  # the upstream's own failure, not one injected
                    with self._lock:
                        self._counts["upstream 5xx"] += 1
                        if len(self.upstream_failures) < _FAILURES_KEPT:
                            self.upstream_failures.append(
                                f"{' '.join(request.first[:2])} -> {' '.join(reply.first[1:])}"
                                f" (fault: {fault})")
                bodiless = request.first[0] == "HEAD" or status in (204, 304)
                framed = bodiless or reply.chunked() or reply.length() is not None
                upstream_stays = reply.keeps_alive() and framed
                if framed and request.keeps_alive():
                    # The client's connection is kept alive as S3 keeps it, whether the
                    # upstream's is or not (moto's server closes after every reply).
                    reply = reply.without("connection")
                    reply_head = reply.encode()
                if fault in ("reset", "truncate"):
                    self._cut(client, up, reply_head, reply, bodiless, fault)
                    return
                client.send(reply_head)
                if not bodiless:
                    self._body(up, reply, client.send, None, to_close=True)
                if not upstream_stays:
                    self._track(up.sock, add=False)
                    upstream = None
                if not (framed and request.keeps_alive()):
                    return
        except (_Closed, OSError, ValueError):
            return  # a peer went away or spoke nonsense: this connection ends
        finally:
            if upstream is not None:
                self._track(upstream.sock, add=False)
            self._track(client_sock, add=False)  # closed: a FIN, or the RST a reset set
            self._slots.release()

    def _body(self, src: _Conn, message: _Message, send: Callable[[bytes], None],
              flip: _Flipper | None, to_close: bool = False) -> None:
        """Pass the body of ``message`` from ``src`` to ``send`` by its framing (a reply
        with neither a length nor chunks runs to the close when ``to_close``)."""
        change = flip or (lambda data: data)
        if message.chunked():
            while True:
                line = src.line()
                size = int(line.split(b";")[0], 16)
                send(line)
                while size:
                    data = src.some(min(size, _CHUNK))
                    size -= len(data)
                    send(change(data))
                if int(line.split(b";")[0], 16) == 0:
                    while (trailer := src.line()) != b"\r\n":
                        send(trailer)
                    send(b"\r\n")
                    return
                crlf = src.line()
                send(crlf)
        length = message.length()
        if length is None:
            if not to_close:
                return  # a request without a body
            with contextlib.suppress(_Closed):
                while True:
                    send(src.some(_CHUNK))
            return
        while length:
            data = src.some(min(length, _CHUNK))
            length -= len(data)
            send(change(data))

    def _cut(self, client: _Conn, upstream: _Conn, head: bytes, reply: _Message,
             bodiless: bool, fault: str) -> None:
        """Send the reply's head and part of its body (part of its head if it has no
        body), then reset or close the client's connection."""
        length = None if bodiless else reply.length()
        with self._lock:
            share = self._rng.random()
        if length:
            client.send(head)
            cut = int(share * length)
            while cut:
                data = upstream.some(min(cut, _CHUNK))
                cut -= len(data)
                client.send(data)
        elif not bodiless and reply.chunked():
            client.send(head)
            client.send(upstream.some(_CHUNK)[: max(1, int(share * _CHUNK))])
        else:
            client.send(head[: max(1, int(share * len(head)))])
        if fault == "reset":
            # SO_LINGER with a zero timeout: close() sends RST, dropping what is unsent.
            client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            with contextlib.suppress(OSError):
                client.sock.shutdown(socket.SHUT_WR)


def _error(kind: str, request: _Message, *, close: bool) -> bytes:
    """An S3 error reply of ``kind`` (its XML body, but none to a HEAD)."""
    status, reason, code, message = _ERRORS[kind]
    resource = request.first[1] if len(request.first) > 1 else "/"
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{_xml_escape(resource)}</Resource>"
            "<RequestId>FAULTPROXY</RequestId><HostId>faultproxy</HostId></Error>").encode()
    if request.first[0] == "HEAD":
        body = b""
    headers = [f"HTTP/1.1 {status} {reason}", "Content-Type: application/xml",
               f"Content-Length: {len(body)}", "x-amz-request-id: FAULTPROXY"]
    if close:
        headers.append("Connection: close")
    return ("\r\n".join([*headers, "", ""])).encode() + body


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
