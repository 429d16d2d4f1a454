"""The keys of an fsspec store, by full path: directories as the store keeps them, copies
that keep S3's metadata, and renames made of copies (object stores have no rename)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any, NamedTuple

from alluxiofuse.backends.objects import kept_headers
from alluxiofuse.backends.s3 import head

log = logging.getLogger(__name__)

# The largest object copied in one request (CopyObject, which takes up to 5 GiB); larger
# ones in parts, as s3fs does: one request copying gigabytes can outlast a read timeout.
_COPY_MAX = 150 * 1024**2


class Move(NamedTuple):
    """One key of a rename: copied to ``target`` (a directory of a store that has them:
    made there), then removed."""

    source: str
    target: str
    directory: bool
    size: int


@dataclasses.dataclass(frozen=True)
class Rename:
    """What a rename through fsspec copies."""

    old: str
    new: str
    directory: bool
    moves: list[Move]
    replaced: bool = False  # the target is an empty directory already

    @property
    def size(self) -> int:
        return sum(move.size for move in self.moves)


class StoreKeys:
    """Keys of the fsspec filesystem ``fs``. A store without empty directories (object
    stores: ``markers``) keeps one as a zero-byte marker object ``dir/``; on S3 (``s3``)
    copies are S3's own, which keep the object's metadata.

    Only single-path fsspec calls here (info, find, mkdir, rmdir, pipe_file, cp_file,
    rm_file): the many-path ones (mv, copy, rm) expand glob characters, and a file may
    well be called "*".
    """

    def __init__(self, fs: Any, *, markers: bool, s3: bool) -> None:
        self.fs = fs
        self._markers = markers
        self._s3 = s3

    def exists(self, full: str) -> bool:
        self.fs.invalidate_cache(full)
        return bool(self.fs.exists(full))

    def make_dir(self, full: str) -> None:
        if self._markers:
            self.fs.pipe_file(full + "/", b"")
        else:
            self.fs.mkdir(full, create_parents=False)
        self.fs.invalidate_cache(full)

    def remove_dir(self, full: str) -> None:
        if self._markers:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(full + "/")
        else:
            self.fs.rmdir(full)
        self.fs.invalidate_cache(full)

    def plan(self, old_full: str, new_full: str) -> Rename:
        """What moving ``old_full`` to ``new_full`` copies."""
        self.fs.invalidate_cache(old_full)
        info = self.fs.info(old_full)
        if info.get("type") != "directory":
            move = Move(old_full, new_full, False, int(info.get("size") or 0))
            return Rename(old_full, new_full, False, [move])
        moves = self._tree_moves(old_full, new_full)
        return Rename(old_full, new_full, True, moves, self.exists(new_full))

    def move(self, plan: Rename) -> None:
        """A copy, then the removal of the old: a failure half-way leaves the old as it
        was (see ``_rename_dir``). A file's copy replaces the target whole."""
        if not plan.directory:
            self._copy_key(plan.moves[0])
            self.fs.rm_file(plan.old)
        else:
            self._rename_dir(plan)
        self.fs.invalidate_cache(plan.old)
        self.fs.invalidate_cache(plan.new)

    def _rename_dir(self, plan: Rename) -> None:
        """Copy every key of the tree to its new key, then remove the old keys.

        On object stores the keys are the objects themselves, directory markers ``dir/``
        included (copied as the markers they are, never as files named ``dir``); a
        directory made of a prefix alone stays one. If a copy fails, the copies made so
        far are removed again: the old tree is as it was and no part of the new one is
        left. Once every copy is in, the old keys are removed (children before their
        directories); should one of those removals fail, the new tree is whole and the
        rest of the old one is still removed before the error is raised.
        """
        made: list[tuple[str, bool]] = []
        try:
            for move in plan.moves:
                if move.directory:  # stores with real directories: made, not copied
                    if move.target == plan.new and plan.replaced:
                        continue
                    self.make_dir(move.target)
                else:
                    self._copy_key(move)
                made.append((move.target, move.directory))
        except BaseException:
            self._remove_keys(list(reversed(made)))
            if plan.replaced and self._markers and not self.exists(plan.new):
                self.make_dir(plan.new)  # its marker was copied over, then removed
            raise
        self._remove_keys([(move.source, move.directory) for move in reversed(plan.moves)],
                          strict=True)

    def _tree_moves(self, old_full: str, new_full: str) -> list[Move]:
        """Every key of the tree at ``old_full`` and its new key, parents first."""
        tree = self.fs.find(old_full, withdirs=not self._markers, detail=True)
        moves = [
            Move(str(name).rstrip("/") if not self._markers else str(name), "",
                 info.get("type") == "directory", int(info.get("size") or 0))
            for name, info in tree.items()
            # Object stores: every object under the prefix, markers "d/", "d/sub/" too.
            if (str(name).startswith(old_full + "/") if self._markers
                else str(name).rstrip("/") != old_full)
        ]
        if not self._markers:
            moves.append(Move(old_full, "", True, 0))
        return sorted(move._replace(target=new_full + move.source[len(old_full):])
                      for move in moves)

    def _copy_key(self, move: Move) -> None:
        """Copy one object (or file) to its new key exactly, a marker ``dir/`` included,
        with its metadata (S3)."""
        source, target = move.source, move.target
        if self._s3:
            # Not fsspec's cp_file alone: it drops a path's trailing slash (copying
            # "d/sub" for the marker "d/sub/"), and copies large objects in parts
            # without their metadata unless told it. One CopyObject keeps both.
            bucket, key, _ = self.fs.split_path(source)
            new_bucket, new_key, _ = self.fs.split_path(target)
            if move.size <= _COPY_MAX:
                self.fs.call_s3("copy_object", Bucket=new_bucket, Key=new_key,
                                CopySource={"Bucket": bucket, "Key": key})
            else:  # in parts, told the metadata and headers
                self.fs.cp_file(source, target, **kept_headers(head(self.fs, bucket, key) or {}))
        elif not source.endswith("/"):
            self.fs.cp_file(source, target)
        else:
            self.fs.pipe_file(target, b"")
        self.fs.invalidate_cache(target.rstrip("/"))

    def _remove_keys(
        self, keys: Sequence[tuple[str, bool]], *, strict: bool = False,
    ) -> None:
        """Remove each key, a directory's (a marker ``dir/``, or one a store has of its
        own: the plan says which) as an empty directory; go on past failures and raise
        the first at the end with ``strict``, else only log them."""
        first: BaseException | None = None
        for key, directory in keys:
            try:
                if key.endswith("/") or directory:
                    self.remove_dir(key.rstrip("/"))
                else:
                    self.fs.rm_file(key)
            except Exception as e:  # the others are still removed
                log.warning("rename: cannot remove %r: %r", key, e)
                first = first or e
            self.fs.invalidate_cache(key.rstrip("/"))
        if strict and first is not None:
            raise first
