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

Small bodies (under ``FAST_FROM_BYTES``) are parsed by orjson, and ``small_floats`` takes the
usual one of them, ``{"instances": [[...]]}`` or ``{"inputs": [...]}`` for one float input,
with a cheaper proof than the general checks (see there).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from modelyard.tensors import DEFAULT_SIGNATURE, DataType, Signature, TensorSpec, overflowed

try:
    import simdjson as simdjson  # re-exported: tests switch the fast path off through it
except ImportError:  # the general path serves every request, only slower
    simdjson = None  # type: ignore[assignment]

FAST_FROM_BYTES = 4096
"""Bodies under this size take the general path: its ``orjson`` + ``np.asarray`` cost less than
this module's fixed cost (its checks are Python code per request). Measured on the TF Serving
and KServe JSON bodies of one row: 64 floats (0.7 KB) 145 us here against 76 us general; 512
floats (5.6 KB) about equal; 1,024 floats (11 KB) 160 us against 256 us. Callers check it
(``use_fast_path``), so these functions still decode any body they are given."""

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


def use_fast_path(body: bytes) -> bool:
    """Whether ``body`` is worth this module's path (see ``FAST_FROM_BYTES``)."""
    return len(body) >= FAST_FROM_BYTES and simdjson is not None


def decode_predict(body: bytes, signature_of: Callable[[str], Signature]) -> NumericPredict | None:
    """The request when it is one numeric tensor for a one-input model; None otherwise.

    ``signature_of(name)`` resolves the named signature (and raises what the general path
    would for an unknown one).
    """
    doc = _parse_object(body)
    keys = _keys(doc) if doc is not None else None
    if keys is None or not set(keys) <= {"instances", "inputs", "signature_name"}:
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


def small_floats(raw: bytes, key: str, value: Any, datatype: DataType) -> np.ndarray | None:
    """``value``, the one member ``key`` of the JSON object ``raw`` (parsed by orjson), as an
    array of the float ``datatype``; None when only the general conversion
    (``codec.json_numbers``) can decide, which also writes the error messages.

    What the general conversion proves per leaf (``_leaf_types``: no string, boolean or null
    that numpy would convert) is proved here on the body's text: its only ``"`` are the two
    of its one key (which holds no ``:``), so after the first ``:`` the value holds no string,
    and no ``t``, ``f`` or ``n``, so no ``true``, ``false`` or ``null`` either: nothing but
    numbers in lists (and empty objects, which numpy refuses, as it refuses lists that are not
    rectangular). The values are then converted exactly as the general conversion converts
    them: to float64, and to a narrower type only when no value can overflow it (the sum of
    the squares bounds every magnitude; NaN fails the comparison). An empty tensor is left to
    the general conversion."""
    narrow = _SMALL_FLOATS.get(datatype)
    if narrow is None or type(value) is not list or key not in _PAYLOAD_KEYS:
        return None
    # ``find`` (memchr) rather than ``count`` (a byte loop) and ``in`` (which tries the operand
    # as an integer first: an exception raised and cleared per test), and no copy of the body.
    second = raw.find(b'"', raw.find(b'"') + 1)
    if second < 0 or raw.find(b'"', second + 1) >= 0:  # not exactly two
        return None
    colon = raw.find(b":")
    if colon < 0 or raw.find(b"t", colon) >= 0 or raw.find(b"f", colon) >= 0:
        return None
    if raw.find(b"n", colon) >= 0:
        return None
    try:
        wide = np.asarray(value, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        return None
    if not wide.size:
        return None
    dtype, squared_max = narrow
    if dtype is None:
        return wide
    if not np.vdot(wide, wide) <= squared_max:
        return None
    return wide.astype(dtype)


_PAYLOAD_KEYS = ("instances", "inputs")
_SMALL_FLOATS: dict[DataType, tuple[np.dtype[Any] | None, float]] = {
    DataType.FP64: (None, math.inf),
    DataType.FP32: (np.dtype(np.float32), float(np.finfo(np.float32).max) ** 2),
    DataType.FP16: (np.dtype(np.float16), float(np.finfo(np.float16).max) ** 2),
}


def decode_kserve(body: bytes) -> dict[str, Any] | None:
    """A KServe v2 JSON inference request as Python values with every input's ``data``
    already an array of its ``datatype``; None when any input's data is not a numeric array
    this module can prove equal to the general decoding (the caller then parses the body the
    general way, which also writes the error messages).

    Everything but the ``data`` arrays (ids, names, shapes, parameters, requested outputs) is
    small and converted as is; the ``[`` count covers the whole body: one per list in those
    parts plus ``arrays_in(shape)`` per tensor.
    """
    doc = _parse_object(body)
    if doc is None:
        return None
    tensors = doc.get("inputs")
    if not isinstance(tensors, simdjson.Array):
        return None
    document = _plain_object(doc, skip="inputs")
    if document is None:
        return None
    arrays = 1 + _lists_in(document)  # the "inputs" list and every list outside it
    inputs = []
    for tensor in tensors:
        if not isinstance(tensor, simdjson.Object):
            return None
        entry = _plain_object(tensor, skip="data")
        if entry is None:
            return None
        datatype = entry.get("datatype")
        if not isinstance(datatype, str) or datatype not in _DATATYPES:
            return None
        array = numbers(tensor.get("data"), DataType(datatype))
        if array is None:
            return None
        arrays += _lists_in(entry) + arrays_in(array.shape)
        entry["data"] = array
        inputs.append(entry)
    if count_open_brackets(body) != arrays:
        return None
    document["inputs"] = inputs
    return document


_DATATYPES = frozenset(t.value for t in DataType)


def _parse_object(body: bytes) -> Any:
    """``body`` parsed by simdjson when it is a JSON object; None otherwise (simdjson missing,
    an empty body, invalid JSON, another JSON type: the general parser names the problem).

    A body up to ``REUSED_PARSER_BYTES`` goes into this thread's parser, whose buffers (about
    three times the body's size) stay allocated from one request to the next; a new parser for
    each body allocated and zeroed them every time. simdjson refuses to parse into a parser
    while a proxy into its previous document is alive (the decoders here keep none past their
    return, but a traceback may): then this body gets a parser of its own, as does a larger
    body (so one very large body does not leave its buffers allocated for good).
    """
    if simdjson is None or not body:
        return None
    parser = _parser() if len(body) <= REUSED_PARSER_BYTES else simdjson.Parser()
    try:
        try:
            doc = parser.parse(body)
        except RuntimeError as exc:
            if "re-use a parser" not in str(exc):
                raise
            doc = simdjson.Parser().parse(body)
    except (ValueError, RuntimeError):  # RuntimeError: e.g. BIGINT_ERROR, an integer over 64 bits
        return None
    return doc if isinstance(doc, simdjson.Object) else None


REUSED_PARSER_BYTES = 1024 * 1024
"""Bodies up to this size are parsed by the thread's kept parser (which then holds about three
times this much); larger ones by a parser of their own, freed with their document."""

_local = threading.local()  # each thread's simdjson parser (the loop's, a pool thread's)


def _parser() -> Any:
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = simdjson.Parser()
    return parser


def count_open_brackets(body: bytes) -> int:
    """How many ``[`` ``body`` holds: numpy compares every byte at once, several times faster
    than ``bytes.count`` on a body of this module's sizes (tens of kilobytes and more)."""
    return int(np.count_nonzero(np.frombuffer(body, dtype=np.uint8) == _OPEN_BRACKET))


_OPEN_BRACKET = ord("[")


def _keys(obj: Any) -> list[str] | None:
    """``obj``'s keys in order; None when one repeats (simdjson keeps the first of a repeated
    key, orjson the last, so only the general path may decide what such a body means)."""
    keys = list(obj.keys())
    return keys if len(set(keys)) == len(keys) else None


def _plain_object(obj: Any, skip: str) -> dict[str, Any] | None:
    """``obj``'s members but ``skip`` as Python values; None when a key repeats."""
    keys = _keys(obj)
    if keys is None:
        return None
    return {key: _plain(obj[key]) for key in keys if key != skip}


def _plain(value: Any) -> Any:
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    if isinstance(value, simdjson.Array):
        return value.as_list()
    return value


def _lists_in(value: Any) -> int:
    if isinstance(value, list):
        return 1 + sum(_lists_in(item) for item in value)
    if isinstance(value, dict):
        return sum(_lists_in(item) for item in value.values())
    return 0


def numeric_array(value: Any, body: bytes, spec: TensorSpec) -> np.ndarray | None:
    """``value`` (a simdjson Array inside ``body``, the only array there) as an array of
    ``spec``'s dtype, or None when only the general path can decide (see the module docstring)."""
    array = numbers(value, spec.datatype)
    if array is None or count_open_brackets(body) != arrays_in(array.shape):
        return None
    return array


def numbers(value: Any, datatype: DataType) -> np.ndarray | None:
    """``value`` as a rectangular array of ``datatype`` when it is a simdjson Array of
    numbers of the right kind and every array above its innermost level has the same length;
    None otherwise. The caller must still prove that no leaf is itself an array, by counting
    ``[`` in the body against ``arrays_in(shape)``."""
    want = datatype.numpy
    kind = _KINDS.get(want.kind)
    if kind is None or datatype is DataType.BOOL or not isinstance(value, simdjson.Array):
        return None
    shape = _first_shape(value)
    if shape is None:
        return None
    if math.prod(shape[:-1]) > MAX_CHECKED_ARRAYS or not _rectangular(value, shape, 0):
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
    with np.errstate(over="ignore"):
        narrowed = flat.astype(want)
    return None if overflowed(narrowed) else narrowed.reshape(shape)


def arrays_in(shape: tuple[int, ...]) -> int:
    """How many JSON arrays nested lists of ``shape`` are written with: one per list."""
    return sum(math.prod(shape[:depth]) for depth in range(len(shape)))


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
