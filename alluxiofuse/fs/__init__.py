"""The mount's file semantics, free of FUSE: inodes, metadata, open files and their pages."""
