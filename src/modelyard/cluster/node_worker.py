"""A worker process on a cluster node: the local worker's ``main``, tied to its Ray actor.

Run by the node's ``WorkerStarter`` actor (``modelyard.cluster.actor``) as
``python -m modelyard.cluster.node_worker --parent-pid P -- <worker arguments>``. It asks the
kernel to SIGKILL it when the thread that started it ends (``PR_SET_PDEATHSIG``: that thread
lives exactly as long as the worker, in the actor), so a worker never outlives its actor: a node
whose Ray processes are killed takes its workers with it, and the front end sees their
connections end at once. Then it runs ``modelyard.workers.worker.main`` unchanged: the same
pinning before any framework import, the same ``WorkerHost``, the same frame protocol (over the
TCP connection the actor accepted and handed over as ``--fd``).

Imports nothing but the standard library before ``worker.main`` pins the device.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have ended before the call above took effect: then no signal will come.
    if os.getppid() != parent_pid:
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or not args[0].startswith("--parent-pid=") or args[1] != "--":
        raise SystemExit("usage: node_worker --parent-pid=P -- <worker arguments>")
    _die_with_parent(int(args[0].split("=", 1)[1]))
    from modelyard.workers.worker import main as worker_main

    worker_main(args[2:])


if __name__ == "__main__":
    main()
