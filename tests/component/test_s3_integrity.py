"""Upload integrity on S3 (moto on loopback): every body carries its MD5, the ETag the
store answers is checked, and a body or ETag that is not what was sent fails the commit
(EIO, retried) without ever leaving a corrupt object."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import pytest
import trio

from alluxiofuse.backends import s3 as s3_requests
from alluxiofuse.backends.ufs import UfsBackend
from alluxiofuse.errors import ContentMismatch, FileTooLarge, StaleFile
from alluxiofuse.fs.inodes import ROOT_INODE
from tests.component.test_ops import make
from tests.support.s3server import S3Server, moto_s3

ROOT = "root"  # the mounted prefix inside the bucket
MiB = 1024 * 1024
PART = 5 * MiB  # S3's smallest part (but the last)


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


@dataclass
class Store:
    """moto, patched in this process to refuse a body whose Content-MD5 it does not match
    with BadDigest, as AWS does (moto itself ignores the header), and to misbehave on
    demand after that check."""

    # Each PutObject and UploadPart received: the operation, its Content-MD5 header, and
    # the MD5 of the body received (base64, as the header has it).
    seen: list[tuple[str, str | None, str]] = field(default_factory=list)
    # Bodies to keep damaged after the check passed (a store that corrupts what it
    # stores): each a function of the body received.
    damage: list[Callable[[bytes], bytes]] = field(default_factory=list)


@pytest.fixture(scope="module")
def server() -> Iterator[S3Server]:
    with moto_s3() as s3:
        yield s3


@pytest.fixture
def store(server: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Store]:
    """The module's server checking Content-MD5, its bucket empty but for the mounted
    prefix's marker."""
    from moto.s3.exceptions import S3ClientError
    from moto.s3.responses import S3Response

    found = Store()

    def checking(name: str, handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def checked(self: Any) -> Any:
            sent = self.headers.get("Content-MD5")
            received = md5_b64(self.body)
            found.seen.append((name, sent, received))
            if sent is not None and sent != received:
                raise S3ClientError(
                    "BadDigest", "The Content-MD5 you specified did not match what we received.")
            if found.damage:
                self.body = found.damage.pop(0)(self.body)
            return handler(self)
        return checked

    for name in ("put_object", "upload_part"):
        monkeypatch.setattr(S3Response, name, checking(name, getattr(S3Response, name)))
    fs = server.fs()
    out = fs.call_s3("list_objects_v2", Bucket=server.bucket)
    for obj in out.get("Contents", []):
        fs.call_s3("delete_object", Bucket=server.bucket, Key=obj["Key"])
    for upload in open_uploads(server):  # a failed test's, not to be seen by the next
        fs.call_s3("abort_multipart_upload", Bucket=server.bucket, Key=upload["Key"],
                   UploadId=upload["UploadId"])
    fs.pipe_file(f"{server.bucket}/{ROOT}/", b"")
    found.seen.clear()
    yield found


def backend(s3: S3Server) -> UfsBackend:
    return UfsBackend(s3.fs(), f"{s3.bucket}/{ROOT}", trio.CapacityLimiter(4), 30.0,
                      description=s3.url(ROOT), part_size=PART)


def client(b: UfsBackend) -> Any:
    """The botocore client of ``b``'s filesystem, made now if it was not yet."""
    b.fs.connect()
    return b.fs.s3


def flip_bodies(b: UfsBackend, operation: str, times: int,
                where: Callable[[str], bool] = lambda url: True) -> list[str]:
    """Flip a byte of the next ``times`` request bodies of ``operation`` (PutObject,
    UploadPart) whose URL ``where`` accepts, on the way out, after their MD5 and every
    other checksum was computed: the URLs of those flipped."""
    flipped: list[str] = []

    def flip(request: Any, **kwargs: Any) -> None:
        if len(flipped) < times and where(request.url):
            body = request.body.getvalue() if hasattr(request.body, "getvalue") else request.body
            damaged = bytearray(body)
            damaged[len(damaged) // 2] ^= 0x01
            request.body = io.BytesIO(bytes(damaged))
            flipped.append(request.url)

    client(b).meta.events.register(f"before-send.s3.{operation}", flip)
    return flipped


def rewrite_replies(b: UfsBackend, operation: str, **fields: str) -> None:
    """Every reply to ``operation`` says ``fields`` (ETag, ServerSideEncryption): a store
    that answers so."""
    def rewrite(parsed: dict[str, Any], **kwargs: Any) -> None:
        parsed.update(fields)

    client(b).meta.events.register(f"after-call.s3.{operation}", rewrite)


def content(s3: S3Server, name: str) -> bytes:
    return bytes(s3.fs().cat_file(f"{s3.bucket}/{ROOT}/{name}"))


def etag(s3: S3Server, name: str) -> str:
    reply = s3.fs().call_s3("head_object", Bucket=s3.bucket, Key=f"{ROOT}/{name}")
    return str(reply["ETag"]).strip('"')


def open_uploads(s3: S3Server) -> list[Any]:
    return list(s3.fs().call_s3("list_multipart_uploads", Bucket=s3.bucket).get("Uploads", []))


def parts_of(data: bytes) -> list[bytes]:
    return [data[i:i + PART] for i in range(0, len(data), PART)]


def multipart_etag(data: bytes) -> str:
    digests = b"".join(hashlib.md5(p).digest() for p in parts_of(data))
    return f"{hashlib.md5(digests).hexdigest()}-{len(parts_of(data))}"


def staged(tmp_path: Path, data: bytes, name: str = "staged") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


SMALL = os.urandom(100_000)
LARGE = os.urandom(2 * PART + 12_345)  # three parts, the last short
SIZES = {"one PUT": SMALL, "three parts": LARGE}


async def test_a_put_carries_its_md5_and_its_etag_is_the_md5(
    store: Store, server: S3Server, tmp_path: Path,
) -> None:
    b = backend(server)
    for name, data in (("f", SMALL), ("empty", b"")):
        done = await b.commit(name, staged(tmp_path, data), mode=0o600, size=len(data))
        assert content(server, name) == data
        assert etag(server, name) == hashlib.md5(data).hexdigest()
        assert done.status.size == len(data)
    # Content-MD5 is on the wire, the MD5 of what was sent; and it is checked.
    assert store.seen == [("put_object", md5_b64(SMALL), md5_b64(SMALL)),
                          ("put_object", md5_b64(b""), md5_b64(b""))]


async def test_a_multipart_upload_carries_each_parts_md5(
    store: Store, server: S3Server, tmp_path: Path,
) -> None:
    b = backend(server)
    await b.commit("big", staged(tmp_path, LARGE), mode=0o640, size=len(LARGE))
    assert content(server, "big") == LARGE
    assert etag(server, "big") == multipart_etag(LARGE)
    assert store.seen == [("upload_part", md5_b64(p), md5_b64(p)) for p in parts_of(LARGE)]
    assert [len(p) for p in parts_of(LARGE)] == [PART, PART, 12_345]
    assert open_uploads(server) == []
    status = await b.stat("big")
    assert status.mode == 0o640  # the metadata went with the upload


@pytest.mark.parametrize("data", SIZES.values(), ids=SIZES.keys())
async def test_a_body_corrupted_on_the_way_is_refused_and_the_old_object_stays(
    store: Store, server: S3Server, tmp_path: Path, data: bytes,
) -> None:
    b = backend(server)
    await b.commit("f", staged(tmp_path, b"old version", "old"), size=11)
    if len(data) > PART:  # the second part
        flipped = flip_bodies(b, "UploadPart", 1, lambda url: "partNumber=2" in url)
    else:
        flipped = flip_bodies(b, "PutObject", 1)
    with pytest.raises(ContentMismatch, match="received other bytes than were sent") as e:
        await b.commit("f", staged(tmp_path, data), size=len(data))
    assert e.value.errno == errno.EIO  # as any failed upload: retried, never EINVAL
    assert len(flipped) == 1
    assert content(server, "f") == b"old version"
    assert open_uploads(server) == []  # the multipart upload was aborted
    # The store saw the MD5 of the bytes sent, and other bytes.
    [(_, sent, _)] = [s for s in store.seen if s[1] != s[2]]
    assert sent == md5_b64(data if len(data) <= PART else parts_of(data)[1])
    # Tried again, it lands.
    await b.commit("f", staged(tmp_path, data), size=len(data))
    assert content(server, "f") == data


async def test_a_store_that_keeps_other_bytes_than_it_received_fails_the_commit(
    store: Store, server: S3Server, tmp_path: Path,
) -> None:
    """Content-MD5 passed, but what the store kept is not what it received: its ETag
    says so. A part's is seen before anything is published; a PUT's once it is."""
    b = backend(server)
    await b.commit("f", staged(tmp_path, b"old version", "old"), size=11)

    def flipped(body: bytes) -> bytes:
        return body[:-1] + bytes([body[-1] ^ 1])

    store.damage = [lambda body: body, flipped]  # the second part
    with pytest.raises(ContentMismatch, match="ETag of part 2 is"):
        await b.commit("f", staged(tmp_path, LARGE), size=len(LARGE))
    assert content(server, "f") == b"old version"
    assert open_uploads(server) == []
    store.damage = [flipped]
    with pytest.raises(ContentMismatch, match="ETag of the object is") as e:
        await b.commit("f", staged(tmp_path, SMALL), size=len(SMALL))
    assert e.value.errno == errno.EIO
    await b.commit("f", staged(tmp_path, SMALL), size=len(SMALL))  # tried again
    assert content(server, "f") == SMALL


@pytest.mark.parametrize("operation", ["PutObject", "UploadPart", "CompleteMultipartUpload"])
async def test_a_wrong_etag_in_the_reply_fails_the_commit(
    store: Store, server: S3Server, tmp_path: Path, operation: str,
) -> None:
    b = backend(server)
    rewrite_replies(b, operation, ETag='"' + (
        "0" * 32 + "-3" if operation == "CompleteMultipartUpload" else "0" * 32) + '"')
    data = SMALL if operation == "PutObject" else LARGE
    with pytest.raises(ContentMismatch, match=r"ETag of (the object|part 1) is 0{32}"):
        await b.commit("f", staged(tmp_path, data), size=len(data))
    assert open_uploads(server) == []
    if operation == "UploadPart":  # seen before the upload completed: nothing published
        assert await b.list("") == []


async def test_a_file_of_too_many_parts_is_efbig_before_any_request(
    store: Store, server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(s3_requests, "MAX_PARTS", 2)  # S3's 10,000, as for a file of 3 parts
    b = backend(server)
    with pytest.raises(FileTooLarge, match="need more than 2 parts") as e:
        await b.commit("f", staged(tmp_path, LARGE), size=len(LARGE))
    assert e.value.errno == errno.EFBIG
    assert store.seen == [] and open_uploads(server) == []


OPAQUE = {"SSE-KMS": {"ServerSideEncryption": "aws:kms"},
          "an ETag of another form": {"ETag": '"opaque"'}}


@pytest.mark.parametrize("reply", OPAQUE.values(), ids=OPAQUE.keys())
@pytest.mark.parametrize("data", SIZES.values(), ids=SIZES.keys())
async def test_where_the_etag_is_no_md5_the_size_is_checked(
    store: Store, server: S3Server, tmp_path: Path, data: bytes, reply: dict[str, str],
) -> None:
    b = backend(server)
    kms = "ServerSideEncryption" in reply
    rewrite_replies(b, "PutObject" if len(data) <= PART else "CompleteMultipartUpload",
                    **reply)
    rewrite_replies(b, "HeadObject", **{k: v for k, v in reply.items() if k == "ETag"})
    if kms:  # under SSE-KMS no ETag is an MD5, a part's neither
        rewrite_replies(b, "UploadPart", **reply)
    await b.commit("f", staged(tmp_path, data), size=len(data))
    assert content(server, "f") == data
    # A store that drops the last byte: the size tells (or else the last part's ETag).
    store.damage = [lambda body: body] * (len(parts_of(data)) - 1) + [lambda body: body[:-1]]
    told = (f"holds {len(data) - 1} bytes, not the {len(data)} sent" if kms or len(data) <= PART
            else "ETag of part 3 is")
    with pytest.raises(ContentMismatch, match=told):
        await b.commit("f", staged(tmp_path, data), size=len(data))


@pytest.mark.parametrize("data", SIZES.values(), ids=SIZES.keys())
async def test_an_upload_overtaken_by_a_newer_one_never_lands(
    store: Store, server: S3Server, tmp_path: Path, data: bytes,
) -> None:
    b = backend(server)
    reached, release = threading.Event(), threading.Event()
    publishing = b._fence.publishing

    def held(path: str, ticket: int) -> Any:
        if not reached.is_set():  # the first commit stalls before it publishes
            reached.set()
            release.wait(30)
        return publishing(path, ticket)

    b._fence.publishing = held  # type: ignore[method-assign]

    async def old() -> None:
        with pytest.raises(StaleFile):
            await b.commit("f", staged(tmp_path, data, "old"), size=len(data))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(old)
        assert await trio.to_thread.run_sync(reached.wait, 30)
        await b.commit("f", staged(tmp_path, b"new version", "new"), size=11)
        release.set()  # the old upload goes on to publish, and does not
    assert content(server, "f") == b"new version"
    assert open_uploads(server) == []


@pytest.mark.expect_log(r"^flush: ContentMismatch: .*received other bytes than were sent",
                        count=1)
@pytest.mark.expect_log(r"^f: upload owed after a failed commit", count=1)
async def test_a_corrupted_upload_is_eio_at_close_and_lands_when_retried(
    store: Store, server: S3Server, nursery: trio.Nursery,
) -> None:
    m = await make(server.url(ROOT), nursery, ufs_options=server.ufs_options)
    assert isinstance(m.fs.backend, UfsBackend)
    flipped = flip_bodies(m.fs.backend, "PutObject", 1)
    fi, _ = await m.ops.create(ROOT_INODE, b"f", 0o644, os.O_WRONLY | os.O_CREAT, None)
    await m.ops.write(fi.fh, 0, SMALL)
    with pytest.raises(pyfuse3.FUSEError) as e:
        await m.ops.flush(fi.fh)
    assert e.value.errno == errno.EIO
    assert flipped and await m.fs.backend.list("") == []  # nothing corrupt was kept
    await m.ops.release(fi.fh)  # owed now, and retried in the background
    assert m.fs.writes is not None
    await m.fs.writes.uploader.wait("", 30)
    assert content(server, "f") == SMALL
    assert m.fs.writes.spool.records() == []
