"""Product code never imports the test-fixture package.

``modelyard.testing`` is for tests and for users testing their deployments; it may import the
product (``testing.models`` re-exports the demo's writers), never the reverse. Otherwise the
production CLI would need the fixtures installed (issue 13: ``cli -> demo -> testing``).

Every module under ``src/modelyard/`` except ``testing/`` is read with ``ast``: ``import``
statements anywhere (functions included, where lazy imports live), relative imports resolved
against the module's package, and string constants that name a testing module (what
``importlib.import_module`` or ``__import__`` would be given).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import modelyard

PACKAGE_ROOT = Path(modelyard.__file__).parent
FORBIDDEN = "modelyard.testing"
_MODULE_NAME = re.compile(r"modelyard\.testing(\.\w+)*")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_forbidden(name: str) -> bool:
    return name == FORBIDDEN or name.startswith(FORBIDDEN + ".")


def imports_of_testing(source: str, module: str, is_package: bool) -> list[str]:
    """``line: what`` for each way ``source`` (the module ``module``) reaches modelyard.testing."""
    found: list[str] = []
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            hits = [a.name for a in node.names if _is_forbidden(a.name)]
            found += [f"{node.lineno}: import {name}" for name in hits]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
            if any(_is_forbidden(n) for n in names):
                found.append(f"{node.lineno}: from {'.' * node.level}{node.module or ''} import")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and _MODULE_NAME.fullmatch(node.value)
        ):
            found.append(f"{node.lineno}: the string {node.value!r}")
    return found


def product_modules() -> list[Path]:
    testing = PACKAGE_ROOT / "testing"
    return sorted(p for p in PACKAGE_ROOT.rglob("*.py") if testing not in p.parents)


def test_no_product_module_imports_modelyard_testing() -> None:
    modules = product_modules()
    # The walk must see the product, not an empty or wrong folder.
    names = {_module_name(p) for p in modules}
    assert {"modelyard.cli.serve", "modelyard.demo.build", "modelyard.demo.models"} <= names
    assert len(modules) > 50
    offences = {
        str(path.relative_to(PACKAGE_ROOT.parent)): hits
        for path in modules
        if (
            hits := imports_of_testing(
                path.read_text(), _module_name(path), is_package=path.name == "__init__.py"
            )
        )
    }
    assert offences == {}, f"product code imports {FORBIDDEN}: {offences}"


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("import modelyard.testing", "modelyard.demo.build"),
        ("import modelyard.testing.models as m", "modelyard.demo.build"),
        ("from modelyard import testing", "modelyard.cli.serve"),
        ("from modelyard.testing.models import write_config", "modelyard.demo.build"),
        ("def f():\n    from modelyard.testing import server\n", "modelyard.cli.serve"),
        ("from ..testing import models", "modelyard.demo.build"),
        ("from .. import testing", "modelyard.demo.build"),
        ("from ...testing.models import BuiltModel", "modelyard.server.http.app"),
        ("import importlib\nimportlib.import_module('modelyard.testing.models')", "modelyard.x"),
        ("__import__('modelyard.testing')", "modelyard.x"),
    ],
)
def test_every_way_of_importing_testing_is_caught(source: str, module: str) -> None:
    assert len(imports_of_testing(source, module, is_package=False)) == 1


@pytest.mark.parametrize(
    ("source", "module"),
    [
        ("from modelyard.demo.models import write_config", "modelyard.demo.build"),
        ("from . import models", "modelyard.demo.build"),
        ("from .testing_helpers import x", "modelyard.demo.build"),
        ("import modelyard.testingx", "modelyard.demo.build"),
        ('"""Re-exported by ``modelyard.testing.models``."""', "modelyard.demo.models"),
    ],
)
def test_other_imports_and_mentions_in_prose_pass(source: str, module: str) -> None:
    assert imports_of_testing(source, module, is_package=False) == []
