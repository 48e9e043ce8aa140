"""Numeric JSON arrays straight into numpy, without a Python object per number.

A TF Serving REST request for a model with one numeric input is mostly one big nested list of
numbers: ``{"instances": [[0.1, ...], ...]}``. Parsed the general way (orjson, then
``np.asarray`` over the lists) every number becomes a Python float first, which for 8 rows of
1,024 floats costs about 0.35 ms of the front end's CPU per request, more than the rest of the
request's handling together. simdjson (pysimdjson) parses the document lazily and copies a
homogeneous numeric array into a flat buffer in C, about 0.1 ms for the same body.

The fast path takes a request only when it can prove the result is what the general path
would build; anything else (objects per instance, several inputs, strings, booleans, nulls,
ragged or mixed-depth lists, duplicate keys, invalid JSON, simdjson not installed) returns
None and the caller takes the general path, which also writes the error messages. The proof:

* every array above the innermost level has the length its first element implies, so the
  tree down to the rows is rectangular;
* the body holds exactly as many ``[`` as such a rectangle needs (one per array), so no leaf
  is itself an array (``[[1, [2]], ...]``, ``[[], [1, 2]]``) and nothing else in the body is
  an array; a ``[`` inside a string only sends the request to the general path;
* ``as_buffer`` refuses any leaf that is not a number of the requested kind (a string, a
  boolean, null; a fraction for an integer input).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelyard.tensors import DEFAULT_SIGNATURE, DataType, Signature, TensorSpec

try:
    import simdjson
except ImportError:  # the general path serves every request, only slower
    simdjson = None  # type: ignore[assignment]

MAX_CHECKED_ARRAYS = 4096
"""Beyond this many arrays above the innermost level (e.g. a 224x224x3 image: 50,176) checking
each one's length in Python costs more than it saves; such requests take the general path."""

_KINDS: dict[str, tuple[Literal["d", "i", "u"], type[np.generic]]] = {
    "f": ("d", np.float64),  # JSON integers are taken for float inputs too, as np.asarray does
    "i": ("i", np.int64),
    "u": ("u", np.uint64),
}


@dataclass(frozen=True, slots=True)
class NumericPredict:
    """A ``:predict`` body decoded by the fast path."""

    signature_name: str
    signature: Signature
    key: str  # "instances" (row format) or "inputs" (columnar)
    inputs: dict[str, np.ndarray]


def decode_predict(body: bytes, signature_of: Callable[[str], Signature]) -> NumericPredict | None:
    """The request when it is one numeric tensor for a one-input model; None otherwise.

    ``signature_of(name)`` resolves the named signature (and raises what the general path
    would for an unknown one).
    """
    if simdjson is None or not body:
        return None
    try:
        doc = simdjson.Parser().parse(body)
    except ValueError:  # not JSON: the general parser names the problem
        return None
    if not isinstance(doc, simdjson.Object):
        return None
    keys = list(doc.keys())
    if len(set(keys)) != len(keys) or not set(keys) <= {"instances", "inputs", "signature_name"}:
        return None
    payload_keys = [k for k in keys if k != "signature_name"]
    if len(payload_keys) != 1:
        return None
    name = doc.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(name, str):
        return None
    signature = signature_of(name)
    if len(signature.inputs) != 1:
        return None
    spec = signature.inputs[0]
    key = payload_keys[0]
    array = numeric_array(doc[key], body, spec)
    if array is None:
        return None
    return NumericPredict(name, signature, key, {spec.name: array})


def numeric_array(value: Any, body: bytes, spec: TensorSpec) -> np.ndarray | None:
    """``value`` (a simdjson Array inside ``body``) as an array of ``spec``'s dtype, or None
    when only the general path can decide (see the module docstring)."""
    want = spec.datatype.numpy
    kind = _KINDS.get(want.kind)
    if kind is None or spec.datatype is DataType.BOOL or not isinstance(value, simdjson.Array):
        return None
    shape = _first_shape(value)
    if shape is None:
        return None
    above_leaves = math.prod(shape[:-1])
    if above_leaves > MAX_CHECKED_ARRAYS or not _rectangular(value, shape, 0):
        return None
    arrays = sum(math.prod(shape[:depth]) for depth in range(len(shape)))
    if body.count(b"[") != arrays:
        return None
    of_type, flat_dtype = kind
    try:
        flat = np.frombuffer(value.as_buffer(of_type=of_type), dtype=flat_dtype)
    except (TypeError, ValueError):  # a leaf of another kind, or out of int64/uint64 range
        return None
    if flat.size != math.prod(shape):
        return None
    if want.kind in "iu" and flat.size:
        info = np.iinfo(want.type)  # type: ignore[type-var]
        if flat.min() < info.min or flat.max() > info.max:
            return None  # the general path names the value and the range
    return flat.astype(want).reshape(shape)


def _first_shape(value: Any) -> list[int] | None:
    """The shape implied by following first elements; None when some array on the way is
    empty (an empty tensor is left to the general path)."""
    shape = []
    node = value
    while isinstance(node, simdjson.Array):
        if not len(node):
            return None
        shape.append(len(node))
        node = node[0]
    return shape


def _rectangular(node: Any, shape: list[int], depth: int) -> bool:
    """Every array above the innermost level has ``shape``'s length at its depth."""
    if depth == len(shape) - 1:
        return True
    want = shape[depth + 1]
    for child in node:
        if not isinstance(child, simdjson.Array) or len(child) != want:
            return False
        if not _rectangular(child, shape, depth + 1):
            return False
    return True
