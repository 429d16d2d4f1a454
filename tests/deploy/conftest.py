"""The fixtures of the deployment tests (tests/support/mounts.py): some mount for real."""

from tests.support.mounts import _leaves_no_spool_or_log, mount, proxy_sim

__all__ = ["_leaves_no_spool_or_log", "mount", "proxy_sim"]
