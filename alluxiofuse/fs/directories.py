"""Open directories: a snapshot of each one's entries taken at opendir, handed out to
readdir entry by entry, with the files being written in it as they stand."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from alluxiofuse.errors import NotADirectory
from alluxiofuse.fs.handles import DirHandle
from alluxiofuse.fs.inodes import Inode, InodeTable
from alluxiofuse.fs.metacache import MetadataCache, join
from alluxiofuse.fs.replies import Attributes, Replies
from alluxiofuse.fs.statuses import Statuses
from alluxiofuse.listing import Listing, ListingStream
from alluxiofuse.model import FileStatus, Kind
from alluxiofuse.writes.writes import Writes

# Entry callback for readdir: (name, attributes, next offset) -> whether the kernel took it.
ReplyFn = Callable[[str, Attributes, int], bool]
# Record a status (a listing's entry, if given) for a path: Filesystem._learn.
Learn = Callable[[str, FileStatus, tuple[Listing, int] | None], Inode]


class Directories:
    """opendir and readdir of one mounted tree."""

    def __init__(
        self, inodes: InodeTable, meta: MetadataCache, statuses: Statuses,
        writes: Writes | None, learn: Learn, replies: Replies,
    ) -> None:
        self._inodes = inodes
        self._meta = meta
        self._statuses = statuses
        self._writes = writes
        self._learn = learn
        self._replies = replies

    async def open(self, ino: int) -> DirHandle:
        """A handle on the entries of directory ``ino``: a fresh cached listing, else one
        fetched now. A listing the source gives in pages (S3) is handed out as its pages
        come, once the first has (an error before then is the opendir's)."""
        inode = self._inodes.get(ino)
        if inode.status.kind is not Kind.DIRECTORY:
            raise NotADirectory(inode.path)
        path = inode.path
        staged = self._writes.children(path) if self._writes is not None else {}
        listing = self._meta.listing(path)
        entries: Sequence[FileStatus] | ListingStream
        if listing is None and not staged:
            stream = self._statuses.stream(path)
            await stream.wait_beyond(0)
            if stream.error is not None and not len(stream):
                raise stream.error
            entries = stream.listing if stream.listing is not None else stream
        else:
            if listing is None:
                listing = await self._statuses.list(path)
            entries = listing
            if staged:  # files being written: their own status, and new ones not uploaded
                entries = [s if s.name not in staged else staged[s.name].status(s.name)
                           for s in listing]
                entries += [f.status(name) for name, f in sorted(staged.items())
                            if listing.find(name) is None]
        return DirHandle(ino, path, entries)

    async def read(self, handle: DirHandle, start: int, reply: ReplyFn) -> None:
        """Hand entries ``start``, ``start+1``, ... to ``reply`` until it refuses one (of a
        listing still arriving: of those that have come, once there is one beyond
        ``start``, or none will come).

        Offsets index the snapshot taken at opendir, so a listing that spans many reply
        buffers is never skipped or repeated. Each entry the kernel takes holds a lookup.
        """
        entries = handle.entries
        if isinstance(entries, ListingStream):
            await entries.wait_beyond(start)
            if start >= len(entries) and entries.error is not None:
                raise entries.error
        for index in range(start, len(entries)):
            # The inode keeps its status as this listing's entry while nothing newer is known.
            listed: tuple[Listing, int] | None = None
            if isinstance(entries, ListingStream):
                listed = entries.locate(index)
            elif isinstance(entries, Listing):
                listed = (entries, index)
            else:  # a listing with files being written in it
                status = entries[index]
            entry = listed[0].entry(listed[1]) if listed is not None else status
            path = join(handle.path, entry.name)
            staged = self._writes.get(path) if self._writes is not None else None
            if listed is not None:
                # Kept as a row of the listing until the kernel asks for it (inodes.py).
                number = None if staged is not None else self._inodes.hold_row(
                    path, handle.path, *listed)
                if number is not None:
                    attrs = self._replies.attributes(number, entry)
                    if not reply(entry.name, attrs, index + 1):
                        self._inodes.forget(number, 1)
                        break
                    continue
                status = listed[0][listed[1]]
            known = self._inodes.by_path(path)
            if staged is not None:  # being written: only its own size is right
                status, listed = staged.status(status.name), None
            elif known is not None and not (listed is not None and known.is_listed(*listed)):
                newer = self._statuses.attrs_of(known, status)
                if newer is None and known.status != status:
                    # Learned since the snapshot: never step back to the snapshot's older
                    # version (open handles of the newer one would turn stale).
                    newer = self._meta.status(path)
                if newer is not None:
                    status, listed = newer, None
            inode = self._learn(path, status, listed)
            if not reply(status.name, self._replies.attributes(inode.ino, status), index + 1):
                self._inodes.discard_if_unused(inode)
                break
            self._inodes.remember(inode)
            inode.attrs_given()
