"""The writers of the demo's models: small deterministic models, written as real artifacts.

Every writer writes one version folder and returns a ``BuiltModel``: the artifact's path, the
signature the backend must report, a numpy ``reference`` that computes the expected outputs
without any ML framework, and an ``example`` input. Weights come from ``numpy.random`` with the
given seed, so the same call writes the same model and two seeds give two different models.

Product code: the demo (``modelyard serve`` with no config) builds its repository with these.
``modelyard.testing.models`` re-exports them beside the test-only builders; the dependency
points that way only (product code never imports ``modelyard.testing``).

The ONNX writers need ``onnx`` only; the torch writers import torch when called.
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
    """One model version on disk and what a caller needs to check answers about it."""

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


def example_input(seed: int, *shape: int) -> np.ndarray:
    """Deterministic FP32 standard-normal values of ``shape`` for ``seed``."""
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

    from modelyard.demo._torch_models import Mlp

    weights = mlp_weights(in_features, hidden, out_features, seed)
    example = example_input(seed, 2, in_features)
    dynamic_shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    program = torch.export.export(
        Mlp(*weights), (torch.from_numpy(example),), dynamic_shapes=dynamic_shapes
    )
    artifact = artifact_path(version_dir, "model.pt2")
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

    from modelyard.demo._torch_models import Mlp

    weights = mlp_weights(in_features, hidden, out_features, seed)
    artifact = artifact_path(version_dir, "model.pt")
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
        example={"x": example_input(seed, 2, in_features)},
        declared=True,
    )


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
        artifact=save_onnx(graph, version_dir),
        platform=Platform.ONNX,
        signature=Signature(
            (TensorSpec("x", DataType.FP32, (-1, in_features)),),
            (TensorSpec("y", DataType.FP32, (-1, out_features)),),
        ),
        reference=reference,
        example={"x": example_input(seed, 2, in_features)},
    )


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


def artifact_path(version_dir: Path, name: str) -> Path:
    """``version_dir / name``, with ``version_dir`` created."""
    version_dir.mkdir(parents=True, exist_ok=True)
    return version_dir / name


def save_onnx(graph: Any, version_dir: Path) -> Path:
    """Check ``graph`` (an ONNX ``GraphProto``) as a model and save it as ``model.onnx``."""
    import onnx
    from onnx import helper

    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
        ir_version=ONNX_IR_VERSION,
        producer_name="modelyard",
    )
    onnx.checker.check_model(model, full_check=True)
    path = artifact_path(version_dir, "model.onnx")
    onnx.save(model, str(path))
    return path


__all__ = [
    "ONNX_IR_VERSION",
    "ONNX_OPSET",
    "BuiltModel",
    "MlpWeights",
    "Reference",
    "artifact_path",
    "example_input",
    "mlp_weights",
    "model_config",
    "save_onnx",
    "signature_config",
    "write_config",
    "write_onnx_linear",
    "write_torch_export_mlp",
    "write_torchscript_mlp",
]
