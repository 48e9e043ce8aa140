"""The import direction of STYLE.md, read from the source with ``ast``: the planner and the
repository import no ML framework (not even through ``importlib``), no web library, no grpc,
and nothing from the layers above them; and importing the planner loads no framework and no
hardware probe."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).parents[2] / "src" / "modelyard"

FRAMEWORKS = ("torch", "onnx", "onnxruntime", "tensorflow", "pynvml", "jax")
WEB_AND_RPC = ("starlette", "uvicorn", "httpx", "grpc")
ABOVE = ("server", "workers", "lifecycle", "cli", "management", "demo", "testing")
PURE_PACKAGES = ("planner", "repository")

# STYLE.md's layers, lowest first: a package imports its own layer or those below, never above.
LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors", "ids", "tensors", "codec", "config", "tfproto", "deadlines", "servable"}),
    frozenset({"repository", "planner", "batching", "backends", "devices", "observability"}),
    frozenset({"lifecycle", "workers", "management", "metrics", "cluster"}),
    frozenset({"server"}),
    frozenset({"testing", "demo"}),
    frozenset({"cli"}),
    frozenset({"__main__"}),
)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports, statically or by name through importlib/__import__."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            found.append((node.lineno, f"<relative>.{node.module or ''}"))
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            arg = node.args[0] if node.args else None
            name = arg.value if isinstance(arg, ast.Constant) else "<computed name>"
            found.append((node.lineno, str(name)))
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id in ("__import__", "import_module")
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def _top(module: str) -> str:
    return module.split(".")[0]


def _modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


def _violations(package: str) -> list[str]:
    bad: list[str] = []
    for path in _modules(package):
        where = path.relative_to(SRC.parent)
        for line, name in _imports(path):
            if _top(name) in FRAMEWORKS + WEB_AND_RPC:
                bad.append(f"{where}:{line} imports {name}")
            elif name.startswith("modelyard.") and name.split(".")[1] in ABOVE:
                bad.append(f"{where}:{line} imports {name}, a layer above it")
            elif name in ("modelyard.devices.probe", "modelyard.devices.inventory"):
                bad.append(f"{where}:{line} imports {name}: devices are passed in, measured")
            elif name.startswith("<"):
                bad.append(f"{where}:{line} imports {name}: say what, with an absolute import")
    return bad


@pytest.mark.parametrize("package", PURE_PACKAGES)
def test_the_pure_packages_import_no_framework_web_library_or_upper_layer(package: str) -> None:
    assert _modules(package), f"no modules found under {SRC / package}"
    assert _violations(package) == []


def test_the_check_catches_an_import_through_importlib(tmp_path: Path) -> None:
    """The checker itself: a dynamic framework import is found, an optimiser's is not."""
    module = tmp_path / "m.py"
    module.write_text(
        "import importlib\n"
        "def f():\n"
        "    importlib.import_module('torch')\n"
        "    __import__('pynvml')\n"
        "    importlib.import_module('ortools.sat.python.cp_model')\n"
    )
    names = [name for _, name in _imports(module)]
    assert names == ["importlib", "torch", "pynvml", "ortools.sat.python.cp_model"]
    assert [n for n in names if _top(n) in FRAMEWORKS] == ["torch", "pynvml"]


def test_importing_the_planner_loads_no_framework_and_no_probe() -> None:
    code = (
        "import sys\n"
        "import modelyard.planner, modelyard.planner.demands, modelyard.planner.place\n"
        "import modelyard.repository\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        f"{FRAMEWORKS + WEB_AND_RPC!r} or m in "
        "('modelyard.devices.probe', 'modelyard.devices.inventory', 'ortools'))))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC.parent)}  # these sources, not an installed copy
    argv = [sys.executable, "-c", code]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True, env=env)
    assert out.stdout.split() == []


@functools.cache
def _package_edges() -> dict[str, frozenset[str]]:
    """Top-level package (or module) of ``src/modelyard`` -> the others it imports."""
    edges: dict[str, set[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        package = path.relative_to(SRC).parts[0].removesuffix(".py")
        if package == "__init__":
            continue
        for _, name in _imports(path):
            parts = name.split(".")
            if parts[0] == "modelyard" and len(parts) > 1 and parts[1] != package:
                edges.setdefault(package, set()).add(parts[1])
    return {package: frozenset(targets) for package, targets in edges.items()}


def _layer(package: str) -> int:
    for rank, members in enumerate(LAYERS):
        if package in members:
            return rank
    raise AssertionError(f"package {package!r} is in no layer of LAYERS; place it there")


def test_packages_import_only_their_own_layer_or_below() -> None:
    edges = _package_edges()
    assert {"planner", "server"} <= set(edges)  # the scan found the packages
    upward = [
        f"{source} -> {target}"
        for source, targets in sorted(edges.items())
        for target in sorted(targets)
        if _layer(target) > _layer(source)
    ]
    assert upward == []


def test_the_package_graph_has_no_cycle() -> None:
    edges = _package_edges()
    done: set[str] = set()

    def visit(package: str, path: tuple[str, ...]) -> None:
        assert package not in path, "import cycle: " + " -> ".join((*path, package))
        if package in done:
            return
        for target in sorted(edges.get(package, ())):
            visit(target, (*path, package))
        done.add(package)

    for package in sorted(edges):
        visit(package, ())
