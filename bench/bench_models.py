"""The two benchmark models, written as ONNX MLPs at bench time (nothing is downloaded).

- ``tiny``: 64 -> 256 -> 256 -> 10, ReLU between layers; requests carry 1 row.
- ``medium``: 1024 -> 4096 -> 4096 -> 1024 (about 25 M parameters, 100 MB); requests carry 8 rows.

Both take ``x`` FP32 [batch, in] and return ``y`` FP32 [batch, out], with a symbolic batch
dimension so the server may batch them. Weights are seeded, so every run serves the same model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelyard.testing.models import ONNX_IR_VERSION, ONNX_OPSET


@dataclass(frozen=True)
class BenchModel:
    name: str
    layers: tuple[int, ...]
    rows_per_request: int

    @property
    def in_features(self) -> int:
        return self.layers[0]

    @property
    def out_features(self) -> int:
        return self.layers[-1]

    def example(self, rows: int | None = None, seed: int = 0) -> np.ndarray:
        """A request's input: ``rows`` (default: ``rows_per_request``) rows of ``x``."""
        rng = np.random.default_rng(seed)
        shape = (rows or self.rows_per_request, self.in_features)
        return rng.standard_normal(shape).astype(np.float32)


TINY = BenchModel("tiny", (64, 256, 256, 10), rows_per_request=1)
MEDIUM = BenchModel("medium", (1024, 4096, 4096, 1024), rows_per_request=8)
MODELS = (TINY, MEDIUM)


def write_mlp(model: BenchModel, version_dir: Path, seed: int = 0) -> Path:
    """Write ``version_dir/model.onnx`` for ``model``: Gemm + ReLU per hidden layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = []
    initializers = []
    current = "x"
    pairs = list(zip(model.layers[:-1], model.layers[1:], strict=True))
    for i, (fan_in, fan_out) in enumerate(pairs):
        # He-initialised so activations stay in range through the layers.
        w = (rng.standard_normal((fan_out, fan_in)) * np.sqrt(2.0 / fan_in)).astype(np.float32)
        b = np.zeros(fan_out, dtype=np.float32)
        initializers += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        last = i == len(pairs) - 1
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [out], transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            current = f"r{i}"
    graph = helper.make_graph(
        nodes,
        model.name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", model.in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", model.out_features])],
        initializer=initializers,
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)], ir_version=ONNX_IR_VERSION
    )
    version_dir.mkdir(parents=True, exist_ok=True)
    path = version_dir / "model.onnx"
    onnx.save(proto, str(path))
    return path
