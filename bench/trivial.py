"""Trivial endpoints that answer at once, to measure the load generator's own ceiling.

``python bench/trivial.py http|grpc|h2grpc`` prints its port, then answers every HTTP POST with a
fixed ``{}`` (reading the body by Content-Length) or every gRPC call with an empty message, until
killed (``grpc``: grpc.aio's server; ``h2grpc``: modelyard's own, ``server/grpc/fast.py``).
Whatever rate the generator reaches against it is the most it can measure.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any


class _Http(asyncio.Protocol):
    ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            head_end = self._buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self._buffer[:head_end]).lower()
            start = head.find(b"\r\ncontent-length:")
            length = 0
            if start >= 0:
                stop = head.find(b"\r\n", start + 2)
                length = int(head[start + 17 : stop if stop >= 0 else len(head)])
            end = head_end + 4 + length
            if len(self._buffer) < end:
                return
            del self._buffer[:end]
            self._transport.write(self.ANSWER)


async def _serve_http() -> None:
    server = await asyncio.get_running_loop().create_server(_Http, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


def _model_infer_handler() -> Any:
    """KServe's ``ModelInfer``, answering an empty message at once (raw bytes, no parsing)."""
    import grpc

    async def answer(request: bytes, context: Any) -> bytes:
        return b""

    return grpc.method_handlers_generic_handler(
        "inference.GRPCInferenceService",
        {"ModelInfer": grpc.unary_unary_rpc_method_handler(answer)},
    )


async def _serve_grpc() -> None:
    import grpc

    handler = _model_infer_handler()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def _serve_h2grpc() -> None:
    from modelyard.server.grpc.fast import FastServer
    from modelyard.server.grpc.http2 import Connection, server_factory

    handler = _model_infer_handler()
    fast = FastServer(4 << 20)
    fast.add_generic_rpc_handlers((handler,))
    connections: set[Connection] = set()
    factory = server_factory(fast, fast.limits, connections)
    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    kinds = {"http": _serve_http, "grpc": _serve_grpc, "h2grpc": _serve_h2grpc}
    uvloop.run(kinds[sys.argv[1]]())
