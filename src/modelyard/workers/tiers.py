"""The worker's side of paging: give memory back to the system when a version leaves.

A paged-out version's memory must leave the worker's RSS (on a CPU device the RSS *is* the
device budget), not stay in the allocator's free lists for the next model. glibc keeps freed
chunks below its (dynamic) mmap threshold in its arenas; ``malloc_trim(0)`` returns every free
page of every arena to the system. Measured (ONNX Runtime, a 64 MiB model, CPU): RSS 56 MiB
before a load, 124 MiB loaded, 60 MiB after the session is dropped, 56 MiB after the trim.
On CUDA, torch's caching allocator keeps freed blocks reserved; ``empty_cache`` gives them back
to the driver, so NVML and ``memory_reserved`` see the page-out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

_libc: ctypes.CDLL | None = None
_looked = False


def release_free_memory() -> None:
    """Return freed heap pages (and torch's cached GPU blocks) to the system; never raises."""
    global _libc, _looked
    if not _looked:
        _looked = True
        name = ctypes.util.find_library("c")
        if name is not None and sys.platform.startswith("linux"):
            try:
                _libc = ctypes.CDLL(name)
                _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                _libc = None
    if _libc is not None:
        _libc.malloc_trim(0)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.empty_cache()
        except Exception as exc:  # the page-out already happened; this only frees sooner
            log.debug("torch.cuda.empty_cache failed: %s", exc)
