"""A minimal HTTP/1.1 client on trio streams: the transport of the Alluxio hot paths.

Worker page reads and proxy stream reads are the hot path of a cluster mount (one or more
requests per small file, one per MiB of a large one). Through httpx under trio a request
costs several times the event-loop CPU it costs here (anyio, httpcore's pool scan and
readiness poll, h11: bench/RESULTS.md). It does only what those calls need:
``GET`` and ``POST`` with a body (bytes, or parts sent as they come) on a keep-alive pool
of connections per address; replies with a ``Content-Length`` or chunked, read whole or as
a stream; and it tells apart the two ways a reply can fail: no status line at all
(``Dropped``) and a body cut short (``Truncated``). Deadlines are the caller's (a trio
cancel scope around the call).
"""

from __future__ import annotations

import select
from collections.abc import AsyncIterable, Callable, Sequence

import trio

_HEAD_LIMIT = 64 * 1024
_RECEIVE = 256 * 1024
_FRAMING = 8 * 1024  # received at once for a chunk-size line
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


Body = bytes | AsyncIterable[bytes]


class Http1Pool:
    """Keep-alive connections per (host, port), reused one request at a time."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[trio.SocketStream]] = {}

    async def get(self, host: str, port: int, target: str) -> Response:
        """``GET target`` from ``host:port``: the whole reply."""
        return await self.request("GET", host, port, target)

    async def request(
        self, method: str, host: str, port: int, target: str, *, body: Body = b"",
        length: int | None = None, headers: Sequence[tuple[str, str]] = (),
    ) -> Response:
        """``method target`` with ``body`` (``length`` bytes, when it comes in parts): the
        whole reply."""
        stream = await self.open(method, host, port, target, body=body, length=length,
                                 headers=headers)
        try:
            data = await stream.read_all()
        finally:
            await stream.aclose()
        return Response(stream.status, stream.headers, data)

    async def open(
        self, method: str, host: str, port: int, target: str, *, body: Body = b"",
        length: int | None = None, headers: Sequence[tuple[str, str]] = (),
    ) -> ResponseStream:
        """``method target``: the reply's status and headers, its body to be read as it
        comes (:class:`ResponseStream`, which must be closed).

        The request goes on an idle connection if one is still open (one the server closed
        while idle is readable: it is dropped, not used).
        """
        if isinstance(body, bytes):
            length = len(body)
        elif length is None:
            raise ValueError("a body in parts needs its length")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {_host_header(host, port)}",
                 "Accept-Encoding: identity"]
        if length or method != "GET":
            lines.append(f"Content-Length: {length}")
        lines += [f"{name}: {value}" for name, value in headers]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")
        idle = self._idle.get((host, port))
        while idle:
            stream = idle.pop()
            if not _readable(stream):
                break
            with trio.CancelScope(shield=True):
                await stream.aclose()
        else:
            try:
                stream = await trio.open_tcp_stream(host, port)
            except OSError as e:
                raise CannotConnect(str(e)) from None
        return await self._exchange(host, port, stream, head, body)

    async def aclose(self) -> None:
        for streams in self._idle.values():
            for stream in streams:
                await stream.aclose()
        self._idle.clear()

    def _keep(self, host: str, port: int, stream: trio.SocketStream) -> bool:
        idle = self._idle.setdefault((host, port), [])
        if len(idle) >= _MAX_IDLE:
            return False
        idle.append(stream)
        return True

    async def _exchange(self, host: str, port: int, stream: trio.SocketStream, head: bytes,
                        body: Body) -> ResponseStream:
        try:
            try:
                if isinstance(body, bytes):
                    await stream.send_all(head + body if len(body) < 65536 else head)
                    if len(body) >= 65536:
                        await stream.send_all(body)
                else:
                    await stream.send_all(head)
                    async for part in body:
                        await stream.send_all(part)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
                raise Dropped(str(e)) from None
            reply = ResponseStream(stream, lambda: self._keep(host, port, stream))
            await reply.start()
            return reply
        except BaseException:
            with trio.CancelScope(shield=True):
                await stream.aclose()
            raise


class ResponseStream:
    """A reply whose body is read as it arrives. Closing it returns the connection to the
    pool if the body was read to its end (and the server keeps the connection), else
    closes the connection."""

    def __init__(self, stream: trio.SocketStream, keep: Callable[[], bool]) -> None:
        self._stream = stream
        self._keep = keep
        self._buffer = bytearray()
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self._chunked = False
        self._left = 0  # bytes left in the body (Content-Length) or in the current chunk
        self._done = False
        self._reusable = False
        self._closed = False

    async def start(self) -> None:
        buffer = self._buffer
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            if len(buffer) > _HEAD_LIMIT:
                raise BadReply("reply head larger than 64 KiB")
            chunk = await _receive(self._stream)
            if not chunk:
                if buffer:
                    raise BadReply(f"connection closed inside the reply head: "
                                   f"{bytes(buffer[:80])!r}")
                raise Dropped("closed without a reply")
            buffer += chunk
        self.status, self.headers = _parse_head(bytes(buffer[:end]))
        del buffer[:end + 4]
        self._reusable = self.headers.get(b"connection", b"").lower() != b"close"
        if self.headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            self._chunked = True
        else:
            length = self.headers.get(b"content-length")
            if length is None or not length.isdigit():
                raise BadReply(f"reply without a usable Content-Length: {length!r}")
            self._left = int(length)
            if len(buffer) > self._left:
                raise BadReply(f"{len(buffer) - self._left} bytes after the body")
            self._done = self._left == 0

    @property
    def done(self) -> bool:
        """Whether the body has been read to its end."""
        return self._done

    async def read(self, n: int) -> bytes:
        """The next ``n`` bytes of the body; fewer only at its end."""
        out = bytearray(n)
        with memoryview(out) as view:
            got = await self.readinto(view)
        del out[got:]
        return bytes(out)

    async def readinto(self, view: memoryview) -> int:
        """Fill ``view`` with the next bytes of the body: how many, fewer than ``len(view)``
        only at its end. The bytes go from the socket straight into ``view``."""
        filled, n = 0, len(view)
        while filled < n and not self._done:
            if self._chunked and self._left == 0:
                await self._next_chunk()
                continue
            want = min(n - filled, self._left)
            if self._buffer:
                take = min(want, len(self._buffer))
                with memoryview(self._buffer) as buffered:
                    view[filled:filled + take] = buffered[:take]
                del self._buffer[:take]
            else:  # straight from the socket, never past what is due
                take = await _receive_into(self._stream, view[filled:filled + want])
                if not take:
                    raise Truncated("the connection closed inside a chunked body"
                                    if self._chunked else
                                    f"the connection closed with {self._left} body bytes due")
            filled += take
            self._left -= take
            if self._left == 0:
                if self._chunked:
                    await self._need(2)
                    del self._buffer[:2]  # the CRLF after a chunk's data
                else:
                    self._done = True
        return filled

    async def read_all(self) -> bytes:
        """The rest of the body."""
        if not self._chunked:
            return await self.read(self._left)
        parts = []
        while not self._done:  # a chunk at a time (a size line first, where one is due)
            parts.append(await self.read(min(self._left, _RECEIVE) or _FRAMING))
        return b"".join(parts)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._done and self._reusable and not self._buffer and self._keep():
            return
        with trio.CancelScope(shield=True):
            await self._stream.aclose()

    async def _next_chunk(self) -> None:
        while (eol := self._buffer.find(b"\r\n")) < 0:
            if len(self._buffer) > 1024:
                raise BadReply("a chunk-size line longer than 1 KiB")
            await self._more()
        size_text = bytes(self._buffer[:eol]).split(b";")[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BadReply(f"bad chunk size {size_text[:20]!r}") from None
        del self._buffer[:eol + 2]
        if size == 0:  # the last chunk; no trailers expected
            await self._need(2)
            del self._buffer[:2]
            self._done = True
        self._left = size

    async def _need(self, n: int) -> None:
        while len(self._buffer) < n:
            await self._more()

    async def _more(self) -> None:
        # A chunk's framing: a few bytes are due, then data that is better received
        # straight into the reader's buffer than copied out of this one.
        chunk = await _receive(self._stream, _FRAMING)
        if not chunk:
            raise Truncated("the connection closed inside a chunked body")
        self._buffer += chunk


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


async def _receive(stream: trio.SocketStream, wanted: int = _RECEIVE) -> bytes:
    try:
        return await stream.receive_some(min(wanted, _RECEIVE) if wanted > 0 else _RECEIVE)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return b""


async def _receive_into(stream: trio.SocketStream, view: memoryview) -> int:
    try:
        return await stream.socket.recv_into(view)
    except (OSError, trio.ClosedResourceError):  # reset, or closed meanwhile
        return 0


def _readable(stream: trio.SocketStream) -> bool:
    """Whether an idle connection has something to read: the server closed it (or sent
    bytes nobody asked for); either way it cannot carry a request."""
    return bool(select.select([stream.socket.fileno()], [], [], 0)[0])


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
