"""Commits to the under-storage: one that timed out never lands over a newer commit of
the same file, and the temporary files of one a crash interrupted are removed later."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

import tests.support.flakyfs  # noqa: F401  (registers flaky://)
from alluxiofuse.backends.fence import CommitFence
from alluxiofuse.backends.local import LocalUfs
from alluxiofuse.backends.source import open_ufs
from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.errors import BackendTimeout, StaleFile


def test_only_the_newest_commit_begun_publishes() -> None:
    fence = CommitFence()
    old = fence.begin("f")
    new = fence.begin("f")
    other = fence.begin("g")
    with pytest.raises(StaleFile), fence.publishing("f", old):
        pass
    with fence.publishing("f", new), fence.publishing("g", other):
        pass
    fence.end("f", old)
    fence.end("g", other)
    assert len(fence) == 1  # f's newest commit is still running
    fence.end("f", new)
    assert len(fence) == 0  # nothing kept per path once its newest commit is over
    with pytest.raises(StaleFile), fence.publishing("f", old):  # late, and overtaken
        pass
    newest = fence.begin("f")
    with pytest.raises(StaleFile), fence.publishing("f", old):
        pass
    fence.end("f", old)
    assert len(fence) == 1
    fence.end("f", newest)
    assert len(fence) == 0


def _slowed(backend: UfsBackend, release: threading.Event, done: threading.Event) -> None:
    """Hold the first commit's thread before it publishes (until ``release``), as a
    stalled disk or store would, and set ``done`` when that thread is over."""
    slow_thread: list[int] = []  # the thread of the first commit

    def slow(step: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not slow_thread:
                slow_thread.append(threading.get_ident())
                release.wait(30)
            return step(*args, **kwargs)
        return wrapper

    if hasattr(backend, "_link_or_copy"):  # a local source: before the final rename
        backend._link_or_copy = slow(backend._link_or_copy)  # type: ignore[method-assign]
        name = "_commit_local"
    else:  # fsspec: before the upload is written and committed
        backend.fs.open = slow(backend.fs.open)
        name = "_commit_sync"
    commit = getattr(backend, name)

    def watched(*args: Any) -> Any:
        try:
            return commit(*args)
        finally:
            if slow_thread == [threading.get_ident()]:
                done.set()

    setattr(backend, name, watched)


@pytest.mark.parametrize("scheme", ["local", "fsspec"])
async def test_a_late_commit_never_lands_over_a_newer_one(tmp_path: Path, scheme: str) -> None:
    src, spool = tmp_path / "src", tmp_path / "spool"
    src.mkdir()
    spool.mkdir()
    (spool / "old").write_bytes(b"old version")
    (spool / "new").write_bytes(b"new version")
    source = str(src) if scheme == "local" else f"flaky://{src}"
    backend = open_ufs(source, {}, trio.CapacityLimiter(4), 0.3)
    release, done = threading.Event(), threading.Event()
    _slowed(backend, release, done)
    with pytest.raises(BackendTimeout):  # its thread is abandoned, still running
        await backend.commit("f", str(spool / "old"), size=11)
    await backend.commit("f", str(spool / "new"), size=11)
    assert (src / "f").read_bytes() == b"new version"
    release.set()  # the late thread goes on to publish...
    assert await trio.to_thread.run_sync(done.wait, 30)
    assert (src / "f").read_bytes() == b"new version"  # ...and does not
    assert sorted(p.name for p in src.iterdir()) == ["f"]  # its temporary file is gone


async def test_a_local_commit_names_its_temporary_file_in_the_spool_while_it_exists(
    tmp_path: Path,
) -> None:
    src, notes, staged = tmp_path / "src", tmp_path / "commits", tmp_path / "staged"
    (src / "d").mkdir(parents=True)
    notes.mkdir()
    staged.write_bytes(b"content")
    backend = open_ufs(str(src), {}, trio.CapacityLimiter(4), 10)
    assert isinstance(backend, LocalUfs)
    # What a crash mid-commit left: the temporary file and its note; and a temporary
    # file without a note (another daemon's, maybe committing now): never touched.
    (src / "d" / ".alluxiofuse-00000000000000aa").write_bytes(b"half")
    (notes / ".alluxiofuse-00000000000000aa").write_bytes(b"d/.alluxiofuse-00000000000000aa")
    (notes / ".alluxiofuse-00000000000000bb").write_bytes(b"d/.alluxiofuse-00000000000000bb")
    (src / "d" / ".alluxiofuse-00000000000000cc").write_bytes(b"not ours")
    removed = backend.note_commits(str(notes))
    assert removed == ["d/.alluxiofuse-00000000000000aa"]
    assert sorted(p.name for p in (src / "d").iterdir()) == [".alluxiofuse-00000000000000cc"]
    assert list(notes.iterdir()) == []
    seen: list[tuple[str, bytes]] = []
    link_or_copy = backend._link_or_copy

    def watched(staged_path: str, fd: int, temp: str, root: int) -> bool:
        [note] = notes.iterdir()
        seen.append((temp, note.read_bytes()))
        assert note.name == temp.rpartition("/")[2]
        return link_or_copy(staged_path, fd, temp, root)

    backend._link_or_copy = watched  # type: ignore[method-assign]
    await backend.commit("d/f", str(staged), size=7)
    [(temp, noted)] = seen
    assert noted == temp.encode() and temp.startswith("d/.alluxiofuse-")
    assert list(notes.iterdir()) == []  # committed: nothing left to tidy
    assert (src / "d" / "f").read_bytes() == b"content"
