"""The layer rules of ARCHITECTURE.md, enforced by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    assert lint_imports.exists(), f"import-linter is not installed next to {sys.executable}"
    result = subprocess.run(
        [str(lint_imports), "--no-cache", "--no-logo"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "BROKEN" not in output, output
    assert " 0 broken" in output, output
    assert "kept" in output.lower(), output


def test_architecture_md_names_every_module_and_no_other() -> None:
    """docs/ARCHITECTURE.md is the newcomer's map: each module of the package is named there
    (by its path below alluxiofuse/, or by its file name in its package's row), and each
    ``something.py`` it names exists."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    package = REPO / "alluxiofuse"
    modules = sorted(p.relative_to(package) for p in package.rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py"))
    unnamed = [str(m) for m in modules
               if f"`{m}`" not in doc and f"`{m.name}`" not in doc]
    assert not unnamed, f"modules docs/ARCHITECTURE.md does not name: {unnamed}"
    named = set(re.findall(r"`([\w/]+\.py)`", doc))
    known = {str(m) for m in modules} | {m.name for m in modules}
    missing = sorted(n for n in named if n not in known and not (REPO / n).exists())
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"
