"""TF Serving's Classify and Regress, protocol-neutral: ``tf.Example``s in, results out.

A classify or regress signature (``method_name`` ``tensorflow/serving/classify`` or
``.../regress``) takes one BYTES tensor of serialized ``tf.Example``s and returns ``classes``
(BYTES ``[batch, k]``) and/or ``scores`` (FP32 ``[batch, k]``), or ``outputs`` (FP32
``[batch]`` or ``[batch, 1]``). The REST and gRPC adapters turn their examples into serialized
bytes (REST: JSON feature dicts via ``examples_from_json``; gRPC: ``tf.Example`` messages),
call ``classify``/``regress`` here, and encode what comes back.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.errors import Internal, InvalidArgument
from modelyard.server.dataplane import DataPlane, ModelRef, Resolved
from modelyard.tensors import DEFAULT_SIGNATURE, DataType, Signature, SignatureMethod
from modelyard.tfproto.generated import tensorflow_core_pb2 as core


@dataclass(frozen=True, slots=True)
class Classification:
    """One example's classes, best first as the model returned them: (label, score) pairs."""

    classes: tuple[tuple[bytes, float], ...]


async def classify(
    dataplane: DataPlane,
    ref: ModelRef | Resolved,
    examples: Sequence[bytes],
    signature_name: str | None,
) -> tuple[int, list[Classification]]:
    """Run a classify signature; the version that ran and one Classification per example.

    ``ref``: what the request names, or what the adapter already resolved it to."""
    outputs, version = await _run(
        dataplane, ref, examples, signature_name, SignatureMethod.CLASSIFY
    )
    classes = outputs.get("classes")
    scores = outputs.get("scores")
    if classes is None and scores is None:
        raise Internal("the classify signature returned neither 'classes' nor 'scores'")
    rows = len(examples)
    width = (
        classes.size if classes is not None else scores.size if scores is not None else 0
    ) // rows
    labels = classes.reshape(rows, width) if classes is not None else None
    values = scores.reshape(rows, width) if scores is not None else None
    results = [
        Classification(
            tuple(
                (
                    bytes(labels[i, j]) if labels is not None else b"",
                    float(values[i, j]) if values is not None else 0.0,
                )
                for j in range(width)
            )
        )
        for i in range(rows)
    ]
    return version, results


async def regress(
    dataplane: DataPlane,
    ref: ModelRef | Resolved,
    examples: Sequence[bytes],
    signature_name: str | None,
) -> tuple[int, list[float]]:
    """Run a regress signature; the version that ran and one value per example (``ref`` as for
    ``classify``)."""
    outputs, version = await _run(dataplane, ref, examples, signature_name, SignatureMethod.REGRESS)
    values = outputs.get("outputs")
    if values is None or values.size != len(examples):
        raise Internal("the regress signature did not return one 'outputs' value per example")
    return version, [float(v) for v in values.reshape(-1)]


async def _run(
    dataplane: DataPlane,
    ref: ModelRef | Resolved,
    examples: Sequence[bytes],
    signature_name: str | None,
    method: SignatureMethod,
) -> tuple[dict[str, np.ndarray], int]:
    if not examples:
        raise InvalidArgument("the request has no examples")
    name = signature_name or DEFAULT_SIGNATURE
    target = ref.named(name) if isinstance(ref, Resolved) else dataplane.resolve(ref, name)
    signature = target.signature
    _check_method(signature, name, method)
    tensor = np.empty(len(examples), dtype=object)
    tensor[:] = list(examples)
    result = await dataplane.infer(target, {signature.inputs[0].name: tensor})
    return result.outputs, result.version


def _check_method(signature: Signature, name: str, method: SignatureMethod) -> None:
    verb = "Classify" if method is SignatureMethod.CLASSIFY else "Regress"
    if signature.method is not method:
        raise InvalidArgument(
            f"{verb} needs a signature with method_name {method.value}; signature {name!r} has "
            f"{signature.method.value}"
        )
    ok = len(signature.inputs) == 1 and signature.inputs[0].datatype is DataType.BYTES
    if not ok:
        raise InvalidArgument(
            f"signature {name!r} must take one string tensor of serialized tf.Examples; it takes "
            + signature.describe_inputs()
        )


# -- REST: JSON examples -> serialized tf.Example ----------------------------------------


def examples_from_json(examples: Any, context: Any = None) -> list[bytes]:
    """TF Serving REST's ``examples`` (and optional ``context``) as serialized ``tf.Example``s.

    Each example is an object of feature name -> value or list of values: JSON integers make an
    int64 list, numbers with a fraction a float list, strings and ``{"b64": ...}`` a bytes list.
    ``context`` features are added to every example (an example's own feature wins).
    """
    if not isinstance(examples, list) or not examples:
        raise InvalidArgument("'examples' must be a non-empty list of feature objects")
    shared = _features(context, "context") if context is not None else {}
    out: list[bytes] = []
    for index, example in enumerate(examples):
        message = core.Example()
        merged = {**shared, **_features(example, f"examples[{index}]")}
        for name, feature in merged.items():
            message.features.feature[name].CopyFrom(feature)
        out.append(message.SerializeToString())
    return out


def _features(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidArgument(f"{where} must be an object of feature name -> values")
    return {name: _feature(item, f"{where}.{name}") for name, item in value.items()}


def _feature(value: Any, where: str) -> Any:
    items = value if isinstance(value, list) else [value]
    feature = core.Feature()
    if all(isinstance(v, str) or _is_b64(v) for v in items):
        feature.bytes_list.value.extend(_bytes(v, where) for v in items)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        feature.int64_list.value.extend(items)
    elif all(isinstance(v, int | float) and not isinstance(v, bool) for v in items):
        feature.float_list.value.extend(float(v) for v in items)
    else:
        raise InvalidArgument(
            f"{where} must hold numbers, or strings and {{'b64': ...}} values, not a mix"
        )
    return feature


def _is_b64(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"}


def _bytes(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode()
    return b64_bytes(value["b64"], where)


def b64_bytes(encoded: Any, where: str) -> bytes:
    """The bytes of TF Serving JSON's ``{"b64": encoded}``; InvalidArgument naming ``where``
    for anything but a string of base64 (binascii.Error and the ValueError of a non-ASCII
    string are both ValueErrors; a number or a list is a TypeError)."""
    try:
        return base64.b64decode(encoded, validate=True)
    except (ValueError, TypeError):
        raise InvalidArgument(f"{where} has a b64 value that is not valid base64") from None


def merge_context(examples: Sequence[Any], context: Any | None) -> list[bytes]:
    """gRPC ``ExampleListWithContext``: each example with the context's features added."""
    out: list[bytes] = []
    for example in examples:
        if context is not None:
            merged = core.Example()
            merged.CopyFrom(context)
            merged.MergeFrom(example)
            out.append(merged.SerializeToString())
        else:
            out.append(example.SerializeToString())
    return out


def classification_json(results: Sequence[Classification]) -> list[list[list[Any]]]:
    """TF Serving REST's classify ``result``: per example, ``[label, score]`` pairs."""
    return [[[_label(label), score] for label, score in r.classes] for r in results]


def _label(label: bytes) -> Any:
    try:
        return label.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(label).decode()}


__all__ = [
    "Classification",
    "classification_json",
    "classify",
    "examples_from_json",
    "merge_context",
    "regress",
]
