"""``ListenError``: a front end could not listen on its address (a port in use, a bad host).

Raised by the REST and gRPC front ends when binding fails, so the CLI can name the flag that
chose the address (``--rest_api_port`` or ``--port``, and ``--host``) instead of guessing from
a message. Imports nothing but the error tree, so the CLI may import it before serving.
"""

from __future__ import annotations

import enum

from modelyard.errors import Unavailable


class Protocol(enum.Enum):
    REST = "REST"
    GRPC = "gRPC"


class ListenError(Unavailable):
    """Binding ``host:port`` for ``protocol`` failed because of ``reason`` (the OS's words)."""

    def __init__(self, protocol: Protocol, host: str, port: int, reason: str) -> None:
        super().__init__(f"cannot listen on {host}:{port} for {protocol.value}: {reason}")
        self.protocol = protocol
        self.host = host
        self.port = port
        self.reason = reason
