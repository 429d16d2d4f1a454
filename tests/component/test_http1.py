"""The page path's HTTP/1.1 client against canned servers on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio

from alluxiofuse.backends import http1


@asynccontextmanager
async def server(
    replies: Sequence[bytes | None], *, close: bool = False,
) -> AsyncIterator[tuple[int, list[int]]]:
    """Answers the n-th request it reads with ``replies[n]`` (the last one from then on;
    None: close the connection without a reply), and with ``close`` closes the connection
    after each reply. Yields its port and the number of connections accepted so far."""
    count = [0]
    connections = [0]

    async def handle(stream: trio.SocketStream) -> None:
        connections[0] += 1
        buffer = b""
        async with stream:
            while True:
                while b"\r\n\r\n" not in buffer:
                    try:
                        chunk = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        return
                    if not chunk:
                        return
                    buffer += chunk
                buffer = buffer.split(b"\r\n\r\n", 1)[1]
                reply = replies[min(count[0], len(replies) - 1)]
                count[0] += 1
                if reply is None:
                    return
                await stream.send_all(reply)
                if close:
                    return

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1], connections
        nursery.cancel_scope.cancel()


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


async def test_keep_alive_reuses_one_connection() -> None:
    async with server([OK]) as (port, connections):
        pool = http1.Http1Pool()
        for _ in range(3):
            response = await pool.get("127.0.0.1", port, "/x")
            assert (response.status, response.body) == (200, b"hello")
        assert connections == [1]
        await pool.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async with server([OK], close=True) as (port, connections):  # closes after each reply
        pool = http1.Http1Pool()
        assert (await pool.get("127.0.0.1", port, "/a")).body == b"hello"
        await trio.sleep(0.05)  # the close reaches the idle connection
        assert (await pool.get("127.0.0.1", port, "/b")).body == b"hello"  # not Dropped
        assert connections == [2]
        await pool.aclose()


async def test_no_reply_is_dropped_and_the_connection_not_reused() -> None:
    async with server([OK, None, OK]) as (port, connections):
        pool = http1.Http1Pool()
        assert (await pool.get("127.0.0.1", port, "/a")).body == b"hello"
        with pytest.raises(http1.Dropped):  # the server's answer to the 2nd request
            await pool.get("127.0.0.1", port, "/b")
        assert (await pool.get("127.0.0.1", port, "/c")).body == b"hello"
        assert connections == [2]
        await pool.aclose()


async def test_connection_close_is_honoured() -> None:
    reply = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
    async with server([reply]) as (port, connections):
        pool = http1.Http1Pool()
        await pool.get("127.0.0.1", port, "/a")
        await pool.get("127.0.0.1", port, "/b")
        assert connections == [2]
        await pool.aclose()


async def test_chunked_bodies() -> None:
    reply = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\n\r\n")
    async with server([reply]) as (port, _):
        pool = http1.Http1Pool()
        assert (await pool.get("127.0.0.1", port, "/a")).body == b"hello!"
        assert (await pool.get("127.0.0.1", port, "/b")).body == b"hello!"  # reusable
        await pool.aclose()


def chunked(parts: Sequence[bytes]) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n")


@pytest.mark.parametrize("framing", ["chunked", "length"])
async def test_a_body_read_into_buffers_of_any_size(framing: str) -> None:
    """Bodies read as page reads do: into views that cross chunk and receive boundaries."""
    data = bytes(range(256)) * 9000  # 2.2 MiB
    sizes = [3, 1 << 20, 100_000, 7, 1 << 20, len(data)]  # chunks of a chunked body
    parts, at = [], 0
    for size in sizes:
        parts.append(data[at:at + size])
        at += size
    reply = chunked(parts) if framing == "chunked" else (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(data), data))
    async with server([reply]) as (port, connections):
        pool = http1.Http1Pool()
        for _ in range(2):
            stream = await pool.open("GET", "127.0.0.1", port, "/big")
            got = bytearray()
            for want in [1, 5000, 1 << 20, 1, 300_001, 1 << 21]:
                buffer = bytearray(want)
                n = await stream.readinto(memoryview(buffer))
                got += buffer[:n]
                assert n == min(want, len(data) - (len(got) - n))
            assert bytes(got) == data and stream.done
            await stream.aclose()
        assert connections == [1]  # read to its end: the connection was reused
        await pool.aclose()


@pytest.mark.parametrize("reply,error", [
    (None, http1.Dropped),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", http1.Truncated),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", http1.Truncated),
    (b"HTTP/1.1 200 OK\r\nContent-Len", http1.BadReply),
    (b"SSH-2.0-OpenSSH\r\n\r\n", http1.BadReply),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", http1.BadReply),
    (b"HTTP/1.1 200 OK\r\n\r\nbody without a length", http1.BadReply),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhello", http1.BadReply),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", http1.BadReply),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000, http1.BadReply),
])
async def test_replies_that_cannot_be_used(reply: bytes | None, error: type[Exception]) -> None:
    async with server([reply], close=True) as (port, _):
        pool = http1.Http1Pool()
        with pytest.raises(error):
            await pool.get("127.0.0.1", port, "/x")
        await pool.aclose()


async def test_a_refused_connection() -> None:
    with trio.socket.socket() as s:
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: refused
        with pytest.raises(http1.CannotConnect):
            await http1.Http1Pool().get("127.0.0.1", port, "/x")


async def test_a_cancelled_request_does_not_leave_its_connection_in_the_pool() -> None:
    stall = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe"  # the rest never comes
    async with server([stall, OK]) as (port, connections):
        pool = http1.Http1Pool()
        with trio.move_on_after(0.2):
            await pool.get("127.0.0.1", port, "/a")
        assert (await pool.get("127.0.0.1", port, "/b")).body == b"hello"
        assert connections == [2]
        await pool.aclose()
