"""tests/support/s3server.py: moto's S3 server on loopback, reached through s3fs and fsspec."""

from __future__ import annotations

import time

import fsspec
import pytest
from botocore.exceptions import EndpointConnectionError

from tests.support.s3server import moto_s3


def test_put_read_list() -> None:
    with moto_s3("data") as s3:
        assert s3.endpoint_url.startswith("http://127.0.0.1:")
        assert s3.url("a/b") == "s3://data/a/b"
        fs = s3.fs()
        assert fs.ls("data") == []
        fs.pipe_file("data/dir/hello.txt", b"hello")
        assert fs.cat_file("data/dir/hello.txt") == b"hello"
        assert fs.ls("data") == ["data/dir"]
        assert fs.ls("data/dir") == ["data/dir/hello.txt"]
        assert fs.info("data/dir/hello.txt")["size"] == 5
        # The options alone reach the same server, as the daemon would from its config.
        other, root = fsspec.core.url_to_fs(s3.url("dir"), skip_instance_cache=True,
                                            **s3.ufs_options)
        assert root == "data/dir"
        assert other.cat_file(f"{root}/hello.txt") == b"hello"


def test_fresh_bucket_and_bounded_after_stop() -> None:
    with moto_s3("other") as s3:
        fs = s3.fs()
        fs.pipe_file("other/x", b"1")
    with moto_s3("other") as s3:
        assert s3.fs().ls("other") == []  # reset between servers
    start = time.monotonic()
    # The server is gone: an error soon. s3fs does not turn this one into an OSError.
    with pytest.raises(EndpointConnectionError):
        fs.ls("other", refresh=True)
    assert time.monotonic() - start < 30
