"""Small deterministic models, written as real artifacts, with numpy references for their outputs.

Every builder writes one version folder and returns a ``BuiltModel``: the artifact's path, the
signature the backend must report, a numpy ``reference`` that computes the expected outputs
without any ML framework, and an ``example`` input. Weights come from ``numpy.random`` with the
given seed, so the same call writes the same model and two seeds give two different models.

The ONNX builders need ``onnx`` only; the torch builders import torch when called. Nothing here
imports pytest, so integration tests, benchmarks and the demo can use it too::

    config_path, models = build_test_repository(tmp_path)
    expected = models["mlp"][2].reference({"x": x})["output_0"]
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from modelyard.config.schema import Platform
from modelyard.tensors import DataType, Signature, TensorSpec

Reference = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]
"""Expected outputs, keyed by output name, for inputs keyed by input name."""

ONNX_OPSET = 17
"""An opset every supported onnxruntime (>= 1.17) runs."""
ONNX_IR_VERSION = 8

MlpWeights = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""``(w1, b1, w2, b2)`` in float32, shaped as ``torch.nn.Linear`` stores them (out, in)."""


@dataclass(frozen=True)
class BuiltModel:
    """One model version on disk and what a test needs to check answers about it."""

    artifact: Path
    platform: Platform
    signature: Signature
    """What the backend reports; for TorchScript, what the config must declare."""
    reference: Reference = field(repr=False)
    example: dict[str, np.ndarray] = field(repr=False)
    """A valid input, with a batch of two rows."""
    declared: bool = False
    """True when the format carries no signature and the config must declare ``signature``."""

    @property
    def version_dir(self) -> Path:
        return self.artifact.parent


def mlp_weights(in_features: int, hidden: int, out_features: int, seed: int) -> MlpWeights:
    """Deterministic MLP weights for ``seed``."""
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, in_features)) * 0.5).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((out_features, hidden)) * 0.5).astype(np.float32)
    b2 = (rng.standard_normal(out_features) * 0.1).astype(np.float32)
    return w1, b1, w2, b2


def _mlp_reference(weights: MlpWeights, input_name: str, output_name: str) -> Reference:
    w1, b1, w2, b2 = weights

    def reference(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = np.asarray(inputs[input_name], dtype=np.float32)
        hidden = np.maximum(x @ w1.T + b1, np.float32(0))
        return {output_name: (hidden @ w2.T + b2).astype(np.float32)}

    return reference


def _example(seed: int, *shape: int) -> np.ndarray:
    return np.random.default_rng(seed + 1000).standard_normal(shape).astype(np.float32)


def write_torch_export_mlp(
    version_dir: Path,
    in_features: int = 4,
    hidden: int = 8,
    out_features: int = 3,
    seed: int = 0,
    dynamic_batch: bool = True,
) -> BuiltModel:
    """Write ``model.pt2``: input ``x`` FP32 [batch, in] -> ``output_0`` FP32 [batch, out].

    With ``dynamic_batch`` the batch dimension is symbolic (served as -1); without it the program
    is specialised to batch 2, the example's size.
    """
    import torch

    from modelyard.testing._torch_models import Mlp

    weights = mlp_weights(in_features, hidden, out_features, seed)
    example = _example(seed, 2, in_features)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    program = torch.export.export(
        Mlp(*weights), (torch.from_numpy(example),), dynamic_shapes=dynamic_shapes
    )
    artifact = _artifact(version_dir, "model.pt2")
    torch.export.save(program, artifact)
    batch = -1 if dynamic_batch else 2
    return BuiltModel(
        artifact=artifact,
        platform=Platform.TORCH_EXPORT,
        signature=Signature(
            (TensorSpec("x", DataType.FP32, (batch, in_features)),),
            (TensorSpec("output_0", DataType.FP32, (batch, out_features)),),
        ),
        reference=_mlp_reference(weights, "x", "output_0"),
        example={"x": example},
    )


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


def write_torchscript_mlp(
    version_dir: Path,
    in_features: int = 4,
    hidden: int = 8,
    out_features: int = 3,
    seed: int = 0,
) -> BuiltModel:
    """Write ``model.pt`` (scripted): ``x`` FP32 [-1, in] -> ``y`` FP32 [-1, out].

    TorchScript carries no signature: ``signature`` is what the model's config must declare
    (``signature_config`` renders it as YAML keys).
    """
    import torch

    from modelyard.testing._torch_models import Mlp

    weights = mlp_weights(in_features, hidden, out_features, seed)
    artifact = _artifact(version_dir, "model.pt")
    # TorchScript is deprecated upstream but still what many deployments ship.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        torch.jit.save(torch.jit.script(Mlp(*weights)), str(artifact))
    return BuiltModel(
        artifact=artifact,
        platform=Platform.TORCHSCRIPT,
        signature=Signature(
            (TensorSpec("x", DataType.FP32, (-1, in_features)),),
            (TensorSpec("y", DataType.FP32, (-1, out_features)),),
        ),
        reference=_mlp_reference(weights, "x", "y"),
        example={"x": _example(seed, 2, in_features)},
        declared=True,
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


def write_onnx_linear(
    version_dir: Path,
    in_features: int = 4,
    out_features: int = 2,
    seed: int = 0,
    relu: bool = False,
) -> BuiltModel:
    """Write ``model.onnx``: ``x`` FP32 [batch, in] -> ``y`` = x @ W + B (then Relu if asked)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((in_features, out_features)) * 0.5).astype(np.float32)
    b = (rng.standard_normal(out_features) * 0.1).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["xw"]),
        helper.make_node("Add", ["xw", "B"], ["y_linear" if relu else "y"]),
    ]
    if relu:
        nodes.append(helper.make_node("Relu", ["y_linear"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")],
    )

    def reference(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        y = np.asarray(inputs["x"], dtype=np.float32) @ w + b
        return {"y": np.maximum(y, np.float32(0)) if relu else y}

    return BuiltModel(
        artifact=_save_onnx(graph, version_dir),
        platform=Platform.ONNX,
        signature=Signature(
            (TensorSpec("x", DataType.FP32, (-1, in_features)),),
            (TensorSpec("y", DataType.FP32, (-1, out_features)),),
        ),
        reference=reference,
        example={"x": _example(seed, 2, in_features)},
    )


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


def signature_config(signature: Signature) -> dict[str, list[dict[str, Any]]]:
    """The ``inputs:``/``outputs:`` config keys that declare ``signature``."""

    def entries(specs: Sequence[TensorSpec]) -> list[dict[str, Any]]:
        return [
            {"name": s.name, "datatype": s.datatype.value, "shape": list(s.shape)} for s in specs
        ]

    return {"inputs": entries(signature.inputs), "outputs": entries(signature.outputs)}


def model_config(name: str, versions: Mapping[int, BuiltModel], **extra: Any) -> dict[str, Any]:
    """A ``models:`` entry for versions written under ``<config dir>/<name>/<version>/``.

    Every version is served (``version_policy: {all: true}``) unless ``extra`` says otherwise;
    a declared signature is added for formats that need one.
    """
    first = next(iter(versions.values()))
    entry: dict[str, Any] = {
        "name": name,
        "base_path": name,
        "platform": first.platform.value,
        "version_policy": {"all": True},
    }
    if first.declared:
        entry.update(signature_config(first.signature))
    entry.update(extra)
    return entry


def write_config(path: Path, models: Sequence[Mapping[str, Any]], **top: Any) -> Path:
    """Write a modelyard YAML config with these ``models:`` entries (and top-level keys)."""
    text = yaml.dump(
        {**top, "models": list(models)}, Dumper=_ConfigDumper, sort_keys=False, width=100
    )
    path.write_text(text)
    return path


class _ConfigDumper(yaml.SafeDumper):
    """Writes each value out in full: people read these configs, and anchors confuse them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


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


def _artifact(version_dir: Path, name: str) -> Path:
    version_dir.mkdir(parents=True, exist_ok=True)
    return version_dir / name


def _save_onnx(graph: Any, version_dir: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
        producer_name="modelyard.testing",
    )
    onnx.checker.check_model(model, full_check=True)
    path = _artifact(version_dir, "model.onnx")
    onnx.save(model, str(path))
    return path


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
    "write_onnx_int64_affine",
    "write_onnx_linear",
    "write_onnx_sum_product",
    "write_torch_export_mlp",
    "write_torch_export_sum_product",
    "write_torchscript_mlp",
]
