"""The ``modelyard`` command line as a user runs it, for tests: a real child process.

``modelyard_plan`` runs ``modelyard plan`` with this interpreter (``python -m modelyard``, so the
child imports the same sources as the test) and returns what it printed and its exit status; it
never raises on a non-zero exit, because the exit status is often what a test asserts
(docs/cli.md: 0 fits, 2 bad input or does not fit, 3 some versions cannot be read).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PLAN_TIMEOUT_S = 120.0
"""Bound on one ``modelyard plan`` run (it loads nothing; seconds even on a loaded machine)."""


def modelyard_plan(
    *args: str | Path, cache_dir: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``modelyard plan ARGS...`` and return it finished (stdout and stderr as text).

    ``cache_dir`` becomes ``MODELYARD_CACHE_DIR``, so the footprints a test's server measured
    are the ones its plan reads, and no test reads or writes the user's cache. ``env`` is the
    rest of the child's environment (default: this process's).
    """
    child_env = {**(os.environ if env is None else env), "MODELYARD_CACHE_DIR": str(cache_dir)}
    return subprocess.run(
        [sys.executable, "-m", "modelyard", "plan", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=PLAN_TIMEOUT_S,
        env=child_env,
        check=False,
    )
