"""The environment a worker process starts with: an allowlist, never the server's secrets.

A worker runs model code (a TorchScript or SavedModel can run arbitrary operators), so it gets
only what Python and the frameworks need to run, find their libraries and pick their thread
counts, and nothing else: no ``MODELYARD_MANAGEMENT_TOKEN``, no cloud or database credentials,
whatever else the operator's shell holds. The allowlist, by reason:

- the process: ``PATH``, ``HOME``, ``USER``, ``LOGNAME``, ``TMPDIR``/``TMP``/``TEMP``, ``TZ``,
  ``LANG``, ``LANGUAGE``, ``LC_*``;
- Python: ``PYTHON*`` (``PYTHONPATH``, ``PYTHONHASHSEED``, ``PYTHONDONTWRITEBYTECODE``, ...),
  ``VIRTUAL_ENV``, ``COVERAGE_*`` (coverage of worker code in tests);
- native libraries and devices: ``LD_LIBRARY_PATH``, ``LD_PRELOAD``, ``CUDA_*``, ``NVIDIA_*``,
  ``CUDNN_*``, ``NCCL_*``, ``HIP_*``/``ROCR_*``, ``XLA_FLAGS``, ``XDG_CACHE_HOME`` (kernel
  caches);
- thread pools and framework switches: ``OMP_*``, ``KMP_*``, ``MKL_*``, ``OPENBLAS_*``,
  ``BLIS_*``, ``NUMEXPR_*``, ``VECLIB_*``, ``TF_*``, ``TORCH_*``, ``PYTORCH_*``, ``ORT_*``,
  ``ONNXRUNTIME_*``;
- modelyard's own worker setting: ``MODELYARD_INTRA_OP_THREADS`` (a GPU slice's memory cap
  is a ``Backend.load`` argument, not a variable).

A name that matches but looks like a secret (``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``,
``*CREDENTIAL*``, ``*_KEY``) is dropped all the same.
"""

from __future__ import annotations

from collections.abc import Mapping

from modelyard.devices import DeviceTarget

ALLOWED_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "TMP",
        "TEMP",
        "TZ",
        "LANG",
        "LANGUAGE",
        "VIRTUAL_ENV",
        "LD_LIBRARY_PATH",
        "LD_PRELOAD",
        "XLA_FLAGS",
        "XDG_CACHE_HOME",
        "MODELYARD_INTRA_OP_THREADS",
    }
)
ALLOWED_PREFIXES = (
    "LC_",
    "PYTHON",
    "COVERAGE_",
    "CUDA_",
    "NVIDIA_",
    "CUDNN_",
    "NCCL_",
    "HIP_",
    "ROCR_",
    "OMP_",
    "KMP_",
    "MKL_",
    "OPENBLAS_",
    "BLIS_",
    "NUMEXPR_",
    "VECLIB_",
    "TF_",
    "TORCH_",
    "PYTORCH_",
    "ORT_",
    "ONNXRUNTIME_",
)
_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def is_allowed(name: str) -> bool:
    """Whether a worker may inherit the variable ``name``."""
    upper = name.upper()
    if any(word in upper for word in _SECRET_WORDS) or upper.endswith("_KEY"):
        return False
    return name in ALLOWED_NAMES or name.startswith(ALLOWED_PREFIXES)


def worker_environment(parent: Mapping[str, str], target: DeviceTarget) -> dict[str, str]:
    """The environment of a worker for ``target``: the allowed part of ``parent``, with its GPU
    pinned (CUDA_VISIBLE_DEVICES; empty for the CPU) before its interpreter starts."""
    env = {name: value for name, value in parent.items() if is_allowed(name)}
    if target.is_cuda:
        # worker.main sets these again before any framework import; here they hold from exec.
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    env["CUDA_VISIBLE_DEVICES"] = target.cuda_visible_devices
    return env
