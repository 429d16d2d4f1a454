"""An AIStore cluster as an fsspec filesystem: paths ``bucket/key``, so that the object
store machinery of ``ufs.py`` and ``keys.py`` (directories as prefixes and markers,
renames made of copies) serves ``ais://`` sources as it serves S3."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec

from alluxiofuse.backends.ais.client import AisClient, Bucket, Entry, ObjectProps, Page
from alluxiofuse.errors import NotFound, StaleFile

# A copy's bytes are held in memory up to this size, in a temporary file beyond it.
_COPY_IN_MEMORY = 8 * 1024 * 1024


class AisStore(fsspec.AbstractFileSystem):  # type: ignore[misc]
    """The buckets of one provider ("ais", or a remote one AIStore fronts) of the cluster
    ``client`` talks to. Missing objects raise FileNotFoundError, as fsspec expects; every
    other failure is the client's AlluxioFuseError. No file objects (``open``): the
    backend reads by range and commits whole files itself."""

    protocol = ("ais",)
    root_marker = ""
    cachable = False  # one per mount: never shared through fsspec's instance cache

    def __init__(self, client: AisClient, provider: str = "ais") -> None:
        super().__init__()
        self.client = client
        self.provider = provider

    def bucket(self, path: str) -> tuple[Bucket, str]:
        """The bucket and the key of ``path`` ("bucket/key")."""
        name, _, key = self._strip_protocol(path).partition("/")
        return Bucket(name, self.provider), key

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = str(path)
        if path.startswith("ais://"):
            path = path[len("ais://"):]
        return path.lstrip("/")

    def unstrip_protocol(self, name: str) -> str:
        return f"ais://{self._strip_protocol(name)}"

    def invalidate_cache(self, path: str | None = None) -> None:
        """Nothing is cached here: the mount's metadata cache is the one authority."""

    # -- what is there

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        bucket, key = self.bucket(path)
        full = f"{bucket.name}/{key}" if key else bucket.name
        if not key:
            try:
                self.client.bucket_props(bucket)
            except NotFound:
                raise FileNotFoundError(f"no bucket {bucket}") from None
            return {"name": full, "type": "directory", "size": 0}
        if not key.endswith("/"):
            with contextlib.suppress(NotFound):  # then perhaps a directory
                return file_info(full, self.client.head(bucket, key))
        # A directory: a marker "key/" or any object below it.
        page = self.client.list_page(bucket, key.rstrip("/") + "/", page_size=1, recursive=True)
        if page.entries:
            return {"name": full.rstrip("/"), "type": "directory", "size": 0}
        raise FileNotFoundError(full)

    def exists(self, path: str, **kwargs: Any) -> bool:
        """Only a missing path is False: fsspec's own takes any error for "missing"."""
        try:
            self.info(path)
        except FileNotFoundError:
            return False
        return True

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        """The entries directly in ``path`` (every page of the listing)."""
        bucket, key = self.bucket(path)
        prefix = key.rstrip("/") + "/" if key else ""
        infos = {}
        for page in self.pages(bucket, prefix, recursive=False):
            for name, entry in children(page.entries, prefix).items():
                full = f"{bucket.name}/{prefix}{name}"
                infos[full] = entry_info(full, entry)
        if not infos and key:
            self.info(path)  # FileNotFoundError unless it is an empty directory
        return list(infos.values()) if detail else list(infos)

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:
        """Every object below ``path`` (markers ``dir/`` included, its own too), by full
        name."""
        bucket, key = self.bucket(path)
        prefix = key.rstrip("/") + "/" if key else ""
        found = {}
        for page in self.pages(bucket, prefix, recursive=True):
            for entry in page.entries:
                if entry.name.startswith(prefix):
                    full = f"{bucket.name}/{entry.name}"
                    found[full] = entry_info(full, entry)
        return found if detail else sorted(found)

    def pages(self, bucket: Bucket, prefix: str, *, recursive: bool) -> Iterator[Page]:
        """The listing of ``prefix``, page by page."""
        token = uuid = ""
        while True:
            page = self.client.list_page(bucket, prefix, token=token, uuid=uuid,
                                         recursive=recursive)
            yield page
            if not page.token:
                return
            token, uuid = page.token, page.uuid

    # -- bytes

    def cat_file(self, path: str, start: int | None = None, end: int | None = None,
                 **kwargs: Any) -> bytes:
        bucket, key = self.bucket(path)
        start = start or 0
        length = -1 if end is None else max(0, end - start)
        if length == 0:
            return b""
        try:
            data, _ = self.client.get(bucket, key, start, length)
        except NotFound:
            raise FileNotFoundError(path) from None
        return data

    def pipe_file(self, path: str, value: bytes, **kwargs: Any) -> None:
        bucket, key = self.bucket(path)
        with tempfile.SpooledTemporaryFile(max_size=_COPY_IN_MEMORY) as body:
            body.write(value)
            body.seek(0)
            self.client.put(bucket, key, body, len(value))

    def rm_file(self, path: str) -> None:
        bucket, key = self.bucket(path)
        try:
            self.client.delete(bucket, key)
        except NotFound:
            raise FileNotFoundError(path) from None

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """A copy through this host: ranged GETs of one version into a temporary file
        (in memory while small), then one PUT, so the new object is published whole and
        a large one never sits in memory."""
        bucket, key = self.bucket(path1)
        new_bucket, new_key = self.bucket(path2)
        with tempfile.SpooledTemporaryFile(max_size=_COPY_IN_MEMORY) as body:
            first: ObjectProps | None = None
            while first is None or body.tell() < first.size:
                try:
                    data, props = self.client.get(bucket, key, body.tell(), _COPY_IN_MEMORY)
                except NotFound:
                    raise FileNotFoundError(path1) from None
                first = first or props
                if (props.size, etag(props.version, props.checksum)) != (
                        first.size, etag(first.version, first.checksum)) or (
                        not data and props.size):
                    raise StaleFile(f"{path1} changed while it was copied")
                body.write(data)
            size = body.tell()
            body.seek(0)
            self.client.put(new_bucket, new_key, body, size)


def etag(version: str, checksum: str) -> str | None:
    """What names one content of an object: its AIStore version (bumped by each PUT; a
    remote bucket's object has its backend's), else, in a bucket that keeps no versions,
    its checksum. Not both: a remote object's checksum changes type when the cluster
    first caches it (the backend's MD5, then the bucket's own), its version does not."""
    return version or checksum or None


def file_info(name: str, props: ObjectProps) -> dict[str, Any]:
    return {"name": name, "type": "file", "size": props.size, "ais_etag":
            etag(props.version, props.checksum), "atime_ns": props.atime_ns,
            "cached": props.present}


def entry_info(name: str, entry: Entry) -> dict[str, Any]:
    if entry.is_dir:
        return {"name": name, "type": "directory", "size": 0}
    return {"name": name, "type": "file", "size": entry.size,
            "ais_etag": etag(entry.version, entry.checksum), "atime_ns": entry.atime_ns,
            "cached": entry.cached}


def children(entries: Iterable[Entry], prefix: str) -> dict[str, Entry]:
    """The entries of a non-recursive listing of ``prefix`` by their names in it: a
    subdirectory once, whether AIStore listed it as a virtual directory or by its marker
    object ``dir/``; the prefix's own marker left out."""
    found = {}
    for entry in entries:
        if not entry.name.startswith(prefix) or entry.name == prefix:
            continue
        name = entry.name[len(prefix):]
        if entry.is_dir or name.endswith("/"):
            name = name.rstrip("/")
            found[name] = Entry(name=name, is_dir=True)
        else:
            found[name] = dataclasses.replace(entry, name=name)
    return found
