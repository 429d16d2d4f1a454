"""POSIX behaviour of an S3 mount (moto on loopback): directory renames, and the modes,
owners and times kept in object metadata."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Mount, MountFactory, errno_of, run
from tests.s3server import S3Server, moto_s3

pytestmark = pytest.mark.integration

ROOT = "root"  # the mounted prefix inside the bucket


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with moto_s3() as server:
        server.fs().pipe_file(f"{server.bucket}/{ROOT}/", b"")
        yield server


def mount_s3(mount: MountFactory, s3: S3Server, *options: str) -> Mount:
    ufs = [f"--ufs-option={k}={v if isinstance(v, str) else json.dumps(v)}"
           for k, v in s3.ufs_options.items()]
    return mount(s3.url(ROOT), *ufs, *options)


def keys(s3: S3Server) -> list[str]:
    """Every key in the bucket, exactly (markers keep their slash)."""
    out = s3.fs().call_s3("list_objects_v2", Bucket=s3.bucket)
    return sorted(o["Key"] for o in out.get("Contents", []))


def put(s3: S3Server, name: str, **kwargs: object) -> None:
    s3.fs().call_s3("put_object", Bucket=s3.bucket, Key=f"{ROOT}/{name}",
                    Body=b"" if name.endswith("/") else name.encode(), **kwargs)


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root``: a file's bytes, None for a directory."""
    return {str(p.relative_to(root)): None if p.is_dir() else p.read_bytes()
            for p in sorted(root.rglob("*"))}


# -- directory renames (issue 15, point 7)


def test_mv_of_a_directory_made_through_the_mount_moves_it_whole(
    mount: MountFactory, s3: S3Server,
) -> None:
    m = mount_s3(mount, s3)
    run(["sh", "-c", "mkdir -p d/sub && echo hi > d/sub/f && mv d d2"], cwd=m.path)
    assert tree(m.path) == {"d2": None, "d2/sub": None, "d2/sub/f": b"hi\n"}
    assert keys(s3) == [f"{ROOT}/", f"{ROOT}/d2/", f"{ROOT}/d2/sub/", f"{ROOT}/d2/sub/f"]


def test_mv_of_directories_of_every_shape(mount: MountFactory, s3: S3Server) -> None:
    """Marker directories, prefix-only ones (made directly in the bucket), empty ones and
    files, nested; each renamed through the mount, then everything renamed at once."""
    for name in ("files/a", "files/b", "empty/", "marked/", "marked/a", "prefix/p/x",
                 "mix/", "mix/a", "mix/e/", "mix/m/", "mix/m/y", "mix/p/q/r"):
        put(s3, name)
    m = mount_s3(mount, s3, "--attr-timeout", "0", "--dir-timeout", "0")
    run(["mkdir", "-p", "made/sub/deeper"], cwd=m.path)
    (m.path / "made/sub/f").write_bytes(b"f")
    before = tree(m.path)
    top = ["files", "empty", "marked", "prefix", "mix", "made"]
    for name in top:
        os.rename(m.path / name, m.path / f"{name}2")
    want = {f"{k.split('/', 1)[0]}2{k[len(k.split('/', 1)[0]):]}": v for k, v in before.items()}
    assert tree(m.path) == want
    os.mkdir(m.path / "all")
    for name in top:
        os.rename(m.path / f"{name}2", m.path / "all" / name)
    assert tree(m.path / "all") == before
    assert not [k for k in keys(s3) if not k.startswith(f"{ROOT}/all/") and k != f"{ROOT}/"]


def test_a_failed_directory_rename_leaves_the_source_whole(
    mount: MountFactory, s3: S3Server,
) -> None:
    """An archived (GLACIER) object cannot be copied: the rename fails part-way, after
    the other keys were copied, and what was copied is removed again."""
    for name in ("d/", "d/a", "d/sub/", "d/sub/b"):
        put(s3, name)
    put(s3, "d/z-archived", StorageClass="GLACIER")
    before = keys(s3)
    m = mount_s3(mount, s3)
    m.allow_warnings = True  # the failed copy is logged
    listed = sorted(str(p.relative_to(m.path)) for p in m.path.rglob("*"))  # not readable
    assert errno_of(lambda: os.rename(m.path / "d", m.path / "d2")) == 5  # EIO
    assert keys(s3) == before
    assert sorted(str(p.relative_to(m.path)) for p in m.path.rglob("*")) == listed
    result = subprocess.run(["mv", str(m.path / "d"), str(m.path / "d3")], capture_output=True,
                            timeout=60, check=False)
    assert result.returncode != 0
    assert keys(s3) == before
