"""The fixtures of the integration tests (tests/support/mounts.py)."""

from tests.support.mounts import _leaves_no_spool_or_log, mount, proxy_sim

__all__ = ["_leaves_no_spool_or_log", "mount", "proxy_sim"]
