"""The log check: a test fails on a WARNING or worse from alluxiofuse that it did not declare,
and on a declared one that does not come as often as declared.

As s3ql's tests/pytest_checklogs.py does, but for two places a record can be: in this
process (captured by caplog) and in the log file of a daemon a fixture started (read once
that fixture is torn down). A test declares each record it expects with a marker,

    @pytest.mark.expect_log(r"pattern", count=1, level="ERROR")

where ``pattern`` is searched for in the record's message as the log file has it
(formatted, after "logger: "), ``count`` is how many records it must match (None, the
default: at least one, for records whose number the kernel or timing decides) and
``level`` is the record's level name ("WARNING" by default). A test whose records depend
on its parameters declares them as it runs, with the ``expect_log`` fixture, which takes
the same arguments. A record matched by a declaration is declared; any other WARNING+
record fails the test.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

# One line of a daemon's log (daemon/logs.py): "<date> <time> LEVEL logger: message".
_LINE = re.compile(
    r"^\S+ \S+ (?P<level>WARNING|ERROR|CRITICAL) (?P<logger>alluxiofuse[\w.]*): (?P<message>.*)$"
)
_LOGS = pytest.StashKey[dict[Path, None]]()
_DECLARED = pytest.StashKey[list["Expected"]]()
_SHOWN = 20  # undeclared records listed in a failure; the rest are counted


@dataclass(frozen=True)
class Record:
    """A WARNING+ record from alluxiofuse, wherever it was logged."""

    level: str
    logger: str
    message: str
    where: str  # "in process", or the name of the daemon's log file

    def __str__(self) -> str:
        return f"[{self.where}] {self.level} {self.logger}: {self.message}"


@dataclass(frozen=True)
class Expected:
    """One ``expect_log`` declaration."""

    pattern: str
    count: int | None = None
    level: str = "WARNING"

    def counted_right(self, n: int) -> bool:
        return n > 0 if self.count is None else n == self.count

    def matches(self, record: Record) -> bool:
        return record.level == self.level and re.search(self.pattern, record.message) is not None

    def __str__(self) -> str:
        times = "at least once" if self.count is None else f"{self.count} time(s)"
        return f"{self.level} /{self.pattern}/ {times}"


def expected_of(item: pytest.Item) -> list[Expected]:
    marked = [Expected(*m.args, **m.kwargs) for m in item.iter_markers("expect_log")]
    return marked + item.stash.get(_DECLARED, [])


def problems(records: list[Record], expected: list[Expected]) -> list[str]:
    """What is wrong with ``records`` against ``expected``: nothing if the list is empty."""
    found = []
    for e in expected:
        n = sum(e.matches(r) for r in records)
        if not e.counted_right(n):
            found.append(f"expected {e}, logged {n} time(s)")
    undeclared = [r for r in records if not any(e.matches(r) for e in expected)]
    found += [f"undeclared {r}" for r in undeclared[:_SHOWN]]
    if len(undeclared) > _SHOWN:
        found.append(f"and {len(undeclared) - _SHOWN} more undeclared")
    return found


def in_process(records: Iterable[logging.LogRecord]) -> list[Record]:
    return [Record(r.levelname, r.name, r.getMessage(), "in process") for r in records
            if r.name.startswith("alluxiofuse") and r.levelno >= logging.WARNING]


def in_log_file(path: Path) -> list[Record]:
    text = path.read_text(errors="replace") if path.exists() else ""
    return [Record(m["level"], m["logger"], m["message"], path.name)
            for m in map(_LINE.match, text.splitlines()) if m]


def watch(item: pytest.Item, log: Path) -> None:
    """Have the check of ``item`` read the daemon log ``log``. The fixture that calls this
    must be torn down before the check runs: any fixture requested by the test is, as the
    check is autouse, so set up first and torn down last."""
    item.stash.setdefault(_LOGS, {})[log] = None


ExpectLog = Callable[..., None]


@pytest.fixture
def expect_log(request: pytest.FixtureRequest) -> ExpectLog:
    """``expect_log(pattern, count=None, level="WARNING")``: the marker's declaration, made
    by a test as it runs."""

    def declare(pattern: str, count: int | None = None, level: str = "WARNING") -> None:
        request.node.stash.setdefault(_DECLARED, []).append(Expected(pattern, count, level))

    return declare


@pytest.fixture(autouse=True)
def _check_logs(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture,
                ) -> Iterator[None]:
    caplog.set_level(logging.DEBUG, logger="alluxiofuse")
    yield
    records = in_process(r for when in ("setup", "call", "teardown")
                         for r in caplog.get_records(when))
    for log in request.node.stash.get(_LOGS, {}):
        records += in_log_file(log)
    found = problems(records, expected_of(request.node))
    if found:
        pytest.fail("log check:\n" + "\n".join(found), pytrace=False)
