"""Commits of one path land in the order they began, even those that timed out.

A commit runs in a worker thread under a deadline; past it, the caller is told EIO and
the thread is abandoned (a thread cannot be cancelled), and it may still finish later:
rename an older version over a newer commit of the same file, or complete an older
upload after a newer one. A :class:`CommitFence` gives each commit a ticket when it
begins (on the event loop, in request order); the thread publishes (the final rename,
an upload's ``commit()``) only while holding the path's lock and only if no newer commit
of the path has begun. Else it gives up with :class:`~alluxiofuse.errors.StaleFile`,
leaving the newer content in place.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from alluxiofuse.errors import StaleFile


@dataclass
class _Path:
    latest: int  # the ticket of the newest commit begun
    # Held around the check and the publish, so an older commit that passed its check
    # finishes publishing before a newer one publishes over it.
    publish: threading.Lock = field(default_factory=threading.Lock)


class CommitFence:
    """Per-path tickets for commits; see the module docstring.

    A path is known while its newest commit runs: that commit's ``end`` forgets it (a
    late older one then finds nothing, which means it was overtaken). A commit whose
    thread never started (its deadline passed waiting for one) leaves its path known
    until the path's next commit ends.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _paths and _tickets only, never held for I/O
        self._paths: dict[str, _Path] = {}
        self._tickets = 0

    def begin(self, path: str) -> int:
        """A commit of ``path`` begins (on the event loop, in request order): its
        ticket, for ``publishing`` and ``end`` in the commit's thread."""
        with self._lock:
            self._tickets += 1
            entry = self._paths.get(path)
            if entry is None:
                self._paths[path] = _Path(self._tickets)
            else:
                entry.latest = self._tickets
            return self._tickets

    @contextmanager
    def publishing(self, path: str, ticket: int) -> Iterator[None]:
        """Around the step that makes commit ``ticket`` of ``path`` visible (in its
        thread): StaleFile instead if a newer commit of ``path`` has begun."""
        with self._lock:
            entry = self._paths.get(path)
        if entry is None:  # forgotten by the end of a newer commit
            raise _overtaken(path)
        with entry.publish:
            if entry.latest != ticket:
                raise _overtaken(path)
            yield

    def end(self, path: str, ticket: int) -> None:
        """Commit ``ticket`` of ``path`` is over, whatever the outcome (in its thread)."""
        with self._lock:
            entry = self._paths.get(path)
            if entry is not None and entry.latest == ticket:
                del self._paths[path]

    def __len__(self) -> int:
        """Paths known now (for tests: none once their commits are over)."""
        return len(self._paths)


def _overtaken(path: str) -> StaleFile:
    return StaleFile(f"{path}: a newer commit began while this one ran late; it is not "
                     f"published")
