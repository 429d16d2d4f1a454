"""alluxiofuse: a FUSE mount of an Alluxio namespace or any fsspec under-storage."""

__version__ = "0.1.0"
