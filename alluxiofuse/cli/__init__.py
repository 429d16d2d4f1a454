"""The commands: ``alluxiofuse`` (mount, umount, operator commands) and ``mount.alluxiofuse``."""
