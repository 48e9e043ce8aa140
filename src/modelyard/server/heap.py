"""The front end's C heap: freed memory kept for the next request instead of handed back.

A large REST request allocates a few hundred kilobytes in C and frees them when it is answered:
its body (89 kB of JSON for 8 rows of 1,024 float32), simdjson's tape, orjson's answer (90 kB),
the joined response. glibc's malloc gives the top of its heap back to the kernel whenever more
than 128 kB lies free there (``M_TRIM_THRESHOLD``), so the next request grows the heap again
and the kernel maps and zeroes every page anew: 80-100 minor page faults per medium request
at one request in flight, a quarter of the front end's CPU for such a request (measured with
``bench/json_cost.py``, TF Serving REST: 1,280 us per request with the default, 950 us with
this module's settings and no faults). With many requests in flight the heap seldom shrinks
(3-4 faults per request at 64 clients) and the settings change nothing measurable.

``keep_freed_memory`` raises the trim threshold, so up to ``TRIM_THRESHOLD_BYTES`` of freed
memory stays mapped for reuse, and fixes the mmap threshold at ``MMAP_THRESHOLD_BYTES``
(setting any of these turns glibc's own adjustment of it off): a block at least that large is
mapped for itself and unmapped when freed, so only the rare very large body pays the kernel
for its pages and the memory kept is bounded. The process holds a few megabytes more after a
burst of large requests; the page-faults go.

Only glibc has ``mallopt`` with these meanings; elsewhere (musl, macOS, Windows) nothing
changes. It is a process-wide setting, so only a program that owns its process calls it
(``modelyard serve`` and the body decoding helper), never a library import.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

TRIM_THRESHOLD_BYTES = 64 * 1024 * 1024
"""Freed memory at the top of the heap kept mapped, at most (glibc's default: 128 kB)."""

MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024
"""Blocks this large or larger are mapped for themselves and unmapped when freed (glibc starts
at 128 kB and raises it up to 32 MB as such blocks are freed)."""

_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set the thresholds above for this process; True when glibc took both, False where
    there is no glibc (nothing changed). Call it once, at the start of a program that owns
    its process; calling it again changes nothing."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    # mallopt answers 1 on success, 0 on a value it refuses.
    trim = mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    mmap = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(trim and mmap)
