"""Reconciling the signature an artifact carries with the one its config declares.

Shared by the backends whose formats carry a signature (torch.export, ONNX). Imports no framework.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from modelyard.errors import InvalidArgument
from modelyard.tensors import DataType, Signature, TensorSpec


def reconcile(artifact: Signature, declared: Signature | None, source: Path) -> Signature:
    """The signature to serve: the artifact's, renamed and narrowed by ``declared`` when given.

    Declared tensors are matched to the artifact's by position, inputs with inputs and outputs
    with outputs; their names replace the artifact's. Counts and datatypes must be equal. Shapes
    must have the same rank, and each dimension must be equal or ``-1`` on one side; the served
    dimension is the more specific of the two, so a config may fix a dimension the artifact
    leaves dynamic. Any disagreement raises InvalidArgument naming ``source`` and both specs.
    """
    if declared is None:
        return artifact
    inputs = _reconcile_side("input", artifact.inputs, declared.inputs, source)
    outputs = _reconcile_side("output", artifact.outputs, declared.outputs, source)
    return Signature(inputs, outputs)


def reject_bytes(signature: Signature, source: Path, framework: str) -> None:
    """Raise InvalidArgument for a BYTES tensor in ``signature``; ``framework`` cannot take it."""
    for spec in (*signature.inputs, *signature.outputs):
        if spec.datatype is DataType.BYTES:
            raise InvalidArgument(
                f"{source}: tensor {spec.describe()} is a string tensor; the {framework} backend "
                "supports numeric and BOOL tensors only"
            )


def check_unique_names(signature: Signature, source: Path) -> None:
    """Raise InvalidArgument when two inputs or two outputs share a name."""
    for side, specs in (("input", signature.inputs), ("output", signature.outputs)):
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InvalidArgument(f"{source}: {side} names must be unique; repeated: {dupes}")


def _reconcile_side(
    side: str,
    found: Sequence[TensorSpec],
    declared: Sequence[TensorSpec],
    source: Path,
) -> tuple[TensorSpec, ...]:
    if len(found) != len(declared):
        raise InvalidArgument(
            f"{source}: the config declares {len(declared)} {side}(s) "
            f"({', '.join(s.describe() for s in declared) or 'none'}) but the model has "
            f"{len(found)} ({', '.join(s.describe() for s in found) or 'none'})"
        )
    merged: list[TensorSpec] = []
    for position, (have, want) in enumerate(zip(found, declared, strict=True)):
        shape = _merge_shape(have.shape, want.shape)
        if want.datatype is not have.datatype or shape is None:
            raise InvalidArgument(
                f"{source}: {side} {position} is declared in the config as {want.describe()} "
                f"but the model has {have.describe()}; fix the config's {side}s: entry"
            )
        merged.append(TensorSpec(want.name, want.datatype, shape))
    return tuple(merged)


def _merge_shape(have: tuple[int, ...], want: tuple[int, ...]) -> tuple[int, ...] | None:
    """The more specific of two agreeing shapes, or None when they disagree."""
    if len(have) != len(want):
        return None
    merged: list[int] = []
    for a, b in zip(have, want, strict=True):
        if a >= 0 and b >= 0 and a != b:
            return None
        merged.append(a if a >= 0 else b)
    return tuple(merged)


__all__ = ["check_unique_names", "reconcile", "reject_bytes"]
