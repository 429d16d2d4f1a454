"""The layer rules of ARCHITECTURE.md, enforced by import-linter (contracts in pyproject.toml)."""

from __future__ import annotations

import ast
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
    """docs/ARCHITECTURE.md is the newcomer's map: each module of the package is named in the
    row of its package (``fs/``: ``handles.py``; in ``backends/``: ``cluster/ring.py``), a
    top-level one anywhere, and each ``something.py`` it names exists."""
    doc = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    rows = {m[1]: m[0] for m in re.findall(r"^(\| [^|]* \| `(\w+)/` \|.*)$", doc, re.M)}
    package = REPO / "alluxiofuse"
    unnamed = []
    for path in sorted(package.rglob("*.py")):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        top, *rest = path.relative_to(package).parts
        where, name = (rows.get(top, ""), "/".join(rest)) if rest else (doc, top)
        if f"`{name}`" not in where:
            unnamed.append(str(path.relative_to(package)))
    assert not unnamed, f"modules docs/ARCHITECTURE.md does not name in their row: {unnamed}"
    known = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    known |= {"/".join(p.relative_to(package).parts[1:]) for p in package.rglob("*.py")}
    named = set(re.findall(r"`([\w/]+\.py)`", doc))
    missing = sorted(n for n in named if n not in known and not (REPO / n).exists())
    assert not missing, f"docs/ARCHITECTURE.md names files that do not exist: {missing}"


def test_the_foundation_imports_only_the_standard_library() -> None:
    """errors, model, config, options, limits and mountinfo: what every layer may import, and
    what the mount helper and the CLI read before anything else is loaded."""
    for name in ("errors", "model", "config", "options", "limits", "mountinfo"):
        tree = ast.parse((REPO / "alluxiofuse" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                tops = [a.name.partition(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.partition(".")[0]]
            else:
                continue
            for top in tops:
                assert top in sys.stdlib_module_names or top in ("alluxiofuse", "__future__"), \
                    f"alluxiofuse/{name}.py imports {top}"
