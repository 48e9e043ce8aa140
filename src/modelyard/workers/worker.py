"""The worker process: owns every model of one device, serves their inference over one socket.

Run as ``python -m modelyard.workers.worker --fd N --device NAME --target cpu|cuda:I ...`` by
``client.spawn_worker``. Start-up order is the point of this module: ``CUDA_VISIBLE_DEVICES`` is
set (and checked) before anything imports torch or onnxruntime, so every framework in this
process sees exactly the planned GPU, as ``cuda:0``. A slice's memory cap is applied to torch
(``set_per_process_memory_fraction``) before the first torch model loads, and passed to every
``Backend.load`` (ONNX Runtime caps each session's arena at it).

Threads: the main thread reads frames and dispatches them; loads and unloads run one at a time
on one thread (so each load's memory delta is its own, and a crash during a load names exactly
one model); inferences run on a small pool, so one slow model does not block the others. Replies
are written under one lock. When the socket ends (the front end exited or was killed) the
process exits at once: a worker never outlives its server.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="modelyard-worker")
    parser.add_argument("--fd", type=int, required=True, help="connected socket to the server")
    parser.add_argument("--device", required=True, help="the plan's device name (sim0, gpu1)")
    parser.add_argument("--target", required=True, help="cpu or cuda:N (N as the host sees it)")
    parser.add_argument("--memory-cap-bytes", type=int, default=0, help="GPU slice cap; 0: none")
    parser.add_argument("--infer-threads", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    # The server owns shutdown: Ctrl-C in a terminal (SIGINT) and a service manager or
    # `timeout` (SIGTERM) reach the whole process group, and the server, not each worker,
    # decides the order in which things stop. A worker exits when its socket ends, so it never
    # outlives its server; SIGKILL still ends it at once.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    args = _parse(argv)
    # The target is parsed once, here; modelyard.devices imports no framework.
    from modelyard.devices import DeviceTarget

    planned = DeviceTarget.parse(args.target, args.memory_cap_bytes or None)
    # Pin before any framework import: CUDA reads this once, when the first CUDA call is made.
    # A CPU worker sees no GPU at all, so it cannot grab a CUDA context.
    os.environ["CUDA_VISIBLE_DEVICES"] = planned.cuda_visible_devices
    if planned.is_cuda:
        # The plan's GPU indices are NVML's, which count in PCI bus order; CUDA's default order
        # (fastest first) may differ, so make CUDA count the same way before narrowing it.
        os.environ["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    target = planned.in_worker()
    frameworks = {"torch", "onnxruntime", "tensorflow"} & set(sys.modules)
    if frameworks:  # a bug in this module's imports, caught here rather than on a GPU
        raise SystemExit(f"worker imported {sorted(frameworks)} before pinning its device")

    import socket

    from modelyard.workers.host import WorkerHost

    sock = socket.socket(fileno=args.fd)
    host = WorkerHost(
        sock,
        device=args.device,
        target=target,
        infer_threads=args.infer_threads,
    )
    code = host.serve()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: framework atexit hooks and non-daemon threads must not keep a
    # stopping worker alive.
    os._exit(code)


if __name__ == "__main__":
    main()
