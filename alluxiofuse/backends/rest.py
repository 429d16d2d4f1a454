"""What the Alluxio REST clients (3.x worker, 2.x proxy) share: calls sent again with
backoff within one deadline, and the metrics of their calls and unusable replies."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from alluxiofuse.errors import AlluxioFuseError, BackendError, ProtocolError
from alluxiofuse.metrics import Metrics

T = TypeVar("T")

BACKOFF_FIRST = 0.05  # seconds; doubled per attempt, with full jitter


class Retryable(Exception):
    """A failure worth another attempt; carries the error to raise if there is none."""

    def __init__(self, error: AlluxioFuseError) -> None:
        super().__init__(str(error))
        self.error = error


async def retrying(
    send: Callable[[], Awaitable[T]], *, op: str, deadline: float, retries: int,
    idempotent: bool, metrics: Metrics | None,
) -> T:
    """``send()``, once more (up to ``retries`` times, idempotent calls only, while the
    pause still ends before ``deadline``) for each ``Retryable`` it raises; every attempt
    is observed under ``op``."""
    attempt = 0
    while True:
        started = trio.current_time()
        try:
            result = await send()
        except Retryable as e:
            error = e.error
        except AlluxioFuseError as e:
            observe(metrics, op, False, started, outcome(e))
            raise
        else:
            observe(metrics, op, True, started, "success")
            return result
        observe(metrics, op, False, started, "retryable")
        delay = random.uniform(0, BACKOFF_FIRST * 2 ** attempt)
        attempt += 1
        if not idempotent or attempt > retries or trio.current_time() + delay >= deadline:
            raise error
        if metrics:
            metrics.rest_retries.labels(op).inc()
        await trio.sleep(delay)


def bad_reply(metrics: Metrics | None, kind: str, message: str) -> ProtocolError:
    """A reply that cannot be used, counted by ``kind``."""
    if metrics:
        metrics.bad_replies.labels(kind).inc()
    return ProtocolError(message)


def observe(metrics: Metrics | None, op: str, success: bool, started: float, state: str) -> None:
    if metrics:
        metrics.observe_rest_call(op, success, trio.current_time() - started, state)


def unwrapped(e: AlluxioFuseError | Retryable) -> AlluxioFuseError:
    return e.error if isinstance(e, Retryable) else e


def outcome(e: AlluxioFuseError | Retryable) -> str:
    """The state label of a failed call: the error's reason, or its class."""
    error = unwrapped(e)
    return error.reason if isinstance(error, BackendError) else type(error).__name__
