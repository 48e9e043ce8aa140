"""The GPU check's wheels cover every run-time dependency of modelyard.

The GPU machine has no network: a dependency that is neither on that machine (the list in
``bench/gpu_wheels.sh``'s header) nor among the wheels the script carries fails every step of
the check at import, as ``hpack`` did in the first GPU run (docs/gpu.md, run 1).
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_wheels.sh"


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement.strip())
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _script_lists() -> tuple[set[str], set[str]]:
    """(what the GPU machine has, what the script carries), read from the script itself."""
    text = SCRIPT.read_text()
    header = text[text.index("# The GPU machine") : text.index("and no network")]
    on_machine = header.split(" has ", 1)[1].replace("#", " ")
    has = {_name(w) for w in re.split(r"[,\s]+", on_machine) if re.match(r"[a-z]", w)}
    has |= {"torch", "onnxruntime"}  # "torch (CUDA), onnxruntime (CPU)"
    block = text[text.index("PACKAGES=(") : text.index(")", text.index("PACKAGES=("))]
    carried = {_name(p.split("==")[0]) for p in block.split()[1:] if "==" in p}
    return has, carried


def test_every_runtime_dependency_is_on_the_gpu_machine_or_carried() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = {_name(r) for r in project["dependencies"]}
    has, carried = _script_lists()
    missing = sorted(needed - has - carried)
    assert not missing, (
        f"{missing} would not import on the GPU machine: add them to PACKAGES in {SCRIPT.name}"
    )


def test_the_script_pins_what_it_carries() -> None:
    has, carried = _script_lists()
    assert {"pydantic", "starlette", "uvicorn", "grpcio", "protobuf", "hpack"} <= carried
    assert {"numpy", "torch", "psutil", "pyyaml"} <= has
