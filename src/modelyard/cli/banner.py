"""What ``modelyard serve`` prints once it is ready: where each model is, the URLs, and
ready-to-paste commands for every API, with inputs built from each model's signature."""

from __future__ import annotations

import json
import shlex
from importlib import resources
from typing import Any

import numpy as np

from modelyard import __version__
from modelyard.lifecycle.states import ModelState
from modelyard.server.runtime import Server
from modelyard.tensors import DataType, Signature, TensorSpec


def example_value(spec: TensorSpec, batch: int = 1) -> np.ndarray:
    """A small deterministic input for ``spec``: any-size dims become ``batch`` (first) or 1."""
    shape = tuple((batch if i == 0 else 1) if d < 0 else d for i, d in enumerate(spec.shape))
    count = int(np.prod(shape)) if shape else 1
    values: np.ndarray
    if spec.datatype is DataType.BYTES:
        values = np.array([b"hello"] * count, dtype=object)
        return values.reshape(shape)
    if spec.datatype is DataType.BOOL:
        values = np.arange(count) % 2 == 0
        return values.reshape(shape)
    values = np.arange(1, count + 1) % 10
    if spec.datatype.numpy.kind == "f":
        values = values / 2  # halves are exact in every float type, so they print cleanly
    return values.astype(spec.datatype.numpy).reshape(shape)


def example_inputs(signature: Signature) -> dict[str, np.ndarray]:
    return {spec.name: example_value(spec) for spec in signature.inputs}


def _tolist(array: np.ndarray) -> Any:
    if array.dtype == object:
        return np.vectorize(lambda b: b.decode())(array).tolist()
    return array.tolist()


def tfserving_curl(rest_url: str, model: str, signature: Signature) -> str:
    inputs = example_inputs(signature)
    if len(inputs) == 1:
        instances: Any = _tolist(next(iter(inputs.values())))
    else:
        rows = {name: _tolist(a) for name, a in inputs.items()}
        instances = [{name: rows[name][0] for name in rows}]
    body = json.dumps({"instances": instances}, separators=(",", ":"))
    return f"curl -s {rest_url}/v1/models/{model}:predict -d {shlex.quote(body)}"


def kserve_curl(rest_url: str, model: str, signature: Signature) -> str:
    tensors = [
        {
            "name": name,
            "shape": list(array.shape),
            "datatype": DataType.from_numpy(array.dtype).value,
            "data": _tolist(array.ravel()),
        }
        for name, array in example_inputs(signature).items()
    ]
    body = json.dumps({"inputs": tensors}, separators=(",", ":"))
    return (
        f"curl -s {rest_url}/v2/models/{model}/infer "
        f"-H 'Content-Type: application/json' -d {shlex.quote(body)}"
    )


# KServe v2 InferTensorContents field for each datatype (FP16 has none: raw contents only).
_CONTENTS_FIELD: dict[DataType, str] = {
    DataType.BOOL: "bool_contents",
    DataType.INT8: "int_contents",
    DataType.INT16: "int_contents",
    DataType.INT32: "int_contents",
    DataType.INT64: "int64_contents",
    DataType.UINT8: "uint_contents",
    DataType.UINT16: "uint_contents",
    DataType.UINT32: "uint_contents",
    DataType.UINT64: "uint64_contents",
    DataType.FP32: "fp32_contents",
    DataType.FP64: "fp64_contents",
}


def grpc_infer_request(model: str, signature: Signature) -> dict[str, Any] | None:
    """A ModelInferRequest as proto3 JSON with typed contents; None if a type has no field."""
    tensors = []
    for name, array in example_inputs(signature).items():
        datatype = DataType.from_numpy(array.dtype)
        if datatype not in _CONTENTS_FIELD:
            return None
        tensors.append(
            {
                "name": name,
                "datatype": datatype.value,
                "shape": list(array.shape),
                "contents": {_CONTENTS_FIELD[datatype]: array.ravel().tolist()},
            }
        )
    return {"model_name": model, "inputs": tensors}


def grpcurl_command(target: str, model: str, signature: Signature) -> str:
    protos = resources.files("modelyard.server.grpc") / "protos"
    request = grpc_infer_request(model, signature)
    method = "ModelInfer" if request is not None else "ModelMetadata"
    body = json.dumps(request if request is not None else {"name": model}, separators=(",", ":"))
    return (
        f"grpcurl -plaintext -import-path {protos} -proto grpc_service.proto "
        f"-d {shlex.quote(body)} {target} inference.GRPCInferenceService/{method}"
    )


def banner(server: Server, is_demo: bool) -> str:
    lines = [f"modelyard {__version__} ready" + (" (demo repository)" if is_demo else "")]
    by_device: dict[str, list[str]] = {}
    failed: list[str] = []
    examples: dict[str, Signature] = {}
    for entry in sorted(server.registry.entries(), key=lambda e: e.key):
        if entry.state is ModelState.AVAILABLE and entry.signature is not None:
            for replica in entry.replicas:
                by_device.setdefault(replica.device, []).append(str(entry.key))
            examples.setdefault(entry.key.model, entry.signature)
        else:
            failed.append(f"{entry.key} {entry.state.value}: {entry.error}")
    lines.append("Models by device:")
    for device, keys in sorted(by_device.items()):
        lines.append(f"  {device:<8} {', '.join(keys)}")
    for line in failed:
        lines.append(f"  NOT SERVING {line}")
    lines += [
        f"REST  {server.rest_url}    TF Serving /v1/models/..., KServe v2 /v2/...",
        f"gRPC  {server.grpc_target}    KServe v2 inference.GRPCInferenceService, "
        "TF Serving PredictionService/ModelService",
        f"Live page {server.rest_url}/    metrics {server.rest_url}/metrics",
        "Try:",
    ]
    for model, signature in examples.items():
        lines.append(f"  # {model}: TF Serving REST")
        lines.append(f"  {tfserving_curl(server.rest_url, model, signature)}")
        lines.append(f"  # {model}: KServe v2 REST")
        lines.append(f"  {kserve_curl(server.rest_url, model, signature)}")
    if examples:
        first = next(iter(examples))
        lines.append(f"  # {first}: KServe v2 gRPC (grpcurl)")
        lines.append(f"  {grpcurl_command(server.grpc_target, first, examples[first])}")
    return "\n".join(lines)
