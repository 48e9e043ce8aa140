"""The TensorFlow tests (tests/tf_drop_in), run in a child pytest process.

TensorFlow and ortools each bundle their own C++ protobuf/abseil; once tensorflow is imported,
the planner's CP-SAT solver segfaults in the same process. So no test in the main process imports
tensorflow (the server under test runs SavedModels in its own worker processes anyway), and
pytest does not recurse into tests/tf_drop_in (``norecursedirs`` in pyproject.toml).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

# find_spec, not importorskip: importing tensorflow here is exactly what must not happen.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow") is None
    or importlib.util.find_spec("tensorflow_serving") is None,
    reason="needs tensorflow-cpu and tensorflow-serving-api (make setup installs both)",
)

TF_TESTS = Path(__file__).resolve().parents[1] / "tf_drop_in"


def test_tensorflow_suite_passes_in_a_child_process(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(TF_TESTS)],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        # Whatever the child runs, modelyard's cache is the test's, never the user's.
        env={**os.environ, "MODELYARD_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
