"""What the tests share: the log check (checklogs), mounting (mounts), the S3 and etcd
servers they run on loopback, a source that fails on demand (flakyfs), the OS page-cache
probe (oscache), and the prerequisites a test needs (needs)."""
