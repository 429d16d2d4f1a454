"""mountinfo.py: the kernel's mount table, read line by line."""

from __future__ import annotations

from pathlib import Path

from alluxiofuse.mountinfo import Mount, mounts


def test_fields_are_read_and_unescaped_and_stray_lines_skipped(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_bytes(
        b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        b"not a line the kernel writes\n"
        b"90 22 0:51 / /mnt/my\\040data rw,nosuid,nodev - fuse.alluxiofuse "
        b"s3://b/a\\134b rw,user_id=0\n"
        b"91 90 0:52 / /mnt/my\\040data ro - fuse.alluxiofuse /src rw\n")
    assert mounts(str(table)) == [
        Mount("8:1", "/", "ext4", "/dev/sda1", "rw,relatime"),
        Mount("0:51", "/mnt/my data", "fuse.alluxiofuse", "s3://b/a\\b", "rw,nosuid,nodev"),
        Mount("0:52", "/mnt/my data", "fuse.alluxiofuse", "/src", "ro"),
    ]


def test_this_process_sees_its_root() -> None:
    assert any(m.mountpoint == "/" for m in mounts())
