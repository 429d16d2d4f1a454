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
    running: int = 0  # commits begun and not ended: the entry lives while there are any
    # Held around the check and the publish, so an older commit that passed its check
    # finishes publishing before a newer one publishes over it.
    publish: threading.Lock = field(default_factory=threading.Lock)


class CommitFence:
    """Per-path tickets for commits; see the module docstring."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards _paths and _tickets only, never held for I/O
        self._paths: dict[str, _Path] = {}
        self._tickets = 0

    def begin(self, path: str) -> int:
        """A commit of ``path`` begins (on the event loop): its ticket. Every ticket must
        be ``end``-ed, by the thread that runs the commit."""
        with self._lock:
            self._tickets += 1
            entry = self._paths.get(path)
            if entry is None:
                entry = self._paths[path] = _Path(self._tickets)
            entry.latest = self._tickets
            entry.running += 1
            return self._tickets

    @contextmanager
    def publishing(self, path: str, ticket: int) -> Iterator[None]:
        """Around the step that makes commit ``ticket`` of ``path`` visible (in its
        thread): StaleFile instead if a newer commit of ``path`` has begun."""
        with self._lock:
            entry = self._paths[path]
        with entry.publish:
            if entry.latest != ticket:
                raise StaleFile(f"{path}: a newer commit began while this one ran late; "
                                f"it is not published")
            yield

    def end(self, path: str) -> None:
        """The thread of a commit of ``path`` is done (whatever the outcome)."""
        with self._lock:
            entry = self._paths[path]
            entry.running -= 1
            if not entry.running:
                del self._paths[path]

    def __len__(self) -> int:
        """Paths with a commit running (for tests: nothing is kept once they end)."""
        return len(self._paths)
