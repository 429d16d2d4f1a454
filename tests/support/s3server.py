"""An S3 server for tests: moto's in-process server on 127.0.0.1, fake credentials, one bucket."""

from __future__ import annotations

import copy
import logging
import os
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Fake credentials: moto accepts any; these make sure no real ones are looked up.
_KEY = "testing-key"
_SECRET = "testing-secret"
_REGION = "us-east-1"
# Small, so that a stopped or hung server costs seconds, not minutes. s3fs itself retries
# connection errors and timeouts (S3FileSystem.retries, 5 by default, not settable through
# options); botocore's own retries come on top of that, so keep them to one attempt.
_CONFIG_KWARGS: dict[str, Any] = {
    "connect_timeout": 2,
    "read_timeout": 10,
    "retries": {"max_attempts": 1, "mode": "standard"},
}


@dataclass(frozen=True)
class S3Server:
    """A running moto S3 server and the options an fsspec client needs to reach it."""

    endpoint_url: str
    bucket: str
    ufs_options: dict[str, Any] = field(repr=False)
    env: dict[str, str] = field(repr=False)

    def url(self, prefix: str = "") -> str:
        """``s3://bucket/prefix`` (``s3://bucket/`` for no prefix)."""
        return f"s3://{self.bucket}/{prefix.lstrip('/')}"

    def fs(self) -> Any:
        """A fresh ``s3fs.S3FileSystem`` on this server (no instance cache, no ~/.aws)."""
        import s3fs
        from aiobotocore.session import AioSession
        from botocore.configprovider import ConstantProvider

        session = AioSession()
        # Explicit keys already keep botocore's credential chain (files, IMDS) out; these
        # keep a developer's ~/.aws/config, ~/.aws/credentials and AWS_PROFILE out as well.
        store = session.get_component("config_store")
        for name, value in (
            ("profile", None), ("config_file", os.devnull), ("credentials_file", os.devnull),
        ):
            store.set_config_provider(name, ConstantProvider(value))
        fs = s3fs.S3FileSystem(skip_instance_cache=True, session=session, **self.ufs_options)
        fs.retries = 2  # s3fs's own retry loop (instance attribute, see _CONFIG_KWARGS)
        return fs


def _reset(endpoint_url: str) -> None:
    """Empty every moto backend: moto's state is per process, shared by all its servers."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", method="POST")
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(request, timeout=10):
        pass


@contextmanager
def moto_s3(bucket: str = "data") -> Iterator[S3Server]:
    """Start moto's S3 server on a free 127.0.0.1 port, create ``bucket``, yield it; stop after.

    ``bucket`` must be a valid S3 bucket name (3 to 63 characters). moto keeps its buckets in
    process-wide state, so the server is reset on entry and on exit: run one of these at a
    time in a process.
    """
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    # Port 0: the OS picks a free port when the server binds, so no other process can take
    # it between the choice and the bind.
    server = make_server("127.0.0.1", 0, DomainDispatcherApplication(create_backend_app),
                         threaded=True, request_handler=MotoRequestHandler)
    # Not moto's ThreadedMotoServer: its server polls for shutdown every half second, which
    # every test using this server would wait out at its end.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              name="moto-s3", daemon=True)
    # One INFO line per request otherwise; the server's own errors are still logged.
    werkzeug_log = logging.getLogger("werkzeug")
    old_level = werkzeug_log.level
    werkzeug_log.setLevel(logging.WARNING)
    try:
        thread.start()
        endpoint_url = f"http://127.0.0.1:{server.server_address[1]}"
        ufs_options: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "key": _KEY,
            "secret": _SECRET,
            "client_kwargs": {"region_name": _REGION},
            "config_kwargs": copy.deepcopy(_CONFIG_KWARGS),
        }
        env = {
            "AWS_ACCESS_KEY_ID": _KEY,
            "AWS_SECRET_ACCESS_KEY": _SECRET,
            "AWS_DEFAULT_REGION": _REGION,
            "AWS_REGION": _REGION,
            "AWS_ENDPOINT_URL": endpoint_url,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
        s3 = S3Server(endpoint_url, bucket, ufs_options, env)
        _reset(endpoint_url)
        # Not fs.mkdir: s3fs sends LocationConstraint=us-east-1, which S3 (and moto) refuse.
        s3.fs().call_s3("create_bucket", Bucket=bucket)
        try:
            yield s3
        finally:
            _reset(endpoint_url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        werkzeug_log.setLevel(old_level)
