"""Small deterministic models, written as real artifacts, with numpy references for their outputs.

Every builder writes one version folder and returns a ``BuiltModel``: the artifact's path, the
signature the backend must report, a numpy ``reference`` that computes the expected outputs
without any ML framework, and an ``example`` input. Weights come from ``numpy.random`` with the
given seed, so the same call writes the same model and two seeds give two different models.

The ONNX builders need ``onnx`` only; the torch builders import torch when called. Nothing here
imports pytest, so integration tests and benchmarks can use it too. The MLP, linear and config
writers live in ``modelyard.demo.models`` (the demo is built with them) and are re-exported here::

    config_path, models = build_test_repository(tmp_path)
    expected = models["mlp"][2].reference({"x": x})["output_0"]
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.config.schema import Platform

# The demo's writers are product code (``modelyard serve`` builds the demo with them); they are
# re-exported here beside the test-only builders. testing may import demo, never the reverse.
from modelyard.demo.models import ONNX_IR_VERSION as ONNX_IR_VERSION
from modelyard.demo.models import ONNX_OPSET as ONNX_OPSET
from modelyard.demo.models import (
    BuiltModel,
    Reference,
    mlp_weights,
    model_config,
    signature_config,
    write_config,
    write_onnx_linear,
    write_torch_export_mlp,
    write_torchscript_mlp,
)
from modelyard.demo.models import artifact_path as _artifact
from modelyard.demo.models import example_input as _example
from modelyard.demo.models import save_onnx as _save_onnx
from modelyard.tensors import DataType, Signature, TensorSpec


def write_torch_export_sum_product(version_dir: Path, width: int = 3) -> BuiltModel:
    """Write ``model.pt2``: ``a``, ``b`` FP32 [-1, width] -> (``a + b``, ``a * b``), a tuple."""
    import torch

    from modelyard.testing._torch_models import SumProduct

    a, b = _example(1, 2, width), _example(2, 2, width)
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        SumProduct(),
        (torch.from_numpy(a), torch.from_numpy(b)),
        dynamic_shapes={"a": {0: batch}, "b": {0: batch}},
    )
    artifact = _artifact(version_dir, "model.pt2")
    torch.export.save(program, artifact)
    spec = (-1, width)
    return BuiltModel(
        artifact=artifact,
        platform=Platform.TORCH_EXPORT,
        signature=Signature(
            (TensorSpec("a", DataType.FP32, spec), TensorSpec("b", DataType.FP32, spec)),
            (
                TensorSpec("output_0", DataType.FP32, spec),
                TensorSpec("output_1", DataType.FP32, spec),
            ),
        ),
        reference=lambda i: {"output_0": i["a"] + i["b"], "output_1": i["a"] * i["b"]},
        example={"a": a, "b": b},
    )


def write_torchscript_loop(version_dir: Path, width: int = 4) -> BuiltModel:
    """Write ``model.pt`` (scripted): ``x`` FP32 [-1, width] and ``n`` INT64 [-1] -> ``y`` FP32
    [-1, width], ``x`` moved halfway towards 2, ``max(n)`` times over.

    A slow model on demand: a request's ``n`` sets how long it runs (a few microseconds a turn
    on a CPU), so tests hold a device busy for as long as they need. TorchScript runs the loop
    in C++ without the GIL, as a real model's kernels run.
    """
    import torch

    from modelyard.testing._torch_models import Loop

    artifact = _artifact(version_dir, "model.pt")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.save(torch.jit.script(Loop()), str(artifact))

    def reference(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(inputs["x"], dtype=np.float32)
        turns = int(np.max(inputs["n"])) if np.size(inputs["n"]) else 0
        y = x.copy()
        for _ in range(min(turns, 64)):  # float32 reaches 2 exactly well before 64 turns
            y = y * np.float32(0.5) + np.float32(1.0)
        return {"y": y}

    return BuiltModel(
        artifact=artifact,
        platform=Platform.TORCHSCRIPT,
        signature=Signature(
            (
                TensorSpec("x", DataType.FP32, (-1, width)),
                TensorSpec("n", DataType.INT64, (-1,)),
            ),
            (TensorSpec("y", DataType.FP32, (-1, width)),),
        ),
        reference=reference,
        example={"x": _example(0, 2, width), "n": np.array([3, 3], dtype=np.int64)},
        declared=True,
    )


def loop_turns_per_second(built: BuiltModel, turns: int = 50_000) -> float:
    """How many turns a second ``write_torchscript_loop``'s model makes on this machine, timed
    in this process after a warm-up run (a worker process on the CPU runs at about this pace),
    so a test can ask for a request of a given length: ``n = seconds * turns_per_second``."""
    import time

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        model = torch.jit.load(str(built.artifact))  # type: ignore[no-untyped-call]
    x = torch.from_numpy(built.example["x"])
    model(x, torch.tensor([10, 10]))  # TorchScript profiles and optimises the first runs
    model(x, torch.tensor([10, 10]))
    # The fastest of three: on a loaded machine one timing can run slow, and a pace taken too
    # low makes a "long" request end early; too high only makes it longer.
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        model(x, torch.tensor([turns, turns]))
        best = min(best, time.perf_counter() - started)
    return turns / max(best, 1e-6)


def write_onnx_sum_product(version_dir: Path, width: int = 3) -> BuiltModel:
    """Write ``model.onnx``: ``a``, ``b`` FP32 [-1, width] -> ``sum`` = a + b, ``product`` = a b."""
    from onnx import TensorProto, helper

    def info(name: str) -> Any:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Mul", ["a", "b"], ["product"]),
        ],
        "sum_product",
        [info("a"), info("b")],
        [info("sum"), info("product")],
    )
    spec = (-1, width)
    return BuiltModel(
        artifact=_save_onnx(graph, version_dir),
        platform=Platform.ONNX,
        signature=Signature(
            (TensorSpec("a", DataType.FP32, spec), TensorSpec("b", DataType.FP32, spec)),
            (TensorSpec("sum", DataType.FP32, spec), TensorSpec("product", DataType.FP32, spec)),
        ),
        reference=lambda i: {"sum": i["a"] + i["b"], "product": i["a"] * i["b"]},
        example={"a": _example(1, 2, width), "b": _example(2, 2, width)},
    )


def write_onnx_int64_affine(version_dir: Path, scale: int = 2, offset: int = 1) -> BuiltModel:
    """Write ``model.onnx``: ``x`` INT64 [-1, -1] -> ``y`` = x * scale + offset, INT64."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["scaled"]),
            helper.make_node("Add", ["scaled", "offset"], ["y"]),
        ],
        "int64_affine",
        [helper.make_tensor_value_info("x", TensorProto.INT64, ["batch", "width"])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", "width"])],
        initializer=[
            numpy_helper.from_array(np.array(scale, dtype=np.int64), "scale"),
            numpy_helper.from_array(np.array(offset, dtype=np.int64), "offset"),
        ],
    )
    return BuiltModel(
        artifact=_save_onnx(graph, version_dir),
        platform=Platform.ONNX,
        signature=Signature(
            (TensorSpec("x", DataType.INT64, (-1, -1)),),
            (TensorSpec("y", DataType.INT64, (-1, -1)),),
        ),
        reference=lambda i: {"y": np.asarray(i["x"], dtype=np.int64) * scale + offset},
        example={"x": np.array([[1, 2, 3], [-4, 5, 2**40]], dtype=np.int64)},
    )


def write_onnx_embedding(
    version_dir: Path, vocabulary: int = 100, width: int = 4, seed: int = 0
) -> BuiltModel:
    """Write ``model.onnx``: ``ids`` INT64 [-1, -1] -> ``vectors`` FP32 [-1, -1, width], the rows
    of a ``vocabulary`` x ``width`` table (an ONNX Gather).

    An id outside ``[-vocabulary, vocabulary)`` is a bad input only the model can detect (the
    signature cannot express it): onnxruntime refuses the whole call, as an embedding lookup in
    any framework does. The reference raises IndexError for such an id.
    """
    from onnx import TensorProto, helper, numpy_helper

    table = np.random.default_rng(seed).standard_normal((vocabulary, width)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0)],
        "embedding",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "length"])],
        [helper.make_tensor_value_info("vectors", TensorProto.FLOAT, ["batch", "length", width])],
        initializer=[numpy_helper.from_array(table, "table")],
    )
    return BuiltModel(
        artifact=_save_onnx(graph, version_dir),
        platform=Platform.ONNX,
        signature=Signature(
            (TensorSpec("ids", DataType.INT64, (-1, -1)),),
            (TensorSpec("vectors", DataType.FP32, (-1, -1, width)),),
        ),
        reference=lambda i: {"vectors": table[np.asarray(i["ids"], dtype=np.int64)]},
        example={"ids": np.array([[0, 1, 2], [vocabulary - 1, -1, 7]], dtype=np.int64)},
    )


def write_corrupt(version_dir: Path, artifact: str = "model.onnx", size: int = 512) -> Path:
    """Write ``size`` deterministic random bytes as ``artifact``; returns its path."""
    path = _artifact(version_dir, artifact)
    path.write_bytes(np.random.default_rng(1234).bytes(size))
    return path


def truncate(artifact: Path, keep_fraction: float = 0.5) -> Path:
    """Cut a written artifact to its first ``keep_fraction`` of bytes, as a failed copy would."""
    data = artifact.read_bytes()
    artifact.write_bytes(data[: int(len(data) * keep_fraction)])
    return artifact


def build_test_repository(
    root: Path, *, with_torch: bool = True, **top: Any
) -> tuple[Path, dict[str, dict[int, BuiltModel]]]:
    """Lay out a repository of every test model under ``root`` and write ``root/modelyard.yaml``.

    Models (all versions served):

    - ``linear``: ONNX 4 -> 2, versions 1 and 2 (different weights), labels stable: 1, canary: 2
    - ``sum_product``: ONNX, inputs ``a``, ``b`` -> outputs ``sum``, ``product``
    - ``int64_affine``: ONNX INT64 ``x`` -> ``y``
    - with torch: ``mlp`` (torch.export 4 -> 8 -> 3, versions 1 and 2, labels stable: 1,
      canary: 2) and ``scripted`` (TorchScript 4 -> 8 -> 3 with a declared signature)

    ``top`` adds top-level config keys (``devices=[...]``). Returns the config's path and, per
    model, per version, its ``BuiltModel``. Takes about 2 s with torch, 50 ms without.
    """
    root.mkdir(parents=True, exist_ok=True)
    labels = {"version_labels": {"stable": 1, "canary": 2}}
    models: dict[str, dict[int, BuiltModel]] = {
        "linear": {v: write_onnx_linear(root / "linear" / str(v), seed=v) for v in (1, 2)},
        "sum_product": {1: write_onnx_sum_product(root / "sum_product" / "1")},
        "int64_affine": {1: write_onnx_int64_affine(root / "int64_affine" / "1")},
    }
    if with_torch:
        models["mlp"] = {v: write_torch_export_mlp(root / "mlp" / str(v), seed=v) for v in (1, 2)}
        models["scripted"] = {1: write_torchscript_mlp(root / "scripted" / "1", seed=7)}
    entries = [
        model_config(name, versions, **(labels if len(versions) > 1 else {}))
        for name, versions in models.items()
    ]
    return write_config(root / "modelyard.yaml", entries, **top), models


__all__ = [
    "BuiltModel",
    "Reference",
    "build_test_repository",
    "mlp_weights",
    "model_config",
    "signature_config",
    "truncate",
    "write_config",
    "write_corrupt",
    "write_onnx_embedding",
    "write_onnx_int64_affine",
    "write_onnx_linear",
    "write_onnx_sum_product",
    "write_torch_export_mlp",
    "write_torch_export_sum_product",
    "write_torchscript_mlp",
]
