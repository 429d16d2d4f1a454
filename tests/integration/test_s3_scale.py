"""A wide S3 prefix through a real mount (moto on loopback): 30,000 objects, thirty
ListObjectsV2 pages, listed whole with the names and sizes the store has."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.integration.test_s3_posix import ROOT, mount_s3
from tests.support.mounts import MountFactory, with_timeout
from tests.support.s3server import S3Server, moto_s3

pytestmark = pytest.mark.integration

# Thirty ListObjectsV2 pages: paging is what is under test. moto's cost per page grows with
# the bucket (it walks every key for each page), so more objects cost moto time, not the
# mount's; tests/integration/test_names.py lists 120,000 local entries.
OBJECTS = 30_000


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        yield server


def populate(s3: S3Server, prefix: str, count: int) -> dict[str, int]:
    """``count`` objects under ``prefix``, put into moto's store directly (a PUT each over
    HTTP would take minutes): their names and sizes."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    store = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    expected = {}
    for i in range(count):
        name, size = f"{i:06d}.jpg", i % 97
        store.put_object(s3.bucket, f"{prefix}/{name}", b"x" * size)
        expected[name] = size
    return expected


# The scan's own bound (300 s) must fire before pytest-timeout's default (120 s) does, so
# that a slow listing fails with the scan named, not a stack dump of a waiting thread.
@pytest.mark.timeout(420)
def test_a_prefix_of_30000_objects_is_listed_whole(s3: S3Server, mount: MountFactory) -> None:
    # The server is set up first so that it is torn down last: the mount, stopped before
    # it, never finds the bucket gone (its readiness probe would log a warning).
    expected = populate(s3, f"{ROOT}/wide", OBJECTS)
    expected_names = sorted(expected)
    m = mount_s3(mount, s3, "--ignore-object-metadata")

    def scan() -> dict[str, int]:
        with os.scandir(m.path / "wide") as it:
            return {e.name: e.stat(follow_symlinks=False).st_size for e in it}

    assert with_timeout(scan, 300) == expected
    # Again, from the cached listing.
    assert sorted(with_timeout(lambda: os.listdir(m.path / "wide"), 60)) == expected_names
