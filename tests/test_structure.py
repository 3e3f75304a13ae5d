"""The codebase's own rules, checked on its source: no module uses another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fnn"
MODULES = sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMEDTUPLE_API = {"_fields", "_replace", "_asdict", "_make", "_field_defaults"}  # public despite "_"


def _private(name: str) -> bool:
    return (name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
            and name not in NAMEDTUPLE_API)


def private_uses(path: Path) -> list[str]:
    """``from fnn.x import _y`` and ``x._y`` where ``x`` is an imported fnn module."""
    tree = ast.parse(path.read_text(), str(path))
    here = _module_name(path)
    found, fnn_modules = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fnn"):
            for alias in node.names:
                if _private(alias.name) and node.module != here:
                    found.append(f"{path.name}:{node.lineno} imports {node.module}.{alias.name}")
                fnn_modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("fnn"):
                    fnn_modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in fnn_modules):
            found.append(f"{path.name}:{node.lineno} uses {node.value.id}.{node.attr}")
    return found


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_uses_another_modules_private_names(path):
    assert private_uses(path) == []


def test_the_check_finds_a_private_import(tmp_path):
    bad = PACKAGE / "_probe_for_structure_test.py"
    try:
        bad.write_text("from fnn.core import _KINDS\nimport fnn.core as core\ncore._call(print, None, {})\n")
        assert len(private_uses(bad)) == 2
    finally:
        bad.unlink()
