"""The official Alluxio 2.x proxy client, ``alluxio==0.1.4``, importable beside ``alluxio==1.0.0``.

Both releases are the package ``alluxio``, so 0.1.4 is installed apart, with
``pip install --no-deps --target <venv>/alluxio-0.1.4 alluxio==0.1.4`` (quickstart.sh does it),
and loaded here under the name ``apy01``: its modules import each other relatively, so the
package works under any name. It needs ``requests`` and ``six`` (the ``test`` extras).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

from tests.support.needs import need

NAME = "apy01"


def apy01_dir() -> Path:
    """The ``--target`` directory holding ``alluxio/`` 0.1.4: ``$ALLUXIOFUSE_APY01_DIR``, else
    ``alluxio-0.1.4`` in the running environment's prefix."""
    return Path(os.environ.get("ALLUXIOFUSE_APY01_DIR") or Path(sys.prefix) / "alluxio-0.1.4")


def load_apy01() -> ModuleType:
    """The ``alluxio`` 0.1.4 package as module ``apy01`` (with ``apy01.client``,
    ``apy01.option``, ``apy01.wire``, ``apy01.exceptions``). Missing, the test skips on a
    workstation and fails under CI=true (tests/support/needs.py)."""
    if NAME in sys.modules:
        return sys.modules[NAME]
    target = apy01_dir()
    package = target / "alluxio"
    need((package / "__init__.py").is_file(),
         f"alluxio 0.1.4 (the 2.x proxy client) is not in {target}: install it with "
         f"{sys.executable} -m pip install --no-deps --target {target} alluxio==0.1.4")
    spec = importlib.util.spec_from_file_location(
        NAME, package / "__init__.py", submodule_search_locations=[str(package)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[NAME] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[NAME]
        raise
    importlib.import_module(f"{NAME}.exceptions")  # imported by client.py already; say so
    assert getattr(module, "__version__", None) == "0.1.4", getattr(module, "__version__", None)
    return module
