"""The under-storage backend of a source: a local directory's, an AIStore bucket's, or an
fsspec store's."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import trio

from alluxiofuse.backends.ais.backend import open_ais
from alluxiofuse.backends.local import LocalUfs
from alluxiofuse.backends.ufs import UfsBackend, open_store
from alluxiofuse.errors import ConfigError


def open_ufs(
    source: str, options: Mapping[str, Any], limiter: trio.CapacityLimiter, timeout: float, *,
    mtime_unit_ns: int = 1, part_size: int = 16 * 1024 * 1024, object_metadata: bool = True,
) -> UfsBackend:
    """The backend for ``source``: a local path, ``file://`` URL, ``ais://`` bucket (AIStore's
    own API) or any fsspec URL; S3 keeps modes, owners and times in object metadata unless
    ``object_metadata`` is False."""
    protocol, sep, rest = source.partition("://")
    if protocol == "ais":
        return open_ais(source, options, limiter, timeout, part_size=part_size)
    if sep and protocol != "file":
        return open_store(source, options, limiter, timeout, mtime_unit_ns=mtime_unit_ns,
                          part_size=part_size, object_metadata=object_metadata)
    if options:
        raise ConfigError("--ufs-option has no meaning for a local source")
    root = os.path.abspath(rest if sep else source)
    return LocalUfs(root, limiter, timeout, description=source, mtime_unit_ns=mtime_unit_ns)
