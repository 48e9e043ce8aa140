"""Wire payloads for one benchmark request in each protocol, encoded once before a run.

Each function returns exactly the bytes a real client sends: the whole HTTP/1.1 request
(request line, headers and body) for the REST protocols, the serialised ``ModelInferRequest``
for gRPC. The load generator replays them unchanged.
"""

from __future__ import annotations

import json

import numpy as np
import orjson

from modelyard.server.grpc.generated import grpc_service_pb2 as pb

PROTOCOLS = ("tfs_rest", "kserve_json", "kserve_binary", "kserve_grpc")
LABELS = {
    "tfs_rest": "TF Serving REST",
    "kserve_json": "KServe v2 REST JSON",
    "kserve_binary": "KServe v2 REST binary",
    "kserve_grpc": "KServe v2 gRPC",
    "tfs_rest_h2load": "TF Serving REST (h2load)",
    "kserve_grpc_h2load": "KServe v2 gRPC (h2load)",
}
GRPC_METHOD = "/inference.GRPCInferenceService/ModelInfer"
H2LOAD_GRPC = "kserve_grpc_h2load"
"""The KServe gRPC points measured with h2load (``bench/h2grpc.py``): the same request bytes."""
H2LOAD_REST = "tfs_rest_h2load"
"""The TF Serving REST points measured with h2load (``--h1``): the same request."""
REPORTED = (*PROTOCOLS, H2LOAD_REST, H2LOAD_GRPC)
"""Every protocol a report may hold points for, in table order."""


def _http(path: str, body: bytes, content_type: str, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def http_parts(request: bytes) -> tuple[str, list[str], bytes]:
    """A REST ``payload`` taken apart for a generator that writes its own request line: its
    path, its header lines but Host and Content-Length (the generator's own), and its body."""
    head, _, body = request.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = [h for h in lines[1:] if not h.lower().startswith(("host:", "content-length:"))]
    return lines[0].split(" ")[1], headers, body


def payload(protocol: str, model: str, x: np.ndarray) -> bytes:
    """The bytes of one request to ``model`` with input ``x`` (FP32) over ``protocol``."""
    shape = list(x.shape)
    if protocol == "tfs_rest":
        body = orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY)
        return _http(f"/v1/models/{model}:predict", body, "application/json")
    if protocol == "kserve_json":
        tensor = {"name": "x", "shape": shape, "datatype": "FP32", "data": x.ravel()}
        body = orjson.dumps({"inputs": [tensor]}, option=orjson.OPT_SERIALIZE_NUMPY)
        return _http(f"/v2/models/{model}/infer", body, "application/json")
    if protocol == "kserve_binary":
        raw = np.ascontiguousarray(x, dtype=np.float32).tobytes()
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "x",
                        "shape": shape,
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": len(raw)},
                    }
                ],
                "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
            }
        ).encode()
        return _http(
            f"/v2/models/{model}/infer",
            header + raw,
            "application/octet-stream",
            f"Inference-Header-Content-Length: {len(header)}\r\n",
        )
    if protocol == "kserve_grpc":
        request = pb.ModelInferRequest(model_name=model)
        tensor = request.inputs.add()
        tensor.name = "x"
        tensor.datatype = "FP32"
        tensor.shape.extend(shape)
        request.raw_input_contents.append(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        return bytes(request.SerializeToString())
    raise ValueError(f"unknown protocol {protocol!r}; one of {', '.join(PROTOCOLS)}")
