"""The daemon's log: one line per event, the level obeyed, slow requests warned about,
and secrets never written, whatever happens."""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path

import pytest

from tests.support.flakyfs import clear_failure, set_failure
from tests.support.mounts import CLI, MountFactory, run

pytestmark = pytest.mark.integration

SECRET = "wJalrXUtnFEMI\\K7MDENG-bPxRfiCY"  # a backslash: repr() would double it
NESTED = "FwoGZXIvYXdzEJr-session-token"
_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def _slow_lookup(path: Path, control: str, seconds: float) -> None:
    """A lookup that the under-storage holds for ``seconds``."""
    set_failure(control, ["info", "ls"], mode="hang")
    probe = threading.Thread(target=os.path.exists, args=(path,), daemon=True)
    probe.start()
    time.sleep(seconds)
    clear_failure(control)
    probe.join(30)
    assert not probe.is_alive()


@pytest.mark.expect_log(r"^slow lookup: 1\.\d+s \(ok\)$", count=2)
@pytest.mark.expect_log(r"^read: BackendError: \[Errno 5\] injected failure in cat_file$")
def test_log_lines_levels_slow_requests_and_no_secrets(
    mount: MountFactory, tmp_path: Path,
) -> None:
    src, control = tmp_path / "src", str(tmp_path / "control.json")
    src.mkdir()
    (src / "f").write_bytes(b"data")
    clear_failure(control)
    secrets = [f"--ufs-option=control={control}", f"--ufs-option=secret={SECRET}",
               "--ufs-option=client_kwargs=" + json.dumps({"aws_session_token": NESTED})]
    m = mount(f"flaky://{src}", *secrets, "--log-level", "debug", "--slow-op-threshold", "0.3")
    _slow_lookup(m.path / "slow-name", control, 1.0)
    set_failure(control, ["cat_file", "open"])  # a failing read: errors logged with details
    with pytest.raises(OSError):
        (m.path / "f").read_bytes()
    clear_failure(control)
    assert (m.path / "f").read_bytes() == b"data"
    m.unmount()

    log = m.log_text()
    lines = log.splitlines()
    assert all(_LINE.match(line) for line in lines), [x for x in lines if not _LINE.match(x)]
    assert SECRET not in log and NESTED not in log
    assert "secret': '***'" in log  # the start-up line shows which options were set
    assert re.search(r"WARNING alluxiofuse.ops: slow lookup: 1\.\d+s", log), log
    assert " DEBUG " in log  # the level asked for
    assert "injected failure" in log  # errors are logged with what the library said
    with open("/proc/self/mountinfo") as f:
        assert SECRET not in f.read()

    quiet = mount(f"flaky://{src}", *secrets, "--log-level", "warning",
                  "--slow-op-threshold", "0.3")
    _slow_lookup(quiet.path / "another-slow-name", control, 1.0)
    quiet.unmount()
    levels = {line.split()[2] for line in quiet.log_text().splitlines()}
    assert levels == {"WARNING"}, quiet.log_text()



@pytest.mark.parametrize("foreground", [True, False], ids=["foreground", "background"])
def test_a_failed_start_says_why_without_the_password(tmp_path: Path, foreground: bool) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    source = "memory://alice:url-pa55word@/no-such-dir"
    log = tmp_path / "daemon.log"
    result = run([*CLI, "mount", source, str(mnt), "--metrics-addr", "off",
                  "--cache-dir", str(tmp_path / "cache"), "--log-file", str(log),
                  *(["-f"] if foreground else [])],
                 check=False)
    err = result.stderr.decode()
    assert result.returncode == 1
    assert "source does not exist: memory://alice:***@/no-such-dir" in err
    assert "url-pa55word" not in err
    assert "source does not exist: memory://alice:***@/no-such-dir" in log.read_text()
    assert "url-pa55word" not in log.read_text()
