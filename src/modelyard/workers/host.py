"""What runs inside a worker process: the models of one device, behind one socket.

``WorkerHost`` is created by ``worker.main`` after the device is pinned. Ownership: it owns the
socket and every model it loads; the front end only ever names models by (model, version).
Thread safety: ``serve`` runs on the main thread, which waits while two reader threads take
turns at the socket (``modelyard.workers.handover``); replies are sent from the readers (a
short inference runs where it was read), the load thread and the execution slots under
``_send_lock``; ``_models`` is written by the load thread only and read by the others (dict
reads and single assignments are atomic in CPython).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import psutil

from modelyard.backends import LoadedModel, get_backend
from modelyard.backends.base import Backend, MultiSignatureModel
from modelyard.config.schema import Platform
from modelyard.devices import DeviceTarget
from modelyard.devices.probe import nvml_process_bytes
from modelyard.errors import DeadlineExceeded, Internal, ModelyardError, NotFound
from modelyard.tensors import DEFAULT_SIGNATURE, unknown_signature
from modelyard.workers.handover import Handover
from modelyard.workers.inferframes import encode_outputs
from modelyard.workers.messages import (
    Cancel,
    Done,
    Error,
    Hello,
    Infer,
    Load,
    Loaded,
    Message,
    Ping,
    Pong,
    Report,
    Reported,
    Shutdown,
    Unload,
)
from modelyard.workers.slots import FairSlots, Job
from modelyard.workers.sockets import FrameReader, send_frame, send_message
from modelyard.workers.tiers import release_free_memory

_perf_ns = time.perf_counter_ns

log = logging.getLogger(__name__)

_SHORT_CALL_NS = 1_000_000
"""A version whose last call took less than this may run on the reader's thread (1 ms, as
``backends.onnx.SHORT_CALL_S``): a call that turns out longer hands the reading over within
``handover.POLL_S`` x 2, so the bound is about cost (a thread switch is cheap beside a long
call), not about safety."""

# Platforms whose framework is torch: its allocator is capped on a GPU slice before any
# torch allocation, the backend's own preparation included.
_TORCH_PLATFORMS = frozenset({Platform.TORCH_EXPORT, Platform.TORCHSCRIPT})


@dataclass(frozen=True, slots=True)
class HeldModel:
    """One loaded version and what its load measured (``load_seconds``: the backend's load
    alone, from reading the artifact to weights on the device, queueing behind other loads of
    this worker excluded)."""

    model: LoadedModel
    platform: Platform
    measured_bytes: int
    placed_on: str
    load_seconds: float = 0.0


class WorkerHost:
    """Serves load/unload/infer/report requests for one device until shutdown or end of stream."""

    def __init__(
        self,
        sock: socket.socket,
        *,
        device: str,
        target: DeviceTarget,
        infer_threads: int = 4,
        per_model_threads: int | None = None,
    ) -> None:
        """``target``: the device as this pinned process sees it (``cuda:0`` or ``cpu``), with
        the slice's memory cap. ``infer_threads`` inferences run at once, at most
        ``per_model_threads`` of one model (default ``per_model_slots``: one slot, and on a CPU
        device one core, is always left for the device's other models; see
        ``modelyard.workers.slots``)."""
        self._sock = sock
        self._device = device
        self._target = target
        self._send_lock = threading.Lock()
        self._models: dict[tuple[str, int], HeldModel] = {}
        self._load_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load")
        if per_model_threads is None:
            per_model_threads = per_model_slots(infer_threads, target)
        self._slots = FairSlots(infer_threads, per_model_threads)
        self._handover = Handover(self._read_frames)
        self._frames: FrameReader | None = None
        # Per version: whether its last call was short enough to run on the reader's thread.
        self._short: dict[tuple[str, int], bool] = {}
        # Per model: inferences run, withdrawn by their caller, skipped past their deadline.
        self._counts: dict[str, dict[str, int]] = {}
        self._counts_lock = threading.Lock()
        self._torch_capped = False
        self._prepared: set[Platform] = set()
        self._process = psutil.Process()

    def serve(self) -> int:
        """Read and dispatch requests; returns the exit code (0 after SHUTDOWN or end of stream).

        Two threads take turns at reading (``modelyard.workers.handover``): a short inference
        runs on the thread that read it, when nothing else runs or waits."""
        self._send(Hello(0, os.getpid(), self._device, os.environ.get("CUDA_VISIBLE_DEVICES")))
        self._frames = FrameReader(self._sock)
        return self._handover.run()

    def _read_frames(self) -> int | None:
        """Read and dispatch frames until the end (the exit code) or until this thread has
        handed the reading over (None)."""
        frames = self._frames
        assert frames is not None
        while True:
            message = frames.read()
            if message is None:  # the server is gone: nothing left to serve
                return 0
            if isinstance(message, Infer):
                if (
                    not frames.buffered  # more frames already here: let a slot run this one
                    and self._short.get((message.model, message.version), False)
                    and self._slots.start_inline(message.model)
                ):
                    if not self._handover.run_inline(partial(self._run_inline, message)):
                        return None
                else:
                    self._submit(message)
            elif isinstance(message, Ping):  # the heartbeat: answered here, never queued
                self._send(Pong(message.request_id))
            elif isinstance(message, Cancel):
                cancelled = self._slots.cancel(message.request_id)  # None: started or done
                if cancelled is not None:
                    self._count(cancelled.key, "cancelled")
            elif isinstance(message, Load):
                self._load_pool.submit(self._guard, self._load, message)
            elif isinstance(message, Unload):
                self._load_pool.submit(self._guard, self._unload, message)
            elif isinstance(message, Report):
                self._send(Reported(message.request_id, self.report()))
            elif isinstance(message, Shutdown):
                # Let running inferences finish before their models go away.
                self._slots.close()
                self._load_pool.submit(self._unload_all).result()
                self._send(Done(message.request_id))
                return 0
            else:
                self._send(Error.of(message.request_id, Internal(f"unexpected {message.KIND!r}")))

    # -- requests ------------------------------------------------------------------------

    def _guard(self, handler: Any, message: Message) -> None:
        """Run ``handler``; any failure becomes an ERROR reply, never a dead worker."""
        try:
            handler(message)
        except ModelyardError as exc:
            self._send(Error.of(message.request_id, exc))
        except Exception as exc:
            log.exception("worker %s: %s failed", self._device, message.KIND.name)
            self._send(Error.of(message.request_id, Internal(f"{type(exc).__name__}: {exc}")))

    def _submit(self, message: Infer) -> None:
        """Queue ``message`` for an execution slot; past its budget it is answered
        DEADLINE_EXCEEDED instead of run."""
        received = time.monotonic()
        budget = message.budget_ms
        deadline = None if budget is None else received + budget / 1000.0
        run = partial(self._guard, self._infer, message)
        job = Job(
            message.model,
            message.request_id,
            run,
            partial(self._expired, message),
            deadline,
            received,
        )
        self._slots.submit(job)

    def _run_inline(self, message: Infer) -> None:
        """Run ``message`` on this (the reader's) thread, counted as running by the slots
        (``start_inline``): at once, so its budget runs out only when it is none already."""
        try:
            budget = message.budget_ms
            if budget is not None and budget <= 0:
                self._expired(message, 0.0)
            else:
                self._guard(self._infer, message)
        except Exception:  # as a slot's: its guard answers its caller; keep the reader
            log.exception("inference %s of %r failed", message.request_id, message.model)
        finally:
            self._slots.finish_inline(message.model)

    def _expired(self, message: Infer, waited_s: float) -> None:
        self._count(message.model, "expired")
        self._send(
            Error.of(
                message.request_id,
                DeadlineExceeded(
                    f"deadline exceeded: model {message.model!r} waited {waited_s * 1000:.0f} "
                    f"ms on device {self._device} for an execution slot, past the "
                    f"{message.budget_ms or 0:.0f} ms its deadline left; it was not run"
                ),
            )
        )

    def _count(self, model: str, what: str) -> None:
        with self._counts_lock:
            counts = self._counts.get(model)
            if counts is None:
                counts = self._counts[model] = {"run": 0, "cancelled": 0, "expired": 0}
            counts[what] += 1

    def _infer(self, message: Infer) -> None:
        key = (message.model, message.version)
        self._count(message.model, "run")
        held = self._models.get(key)
        if held is None:
            raise NotFound(f"{message.model}:{message.version} is not loaded on {self._device}")
        model = held.model
        began = _perf_ns()
        if message.signature_name is not None and isinstance(model, MultiSignatureModel):
            outputs = model.predict_signature(message.tensors, message.signature_name)
        elif message.signature_name not in (None, DEFAULT_SIGNATURE):
            raise unknown_signature(message.signature_name, (DEFAULT_SIGNATURE,))
        else:
            outputs = model.predict(message.tensors)
        infer_ns = _perf_ns() - began
        self._short[key] = infer_ns < _SHORT_CALL_NS
        # Triton's compute_input and compute_infer; encoding adds compute_output. (The frame of
        # an ``Outputs``, without building one: a frozen dataclass costs a call per field.)
        frame = encode_outputs(message.request_id, outputs, (message.decoded_ns, infer_ns))
        with self._send_lock:
            send_frame(self._sock, frame)

    def _load(self, message: Load) -> None:
        platform = Platform(message.platform)
        backend = get_backend(platform)
        self._prepare(platform, backend)
        before = self._used_bytes()
        began = time.monotonic()
        model = backend.load(
            Path(message.version_dir),
            message.target,
            message.declared,
            memory_cap_bytes=self._target.memory_cap_bytes,
        )
        took = time.monotonic() - began
        grown = (now - then for now, then in zip(self._used_bytes(), before, strict=False))
        measured = max(0, *grown)
        held = HeldModel(model, platform, measured, _placed_on(model), took)
        self._models[(message.model, message.version)] = held
        signatures = dict(model.signatures) if isinstance(model, MultiSignatureModel) else {}
        self._send(
            Loaded(message.request_id, model.signature, measured, held.placed_on, signatures)
        )

    def _unload(self, message: Unload) -> None:
        held = self._models.pop((message.model, message.version), None)
        if held is not None:
            held.model.unload()
            gc.collect()
            release_free_memory()  # a page-out must shrink the worker's RSS (docs/paging.md)
        self._send(Done(message.request_id))

    def _unload_all(self) -> None:
        for key in list(self._models):
            held = self._models.pop(key)
            try:
                held.model.unload()
            except Exception:
                log.exception("worker %s: unloading %s:%s failed", self._device, *key)

    def report(self) -> dict[str, Any]:
        """What this process holds, as it sees it: the check that placement really happened."""
        models = [
            {
                "model": name,
                "version": version,
                "platform": held.platform.value,
                "measured_bytes": held.measured_bytes,
                "placed_on": held.placed_on,
                "load_seconds": round(held.load_seconds, 4),
            }
            for (name, version), held in sorted(self._models.items())
        ]
        report: dict[str, Any] = {
            "pid": os.getpid(),
            "device": self._device,
            "target": str(self._target),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "rss_bytes": self._process.memory_info().rss,
            "models": models,
            "inferences": self._inference_counts(),
            "execution_slots": {
                "threads": self._slots.threads,
                "per_model": self._slots.per_model,
                "running": self._slots.running(),
                "queued": self._slots.queued(),
            },
        }
        if "torch" in sys.modules and self._target.is_cuda:
            import torch

            if torch.cuda.is_available():
                report["cuda_device_count"] = torch.cuda.device_count()
                report["cuda_device_name"] = torch.cuda.get_device_name(0)
                report["cuda_allocated_bytes"] = torch.cuda.memory_allocated(0)
        return report

    def _inference_counts(self) -> dict[str, dict[str, int]]:
        """Per model: how many inferences ran, were withdrawn (caller gone) or were skipped
        (deadline passed while queued), since the process started."""
        with self._counts_lock:
            return {model: dict(counts) for model, counts in sorted(self._counts.items())}

    # -- memory --------------------------------------------------------------------------

    def _prepare(self, platform: Platform, backend: Backend) -> None:
        """Once per platform, before the first load's baseline: the framework's one-time costs
        (imports, runtime, CUDA context) go to the process, not to the first model."""
        if platform in self._prepared:
            return
        cuda_torch = platform in _TORCH_PLATFORMS and self._target.is_cuda
        if cuda_torch and not self._torch_capped:
            self._cap_torch()
        try:
            backend.prepare(str(self._target))
        except Exception as exc:  # load raises the same, with the model's name on it
            log.warning("preparing %s on %s failed: %s", platform.value, self._target, exc)
            return
        self._prepared.add(platform)

    def _cap_torch(self) -> None:
        """Cap torch's allocator at the slice's size, before the first torch model loads."""
        import torch

        self._torch_capped = True
        cap = self._target.memory_cap_bytes
        if cap and torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)

    def _used_bytes(self) -> tuple[int, ...]:
        """Memory this process holds on its device, by each counter there is: a load's
        measured bytes are the largest growth among them.

        On CUDA with torch: bytes the caching allocator reserved from the device (what a load
        takes from the slice) and bytes its live tensors hold. A small model loaded after
        another fits in segments already reserved, so only the second grows (the GPU check
        found small models measured at 0). Without torch: NVML's count for this process. On
        the CPU: RSS.
        """
        if self._target.is_cuda:
            if "torch" in sys.modules:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.synchronize(0)
                    return int(torch.cuda.memory_reserved(0)), int(torch.cuda.memory_allocated(0))
            return (nvml_process_bytes(),)
        gc.collect()
        release_free_memory()  # freed buffers (a load's transient ones) are nobody's bytes
        return (int(self._process.memory_info().rss),)

    def _send(self, message: Message) -> None:
        with self._send_lock:
            send_message(self._sock, message)


def per_model_slots(threads: int, target: DeviceTarget, cores: int | None = None) -> int:
    """How many of a worker's ``threads`` execution slots one model may hold at once.

    One fewer than all of them, so another model always finds a slot free. On a CPU device the
    slots share the machine's cores (``cores``, default: the cores this process may use): a
    model may keep at most all cores but one busy, else a slow model's running inferences leave
    a fast one's no CPU to run on, however many threads are free. At least 1.
    """
    limit = threads - 1
    if not target.is_cuda:
        usable = cores if cores is not None else _usable_cores()
        limit = min(limit, usable - 1)
    return max(1, limit)


def _usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return len(affinity(0))
    return os.cpu_count() or 1


def _placed_on(model: LoadedModel) -> str:
    """Where the framework says the weights are: every parameter's device, or the session's."""
    module = getattr(model, "module", None)
    if module is not None:
        devices = {str(t.device) for t in (*module.parameters(), *module.buffers())}
        if devices:
            return ",".join(sorted(devices))
    providers = getattr(model, "providers", None)
    device = getattr(model, "device", None)
    if providers:
        return f"{device} ({providers[0]})"
    return str(device) if device is not None else "unknown"
