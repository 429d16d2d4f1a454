"""The S3 requests a pass over a dataset costs (moto on loopback, ops driven directly):
a shuffled pass of concurrent readers, as a training loop makes it, and a second one."""

from __future__ import annotations

import errno
import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pyfuse3
import pytest
import trio

from alluxiofuse.errors import NotFound, NotSupported
from alluxiofuse.fs.inodes import ROOT_INODE
from alluxiofuse.model import Attrs, Kind
from alluxiofuse.ops import entry_attributes
from tests.component.test_ops import Mounted, make
from tests.support.s3server import S3Server, moto_s3

ROOT = "root"  # the mounted prefix inside the bucket
DIRS, FILES = 3, 8


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        fs = server.fs()
        fs.pipe_file(f"{server.bucket}/{ROOT}/", b"")
        fs.pipe({f"{server.bucket}/{ROOT}/d{d}/f{f}": f"d{d}/f{f}".encode() * 100
                 for d in range(DIRS) for f in range(FILES)})  # at once: one PUT each
        yield server


def count_requests(m: Mounted) -> Counter[tuple[str, str]]:
    """From now on, every request the mount's s3fs makes: (operation, key or prefix)."""
    fs: Any = m.fs.backend.fs  # type: ignore[attr-defined]
    seen: Counter[tuple[str, str]] = Counter()
    call_async, call_sync = fs._call_s3, fs.call_s3

    def note(method: Any, kwargs: dict[str, Any]) -> None:
        name = method if isinstance(method, str) else method.__name__
        seen[name, str(kwargs.get("Key", kwargs.get("Prefix", "")))] += 1

    async def counted_async(method: Any, *args: Any, **kwargs: Any) -> Any:
        note(method, kwargs)
        return await call_async(method, *args, **kwargs)

    def counted_sync(method: Any, *args: Any, **kwargs: Any) -> Any:
        note(method, kwargs)  # the sync form calls the original async one, not counted again
        return call_sync(method, *args, **kwargs)

    fs._call_s3, fs.call_s3 = counted_async, counted_sync
    return seen


async def look_up(m: Mounted, path: str) -> pyfuse3.EntryAttributes:
    """``path``'s attributes as the kernel comes by them before it opens or stats a file:
    looked up, and asked for again (getattr) when the lookup gave them no time to be kept
    (the permission check of an open does that, with default_permissions)."""
    attrs = await m.lookup_path(path)
    if attrs.attr_timeout == 0:
        attrs = await m.ops.getattr(attrs.st_ino)
    return attrs


async def shuffled_pass(m: Mounted, *, read: bool, seed: int) -> None:
    """Every file, in a shuffled order, by 8 concurrent readers: the path looked up (the
    root's attributes first, as lookup_path does), its attributes asked for, and, with
    ``read``, the file opened and read whole."""
    names = [f"d{d}/f{f}" for d in range(DIRS) for f in range(FILES)]
    random.Random(seed).shuffle(names)
    send, receive = trio.open_memory_channel[str](len(names))
    for name in names:
        send.send_nowait(name)
    send.close()

    async def reader() -> None:
        async for name in receive:
            if read:  # as the kernel does: what it may keep cached, it does not ask for
                attrs = await look_up(m, name)
                info = await m.ops.open(attrs.st_ino, os.O_RDONLY, None)
                try:
                    if not info.keep_cache:
                        assert await m.ops.read(info.fh, 0, 1 << 20) == name.encode() * 100
                finally:
                    await m.ops.release(info.fh)
            else:
                attrs = await m.lookup_path(name)
                await m.ops.getattr(attrs.st_ino)

    async with trio.open_nursery() as nursery:
        for _ in range(8):
            nursery.start_soon(reader)


async def test_a_shuffled_pass_asks_once_per_name_and_a_second_pass_not_at_all(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True)
    seen = count_requests(m)
    await shuffled_pass(m, read=False, seed=1)
    heads = {key: n for (op, key), n in seen.items() if op == "head_object"}
    for d in range(DIRS):
        for f in range(FILES):
            # At most one HEAD per file: a listing of its directory made after the file was
            # HEADed keeps the metadata the HEAD brought (same version), and readers asking
            # at once share one request.
            assert heads.get(f"{ROOT}/d{d}/f{f}", 0) <= 1, seen
        listings = [n for (op, key), n in seen.items()
                    if op == "list_objects_v2" and key == f"{ROOT}/d{d}/"]
        assert sum(listings) <= 2, seen  # its listing, and the probe of a prefix directory
    # The root: every reader asks for its attributes at once, one request answers them.
    assert heads.get(f"{ROOT}/", 0) <= 1 and heads.get(ROOT, 0) <= 1, seen

    await shuffled_pass(m, read=True, seed=2)  # the first reads fetch the bytes
    seen.clear()
    await shuffled_pass(m, read=True, seed=3)
    await m.ops.getattr(ROOT_INODE)
    assert not seen, f"a second pass within the default timeouts asked the store: {seen}"


async def test_attributes_stay_right_when_a_listing_follows_a_head(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """The metadata a HEAD brought survives a later listing of the same version, and a new
    version listed replaces it (its metadata is asked for again)."""
    fs = s3.fs()
    key = f"{ROOT}/d0/f0"
    fs.call_s3("put_object", Bucket=s3.bucket, Key=key, Body=b"x",
               Metadata={"mode": str(0o100600), "uid": "123", "gid": "45"})
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True)
    first = await m.lookup_path("d0/f0")
    assert (first.st_mode & 0o777, first.st_uid, first.st_gid) == (0o600, 123, 45)
    await m.lookup_path("d0/f1")  # the second miss in d0: d0 is listed
    assert m.fs.meta.listing("d0") is not None
    seen = count_requests(m)
    again = await m.ops.getattr(first.st_ino)
    assert (again.st_mode & 0o777, again.st_uid, again.st_gid) == (0o600, 123, 45)
    assert again.attr_timeout > 0  # complete: the kernel may cache it
    assert not seen, "the listing kept what the HEAD said"

    fs.call_s3("put_object", Bucket=s3.bucket, Key=key, Body=b"xy")  # no metadata now
    m.fs.meta.put_listing("d0", await m.fs.backend.list("d0"))
    status = m.fs.meta.status("d0/f0")
    assert status is not None and not status.complete and status.size == 2
    newest = await m.ops.getattr(first.st_ino)
    assert (newest.st_size, newest.st_uid) == (2, os.getuid())
    # The new version's metadata, asked for: by the GET that reads the file with it.
    assert seen["get_object", key] == 1 and not seen["head_object", key], seen


async def test_a_listed_file_is_looked_up_without_a_request_and_its_attributes_follow(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """The kernel sends the lookups of one directory one at a time: a file a fresh listing
    names is looked up from the listing, with no request, its attributes given no time to
    be kept; the getattr that follows (run beside other files' getattrs) brings them."""
    s3.fs().call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/d0/f5", Body=b"x" * 10,
                    Metadata={"mode": str(0o100600), "uid": "123", "gid": "45"})
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True,
                   dir_readahead=0)
    m.fs.meta.put_listing("d0", await m.fs.backend.list("d0"))
    await m.lookup_path("d0")
    seen = count_requests(m)
    looked = await m.ops.lookup((await m.lookup_path("d0")).st_ino, b"f5")
    assert not seen, f"a lookup of a listed file asked the store: {seen}"
    assert looked.attr_timeout == 0 and looked.st_size == 10
    attrs = await m.ops.getattr(looked.st_ino)
    assert (attrs.st_mode & 0o777, attrs.st_uid, attrs.st_gid) == (0o600, 123, 45)
    assert attrs.attr_timeout > 0
    assert seen == Counter({("get_object", f"{ROOT}/d0/f5"): 1}), seen  # status and bytes
    assert await m.read_all("d0/f5") == b"x" * 10
    assert seen == Counter({("get_object", f"{ROOT}/d0/f5"): 1}), seen


async def test_files_fetched_ahead_in_a_directory_cost_one_request_each(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """A directory read in order: the small files fetched ahead are fetched with their
    status (one GET each, metadata included), so the getattr, open and read that follow
    ask the store nothing more: no HEAD after the read-ahead's GET."""
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True)
    m.fs.meta.put_listing("d1", await m.fs.backend.list("d1"))
    seen = count_requests(m)
    for f in range(FILES):
        attrs = await look_up(m, f"d1/f{f}")
        info = await m.ops.open(attrs.st_ino, os.O_RDONLY, None)
        try:
            assert await m.ops.read(info.fh, 0, 1 << 20) == f"d1/f{f}".encode() * 100
        finally:
            await m.ops.release(info.fh)
        await trio.sleep(0.05)  # the read-ahead the open started is on its way
    per_file = Counter(key for (op, key), n in seen.items() for _ in range(n) if "/f" in key)
    assert not [key for op, key in seen if op == "head_object" and "/f" in key], seen
    assert per_file == {f"{ROOT}/d1/f{f}": 1 for f in range(FILES)}, seen


async def test_statuses_of_large_files_read_in_order_are_asked_for_ahead(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """Files too large to be read with their status, read in listing order: the HEAD that
    each open needs (a listing lacks the object metadata) is made while the files before it
    are read, once per file, never more."""
    fs = s3.fs()
    for f in range(8):
        fs.pipe_file(f"{s3.bucket}/{ROOT}/big/f{f}", bytes([f]) * 10_000)
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True,
                   page_size="4KiB")
    m.fs.meta.put_listing("big", await m.fs.backend.list("big"))
    seen = count_requests(m)
    ahead = 0
    for f in range(8):
        ahead += seen["head_object", f"{ROOT}/big/f{f}"]  # asked for before its open
        attrs = await look_up(m, f"big/f{f}")
        info = await m.ops.open(attrs.st_ino, os.O_RDONLY, None)
        try:
            assert await m.ops.read(info.fh, 0, 1 << 20) == bytes([f]) * 10_000
        finally:
            await m.ops.release(info.fh)
        await trio.sleep(0.05)  # what the open started ahead is on its way
    assert ahead >= 5, seen  # all but the first files' (a streak takes a few opens)
    assert all(seen["head_object", f"{ROOT}/big/f{f}"] == 1 for f in range(8)), seen


async def test_a_small_file_listed_is_looked_up_and_read_with_one_request(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """A small file its directory's listing named costs one GET of the whole file, which
    tells its status, metadata included: its attributes, open and read need no more.
    Only a name looked up before its directory was listed costs a HEAD and its reads."""
    fs = s3.fs()
    fs.call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/d1/f3", Body=b"d1/f3" * 100,
               Metadata={"mode": str(0o100600), "uid": "123", "gid": "45"})
    # Without directory read-ahead: in directories this small a shuffled order can pass
    # for an ordered one, and files fetched ahead are not read at their lookup again.
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True,
                   dir_readahead=0)
    seen = count_requests(m)
    await shuffled_pass(m, read=True, seed=4)
    per_file = Counter(key for (op, key), n in seen.items() for _ in range(n)
                       if op in ("head_object", "get_object") and "/f" in key)
    assert len(per_file) == DIRS * FILES
    several = [key for key, n in per_file.items() if n > 1]
    # Only the first name of each directory, looked up before its directory was listed.
    assert len(several) <= DIRS, {k: n for k, n in seen.items() if k[1] in several}
    attrs = await look_up(m, "d1/f3")  # its metadata came with its GET (or its HEAD)
    assert (attrs.st_mode & 0o777, attrs.st_uid, attrs.st_gid) == (0o600, 123, 45)
    assert attrs.attr_timeout > 0


async def test_a_file_changed_since_its_listing_is_looked_up_as_it_is_now(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """The GET for a listed file's attributes asks for the size the listing said; the
    status comes from its reply, and its bytes are kept only when they are the whole
    file."""
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True)
    m.fs.meta.put_listing("d0", await m.fs.backend.list("d0"))
    fs = s3.fs()
    grown = os.urandom(3000)
    fs.call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/d0/f0", Body=b"")
    fs.call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/d0/f1", Body=grown)
    fs.call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/d0/f2", Body=b"short")
    assert (await look_up(m, "d0/f0")).st_size == 0
    assert await m.read_all("d0/f0") == b""
    assert (await look_up(m, "d0/f1")).st_size == 3000
    assert await m.read_all("d0/f1") == grown
    assert (await look_up(m, "d0/f2")).st_size == 5
    assert await m.read_all("d0/f2") == b"short"


async def long_listing(m: Mounted, directory: str) -> dict[str, pyfuse3.EntryAttributes]:
    """``ls -l directory`` as the kernel serves it: every entry handed over with its
    attributes (readdirplus), and getattr asked of each entry whose attributes the kernel
    may not keep (attribute timeout 0)."""
    dir_ino = (await m.lookup_path(directory)).st_ino
    fh = await m.ops.opendir(dir_ino, None)
    listed: list[tuple[str, pyfuse3.EntryAttributes]] = []
    await m.fs.readdir(fh, 0, lambda name, attrs, _: bool(
        listed.append((name, entry_attributes(attrs))) or True))
    await m.ops.releasedir(fh)
    return {name: attrs if attrs.attr_timeout else await m.ops.getattr(attrs.st_ino)
            for name, attrs in listed}


@pytest.mark.parametrize("ignore", [False, True], ids=["object-metadata", "ignored"])
async def test_a_long_listing_costs_the_list_pages_alone_without_object_metadata(
    s3: S3Server, nursery: trio.Nursery, ignore: bool,
) -> None:
    """``ls -l``: with --ignore-object-metadata the listing says all there is of each
    object (size, LastModified, default mode and owner), so it costs one ListObjectsV2 and
    no request per object; keeping object metadata, each object is asked for it once."""
    s3.fs().call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/d2/f1", Body=b"x" * 7,
                    Metadata={"mode": str(0o100600), "uid": "123", "gid": "45",
                              "mtime": "1000000000"})
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True,
                   ignore_object_metadata=ignore)
    await m.lookup_path("d2")
    seen = count_requests(m)
    attrs = await long_listing(m, "d2")
    assert sorted(attrs) == [f"f{f}" for f in range(FILES)]
    assert attrs["f1"].st_size == 7 and attrs["f0"].st_size == len(b"d2/f0") * 100
    per_object = [key for op, key in seen if op != "list_objects_v2"]
    if ignore:
        assert seen == Counter({("list_objects_v2", f"{ROOT}/d2/"): 1}), seen
        assert all(a.attr_timeout > 0 for a in attrs.values())
        assert (attrs["f1"].st_mode & 0o777, attrs["f1"].st_uid) == (0o644, os.getuid())
        assert attrs["f1"].st_mtime_ns > 1_000_000_000 * 10**9  # LastModified, now
        # A name looked up without a listing shows the same, from its HEAD.
        m.fs.drop_caches()
        again = await m.ops.getattr(attrs["f1"].st_ino)
        assert (again.st_mode, again.st_uid, again.st_mtime_ns) == (
            attrs["f1"].st_mode, attrs["f1"].st_uid, attrs["f1"].st_mtime_ns)
    else:
        assert sorted(per_object) == [f"{ROOT}/d2/f{f}" for f in range(FILES)], seen
        assert (attrs["f1"].st_mode & 0o777, attrs["f1"].st_uid) == (0o600, 123)
        assert attrs["f1"].st_mtime_ns == 1_000_000_000 * 10**9


async def test_ignoring_object_metadata_refuses_modes_owners_and_times(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """What could not be shown is not kept: chmod is ENOTSUP, and a new file's upload
    carries no metadata."""
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options,
                   ignore_object_metadata=True)
    assert not m.fs.backend.writes.modes and not m.fs.backend.writes.times
    attrs = await m.lookup_path("d0/f0")
    with pytest.raises(NotSupported):
        await m.fs.setattr(attrs.st_ino, None, None, Attrs(mode=0o600))
    with pytest.raises(NotSupported):
        await m.fs.setattr(attrs.st_ino, None, None, Attrs(mtime_ns=10**18))
    fh, _ = await m.fs.create(ROOT_INODE, "new", 0o600, os.O_WRONLY, (0, 0))
    await m.fs.write(fh, 0, b"new")
    await m.fs.flush(fh, durable=True)
    await m.fs.release(fh)
    head = s3.fs().call_s3("head_object", Bucket=s3.bucket, Key=f"{ROOT}/new")
    assert head["ContentLength"] == 3 and not head.get("Metadata"), head


async def test_a_listing_of_many_pages_takes_a_deadline_per_page(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """A prefix of a million objects is a thousand ListObjectsV2 round trips: each page
    has --io-timeout, not the whole listing. Here pages of 3 keys, each 0.35 s late, under
    a deadline of 1 s: the listing takes longer than the deadline, and is whole."""
    fs = s3.fs()
    fs.pipe_file(f"{s3.bucket}/{ROOT}/d1/sub/x", b"")
    fs.pipe_file(f"{s3.bucket}/{ROOT}/d1/zz/", b"")  # a directory of its marker alone
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True,
                   io_timeout="1")
    backend: Any = m.fs.backend
    backend.list_page_keys = 3
    page = backend._s3_list_page

    def late_page(*args: Any) -> dict[str, Any]:
        time.sleep(0.35)
        return dict(page(*args))

    backend._s3_list_page = late_page
    seen = count_requests(m)
    start = time.monotonic()
    listed = await m.fs.backend.list("d1")
    assert time.monotonic() - start > 1
    assert seen["list_objects_v2", f"{ROOT}/d1/"] == 4, seen  # 8 files and 2 directories
    got = {s.name: (s.kind, s.size) for s in listed}
    want = {info["name"].rpartition("/")[2]: (Kind.FILE, info["size"])
            for info in fs.ls(f"{s3.bucket}/{ROOT}/d1", detail=True) if info["type"] == "file"}
    want |= {"sub": (Kind.DIRECTORY, 0), "zz": (Kind.DIRECTORY, 0)}
    assert got == want
    with pytest.raises(NotFound):
        await m.fs.backend.list("nothing-here")


async def read_from(m: Mounted, fh: int, start: int) -> list[str]:
    """One readdir from offset ``start``: the names it hands over."""
    names: list[str] = []
    await m.fs.readdir(fh, start, lambda name, attrs, _: names.append(name) or True)
    return names


async def test_a_listing_in_pages_is_read_out_as_they_come(
    s3: S3Server, nursery: trio.Nursery,
) -> None:
    """opendir returns once the first ListObjectsV2 page has come, and readdir hands out
    what has come while the rest is on its way; a second opendir meanwhile reads the same
    listing (no second one), and the whole is cached once it is done."""
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True)
    backend: Any = m.fs.backend
    backend.list_page_keys = 3
    page, gate, pages = backend._s3_list_page, trio.Event(), []

    def gated(*args: Any) -> dict[str, Any]:
        pages.append(args)
        if len(pages) > 1:  # the first page comes at once, the others once the gate opens
            trio.from_thread.run(gate.wait)
        return dict(page(*args))

    backend._s3_list_page = gated
    d0 = await m.lookup_path("d0")
    seen = count_requests(m)
    with trio.fail_after(10):
        fh = await m.ops.opendir(d0.st_ino, None)
        assert await read_from(m, fh, 0) == ["f0", "f1", "f2"]
        other = await m.ops.opendir(d0.st_ino, None)
        assert await read_from(m, other, 0) == ["f0", "f1", "f2"]
        rest: list[str] = []

        async def read_the_rest() -> None:
            while batch := await read_from(m, fh, 3 + len(rest)):
                rest.extend(batch)

        async with trio.open_nursery() as readers:
            readers.start_soon(read_the_rest)
            await trio.sleep(0.2)
            assert not rest  # waiting for the next page, not at the end
            gate.set()
    assert rest == [f"f{f}" for f in range(3, FILES)]
    other_rest: list[str] = []
    while batch := await read_from(m, other, 3 + len(other_rest)):
        other_rest.extend(batch)
    assert other_rest == rest
    assert seen["list_objects_v2", f"{ROOT}/d0/"] == 3, seen  # 8 keys, 3 a page, once
    listing = m.fs.meta.listing("d0")
    assert listing is not None and list(listing.names()) == [f"f{f}" for f in range(FILES)]
    await m.ops.releasedir(fh)
    await m.ops.releasedir(other)


@pytest.mark.expect_log(r"^readdir: BackendUnavailable: injected: the connection dropped$", count=1)
async def test_a_listing_that_fails_after_its_first_page_fails_the_readdir(
    s3: S3Server, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture,
) -> None:
    """The entries that came are handed out; the readdir past them gets the error (EIO,
    logged), the opendir having succeeded; the next opendir lists again."""
    m = await make(s3.url(ROOT), nursery, ufs_options=s3.ufs_options, read_only=True)
    backend: Any = m.fs.backend
    backend.list_page_keys = 3
    page, pages = backend._s3_list_page, []

    def failing(*args: Any) -> dict[str, Any]:
        pages.append(args)
        if len(pages) == 2:
            raise ConnectionResetError("injected: the connection dropped")
        return dict(page(*args))

    backend._s3_list_page = failing
    d1 = await m.lookup_path("d1")
    with trio.fail_after(10):
        fh = await m.ops.opendir(d1.st_ino, None)
        assert await read_from(m, fh, 0) == ["f0", "f1", "f2"]
        with pytest.raises(pyfuse3.FUSEError) as failed:
            await m.ops.readdir(fh, 3, None)
        assert failed.value.errno == errno.EIO
        assert "readdir: BackendUnavailable: injected: the connection dropped" in caplog.text
        await m.ops.releasedir(fh)
        fh = await m.ops.opendir(d1.st_ino, None)
        assert await m.listing(fh) == [f"f{f}" for f in range(FILES)]
