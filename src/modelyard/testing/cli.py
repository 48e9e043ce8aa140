"""The ``modelyard`` command line as a user runs it, for tests: a real child process.

``modelyard_plan`` runs ``modelyard plan`` with this interpreter (``python -m modelyard``, so the
child imports the same sources as the test) and returns what it printed and its exit status; it
never raises on a non-zero exit, because the exit status is often what a test asserts
(docs/cli.md: 0 fits, 2 bad input or does not fit, 3 some versions cannot be read).
``served_ports`` waits for a ``modelyard serve --ports-file`` child to say where it listens.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PLAN_TIMEOUT_S = 120.0
"""Bound on one ``modelyard plan`` run (it loads nothing; seconds even on a loaded machine)."""

SERVE_START_S = 120.0
"""Bound on a ``modelyard serve`` child's start: its models loaded, its ports written."""


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


def served_ports(
    proc: subprocess.Popen[Any], ports_file: Path, within_s: float = SERVE_START_S
) -> dict[str, int]:
    """The ports ``proc`` (``modelyard serve ... --ports-file PORTS_FILE``) wrote once it was
    up (``rest``, ``grpc``), waiting up to ``within_s``; fails if it exits first (with what it
    printed, where its output is a pipe) or is not up in time."""
    deadline = time.monotonic() + within_s
    while not ports_file.exists():
        if proc.poll() is not None:
            printed = proc.communicate() if proc.stdout or proc.stderr else ""
            raise AssertionError(f"modelyard serve exited with {proc.returncode}: {printed}")
        assert time.monotonic() < deadline, f"modelyard serve did not start in {within_s:.0f} s"
        time.sleep(0.1)
    ports: dict[str, int] = json.loads(ports_file.read_text())
    return ports
