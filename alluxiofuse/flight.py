"""Single-flight calls: concurrent requests for one key share one call and its outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _Flight(Generic[V]):
    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.value: V | None = None
        self.error: Exception | None = None


class SingleFlight(Generic[K, V]):
    """At most one call per key in progress; later callers wait for its result or error.

    If the running call is cancelled, a waiter runs the call itself.
    """

    def __init__(self) -> None:
        self._flights: dict[K, _Flight[V]] = {}

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
        flight = self._flights[key] = _Flight()
        try:
            value = flight.value = await call()
        except Exception as e:
            flight.error = e
            raise
        finally:
            del self._flights[key]
            flight.done.set()
        return value, True
