"""Test-wide rules: a WARNING+ log record from alluxiofuse fails a test unless the test
declares it, with ``@pytest.mark.expect_log`` or the ``expect_log`` fixture
(tests/support/checklogs.py)."""

from tests.support.checklogs import _check_logs, expect_log

pytest_plugins = ["pytester"]  # tests/unit/test_checklogs.py runs the check on test files

__all__ = ["_check_logs", "expect_log"]
