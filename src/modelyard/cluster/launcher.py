"""``RayLauncher``: the ``WorkerLauncher`` whose workers run on their device's cluster node.

For each launch it starts a ``WorkerStarter`` actor (``modelyard.cluster.actor``) on the
device's node (``NodeAffinitySchedulingStrategy(node_id, soft=False)``: that node or nowhere; no
CPU or GPU asked of Ray, since modelyard's plan, not Ray's logical resources, decides what runs
where and on which GPU), connects to the port it opened, proves itself with a one-time token,
and from then on speaks the worker protocol over that TCP connection: ``RayWorker`` is the local
``WorkerProcess`` (same read loop, request ids, cancels, pings, ``WorkerDied`` for every request
in flight the moment the connection ends) with a remote process behind it.

How an end is noticed, at once:

- the worker crashes or is killed: its connection closes (read loop), and the actor's ``wait``
  gives the exit status for the reason;
- the actor dies (its node lost, ``ray.kill``): the worker dies with it (``PR_SET_PDEATHSIG``)
  and its connection closes; where the node vanished without closing it (a cable pulled),
  ``wait`` raises Ray's actor-died error and the handle kills the connection itself; and the
  heartbeat's ping finds it silent within seconds in any case.

A device whose node is not in the cluster (lost, not yet joined) waits in ``launch`` for it,
up to the start timeout: the supervisor's restart then resumes on the node when it is back,
and the node watcher (``modelyard.cluster.watch``) retires the device meanwhile when its models
should move elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import signal
import time
from collections.abc import Mapping
from types import ModuleType
from typing import Any

from modelyard.cluster.actor import TOKEN_BYTES, WorkerStarter
from modelyard.cluster.nodes import NodeInfo, alive_nodes, find_node, labelled
from modelyard.errors import Unavailable
from modelyard.workers.client import READ_CHUNK_BYTES, WorkerProcess, _widen_buffers
from modelyard.workers.launcher import ProcessSample, WorkerEvents, WorkerSpec
from modelyard.workers.messages import Hello, ProtocolError

log = logging.getLogger(__name__)

NODE_POLL_S = 0.5
"""How often ``launch`` looks for a device's node that is not in the cluster."""


class RayLauncher:
    """Starts each device's worker on its node (see the module doc)."""

    def __init__(self, ray: ModuleType, nodes: Mapping[str, str]) -> None:
        """``nodes``: device name -> the node selector its worker runs on
        (``modelyard.cluster.nodes.find_node``)."""
        self._ray = ray
        self._nodes = dict(nodes)
        self._starter: Any = ray.remote(WorkerStarter)
        self._count = itertools.count(1)

    def node_of(self, device: str) -> str | None:
        return self._nodes.get(device)

    async def find(self, device: str) -> NodeInfo | None:
        """The alive node ``device`` is on now; None when it is not in the cluster."""
        selector = self._nodes.get(device)
        if selector is None:
            raise Unavailable(f"device {device!r} is not on any node of the cluster plan")
        records = await asyncio.to_thread(alive_nodes, self._ray)
        nodes = [NodeInfo(i, ip, label, custom) for i, (ip, label, custom) in
                 labelled(records).items()]  # fmt: skip
        return find_node(selector, nodes)

    async def launch(self, spec: WorkerSpec, events: WorkerEvents) -> RayWorker:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        deadline = time.monotonic() + spec.start_timeout_s
        node = await self.find(spec.device)
        while node is None:
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"worker for device {spec.device}: node {self._nodes[spec.device]!r} is not "
                    f"in the Ray cluster"
                )
            await asyncio.sleep(NODE_POLL_S)
            node = await self.find(spec.device)
        actor = self._starter.options(
            name=f"worker:{spec.device}:{next(self._count)}",
            scheduling_strategy=NodeAffinitySchedulingStrategy(node.node_id, soft=False),
            num_cpus=0,
            max_restarts=0,
            max_concurrency=4,  # wait() blocks for the worker's life; pid(), kill() still run
        ).remote()
        handle = RayWorker(spec, events, self._ray, actor, node)
        try:
            await handle.connect(max(1.0, deadline - time.monotonic()))
        except BaseException:
            handle.kill()
            raise
        return handle


class _RemoteProcess:
    """The parts of ``subprocess.Popen`` that ``WorkerProcess`` uses, for a worker on a node:
    ``pid``, ``poll()`` (its exit code once the actor's ``wait`` returned) and
    ``send_signal`` (SIGKILL: the actor, and with it the worker, is ended)."""

    def __init__(self, ray: ModuleType, actor: Any) -> None:
        self._ray = ray
        self._actor = actor
        self.pid = 0
        self.returncode: int | None = None
        self.lost = ""
        """Why the actor is gone (its node lost), when ``wait`` raised."""

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if sig == signal.SIGKILL:
            with contextlib.suppress(Exception):  # already dead: nothing to kill
                self._ray.kill(self._actor, no_restart=True)


class RayWorker(WorkerProcess):
    """One worker on a cluster node: the local handle over a TCP connection (module doc)."""

    def __init__(
        self, spec: WorkerSpec, events: WorkerEvents, ray: ModuleType, actor: Any, node: NodeInfo
    ) -> None:
        super().__init__(
            spec.device,
            spec.target,
            memory_cap_bytes=spec.memory_cap_bytes,
            infer_threads=spec.infer_threads,
            events=events,
        )
        self.node = node
        self._actor = actor
        self._remote = _RemoteProcess(ray, actor)
        self._proc = self._remote  # type: ignore[assignment]  # the Popen the base class polls
        self._watch: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self._remote.pid or None

    async def start(self, wait_s: float = 60.0) -> None:
        await self.connect(wait_s)

    async def connect(self, wait_s: float) -> None:
        """Have the actor listen, connect, send the token, and wait for the worker's HELLO."""
        token = secrets.token_bytes(TOKEN_BYTES)
        args = [
            f"--device={self.device}",
            f"--target={self.target}",
            f"--memory-cap-bytes={self._cap}",
            f"--infer-threads={self._threads}",
        ]
        try:
            async with asyncio.timeout(wait_s):
                host, port = await self._actor.start.remote(
                    self.node.ip, args, str(self.target), token, wait_s
                )
                self._reader, self._writer = await asyncio.open_connection(
                    host, port, limit=READ_CHUNK_BYTES
                )
                sock = self._writer.get_extra_info("socket")
                if sock is not None:
                    _widen_buffers(sock)
                self._writer.write(token)
                self._remote.pid = int(await self._actor.pid.remote() or 0)
                first = await self._read_message()
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ProtocolError) as exc:
            raise Unavailable(
                f"worker for device {self.device} on node {self.node.label} did not start "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        except Exception as exc:  # Ray's own errors: the actor died, could not be placed
            raise Unavailable(
                f"worker for device {self.device} on node {self.node.label} did not start: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(first, Hello):
            raise Unavailable(f"worker for device {self.device} sent {first.KIND.name} first")
        self.hello = first
        self._watch = asyncio.create_task(self._watch_actor(), name=f"actor-{self.device}")
        self._task = asyncio.create_task(self._read_loop(), name=f"worker-{self.device}")

    async def _watch_actor(self) -> None:
        """Wait for the worker's end as the actor sees it: its exit code, or the actor's death
        (then end the connection here too, in case the node vanished without closing it)."""
        try:
            code, _why = await self._actor.wait.remote()
            self._remote.returncode = code if code is not None else -signal.SIGKILL
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # RayActorError / ActorDiedError: the actor (or node) is gone
            died = type(exc).__name__
            self._remote.lost = f"its Ray actor on node {self.node.label} died ({died})"
            self._remote.returncode = -signal.SIGKILL
            if self._dead is None:
                self.kill(f"worker for device {self.device}: {self._remote.lost}")
            return
        self._remote.send_signal(signal.SIGKILL)  # the worker is gone: end its actor too

    def probe(self) -> ProcessSample | None:
        """None: a remote worker is judged on its silence alone (asking its node would block
        the event loop on a node that may be the one not answering)."""
        return None

    def _exit_status(self) -> str:
        if self._remote.lost:
            return self._remote.lost
        return f"on node {self.node.label} {super()._exit_status()}"

    async def stop(self, wait_s: float = 10.0) -> None:
        await super().stop(wait_s)
        self._remote.send_signal(signal.SIGKILL)
        if self._watch is not None:
            self._watch.cancel()
            await asyncio.gather(self._watch, return_exceptions=True)
