"""``WorkerStarter``: the Ray actor, pinned to a node, that starts one device's worker there.

The actor does not run models. It listens on its node's IP (port 0), accepts one connection
from the front end (which proves itself with a one-time token sent first), and starts the local
worker (``python -m modelyard.cluster.node_worker``, which runs ``modelyard.workers.worker``)
with that connection as its socket and the same clean environment the local launcher gives a
worker (``modelyard.workers.environment``: pinned to its GPU, no secrets). The actor's thread
that started the worker waits for it and records its exit status, which ``wait`` returns: the
front end learns the worker's end from the connection closing, its exit status from ``wait``,
and the actor's own death (its node lost) from ``wait`` raising Ray's actor-died error.

Requests never pass through the actor or Ray's object store: they go over the TCP connection,
in the worker protocol's frames (docs/cluster.md says why: measured).

Imported only on a cluster (it imports ``ray``); runs on the node, in Ray's worker process.
"""

from __future__ import annotations

import hmac
import os
import socket
import subprocess
import sys
import threading

import psutil

from modelyard.devices import DeviceTarget
from modelyard.workers.environment import worker_environment

TOKEN_BYTES = 16
ACCEPT_TRIES = 8
"""Connections that fail the token before the actor gives up listening (a port scanner)."""


class WorkerStarter:
    """One worker's starter on its node (a Ray actor; see the module doc)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._started = threading.Event()
        self._ended = threading.Event()
        self._code: int | None = None
        self._error = ""

    def start(
        self, host: str, worker_args: list[str], target: str, token: bytes, timeout_s: float
    ) -> tuple[str, int]:
        """Listen on ``host`` (the node's IP), port 0; return (host, port). A thread accepts
        the front end's connection and starts the worker on it."""
        listener = socket.create_server((host, 0))
        listener.settimeout(timeout_s)
        port = int(listener.getsockname()[1])
        threading.Thread(
            target=self._run,
            args=(listener, worker_args, DeviceTarget.parse(target), token),
            name="modelyard-worker",
            daemon=True,
        ).start()
        return host, port

    def _run(
        self, listener: socket.socket, args: list[str], target: DeviceTarget, token: bytes
    ) -> None:
        try:
            conn = self._accept(listener, token)
        except OSError as exc:
            self._error = f"no connection from the front end: {exc}"
            self._ended.set()
            return
        finally:
            listener.close()
        try:
            main = [sys.executable, "-m", "modelyard.cluster.node_worker"]
            argv = [*main, f"--parent-pid={os.getpid()}", "--", f"--fd={conn.fileno()}", *args]
            env = worker_environment(os.environ, target)
            self._proc = subprocess.Popen(
                argv, pass_fds=(conn.fileno(),), env=env, stdin=subprocess.DEVNULL
            )
        except OSError as exc:
            self._error = f"could not start the worker: {exc}"
            self._ended.set()
            return
        finally:
            conn.close()
            self._started.set()
        # This thread lives as long as the worker: the worker's PR_SET_PDEATHSIG is tied to it.
        self._code = self._proc.wait()
        self._ended.set()

    @staticmethod
    def _accept(listener: socket.socket, token: bytes) -> socket.socket:
        for _ in range(ACCEPT_TRIES):
            conn, _ = listener.accept()
            conn.settimeout(10.0)
            try:
                got = b""
                while len(got) < TOKEN_BYTES:
                    chunk = conn.recv(TOKEN_BYTES - len(got))
                    if not chunk:
                        break
                    got += chunk
            except OSError:
                got = b""
            if hmac.compare_digest(got, token):
                conn.settimeout(None)
                return conn
            conn.close()
        raise OSError(f"{ACCEPT_TRIES} connections without the token")

    def pid(self) -> int | None:
        """The worker's pid once started (waits up to 30 s for the start)."""
        self._started.wait(30.0)
        return self._proc.pid if self._proc is not None else None

    def wait(self) -> tuple[int | None, str]:
        """Block until the worker has ended: (its exit code, or None; why it did not start)."""
        self._ended.wait()
        return self._code, self._error

    def sample(self) -> tuple[str, float] | None:
        """The worker process's status and CPU seconds now; None when gone."""
        if self._proc is None:
            return None
        try:
            proc = psutil.Process(self._proc.pid)
            with proc.oneshot():
                times = proc.cpu_times()
                return proc.status(), float(times.user + times.system)
        except psutil.Error:
            return None

    def kill(self) -> None:
        """SIGKILL the worker now."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
