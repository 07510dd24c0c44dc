"""docs/design.md's module table lists every module of the package, and the product never imports the
harness."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "nnunetv2_physaug"


def _modules() -> list[str]:
    return sorted(str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py")


def test_every_module_is_in_the_design_table():
    design = (REPO / "docs" / "design.md").read_text()
    table = design[design.index("## 2. Architecture"):design.index("## 3.")]
    missing = [m for m in _modules() if f"`{m}`" not in table]
    assert not missing, f"modules missing from docs/design.md's table: {missing}"


def test_the_product_never_imports_the_harness():
    offenders = []
    for m in _modules():
        if m.startswith("harness/"):
            continue
        tree = ast.parse((PACKAGE / m).read_text())
        for node in ast.walk(tree):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if any("harness" in n.split(".") for n in names):
                offenders.append(m)
    assert not offenders, offenders
