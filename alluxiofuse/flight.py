"""Single-flight calls: concurrent requests for one key share one call and its outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Flight(Generic[V]):
    """One call in progress; ``done`` is set once it has a value, an error, or neither
    (the caller was cancelled)."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[K, V]):
    """At most one call per key in progress; later callers wait for its result or error.

    If the running call is cancelled, a waiter runs the call itself. A caller that fetches
    several keys with one call opens a flight per key with :meth:`begin` and settles each
    with :meth:`finish`.
    """

    def __init__(self) -> None:
        self._flights: dict[K, Flight[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._flights

    async def run(self, key: K, call: Callable[[], Awaitable[V]]) -> tuple[V, bool]:
        """``call()``'s value, shared; and whether this task was the one that made the call."""
        while (flight := self._flights.get(key)) is not None:
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.value is not None:
                return flight.value, False
            # The caller was cancelled before it had a value: try again ourselves.
        flight = self.begin(key)
        try:
            value = await call()
        except Exception as e:
            self.finish(key, flight, error=e)
            raise
        except BaseException:
            self.finish(key, flight)
            raise
        self.finish(key, flight, value)
        return value, True

    def begin(self, key: K) -> Flight[V]:
        """Open the flight for ``key``, which must not be in progress."""
        assert key not in self._flights
        flight = self._flights[key] = Flight()
        return flight

    def finish(
        self, key: K, flight: Flight[V], value: V | None = None, *, error: Exception | None = None,
    ) -> None:
        """Settle ``flight``: its waiters get ``value`` or ``error`` (neither: they retry)."""
        flight.value, flight.error = value, error
        del self._flights[key]
        flight.done.set()
