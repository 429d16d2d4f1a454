"""The log check of every test (tests/support/checklogs.py) fails when it should: on an
undeclared warning, and on a declared one missing or logged a number of times other than
declared, whether logged in process or in a daemon's log file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.checklogs import Expected, Record, in_log_file, problems

REPO = Path(__file__).resolve().parents[2]
SUMMARY = re.compile(r"^(PASSED|ERROR) test_probe\.py::(\w+)")  # parameters left off

CONFTEST = """
from tests.support.checklogs import _check_logs, expect_log

def pytest_configure(config):
    config.addinivalue_line("markers", "expect_log(pattern, count=None, level='WARNING')")
"""

TESTS = """
import logging
import pytest
from tests.support.checklogs import watch

log = logging.getLogger("alluxiofuse.probe")

def test_quiet():
    log.info("all is well")

def test_undeclared():
    log.warning("disk on fire")

@pytest.mark.expect_log(r"^disk on fire$", count=1)
def test_declared():
    log.warning("disk on fire")

@pytest.mark.expect_log(r"^disk on fire$", count=1)
def test_declared_but_missing():
    log.info("all is well")

@pytest.mark.expect_log(r"^disk on fire$", count=1)
def test_declared_once_logged_twice():
    log.warning("disk on fire")
    log.warning("disk on fire")

@pytest.mark.expect_log(r"^disk on fire$")
def test_open_count():
    for _ in range(3):
        log.warning("disk on fire")

@pytest.mark.expect_log(r"^disk on fire$")
def test_declared_at_another_level():
    log.error("disk on fire")

@pytest.mark.expect_log(r"^disk on fire$")
def test_another_warning_beside_a_declared_one():
    log.warning("disk on fire")
    log.warning("smoke in the hall")

@pytest.mark.parametrize("what", ["disk", "fan"])
def test_declared_as_it_runs(expect_log, what):
    expect_log(rf"^{what} on fire$", count=1, level="ERROR")
    log.error(f"{what} on fire")

def test_declared_as_it_runs_but_missing(expect_log):
    expect_log(r"^disk on fire$")

def test_other_loggers_are_not_checked():
    logging.getLogger("httpx").warning("not ours")

@pytest.fixture
def daemon_log(request, tmp_path):
    path = tmp_path / "daemon.log"
    path.write_text(
        "2026-01-01 00:00:00,000 INFO alluxiofuse.cli.main: mounted\\n"
        "2026-01-01 00:00:01,000 ERROR alluxiofuse.ops: read: unexpected OSError | trace\\n")
    watch(request.node, path)
    return path

def test_daemon_log_undeclared(daemon_log):
    assert daemon_log.exists()

@pytest.mark.expect_log(r"^read: unexpected OSError", count=1, level="ERROR")
def test_daemon_log_declared(daemon_log):
    assert daemon_log.exists()
"""


def test_the_check_fails_undeclared_and_missing_records(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_probe=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=14, errors=7)  # an error is a failed teardown
    # -rA lists each test's call as PASSED, then a teardown that failed as ERROR.
    outcomes = {m[2]: m[1] for m in map(SUMMARY.match, result.outlines) if m}
    assert outcomes == {
        "test_quiet": "PASSED",
        "test_undeclared": "ERROR",
        "test_declared": "PASSED",
        "test_declared_but_missing": "ERROR",
        "test_declared_once_logged_twice": "ERROR",
        "test_open_count": "PASSED",
        "test_declared_at_another_level": "ERROR",
        "test_another_warning_beside_a_declared_one": "ERROR",
        "test_declared_as_it_runs": "PASSED",
        "test_declared_as_it_runs_but_missing": "ERROR",
        "test_other_loggers_are_not_checked": "PASSED",
        "test_daemon_log_undeclared": "ERROR",
        "test_daemon_log_declared": "PASSED",
    }
    result.stdout.fnmatch_lines([
        "undeclared [[]in process] WARNING alluxiofuse.probe: disk on fire",
        "expected WARNING /^disk on fire$/ 1 time(s), logged 0 time(s)",
        "expected WARNING /^disk on fire$/ 1 time(s), logged 2 time(s)",
        "expected WARNING /^disk on fire$/ at least once, logged 0 time(s)",
        "undeclared [[]in process] ERROR alluxiofuse.probe: disk on fire",
        "undeclared [[]in process] WARNING alluxiofuse.probe: smoke in the hall",
        "expected WARNING /^disk on fire$/ at least once, logged 0 time(s)",
        "undeclared [[]daemon.log] ERROR alluxiofuse.ops: read: unexpected OSError | trace",
    ], consecutive=False)


def test_daemon_log_lines_are_read_as_records(tmp_path: Path) -> None:
    log = tmp_path / "daemon0.log"
    log.write_text(
        "2026-01-01 00:00:00,000 INFO alluxiofuse.cli.main: mounted\n"
        "2026-01-01 00:00:01,000 WARNING alluxiofuse.ops: getattr: BackendTimeout: x\n"
        "2026-01-01 00:00:02,000 WARNING fsspec: not ours\n"
        "2026-01-01 00:00:03,000 CRITICAL alluxiofuse: gone: a: b\n")
    assert in_log_file(log) == [
        Record("WARNING", "alluxiofuse.ops", "getattr: BackendTimeout: x", "daemon0.log"),
        Record("CRITICAL", "alluxiofuse", "gone: a: b", "daemon0.log"),
    ]
    assert in_log_file(tmp_path / "never-written.log") == []


def test_problems_of_records_against_declarations() -> None:
    fire = Record("WARNING", "alluxiofuse.x", "disk on fire", "in process")
    assert problems([], []) == []
    assert problems([fire], [Expected("fire", count=1)]) == []
    assert problems([fire, fire], [Expected("fire")]) == []
    assert problems([fire], []) == ["undeclared [in process] WARNING alluxiofuse.x: disk on fire"]
    assert problems([], [Expected("fire", count=2, level="ERROR")]) == [
        "expected ERROR /fire/ 2 time(s), logged 0 time(s)"]
    assert problems([fire], [Expected("fire", count=0)]) == [
        "expected WARNING /fire/ 0 time(s), logged 1 time(s)"]
    many = problems([fire] * 25, [])
    assert len(many) == 21 and many[-1] == "and 5 more undeclared"
