"""The front end's garbage collector: what start-up built is set aside, and the young generation
is sized for a server's requests in flight.

CPython's cyclic collector (3.11 to 3.13) runs when the tracked objects allocated minus those
freed pass a threshold (700 for the young generation); every tenth young collection also
collects the middle generation, and a full collection follows once enough objects have reached
the old one. In a serving front end nearly every object a request makes is freed by reference
counting as soon as it is answered (about 86 objects in cycles over 20,000 KServe JSON
requests, measured with ``gc.DEBUG_SAVEALL``), but with 64 requests in flight the objects they
hold at once are already about 700, so the young generation was collected every ~70 requests
for nothing, and every ~9,000 requests a full collection walked the ~66,000 objects that
start-up built (the modules, the web and gRPC stacks, the configuration) and that live as long
as the process: about 18 ms each, a pause that every request in flight waits out (tiny model,
64 clients, KServe JSON, 100,000 requests: 1,400 young, 130 middle and 12 full collections, 0.4
s, 5 % of the front end's time; ``bench/findings.md``, "The front end's garbage collector").

``settle`` runs once, when the server is up: one full collection, then ``gc.freeze()`` moves
every object that survives it into the permanent generation, which no later collection walks
(so a full collection takes ~0.3 ms instead of ~18), and the young threshold is raised to
``YOUNG_THRESHOLD``, above what many requests in flight hold at once. Objects made later
(model versions loaded afterwards, a reloaded configuration) are collected as before; what
start-up made and later drops is freed by reference counting as usual. Only such an object
caught in a cycle stays until the process ends, and with it whatever it still refers to when
dropped (a version of the start-up set that is later unloaded, say, if its front-end objects
form a cycle): a one-off, not a growth per request or per reload.

It is a process-wide setting, so only a program that owns its process calls it
(``modelyard serve``), never a library import.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 7_000
"""Tracked allocations (net of frees) between young collections (CPython's default: 700).
At 64 requests in flight no young collection ran in 100,000 tiny requests with this value,
against ~1,300 with the default; the cycles a request leaves behind wait a little longer."""


def settle() -> int:
    """Collect once, set aside what survives (``gc.freeze``) and raise the young threshold;
    the number of objects set aside. Call it once the program has started, from a program
    that owns its process."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    return gc.get_freeze_count()
