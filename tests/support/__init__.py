"""What the tests share: the log check (checklogs), mounting (mounts), the S3 and etcd
servers they run on loopback, a source that fails on demand (flakyfs), the OS page-cache
probe (oscache), the prerequisites a test needs (needs), and a file in memory behind the
backend protocol that open handles read (fakebackend)."""
