"""Where a ``mount.alluxiofuse`` written by an earlier version finds the helper, now in
:mod:`alluxiofuse.cli.mount_helper`: such a script imports this module, and fstab mounts
keep working after an upgrade until ``alluxiofuse install-mount-helper`` writes a new one."""

from alluxiofuse.cli.mount_helper import main

__all__ = ["main"]
