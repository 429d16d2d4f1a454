"""``flaky://`` — a local-directory fsspec filesystem that fails on demand.

It goes through the generic fsspec path of the backend (``info``, ``ls``, ``cat_file``),
not the local fast path. A JSON control file (storage option ``control``) says which
calls fail and how; it is re-read on every call, so a test flips failures on and off
while a mount is live:

    {"fail": ["info", "ls", "cat_file", "open_write"],
     "mode": "oserror" | "unexpected" | "hang"}

``oserror`` raises OSError(EIO), ``unexpected`` a RuntimeError (an unmapped library
error), ``hang`` blocks until the control file no longer asks for it (at most 60 s).
Importing this module registers the protocol.
"""

from __future__ import annotations

import errno
import json
import os
import time
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem


class FlakyFileSystem(LocalFileSystem):
    protocol = "flaky"
    root_marker = "/"

    def __init__(self, control: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.control = control
        self.calls: dict[str, int] = {}

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        path = str(path)
        if path.startswith("flaky://"):
            path = path[len("flaky://"):]
        return super()._strip_protocol(path)

    def _injected(self, op: str) -> None:
        self.calls[op] = self.calls.get(op, 0) + 1
        deadline = time.monotonic() + 60
        while (rule := self._rule()) and op in rule.get("fail", ()):
            mode = rule.get("mode", "oserror")
            if mode == "oserror":
                raise OSError(errno.EIO, f"injected failure in {op}")
            if mode == "unexpected":
                raise RuntimeError(f"injected unexpected failure in {op}")
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def _rule(self) -> dict[str, Any]:
        if not self.control:
            return {}
        try:
            with open(self.control) as f:
                rule = json.load(f)
        except (OSError, ValueError):
            return {}
        return rule if isinstance(rule, dict) else {}

    def info(self, path: Any, **kwargs: Any) -> Any:
        self._injected("info")
        return super().info(path, **kwargs)

    def ls(self, path: Any, detail: bool = False, **kwargs: Any) -> Any:
        self._injected("ls")
        return super().ls(path, detail=detail, **kwargs)

    def cat_file(self, path: Any, start: Any = None, end: Any = None, **kwargs: Any) -> Any:
        self._injected("cat_file")
        return super().cat_file(path, start=start, end=end, **kwargs)

    def _open(self, path: Any, mode: str = "rb", **kwargs: Any) -> Any:
        if "w" in mode:
            self._injected("open_write")
        return super()._open(path, mode=mode, **kwargs)


def set_failure(control: str, ops: list[str], mode: str = "oserror") -> None:
    with open(control + ".tmp", "w") as f:
        json.dump({"fail": ops, "mode": mode}, f)
    os.replace(control + ".tmp", control)


def clear_failure(control: str) -> None:
    set_failure(control, [])


fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
