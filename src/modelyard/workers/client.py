"""The front end's side of one worker process: spawn it, talk to it, notice at once when it dies.

``SubprocessLauncher`` is the local ``WorkerLauncher`` (``modelyard.workers.launcher``): each
worker a child process of the server, pinned to its device. ``WorkerProcess`` is the handle of
one incarnation (a restart makes a new one). It owns the child process and the parent's end of a
Unix socketpair; its ``ReplyProtocol`` (``modelyard.workers.replies``) decodes replies as they
arrive and resolves the waiting request's future by request id in the same loop turn, and the
events are told of every frame heard. When the stream ends (the worker exited, crashed or
was killed) every request in flight fails at once with ``WorkerDied`` (an ``Unavailable``: 503 /
UNAVAILABLE), and ``WorkerEvents.exited`` is called once with the reason.

The supervisor's heartbeat (``modelyard.workers.heartbeat.Heartbeat``) watches each incarnation
through this handle: ``ping`` writes a ``Ping`` (answered by the worker's reader thread),
``probe`` asks the operating system about the process, and a worker found stuck (SIGSTOP, a
deadlock) is ended by ``kill(reason)``: its requests in flight fail at once with
``WorkerDied`` naming the device and why, it is SIGKILLed, and its end is handled like any other
death (``exited``: the supervisor restarts it). So no request and no control call (load,
unload, report, shutdown) to a stuck worker waits longer than ``timeout_s`` + ``interval_s``.

A worker starts with a clean environment (``modelyard.workers.environment``): never the
management token or any other secret of the server's environment.

``WorkerServable`` is what the registry holds for a model in a worker: a ``Servable`` whose
calls go to a ``ModelHost`` (the supervisor's per-device worker), so the same servable keeps
working across restarts of the process behind it.

Async safety: everything here runs on the server's event loop; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Protocol

import numpy as np

from modelyard.devices import DeviceTarget
from modelyard.errors import Internal, Unavailable
from modelyard.ids import VersionKey
from modelyard.tensors import DEFAULT_SIGNATURE, Signature
from modelyard.workers.environment import worker_environment
from modelyard.workers.heartbeat import sample_process
from modelyard.workers.inferframes import encode_infer
from modelyard.workers.launcher import ProcessSample, WorkerEvents, WorkerSpec
from modelyard.workers.launcher import WorkerDied as WorkerDied  # what its requests raise
from modelyard.workers.messages import (
    Cancel,
    Error,
    Hello,
    Infer,
    Message,
    Ping,
    ProtocolError,
    Shutdown,
)
from modelyard.workers.protocol import decode_body, encode, split_prefix
from modelyard.workers.replies import ReplyProtocol
from modelyard.workers.wire import PREFIX_BYTES

log = logging.getLogger(__name__)

SOCKET_BUFFER_BYTES = 4 << 20
"""Asked for as the worker socket's send and receive buffers (Linux caps it at
``net.core.wmem_max`` / ``rmem_max``). A batch's tensors (1 MiB for 256 rows of 1,024 FP32) then
go in one write instead of trickling through the default ~200 KiB buffer over several turns of
the event loop, each of which also runs every other request's work while the worker waits."""

READ_CHUNK_BYTES = 8 << 20
"""The stream-reader limit for worker replies where a ``StreamReader`` reads them (a remote
worker's connection, ``modelyard.cluster.launcher``): under it the reader keeps reading a large
reply instead of pausing the transport every 128 KiB (asyncio's default limit is 64 KiB)."""


CORK_BYTES = 64 << 10
"""A frame up to this size, written while other requests are in flight, waits for the end of
the loop's turn and goes out with the others written in it (``WorkerProcess._uncork``); a
larger one is written at once, with the transport's back-pressure."""

READ_NOW_BYTES = 64 << 10
"""The most ``_read_now`` takes in one ``recv`` (a one-row reply is a few hundred bytes; the
transport reads the rest of a larger one)."""


class ModelHost(Protocol):
    """Where a ``WorkerServable`` sends its calls: the supervisor's worker for one device."""

    async def infer(
        self, key: VersionKey, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> dict[str, np.ndarray]: ...

    async def unload(self, key: VersionKey) -> None: ...


class WorkerServable:
    """A model version loaded in a worker process, as a ``Servable``."""

    def __init__(
        self,
        host: ModelHost,
        key: VersionKey,
        signature: Signature,
        signatures: Mapping[str, Signature] | None = None,
    ) -> None:
        self._host = host
        self._key = key
        self._signature = signature
        self._signatures = dict(signatures) if signatures else {DEFAULT_SIGNATURE: signature}

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def signatures(self) -> Mapping[str, Signature]:
        """Every named signature (``serving_default`` only, for single-signature models)."""
        return self._signatures

    def infer(
        self, inputs: Mapping[str, np.ndarray], signature_name: str | None = None
    ) -> Coroutine[Any, Any, dict[str, np.ndarray]]:
        """The worker answers InvalidArgument for a signature name the model lacks. (The host's
        coroutine itself, awaited by the caller: no coroutine of its own per request.)"""
        return self._host.infer(self._key, inputs, signature_name)

    async def close(self) -> None:
        await self._host.unload(self._key)


class SubprocessLauncher:
    """The local ``WorkerLauncher``: each worker a child process of this one, on this host."""

    async def launch(self, spec: WorkerSpec, events: WorkerEvents) -> WorkerProcess:
        proc = WorkerProcess(
            spec.device,
            spec.target,
            memory_cap_bytes=spec.memory_cap_bytes,
            infer_threads=spec.infer_threads,
            events=events,
        )
        await proc.start(spec.start_timeout_s)
        return proc


class WorkerProcess:
    """One running worker process for one device, and the requests in flight to it (the local
    ``WorkerHandle``)."""

    def __init__(
        self,
        device: str,
        target: DeviceTarget,
        *,
        memory_cap_bytes: int = 0,
        infer_threads: int = 4,
        events: WorkerEvents | None = None,
    ) -> None:
        self.device = device
        self.target = target
        self._cap = memory_cap_bytes
        self._threads = infer_threads
        self._events = events
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: asyncio.StreamReader | None = None  # a subclass's stream, else None
        self._writer: asyncio.StreamWriter | None = None
        self._replies: ReplyProtocol | None = None  # reads the socket, unless _reader does
        self._sock: socket.socket | None = None  # the socket _replies reads, for _read_now
        self._ended: asyncio.Future[None] | None = None  # resolved when the stream has ended
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # its connection's, once known
        self._corked: list[bytes | memoryview] | None = None  # frames for ``_uncork``
        self._dead: str | None = None
        self._stopping = False
        self._stuck: str | None = None
        self.hello: Hello | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._dead is None and self._proc is not None

    async def start(self, wait_s: float = 60.0) -> None:
        """Spawn the process and wait for its HELLO; Unavailable when it does not come."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        for end in (parent, child):
            _widen_buffers(end)
        env = worker_environment(os.environ, self.target)
        argv = [
            sys.executable,
            "-m",
            "modelyard.workers.worker",
            f"--fd={child.fileno()}",
            f"--device={self.device}",
            f"--target={self.target}",
            f"--memory-cap-bytes={self._cap}",
            f"--infer-threads={self._threads}",
        ]
        try:
            # exec right after fork (subprocess), so no thread of this process runs in the child;
            # Popen returns once the exec happened (milliseconds), so the loop is barely held.
            self._proc = subprocess.Popen(  # noqa: ASYNC220
                argv, pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL
            )
        finally:
            child.close()
        loop = asyncio.get_running_loop()
        self._ended = loop.create_future()
        hello: asyncio.Future[Message] = loop.create_future()
        self._pending[0] = hello  # HELLO's request id
        try:
            transport, replies = await loop.create_unix_connection(
                lambda: ReplyProtocol(self._route, self._lost), sock=parent
            )
            self._replies = replies
            self._sock = parent
            self._writer = asyncio.StreamWriter(transport, replies, None, loop)
            first = await asyncio.wait_for(hello, wait_s)
        except (TimeoutError, Unavailable) as exc:  # Unavailable: WorkerDied, the stream ended
            self.kill()
            raise Unavailable(
                f"worker for device {self.device} did not start ({type(exc).__name__}); "
                f"{self._exit_status()}"
            ) from exc
        except BaseException:  # cancelled (the server is stopping): no orphan process
            self.kill()
            raise
        finally:
            self._pending.pop(0, None)
        if not isinstance(first, Hello):
            self.kill()
            raise Unavailable(f"worker for device {self.device} sent {first.KIND.name} first")
        self.hello = first
        self._task = asyncio.create_task(self._end_when_lost(), name=f"worker-{self.device}")

    def request(self, message_of: Callable[[int], Message]) -> Coroutine[Any, Any, Message]:
        """Send the message built for a fresh request id; return the reply.

        Raises the worker's error as a ModelyardError (from its (code, message)), or WorkerDied.
        """
        return self._exchange(message_of, None)

    def infer(
        self,
        model: str,
        version: int,
        tensors: Mapping[str, np.ndarray],
        signature_name: str | None,
        budget_ms: float | None,
    ) -> Coroutine[Any, Any, Message]:
        """``request`` of ``Infer(rid, model, version, tensors, signature_name, budget_ms)``,
        its frame written without building the message (``encode_infer``): the request of
        every inference."""
        return self._exchange(None, (model, version, tensors, signature_name, budget_ms))

    async def _exchange(
        self,
        message_of: Callable[[int], Message] | None,
        infer: tuple[str, int, Mapping[str, np.ndarray], str | None, float | None] | None,
    ) -> Message:
        """``request(message_of)``, or with ``infer`` the inference of ``infer``'s fields.
        (``request`` and ``infer`` return this coroutine itself: no coroutine of their own.)"""
        writer = self._writer
        if self._dead is not None or writer is None:
            raise WorkerDied(self._dead or f"worker for device {self.device} is not running")
        # Written through the transport itself: a StreamWriter's writelines and transport are
        # Python calls that only pass it on.
        transport = writer.transport
        if transport.is_closing():
            # A write to a dead peer closed the transport before the read loop saw the end
            # (uvloop then raises RuntimeError on the next write instead of OSError).
            raise WorkerDied(f"worker for device {self.device} (pid {self.pid}): connection closed")
        request_id = next(self._ids)
        # The connection's loop, remembered: get_running_loop() calls getpid(), a system call.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()
        self._pending[request_id] = future
        cancellable = infer is not None
        try:
            if infer is not None:
                parts = encode_infer(request_id, *infer)
            else:
                assert message_of is not None
                message = message_of(request_id)
                cancellable = isinstance(message, Infer)
                parts = encode(message)
            corked = self._corked
            if corked is not None:  # sent with the others written in this turn, in order
                corked += parts
            elif len(self._pending) > 1 and sum(map(len, parts)) <= CORK_BYTES:
                self._corked = parts
                loop.call_soon(self._uncork, transport)
            else:
                transport.writelines(parts)
                if transport.get_write_buffer_size():  # else there is nothing to wait for
                    replies = self._replies
                    await (replies.drain() if replies is not None else writer.drain())
                elif len(self._pending) == 1:
                    self._read_now()
            reply = await future
        except asyncio.CancelledError:
            # The caller is gone (client disconnected, deadline passed): an inference it
            # still waits for in the worker's queue is not run (no reply comes for it).
            if cancellable and not transport.is_closing():
                cancel = encode(Cancel(request_id))
                if self._corked is not None:  # after its INFER, which may still be corked
                    self._corked += cancel
                else:
                    transport.writelines(cancel)
            raise
        except (ConnectionError, OSError) as exc:
            raise WorkerDied(self._dead or f"worker for {self.device}: {exc}") from exc
        finally:
            self._pending.pop(request_id, None)
        if isinstance(reply, Error):
            raise reply.exception()
        return reply

    def _uncork(self, transport: asyncio.WriteTransport) -> None:
        """Send the frames written since the cork was put in, in one write (``request``): at
        many requests in flight a turn of the loop writes several, and each ``send`` cost
        about as much of the front end's CPU as the rest of its request's hop. A request that
        is the only one in flight is written at once, so its latency is unchanged."""
        corked = self._corked
        self._corked = None
        if corked and not transport.is_closing():  # else the read loop fails their requests
            # A peer that is gone: the read loop sees the end and fails them (WorkerDied).
            with contextlib.suppress(ConnectionError, OSError, RuntimeError):
                transport.writelines(corked)

    def _read_now(self) -> None:
        """Read what the worker has sent already, without waiting, into ``_replies``.

        Called right after a request is written, when it is the only one in flight. On a
        loaded or small machine the write wakes the worker on this core, which usually answers
        before this process runs again: the reply is then in the socket when the write returns,
        and reading it here resolves the request's future before it is awaited, so the request
        goes on without a turn of the event loop (its poll, the read callback, the task's
        wake-up; issue 18). When nothing is there yet it costs one non-blocking ``recv``; the
        transport reads everything else as before (the stream stays in order: this runs on the
        loop's thread, between the transport's reads)."""
        sock, replies = self._sock, self._replies
        if sock is None or replies is None:
            return
        try:
            data = sock.recv(READ_NOW_BYTES, socket.MSG_DONTWAIT)
        except OSError:  # nothing there yet (BlockingIOError), or an error the transport sees
            return
        if data:  # b"": the end of the stream, which the transport reads and handles too
            replies.data_received(data)

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    async def stop(self, wait_s: float = 10.0) -> None:
        """Ask the worker to unload and exit; kill it when it does not within ``wait_s``.

        The supervisor's heartbeat keeps watching meanwhile: a worker that is stuck (stopped,
        deadlocked) is killed as soon as that is known instead of after ``wait_s``.
        """
        self._stopping = True
        answered = False
        if self.alive:
            try:
                await asyncio.wait_for(self.request(lambda rid: Shutdown(rid)), wait_s)
                answered = True
            except (TimeoutError, Unavailable, Internal) as exc:
                log.warning("worker %s did not shut down cleanly: %s", self.device, exc)
        # After its DONE a worker exits at once; one that did not answer gets no more time.
        await self._wait_exit(2.0 if answered else 0.0)
        if self._proc is not None and self._proc.poll() is None:
            self.kill()
            await self._wait_exit(5.0)
        if self._writer is not None:
            self._writer.transport.abort()  # close() would wait to flush to a stuck peer
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def kill(self, reason: str | None = None) -> None:
        """SIGKILL the process now. With a reason (the heartbeat found it stuck): fail every
        request in flight with it and close the stream, so the read loop ends at once and
        ``exited`` follows (a restart) with the reason and the exit status."""
        if reason is not None and self._stuck is None:
            self._stuck = reason
            self._dead = reason
            self._fail_pending(reason)
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGKILL)
        if reason is not None and self._writer is not None:
            self._writer.transport.abort()  # wakes writers blocked on a full socket too

    # -- reading -------------------------------------------------------------------------

    async def wait_closed(self) -> None:
        """Return once this worker's end has been handled (``on_exit`` called, if it will be)."""
        if self._task is not None:
            await asyncio.wait({self._task})  # never raises: _read_loop handles its own errors

    async def _read_message(self) -> Message:
        assert self._reader is not None
        reader = self._reader
        header_len, n_buffers, body_len = split_prefix(await reader.readexactly(PREFIX_BYTES))
        return decode_body(await reader.readexactly(body_len), header_len, n_buffers)

    def _route(self, message: Message) -> None:
        """A reply: to the request waiting for it (a late one, whose caller is gone, is
        dropped)."""
        if self._events is not None:
            self._events.heard()  # any frame answers the heartbeat
        future = self._pending.get(message.request_id)
        if future is not None and not future.done():
            future.set_result(message)

    def _lost(self, reason: str, malformed: bool) -> None:
        """The stream ended (or broke): fail what is in flight now (the exit status comes a
        moment later, in ``_finish``)."""
        if malformed:
            self.kill()
        if self._stuck is None:
            self._dead = f"worker for device {self.device} (pid {self.pid}) stopped: {reason}"
            self._fail_pending(self._dead)
        if self._ended is not None and not self._ended.done():
            self._ended.set_result(None)

    async def _end_when_lost(self) -> None:
        assert self._ended is not None
        await self._ended
        await self._finish()

    async def _read_loop(self) -> None:
        """Read replies through ``_reader`` until the stream ends (a subclass's connection,
        which reads through a ``StreamReader``), then handle the end."""
        try:
            while True:
                self._route(await self._read_message())
        except (asyncio.IncompleteReadError, ConnectionError):
            self._lost("its connection closed", False)
        except ProtocolError as exc:
            self._lost(f"it sent a malformed frame ({exc})", True)
        await self._finish()

    async def _finish(self) -> None:
        """The end of the stream, once in-flight requests have failed: the exit status, the
        transport closed, ``exited`` told (unless stopping)."""
        await self._wait_exit(2.0)
        if self._stuck is not None:
            self._dead = f"{self._stuck} and {self._exit_status()}"
        else:
            self._dead = f"worker for device {self.device} (pid {self.pid}) {self._exit_status()}"
        if self._writer is not None:
            self._writer.transport.abort()
        if not self._stopping and self._events is not None:
            self._events.exited(self._dead)

    # -- the heartbeat (run by the supervisor's ``Heartbeat``) ----------------------------

    def ping(self) -> None:
        writer = self._writer
        if writer is None or writer.transport.is_closing():
            return
        try:
            writer.writelines(encode(Ping(next(self._ids))))  # no reply awaited: any frame counts
        except (ConnectionError, OSError, RuntimeError):
            return  # the read loop notices the end of the stream

    def probe(self) -> ProcessSample | None:
        return sample_process(self._proc.pid) if self._proc is not None else None

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerDied(reason))

    async def _wait_exit(self, wait_s: float) -> None:
        deadline = time.monotonic() + wait_s
        while self._proc is not None and self._proc.poll() is None:
            if time.monotonic() > deadline:
                return
            await asyncio.sleep(0.01)

    def _exit_status(self) -> str:
        code = self._proc.poll() if self._proc is not None else None
        if code is None:
            return "has not exited"
        if code < 0:
            try:
                return f"was killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"was killed by signal {-code}"
        return f"exited with code {code}"


def _widen_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)
        except OSError:  # a platform that refuses the size keeps its default
            log.debug("worker socket: could not set buffer option %s", option)
