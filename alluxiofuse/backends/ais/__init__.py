"""AIStore through its native REST API: ``ais://`` sources."""
