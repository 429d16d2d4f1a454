"""Backends: where file metadata and bytes come from (the under-storage, Alluxio workers)."""
