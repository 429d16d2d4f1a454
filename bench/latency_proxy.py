#!/usr/bin/env python3
"""A loopback TCP proxy that makes a local server look remote: it adds a time to first
byte to every reply and caps each connection's bandwidth.

Every connection accepted on 127.0.0.1 gets its own connection to the upstream server
(an S3 server on loopback, say). Each time the client sends bytes (a request, on a new or
a kept-alive connection), the first bytes the upstream sends back after them are held
``--ttfb`` before they are passed on; the rest of that reply then flows at most at
``--bandwidth`` bytes per second, per connection and per direction. The delay is added to
whatever the upstream itself takes, as a network round trip would be.

It is built to cost little CPU, as it shares the machine with what it measures: two
threads per connection that move up to 1 MiB per system call and never look at the bytes
(no parsing: a "reply" is whatever comes back after the client last sent something).
``--measure`` reports its own overhead: a plain boto3 client against an S3 server
directly and through the proxy with no delay and no cap.

As a command (prints ``listening PORT`` once it accepts; Ctrl-C or SIGTERM stops it):
  .venv/bin/python -m bench.latency_proxy --upstream 127.0.0.1:9000   # 20 ms, 90 MiB/s
  .venv/bin/python -m bench.latency_proxy --upstream 127.0.0.1:9000 --ttfb 0 --bandwidth 0
  .venv/bin/python -m bench.latency_proxy --measure      # its overhead (needs boto3 and s3rver)
From Python, in this process or in a process of its own (spawn, which keeps its threads
off the caller's GIL):
  with LatencyProxy(("127.0.0.1", 9000), ttfb=0.02, bandwidth=90 * MiB) as proxy:
      url = f"http://127.0.0.1:{proxy.port}"
  with spawn(("127.0.0.1", 9000)) as proxy: ...   # proxy.port, .replies(), .counts()
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

MiB = 1 << 20
CHUNK = MiB  # bytes moved per system call at most: few calls, little CPU per byte
DEFAULT_TTFB = 0.020
DEFAULT_BANDWIDTH = 90 * MiB  # about what one S3 connection carries
START_TIMEOUT = 30.0
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _Pipe:
    """One proxied connection: client <-> upstream, one thread per direction."""

    def __init__(self, client: socket.socket, upstream: socket.socket, ttfb: float,
                 bandwidth: float, on_reply: Callable[[], None]) -> None:
        self.client, self.upstream = client, upstream
        self.ttfb, self.bandwidth = ttfb, bandwidth
        self.on_reply = on_reply
        # Set (before forwarding) each time the client sends: the upstream's next bytes
        # are the first of a reply and wait ttfb.
        self.request_sent = threading.Event()
        self.done = 0
        self.reply_bytes = 0  # bytes of replies passed on (written by the reply thread only)
        self.lock = threading.Lock()

    def start(self) -> None:
        for target, name in ((self._requests, "up"), (self._replies, "down")):
            threading.Thread(target=target, name=f"proxy-{name}", daemon=True).start()

    def close(self) -> None:
        """Stop both directions now (the proxy is shutting down)."""
        for s in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def _requests(self) -> None:
        self._copy(self.client, self.upstream, first_of_reply=None)

    def _replies(self) -> None:
        self._copy(self.upstream, self.client, first_of_reply=self.request_sent)

    def _copy(self, src: socket.socket, dst: socket.socket,
              first_of_reply: threading.Event | None) -> None:
        # splice(2) moves the bytes socket -> pipe -> socket inside the kernel: they are
        # never copied into this process, which only learns how many there were.
        pipe_r, pipe_w = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe_w, F_SETPIPE_SZ, CHUNK)
        free_at = 0.0  # when the capped link has sent everything passed on so far
        try:
            while n := os.splice(src.fileno(), pipe_w, CHUNK):
                if first_of_reply is None:
                    self.request_sent.set()  # before the bytes go: the reply cannot beat it
                elif first_of_reply.is_set():
                    first_of_reply.clear()
                    self.on_reply()
                    if self.ttfb:
                        time.sleep(self.ttfb)
                if self.bandwidth:
                    # The chunk leaves when the link is free; the link is then busy for
                    # n / bandwidth. Sleeping before the send paces the connection to the
                    # cap with one chunk (at most 1 MiB, ~11 ms at 90 MiB/s) of burst.
                    now = time.monotonic()
                    start = max(free_at, now)
                    if start > now:
                        time.sleep(start - now)
                    free_at = start + n / self.bandwidth
                if first_of_reply is not None:
                    self.reply_bytes += n
                while n:
                    n -= os.splice(pipe_r, dst.fileno(), n)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            for s in (src, dst):  # a reset on one side resets the other
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        finally:
            os.close(pipe_r)
            os.close(pipe_w)
        with self.lock:
            self.done += 1
            last = self.done == 2
        if last:
            self.client.close()
            self.upstream.close()


class LatencyProxy:
    """The proxy in this process: listens on 127.0.0.1 (``port`` 0: the OS picks, see
    ``.port``) while open; a context manager. ``bandwidth`` 0 means no cap."""

    def __init__(self, upstream: tuple[str, int], ttfb: float = DEFAULT_TTFB,
                 bandwidth: float = DEFAULT_BANDWIDTH, port: int = 0) -> None:
        self.upstream, self.ttfb, self.bandwidth = upstream, ttfb, bandwidth
        self.listener = socket.create_server(("127.0.0.1", port), backlog=512)
        self.port: int = self.listener.getsockname()[1]
        self.pipes: set[_Pipe] = set()
        self.connections = 0
        # Replies passed on: one per HTTP request, as the clients here never pipeline.
        self.replies = 0
        self.retired_bytes = 0  # reply bytes of the pipes forgotten (see reply_bytes)
        self.lock = threading.Lock()
        self.closed = False
        self.thread = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    def __enter__(self) -> LatencyProxy:
        self.thread.start()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        with self.lock:
            pipes = list(self.pipes)
        for pipe in pipes:
            pipe.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()  # the client sees the upstream's refusal as a closed socket
                continue
            upstream.settimeout(None)
            for s in (client, upstream):  # replies are small writes too: no Nagle delay
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pipe = _Pipe(client, upstream, self.ttfb, self.bandwidth, self._replied)
            with self.lock:
                self.connections += 1
                # Forget finished pipes here rather than from their threads: no callback.
                self.retired_bytes += sum(p.reply_bytes for p in self.pipes if p.done >= 2)
                self.pipes = {p for p in self.pipes if p.done < 2}
                self.pipes.add(pipe)
            pipe.start()

    def _replied(self) -> None:
        with self.lock:
            self.replies += 1

    def reply_bytes(self) -> int:
        """Bytes of replies passed on so far, all connections."""
        with self.lock:
            return self.retired_bytes + sum(p.reply_bytes for p in self.pipes)


@dataclass
class Spawned:
    """The proxy in a process of its own."""

    port: int
    proc: subprocess.Popen[bytes]

    def replies(self) -> int:
        """Replies it has passed on so far (SIGUSR1: it prints ``replies N bytes M``)."""
        return self.counts()[0]

    def counts(self) -> tuple[int, int]:
        """Replies it has passed on so far, and their bytes."""
        assert self.proc.stdout is not None
        self.proc.send_signal(signal.SIGUSR1)
        timer = threading.Timer(START_TIMEOUT, self.proc.kill)
        timer.start()
        line = self.proc.stdout.readline().decode()
        timer.cancel()
        if not line.startswith("replies "):
            raise RuntimeError(f"latency proxy did not say its replies (said {line!r})")
        words = line.split()
        return int(words[1]), int(words[3])


@contextlib.contextmanager
def spawn(upstream: tuple[str, int], ttfb: float = DEFAULT_TTFB,
          bandwidth: float = DEFAULT_BANDWIDTH, log: Path | None = None) -> Iterator[Spawned]:
    """The proxy as a process of its own (its threads then take no GIL from the caller),
    stopped on exit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--upstream",
           f"{upstream[0]}:{upstream[1]}", "--ttfb", f"{ttfb * 1000:g}ms",
           "--bandwidth", str(int(bandwidth))]
    err = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err, start_new_session=True)
    finally:
        if log is not None:
            err.close()  # type: ignore[union-attr]
    try:
        assert proc.stdout is not None
        timer = threading.Timer(START_TIMEOUT, proc.kill)
        timer.start()
        line = proc.stdout.readline().decode()
        timer.cancel()
        if not line.startswith("listening "):
            raise RuntimeError(f"latency proxy did not start (said {line!r}); see {log}")
        yield Spawned(int(line.split()[1]), proc)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def parse_duration(text: str) -> float:
    """'20ms', '0.02s', '20' (milliseconds) -> seconds."""
    t = text.strip().lower()
    if t.endswith("ms"):
        return float(t[:-2]) / 1000
    if t.endswith("s"):
        return float(t[:-1])
    return float(t) / 1000


def parse_rate(text: str) -> float:
    """'90MiB', '90MiB/s', '500KiB', '94371840' (bytes per second) -> bytes per second;
    0 means no cap."""
    t = text.strip().removesuffix("/s")
    for suffix, mult in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    return float(t)


def parse_hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


# ------------------------------------------------------------------------ --measure


def measure_overhead(repeat: int, size_mib: int, n_small: int) -> None:
    """A plain boto3 client against s3rver, directly and through this proxy with no
    delay and no cap (in its own process, as the benchmarks run it), and the proxy's CPU.
    Needs boto3 and s3rver (bench/s3env.py installs what is missing)."""
    from bench import s3env  # the S3 server and a client
    from bench.harness import proc_cpu

    with s3env.s3rver() as server:
        client = s3env.client(server.url)
        client.put_object(Bucket=server.bucket, Key="big.bin", Body=os.urandom(size_mib * MiB))
        small = os.urandom(16 << 10)
        for i in range(n_small):
            client.put_object(Bucket=server.bucket, Key=f"small/{i}.bin", Body=small)
        keys = [f"small/{i}.bin" for i in range(n_small)]
        rows: list[tuple[str, list[float], list[float], list[float]]] = []
        with spawn(("127.0.0.1", server.port), ttfb=0, bandwidth=0) as proxy:
            port, pid = proxy.port, proxy.proc.pid
            for name, url in (("direct", server.url), ("proxy", f"http://127.0.0.1:{port}")):
                c = s3env.client(url, max_pool=16)
                seq, small_rate, cpu = [], [], []
                for _ in range(repeat):
                    cpu0 = proc_cpu(pid) if pid else 0.0
                    t0 = time.perf_counter()
                    got = s3env.ranged_get(c, server.bucket, "big.bin", size_mib * MiB, 8)
                    secs = time.perf_counter() - t0
                    assert got == size_mib * MiB
                    seq.append(size_mib / secs)
                    cpu.append(((proc_cpu(pid) - cpu0) / secs) if pid else 0.0)
                    t0 = time.perf_counter()
                    s3env.get_many(c, server.bucket, keys, 16)
                    small_rate.append(n_small / (time.perf_counter() - t0))
                rows.append((name, seq, small_rate, cpu))
    import statistics

    print(f"boto3, s3rver, {size_mib} MiB by 8 parallel 8 MiB ranged GETs; {n_small} "
          f"objects of 16 KiB by 16 threads; median of {repeat}")
    for name, seq, small_rate, cpu in rows:
        print(f"  {name:<7} {statistics.median(seq):8.1f} MiB/s  "
              f"{statistics.median(small_rate):8.1f} objects/s"
              + (f"  proxy CPU during the ranged GETs: {statistics.median(cpu):.2f} cores"
                 if name == "proxy" else ""))
    d, p = rows
    print(f"  proxy/direct: {statistics.median(p[1]) / statistics.median(d[1]):.2f}x "
          f"sequential, {statistics.median(p[2]) / statistics.median(d[2]):.2f}x small")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--upstream", type=parse_hostport, help="HOST:PORT of the server")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: the OS picks)")
    p.add_argument("--ttfb", type=parse_duration, default=DEFAULT_TTFB,
                   help="delay added to the first bytes of every reply: 20ms (default), "
                        "0.02s, 0")
    p.add_argument("--bandwidth", type=parse_rate, default=DEFAULT_BANDWIDTH,
                   help="cap per connection and direction, bytes/s or 90MiB (default); "
                        "0: no cap")
    p.add_argument("--measure", action="store_true",
                   help="measure the proxy's overhead with boto3 against s3rver and exit")
    p.add_argument("--repeat", type=int, default=3, help="--measure: runs, median shown")
    args = p.parse_args()
    if args.measure:
        measure_overhead(args.repeat, 256, 1000)
        return 0
    if args.upstream is None:
        p.error("--upstream HOST:PORT is required")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with LatencyProxy(args.upstream, args.ttfb, args.bandwidth, args.port) as proxy:
        signal.signal(signal.SIGUSR1,
                      lambda *_: print(f"replies {proxy.replies} bytes {proxy.reply_bytes()}",
                                       flush=True))
        print(f"listening {proxy.port}", flush=True)
        while not stop.wait(1):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
