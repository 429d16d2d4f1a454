"""A minimal HTTP/1.1 GET client on trio streams: the worker page path's transport.

Page reads are the hot path of a cluster mount (one request per small file, one per MiB
of a large one). Through httpx under trio a request costs about 650 µs of event-loop CPU
(anyio, httpcore's pool scan and readiness poll, h11); this costs about 100 µs
(bench/RESULTS.md). It does only what a page read needs: ``GET`` with a keep-alive pool of
connections per address, responses with a ``Content-Length`` (as workers send pages) or
chunked, and it tells apart the two ways a reply can fail: no status line at all
(``Dropped``) and a body cut short (``Truncated``). Deadlines are the caller's (a trio
cancel scope around the call).
"""

from __future__ import annotations

import select

import trio

_HEAD_LIMIT = 64 * 1024
_RECEIVE = 256 * 1024
_MAX_IDLE = 32  # idle connections kept per address


class HttpError(Exception):
    """Base of this module's errors."""


class CannotConnect(HttpError):
    """The connection could not be opened (refused, unreachable)."""


class Dropped(HttpError):
    """The connection closed before a status line: no reply at all."""


class Truncated(HttpError):
    """The reply's head arrived, its body did not (in full)."""


class BadReply(HttpError):
    """Bytes that are not an HTTP/1.1 reply this client understands."""


class Response:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class Http1Pool:
    """Keep-alive connections per (host, port), reused one request at a time."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[trio.SocketStream]] = {}

    async def get(self, host: str, port: int, target: str) -> Response:
        """``GET target`` from ``host:port``, on an idle connection if one is still open
        (one the server closed while idle is readable: it is dropped, not used)."""
        request = (f"GET {target} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\n"
                   "Accept-Encoding: identity\r\n\r\n").encode("ascii")
        idle = self._idle.get((host, port))
        while idle:
            stream = idle.pop()
            if not _readable(stream):
                return await self._exchange(host, port, stream, request)
            with trio.CancelScope(shield=True):
                await stream.aclose()
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError as e:
            raise CannotConnect(str(e)) from None
        return await self._exchange(host, port, stream, request)

    async def aclose(self) -> None:
        for streams in self._idle.values():
            for stream in streams:
                await stream.aclose()
        self._idle.clear()

    async def _exchange(self, host: str, port: int, stream: trio.SocketStream,
                        request: bytes) -> Response:
        reusable = False
        try:
            try:
                await stream.send_all(request)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise Dropped(str(e)) from None
            response, reusable = await _read_response(stream)
            return response
        finally:
            if reusable:
                idle = self._idle.setdefault((host, port), [])
                if len(idle) < _MAX_IDLE:
                    idle.append(stream)
                    stream = None  # type: ignore[assignment]
            if stream is not None:
                with trio.CancelScope(shield=True):
                    await stream.aclose()


async def _read_response(stream: trio.SocketStream) -> tuple[Response, bool]:
    buffer = bytearray()
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > _HEAD_LIMIT:
            raise BadReply("reply head larger than 64 KiB")
        chunk = await _receive(stream)
        if not chunk:
            if buffer:
                raise BadReply(f"connection closed inside the reply head: {bytes(buffer[:80])!r}")
            raise Dropped("closed without a reply")
        buffer += chunk
    status, headers = _parse_head(bytes(buffer[:end]))
    rest = buffer[end + 4:]
    if headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        body = await _read_chunked(stream, rest)
    else:
        length = headers.get(b"content-length")
        if length is None or not length.isdigit():
            raise BadReply(f"reply without a usable Content-Length: {length!r}")
        body = await _read_exact(stream, rest, int(length))
    keep = headers.get(b"connection", b"").lower() != b"close"
    return Response(status, headers, body), keep


def _parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BadReply(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise BadReply(f"not a header line: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_exact(stream: trio.SocketStream, start: bytearray, length: int) -> bytes:
    if len(start) > length:
        raise BadReply(f"{len(start) - length} bytes after the body")
    body = start
    while len(body) < length:
        chunk = await _receive(stream, length - len(body))
        if not chunk:
            raise Truncated(f"{len(body)} of {length} body bytes before the connection closed")
        body += chunk
    return bytes(body)


async def _read_chunked(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    body = bytearray()
    while True:
        while (eol := buffer.find(b"\r\n")) < 0:
            buffer += await _more(stream)
        size_text = bytes(buffer[:eol]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadReply(f"bad chunk size {size_text[:20]!r}") from None
        del buffer[:eol + 2]
        while len(buffer) < size + 2:
            buffer += await _more(stream)
        if size == 0:  # (no trailers expected from a worker)
            return bytes(body)
        body += buffer[:size]
        del buffer[:size + 2]


async def _more(stream: trio.SocketStream) -> bytes:
    chunk = await _receive(stream)
    if not chunk:
        raise Truncated("connection closed inside a chunked body")
    return chunk


async def _receive(stream: trio.SocketStream, wanted: int = _RECEIVE) -> bytes:
    try:
        return await stream.receive_some(min(wanted, _RECEIVE) if wanted > 0 else _RECEIVE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


def _readable(stream: trio.SocketStream) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent
    bytes nobody asked for); either way it cannot carry a request."""
    return bool(select.select([stream.socket.fileno()], [], [], 0)[0])


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
