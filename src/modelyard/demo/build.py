"""The demo repository that ``modelyard serve`` serves when given no config.

Built once into a cache folder and reused: ``<cache>/repository/`` holds the model versions,
``modelyard.yaml`` and a marker naming the content version and the torch that wrote the
``.pt2``/``.pt`` files (torch.export archives are not promised to load in other torch releases).
A marker that differs, or none, means rebuild.

Concurrency: builders take an exclusive ``flock`` on ``<cache>/.lock``, build into a fresh
temporary folder inside the cache and rename it into place, so two servers starting at once
build once, and a build that dies half way leaves no repository that looks finished.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import numpy as np

CACHE_ENV = "MODELYARD_CACHE_DIR"
CONTENT_VERSION = 1
"""Bump when the demo's models or config change, so existing caches are rebuilt."""

CONFIG_NAME = "modelyard.yaml"
MARKER_NAME = ".modelyard-demo.json"
_REPOSITORY = "repository"

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    """``$MODELYARD_CACHE_DIR/demo``, else ``~/.cache/modelyard/demo`` (XDG_CACHE_HOME honoured)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / "demo"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "modelyard" / "demo"


def build_demo_repository(cache_dir: Path | None = None) -> Path:
    """Build the demo repository into ``cache_dir`` unless it is there already; its config path.

    The demo, every version served, labels ``stable: 1`` and ``canary: 2`` on the two-version
    models (and on the CPU unless a GPU is found, ``devices: auto``):

    - ``mlp``: torch.export, ``x`` FP32 [-1, 4] -> ``output_0`` FP32 [-1, 3], versions 1 and 2
    - ``linear``: ONNX, ``x`` FP32 [-1, 4] -> ``y`` FP32 [-1, 2], versions 1 and 2
    - ``scripted``: TorchScript with its signature declared in the config,
      ``x`` FP32 [-1, 4] -> ``y`` FP32 [-1, 3]

    Needs torch and onnx to build (not to reuse). Safe to call from several processes at once.
    """
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    repository = cache_dir / _REPOSITORY
    config = repository / CONFIG_NAME
    marker = _marker()
    if _current(repository) == marker:
        return config
    with _exclusive(cache_dir / ".lock"):
        # Another process may have finished the build while this one waited for the lock.
        if _current(repository) == marker:
            return config
        # Building takes seconds (torch.export is slow to start); say so once, so the user
        # knows what the wait is and where the files go.
        log.info("building the demo models (mlp, linear, scripted) into %s", repository)
        staging = Path(tempfile.mkdtemp(prefix=".build-", dir=cache_dir))
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the demo from other users of the cache
        try:
            _write_in_child(staging, marker)
            if repository.exists():
                # Rename first, then delete: a server reading the old repository keeps its
                # files open, and the final rename below needs the name free.
                old = Path(tempfile.mkdtemp(prefix=".old-", dir=cache_dir))
                os.replace(repository, old / _REPOSITORY)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(staging, repository)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return config


def demo_examples() -> dict[str, dict[str, np.ndarray]]:
    """For each demo model, an input it accepts (one row), keyed by input name.

    The arrays carry dtype and shape, so a caller can render them for any protocol
    (``array.tolist()`` for JSON, ``DataType.from_numpy(array.dtype)`` for KServe datatypes).
    """
    row = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
    return {"mlp": {"x": row.copy()}, "linear": {"x": row.copy()}, "scripted": {"x": row.copy()}}


def _write_in_child(root: Path, marker: dict[str, str | int]) -> None:
    """``_write`` in a child process: building imports torch and onnx, and the server that
    asks for the demo must never hold them (hundreds of MB in the front end for good)."""
    # The child prints one progress line per model on stdout; each is logged here as it comes
    # (the child has no logging set up, and a silent wait of seconds looks like a hang).
    with subprocess.Popen(
        [sys.executable, "-m", __name__, str(root), json.dumps(marker)],
        stdout=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None
        for line in child.stdout:
            log.info("%s", line.rstrip("\n"))
    if child.returncode != 0:  # its traceback went to stderr
        raise RuntimeError(
            f"building the demo models failed (exit code {child.returncode}); see the error "
            "above. Building needs torch and onnx: pip install 'modelyard[torch,onnx]'"
        )


def _write(root: Path, marker: dict[str, str | int]) -> None:
    from modelyard.demo.models import (
        model_config,
        write_config,
        write_onnx_linear,
        write_torch_export_mlp,
        write_torchscript_mlp,
    )

    labels = {"version_labels": {"stable": 1, "canary": 2}}
    # One line per model as it is written: the first build takes seconds (torch.export), and a
    # silent wait looks like a hang.
    started = time.monotonic()
    mlp = {v: write_torch_export_mlp(root / "mlp" / str(v), seed=v) for v in (1, 2)}
    log.info("demo 1/3: mlp (torch.export, versions 1, 2) in %.1f s", time.monotonic() - started)
    started = time.monotonic()
    linear = {v: write_onnx_linear(root / "linear" / str(v), seed=v) for v in (1, 2)}
    log.info("demo 2/3: linear (ONNX, versions 1, 2) in %.1f s", time.monotonic() - started)
    started = time.monotonic()
    scripted = {1: write_torchscript_mlp(root / "scripted" / "1", seed=3)}
    log.info("demo 3/3: scripted (TorchScript, version 1) in %.1f s", time.monotonic() - started)
    write_config(
        root / CONFIG_NAME,
        [
            model_config("mlp", mlp, **labels),
            model_config("linear", linear, **labels),
            model_config("scripted", scripted),
        ],
    )
    # Written last: a folder with the marker is complete.
    (root / MARKER_NAME).write_text(json.dumps(marker, sort_keys=True))


def _marker() -> dict[str, str | int]:
    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = "none"
    return {"content_version": CONTENT_VERSION, "torch": torch_version}


def _current(repository: Path) -> dict[str, str | int] | None:
    try:
        found: dict[str, str | int] = json.loads((repository / MARKER_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not (repository / CONFIG_NAME).is_file():
        return None
    return found


@contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


if __name__ == "__main__":  # _write_in_child's child: ROOT MARKER_JSON; progress on stdout
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    _write(Path(sys.argv[1]), json.loads(sys.argv[2]))
