"""Writes through ops.Operations without a kernel: owed uploads and attribute changes."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyfuse3
import trio

from alluxiofuse.inodes import ROOT_INODE
from alluxiofuse.model import Commit
from tests.component.test_ops import make


class Gate:
    """Holds every commit until opened."""

    def __init__(self, commit: Any) -> None:
        self.open = trio.Event()
        self.reached = trio.Event()
        self._commit = commit

    async def __call__(self, *args: Any, **kwargs: Any) -> Commit:
        self.reached.set()
        await self.open.wait()
        return await self._commit(*args, **kwargs)  # type: ignore[no-any-return]


async def test_chmod_of_a_file_still_uploading_keeps_content_and_mode(
    tmp_path: Path, nursery: trio.Nursery,
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    m = await make(src, nursery, write_type="ASYNC_THROUGH", drain_timeout=30)
    gate = Gate(m.fs.backend.commit)
    m.fs.backend.commit = gate  # type: ignore[method-assign]
    fi, attrs = await m.ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, None)
    await m.ops.write(fi.fh, 0, b"content")
    await m.ops.flush(fi.fh)  # journaled; its upload waits at the gate
    await m.ops.release(fi.fh)
    await gate.reached.wait()
    new = pyfuse3.EntryAttributes()
    new.st_mode = stat.S_IFREG | 0o600
    fields = SimpleNamespace(update_mode=True, update_uid=False, update_gid=False,
                             update_atime=False, update_mtime=False, update_size=False)
    changed = await m.ops.setattr(attrs.st_ino, new, fields, None, None)
    assert stat.S_IMODE(changed.st_mode) == 0o600
    assert await m.read_all("f") == b"content"
    gate.open.set()
    await m.fs.writes.uploader.wait("", 30)  # type: ignore[union-attr]
    assert (src / "f").read_bytes() == b"content"
    assert stat.S_IMODE(os.stat(src / "f").st_mode) == 0o600
    assert m.fs.writes.spool.records() == []  # type: ignore[union-attr]
