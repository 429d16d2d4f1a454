"""Client of AIStore's native REST API (``/v1``), as its official SDK speaks it.

Blocking calls, made in the daemon's worker threads (an ``ais://`` source is an fsspec
store to the rest of the mount, ``store.py``), over one pooled ``httpx.Client``: a
connection pool per node, so a target's connections are kept across requests.

Where objects go. The proxy answers an object request with a 307 to the target that
holds the object. With ``direct`` (the default) the client computes that target itself
from the cluster map (``placement.py``), as the SDK's direct mode does, and saves the
redirect's round trip; the proxy stays the fallback: when the map cannot be read, when a
target cannot be reached (the map is read again), and when a target says an object is
missing while the map has changed since it was read (the owner may have moved).

Calls that change nothing are sent again, with backoff, when a connection fails or a
node answers 429 or 503 (AIStore's answer while it rebalances), within the caller's
deadline; a timeout is not retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import http.client
import json
import random
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

import httpx
import msgpack

from alluxiofuse.backends.ais.placement import Target, digest, owner
from alluxiofuse.errors import (
    AlluxioFuseError,
    BackendTimeout,
    BackendUnavailable,
    ContentMismatch,
    InvalidArgument,
    NotFound,
    ProtocolError,
    ServerError,
)

# Properties a listing asks for: all a status needs, in one request (no HEAD per object).
LIST_PROPS = "name,size,version,checksum,atime,cached"
# HEAD's properties (name and size always come).
HEAD_PROPS = "checksum,atime,version"
# A listing's times, to the nanosecond (Go's RFC3339Nano layout; the default is RFC822,
# to the minute).
TIME_FORMAT = "2006-01-02T15:04:05.999999999Z07:00"
# LsoMsg flags and LsoEnt flags (AIStore's api/apc/lsmsg.go).
LS_NO_RECURSION = 1 << 11
ENTRY_IS_CACHED = 1 << 6
ENTRY_IS_DIR = 1 << 8
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")
_RETRY_STATUS = frozenset({429, 503})
_ATTEMPTS = 4
_BACKOFF_FIRST = 0.05  # seconds, doubled per attempt, with full jitter
_SMAP_MIN_AGE = 1.0  # seconds between two reads of the map that a missing object causes


@dataclasses.dataclass(frozen=True)
class Bucket:
    """A bucket as AIStore names it: ``provider`` is "ais" for the cluster's own, or the
    remote backend it fronts ("aws", "gcp", "azure", "oci", ...)."""

    name: str
    provider: str = "ais"

    @property
    def params(self) -> dict[str, str]:
        return {"provider": self.provider}

    def uname(self, obj: str) -> str:
        """The name placement hashes: provider, the global namespace, bucket, object."""
        return f"{self.provider}/@#/{self.name}/{obj}"

    def __str__(self) -> str:
        return f"{self.provider}://{self.name}"


@dataclasses.dataclass(frozen=True)
class ObjectProps:
    """An object's properties, as HEAD and GET report them in headers."""

    size: int
    version: str = ""
    checksum_type: str = ""
    checksum: str = ""
    atime_ns: int | None = None
    present: bool = True  # in the cluster (a remote bucket's object may not be, yet)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of a listing page: an object, or a virtual directory (``is_dir``,
    named without its trailing slash)."""

    name: str
    size: int = 0
    version: str = ""
    checksum: str = ""
    atime_ns: int | None = None
    cached: bool = True
    is_dir: bool = False


@dataclasses.dataclass(frozen=True)
class Page:
    entries: list[Entry]
    token: str  # "" on the last page
    uuid: str


@dataclasses.dataclass(frozen=True)
class JobStatus:
    job_id: str
    done: bool
    aborted: bool
    error: str
    objects: int
    bytes: int


class AisClient:
    """Requests to the AIStore cluster whose proxy is ``endpoint``. Thread-safe."""

    def __init__(
        self, endpoint: str, *, timeout: float, token: str | None = None,
        direct: bool = True, connections: int = 100,
    ) -> None:
        parsed = urllib.parse.urlsplit(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidArgument(f"AIStore endpoint {endpoint!r} is not an http(s):// URL")
        self.endpoint = endpoint.rstrip("/")
        self.direct = direct
        headers = {"User-Agent": "alluxiofuse"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers
        self._http = httpx.Client(
            headers=headers, timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=connections),
        )
        self._timeout = timeout
        self._lock = threading.Lock()
        # Kept-alive connections of the fast GETs, by target (host, port).
        self._idle: dict[tuple[str, int], list[http.client.HTTPConnection]] = {}
        self._targets: list[Target] | None = None
        self._smap_version = -1
        self._smap_read_at = -_SMAP_MIN_AGE

    def close(self) -> None:
        self._http.close()
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    # -- the cluster map

    def targets(self, *, refresh: bool = False) -> list[Target]:
        """The cluster's targets (read from the proxy once, and again on ``refresh``)."""
        with self._lock:
            if self._targets is not None and not refresh:
                return self._targets
        reply = self._send("GET", f"{self.endpoint}/v1/daemon", params={"what": "smap"},
                           idempotent=True, what="cluster map")
        smap = _json(reply, "cluster map")
        try:
            targets = [_target(node) for node in dict(smap["tmap"]).values()]
            version = int(smap.get("version", 0))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"AIStore cluster map: {e!r}") from None
        with self._lock:
            self._targets, self._smap_version = targets, version
            self._smap_read_at = time.monotonic()
        return targets

    def owner(self, bucket: Bucket, name: str) -> Target | None:
        """The target that holds ``name`` by the cluster map, as the cluster places it."""
        return owner(self.targets(), bucket.uname(name))

    def _maybe_moved(self) -> bool:
        """After a target said an object is missing: read the map again (at most once a
        second) and say whether it changed."""
        with self._lock:
            if time.monotonic() - self._smap_read_at < _SMAP_MIN_AGE:
                return False
            before = self._smap_version
        try:
            self.targets(refresh=True)
        except AlluxioFuseError:
            return False
        return self._smap_version != before

    # -- buckets

    def bucket_props(self, bucket: Bucket) -> dict[str, Any]:
        """The bucket's properties (NotFound if the cluster has no such bucket)."""
        reply = self._send("HEAD", self._bucket_url(bucket), params=bucket.params,
                           idempotent=True, what=str(bucket))
        text = reply.headers.get("ais-bucket-props", "")
        if not text:
            return {}
        try:
            props = json.loads(text)
        except ValueError:
            raise ProtocolError(f"{bucket}: bucket properties are not JSON") from None
        return props if isinstance(props, dict) else {}

    def list_page(
        self, bucket: Bucket, prefix: str, *, token: str = "", uuid: str = "",
        page_size: int = 0, recursive: bool = False,
    ) -> Page:
        """One page of the objects under ``prefix``; without ``recursive``, the entries
        directly in ``prefix`` (a directory being everything up to the next slash)."""
        flags = 0 if recursive else LS_NO_RECURSION
        message = {"action": "list", "name": "", "value": {
            "prefix": prefix, "pagesize": page_size, "uuid": uuid, "props": LIST_PROPS,
            "continuation_token": token, "flags": str(flags), "target": "",
            "time_format": TIME_FORMAT}}
        reply = self._send("GET", self._bucket_url(bucket), params=bucket.params,
                           headers={"Accept": "application/msgpack"},
                           content=json.dumps(message).encode(), idempotent=True,
                           what=f"{bucket} listing of {prefix!r}")
        return _page(reply, prefix)

    # -- objects

    def head(self, bucket: Bucket, name: str) -> ObjectProps:
        """The object's properties; NotFound if there is none."""
        reply = self._object("HEAD", bucket, name, params={"props": HEAD_PROPS},
                             idempotent=True)
        return _props(_lower(reply.headers), name)

    def get(self, bucket: Bucket, name: str, start: int, length: int) -> tuple[bytes, ObjectProps]:
        """``length`` bytes from ``start`` (fewer at the end) and the object's properties
        as the target sent them with the bytes."""
        headers = {"Range": f"bytes={start}-{start + length - 1}"} if length > 0 else {}
        fast = self._fast_get(bucket, name, headers)
        if fast is not None:
            status, reply_headers, data = fast
        else:  # anything but bytes from the owner: retries, the proxy, errors
            reply = self._object("GET", bucket, name, headers=headers, idempotent=True,
                                 allow=(416,))
            status, reply_headers, data = reply.status_code, _lower(reply.headers), reply.content
        if status == 416:  # from the end of the object on: nothing to send
            props = self.head(bucket, name)
            if start < props.size:
                raise ProtocolError(f"{name}: range {start}- refused in {props.size} bytes")
            return b"", props
        props = _props(reply_headers, name)
        if status == 206:
            total = _content_range_total(reply_headers.get("content-range", ""))
            if total is None:
                raise ProtocolError(f"{name}: a partial reply without its object's size")
            props = dataclasses.replace(props, size=total)
        else:
            props = dataclasses.replace(props, size=len(data))
            data = data[start:start + length] if headers else data
        return data, props

    def _fast_get(self, bucket: Bucket, name: str, headers: Mapping[str, str],
                  ) -> tuple[int, dict[str, str], bytes] | None:
        """The GET on kept-alive ``http.client`` connections: at the object's target
        (``direct``), else at the proxy and then where it redirects. (status, headers,
        body) when the target answers 200 or 206; None for anything else, which the
        caller sends the full way.

        The bytes of reads are the hot path, and httpx's blocking client receives a body
        in 64 KiB pieces through h11: several times the CPU of ``http.client``, whose
        buffered reader takes a body whole (bench/RESULTS.md).
        """
        url = self.endpoint
        if self.direct:
            try:
                target = self.owner(bucket, name)
            except AlluxioFuseError:
                return None
            if target is None:
                return None
            url = target.url
        url += self._object_path(bucket, name) + "?" + urllib.parse.urlencode(bucket.params)
        for _ in range(2):  # the proxy's redirect, then the target
            got = self._fast_request(url, headers, f"{bucket}/{name}")
            if got is None:
                return None
            status, reply_headers, _ = got
            if status in (200, 206):
                return got
            url = reply_headers.get("location", "")
            if status not in (301, 302, 307, 308) or not url.startswith("http://"):
                return None
        return None

    def _fast_request(self, url: str, headers: Mapping[str, str], what: str,
                      ) -> tuple[int, dict[str, str], bytes] | None:
        """One GET of ``url`` (http://) on a kept-alive connection: None if it could not
        be sent or answered."""
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "http" or parsed.hostname is None:
            return None
        where = (parsed.hostname, parsed.port or 80)
        target = parsed.path + (f"?{parsed.query}" if parsed.query else "")
        conn = self._idle_connection(where)
        try:
            conn.request("GET", target, headers={**self._headers, **headers})
            reply = conn.getresponse()
            body = reply.read()
        except TimeoutError:  # a stalled node costs one deadline, not two
            conn.close()
            raise BackendTimeout(f"{what}: no answer from {parsed.netloc}") from None
        except (OSError, http.client.HTTPException):
            conn.close()
            return None
        if reply.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.setdefault(where, []).append(conn)
        return reply.status, _lower(reply.headers), body

    def _idle_connection(self, where: tuple[str, int]) -> http.client.HTTPConnection:
        with self._lock:
            idle = self._idle.get(where)
            if idle:
                return idle.pop()
        return http.client.HTTPConnection(*where, timeout=self._timeout)

    def put(self, bucket: Bucket, name: str, body: IO[bytes], size: int, *,
            checksum: tuple[str, str] | None = None) -> None:
        """Store ``size`` bytes read from ``body`` as the object, in one request: the
        target publishes it only once all of it arrived (and, with ``checksum``, only if
        it matches: a body changed on the way is refused)."""
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        if checksum is not None:
            headers["ais-checksum-type"], headers["ais-checksum-value"] = checksum
        start = body.tell()

        def rewound() -> Iterator[bytes]:
            body.seek(start)
            while chunk := body.read(1 << 20):
                yield chunk

        self._object("PUT", bucket, name, headers=headers, body=rewound, idempotent=False)

    def delete(self, bucket: Bucket, name: str) -> None:
        self._object("DELETE", bucket, name, idempotent=True)

    # -- jobs

    def start_job(self, action: str, bucket: Bucket, *, prefix: str | None = None,
                  names: list[str] | None = None) -> str:
        """Start ``action`` ("prefetch-listrange", "evict-listrange") on the objects
        ``names``, or on every object whose name starts with ``prefix``: the job's ID."""
        value: dict[str, Any] = {"objnames": names} if names is not None else {
            "template": prefix or ""}
        method = "DELETE" if action.startswith("evict") else "POST"
        what = f"{action} of {bucket}/{prefix if names is None else names}"
        reply = self._send(method, self._bucket_url(bucket), params=bucket.params,
                           content=json.dumps({"action": action, "value": value}).encode(),
                           headers={"Content-Type": "application/json"}, idempotent=False,
                           what=what)
        job_id = reply.text.strip().strip('"')
        if not job_id:
            raise ProtocolError(f"{what}: no job ID in the reply")
        return job_id

    def job_status(self, job_id: str) -> JobStatus:
        """Whether the job ended (and how), and what its targets have done so far."""
        args = json.dumps(_job_args(job_id)).encode()
        what = f"job {job_id}"
        reply = self._send("GET", f"{self.endpoint}/v1/cluster", params={"what": "status"},
                           content=args, headers={"Content-Type": "application/json"},
                           idempotent=True, what=what)
        status = _json(reply, what)
        reply = self._send("GET", f"{self.endpoint}/v1/cluster",
                           params={"what": "qryxstats"}, content=args,
                           headers={"Content-Type": "application/json"}, idempotent=True,
                           what=what)
        snaps = _json(reply, what)
        objects = size = 0
        try:
            for per_target in snaps.values():
                for snap in per_target or []:
                    stats = snap.get("stats") or {}
                    objects += int(stats.get("loc-objs") or 0)
                    size += int(stats.get("loc-bytes") or 0)
            return JobStatus(job_id=job_id, done=int(status.get("end_time") or 0) > 0,
                             aborted=bool(status.get("aborted")),
                             error=str(status.get("err") or ""), objects=objects, bytes=size)
        except (TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"{what}: {e!r}") from None

    def stop_job(self, job_id: str) -> None:
        message = {"action": "stop", "name": "", "value": _job_args(job_id)}
        self._send("PUT", f"{self.endpoint}/v1/cluster", content=json.dumps(message).encode(),
                   headers={"Content-Type": "application/json"}, idempotent=True,
                   what=f"stopping job {job_id}")

    # -- sending

    def _object_path(self, bucket: Bucket, name: str) -> str:
        return (f"/v1/objects/{urllib.parse.quote(bucket.name, safe='')}/"
                f"{urllib.parse.quote(name, safe='/')}")

    def _bucket_url(self, bucket: Bucket) -> str:
        return f"{self.endpoint}/v1/buckets/{urllib.parse.quote(bucket.name, safe='')}"

    def _object(
        self, method: str, bucket: Bucket, name: str, *, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], Iterator[bytes]] | None = None, idempotent: bool,
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """An object request: to its target when ``direct``, else (and when the target
        cannot be reached) through the proxy, following its redirect by hand so that a
        body is sent once, to the target. Replies of the ``allow`` statuses are returned,
        not raised."""
        path = self._object_path(bucket, name)
        query = {**bucket.params, **(params or {})}
        what = f"{bucket}/{name}"
        if self.direct:
            try:
                target = self.owner(bucket, name)
            except AlluxioFuseError:
                target = None  # no map: the proxy knows where objects are
            if target is not None:
                try:
                    return self._send(method, target.url + path, params=query, headers=headers,
                                      body=body, idempotent=idempotent, what=what, allow=allow)
                except NotFound:
                    if not self._maybe_moved():
                        raise
                except BackendUnavailable as e:
                    if isinstance(e, ServerError):
                        raise
                    self._maybe_moved()  # the target is down or gone: ask the proxy
        # A body goes to the target alone: the proxy is asked with none.
        ask = {k: v for k, v in (headers or {}).items() if k.lower() != "content-length"}
        reply = self._send(method, self.endpoint + path, params=query, headers=ask,
                           content=b"" if body is not None else None, idempotent=idempotent,
                           what=what, redirect=True, allow=allow)
        if reply.status_code not in (301, 302, 307, 308):
            return reply
        location = reply.headers.get("location", "")
        if not location.startswith(("http://", "https://")):
            raise ProtocolError(f"{what}: a redirect to {location!r}")
        return self._send(method, location, headers=headers, body=body,
                          idempotent=idempotent, what=what, allow=allow)

    def _send(
        self, method: str, url: str, *, params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None, content: bytes | None = None,
        body: Callable[[], Iterator[bytes]] | None = None, idempotent: bool, what: str,
        redirect: bool = False, allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        """One request, sent again while it fails in a way worth retrying (idempotent
        calls only); an error status (but those in ``allow``, and redirects with
        ``redirect``) becomes the matching AlluxioFuseError."""
        attempt = 0
        while True:
            try:
                reply = self._http.request(
                    method, url, params=params, headers=headers,
                    content=body() if body is not None else content)
            except httpx.TimeoutException as e:
                raise BackendTimeout(f"{what}: {type(e).__name__} from {_host(url)}") from None
            except (httpx.TransportError, OSError) as e:
                error: AlluxioFuseError = BackendUnavailable(
                    f"{what}: {_host(url)} cannot be reached ({type(e).__name__}: {e})")
            else:
                if (reply.status_code < 300 or reply.status_code in allow
                        or (redirect and reply.status_code < 400)):
                    return reply
                error = _status_error(reply, what)
                if reply.status_code not in _RETRY_STATUS:
                    raise error
            attempt += 1
            if not idempotent or attempt >= _ATTEMPTS:
                raise error
            time.sleep(random.uniform(0, _BACKOFF_FIRST * 2 ** attempt))


def _job_args(job_id: str) -> dict[str, Any]:
    return {"ID": job_id, "Kind": "", "DaemonID": "", "Bck": None, "Buckets": None}


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc


def _status_error(reply: httpx.Response, what: str) -> AlluxioFuseError:
    """The error an AIStore error reply (JSON with a ``message``, or text) means."""
    with contextlib.suppress(Exception):
        reply.read()
    text = reply.text.strip() or reply.headers.get("hdr-error", "")  # HEAD: no body
    with contextlib.suppress(ValueError, AttributeError):
        parsed = json.loads(text)
        if isinstance(parsed, dict) and parsed.get("message"):
            text = str(parsed["message"])
    detail = f"{what}: HTTP {reply.status_code} from {_host(str(reply.url))}: {text[:300]}"
    if reply.status_code == 404:
        return NotFound(detail)
    if reply.status_code == 400 and "CHECKSUM" in text.upper():
        return ContentMismatch(detail)
    if reply.status_code >= 500 or reply.status_code in _RETRY_STATUS:
        return ServerError(detail)
    return ProtocolError(detail)


def _json(reply: httpx.Response, what: str) -> dict[str, Any]:
    try:
        value = reply.json()
    except ValueError:
        raise ProtocolError(f"{what}: the reply is not JSON") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"{what}: the reply is not a JSON object")
    return value


def _target(node: Mapping[str, Any]) -> Target:
    net = node.get("public_net") or {}
    url = str(net.get("direct_url") or "")
    if not url:
        url = f"http://{net['node_hostname']}:{net['daemon_port']}"
    daemon_id = str(node["daemon_id"])
    id_digest = int(node.get("id_digest") or 0) or digest(daemon_id)
    return Target(daemon_id=daemon_id, url=url.rstrip("/"), id_digest=id_digest,
                  flags=int(node.get("flags") or 0))


def _lower(headers: Any) -> dict[str, str]:
    """A reply's headers (httpx's, or http.client's) by lower-case name."""
    return {str(k).lower(): str(v) for k, v in headers.items()}


def _props(h: Mapping[str, str], name: str) -> ObjectProps:
    """An object's properties from the (lower-cased) headers of a HEAD or GET reply."""
    try:
        size = int(h.get("content-length", "0") or 0)
        atime = h.get("ais-atime", "")
        return ObjectProps(
            size=size, version=h.get("ais-version", ""),
            checksum_type=h.get("ais-checksum-type", ""), checksum=h.get("ais-checksum-value", ""),
            atime_ns=int(atime) if atime.isdigit() else None,
            present=h.get("ais-present", "true") != "false")
    except ValueError:
        raise ProtocolError(f"{name}: properties that do not parse: {dict(h)!r}") from None


def _content_range_total(value: str) -> int | None:
    total = value.rpartition("/")[2]
    return int(total) if total.isdigit() else None


def _page(reply: httpx.Response, prefix: str) -> Page:
    what = f"listing of {prefix!r}"
    try:
        if "msgpack" in reply.headers.get("content-type", ""):
            raw = msgpack.unpackb(reply.content, raw=False, strict_map_key=False)
            entries_raw, token = raw.get("Entries") or [], raw.get("ContinuationToken", "")
            uuid = raw.get("UUID", "")
            entries = [_entry(e["n"], e.get("s", 0), e.get("v", ""), e.get("cs", ""),
                              e.get("a", ""), e.get("f", 0)) for e in entries_raw]
        else:
            raw = reply.json()
            entries_raw, token = raw.get("entries") or [], raw.get("continuation_token", "")
            uuid = raw.get("uuid", "")
            entries = [_entry(e["name"], e.get("size", 0), e.get("version", ""),
                              e.get("checksum", ""), e.get("atime", ""), e.get("flags", 0))
                       for e in entries_raw]
    except (ValueError, KeyError, TypeError, AttributeError,
            msgpack.exceptions.UnpackException) as e:
        raise ProtocolError(f"{what}: a page that does not parse ({e!r})") from None
    return Page(entries=entries, token=str(token or ""), uuid=str(uuid or ""))


def _entry(name: Any, size: Any, version: Any, checksum: Any, atime: Any, flags: Any) -> Entry:
    flags = int(flags or 0)
    is_dir = bool(flags & ENTRY_IS_DIR)
    return Entry(name=str(name).rstrip("/") if is_dir else str(name), size=int(size or 0),
                 version=str(version or ""), checksum=str(checksum or ""),
                 atime_ns=parse_time(str(atime or "")), cached=bool(flags & ENTRY_IS_CACHED),
                 is_dir=is_dir)


def parse_time(text: str) -> int | None:
    """A listing's time (RFC 3339 with up to nine decimals, as asked) in epoch
    nanoseconds; None for anything else."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        return None
    whole, decimals, zone = match.groups()
    try:
        when = dt.datetime.fromisoformat(whole + zone.replace("Z", "+00:00"))
    except ValueError:
        return None
    return int(when.timestamp()) * 1_000_000_000 + int((decimals or "").ljust(9, "0")[:9])
