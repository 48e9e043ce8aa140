"""Tensor datatypes, tensor specs and model signatures, shared by every backend and protocol.

A ``Signature`` is the contract of one model version: the named inputs it takes and the named
outputs it returns, each with a datatype and a shape in which ``-1`` means "any size". The data
plane checks every request against it before a backend sees the tensors, so a backend never runs
on input of the wrong name, dtype or shape.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelyard.errors import InvalidArgument


class DataType(enum.Enum):
    """Tensor element types, named as in the KServe v2 protocol."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    UINT16 = "UINT16"
    UINT32 = "UINT32"
    UINT64 = "UINT64"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"

    @property
    def numpy(self) -> np.dtype[np.generic]:
        """The numpy dtype that holds this type (``object`` for BYTES)."""
        return _TO_NUMPY[self]

    @property
    def tf_name(self) -> str:
        """TensorFlow's enum name, as TF Serving's metadata shows it (``DT_FLOAT``)."""
        return _TO_TF[self]

    @property
    def itemsize(self) -> int:
        """Bytes per element in the raw little-endian layout (0 for BYTES, which is variable)."""
        return 0 if self is DataType.BYTES else self.numpy.itemsize

    @classmethod
    def parse(cls, name: str) -> DataType:
        """Parse a KServe name (``FP32``) or a TF name (``DT_FLOAT``); InvalidArgument otherwise."""
        try:
            return cls(name)
        except ValueError:
            pass
        for dtype, tf_name in _TO_TF.items():
            if tf_name == name:
                return dtype
        known = ", ".join(d.value for d in cls)
        raise InvalidArgument(f"unknown datatype {name!r}; expected one of {known}")

    @classmethod
    def from_numpy(cls, dtype: np.dtype[np.generic]) -> DataType:
        """The DataType of a numpy dtype, in either byte order; strings and objects map to
        BYTES."""
        found = _FROM_NUMPY.get(dtype)  # every answer's dtype: one look-up, not a walk
        if found is not None:
            return found
        if dtype.kind in ("O", "S", "U"):
            return cls.BYTES
        if not dtype.isnative:  # a big-endian array is the same datatype (the codec swaps it)
            dtype = dtype.newbyteorder("=")
        for data_type, np_dtype in _TO_NUMPY.items():
            if np_dtype == dtype and data_type is not cls.BYTES:
                return data_type
        raise InvalidArgument(f"numpy dtype {dtype} has no protocol datatype")


_TO_NUMPY: dict[DataType, np.dtype[np.generic]] = {
    DataType.BOOL: np.dtype(np.bool_),
    DataType.UINT8: np.dtype(np.uint8),
    DataType.UINT16: np.dtype(np.uint16),
    DataType.UINT32: np.dtype(np.uint32),
    DataType.UINT64: np.dtype(np.uint64),
    DataType.INT8: np.dtype(np.int8),
    DataType.INT16: np.dtype(np.int16),
    DataType.INT32: np.dtype(np.int32),
    DataType.INT64: np.dtype(np.int64),
    DataType.FP16: np.dtype(np.float16),
    DataType.FP32: np.dtype(np.float32),
    DataType.FP64: np.dtype(np.float64),
    DataType.BYTES: np.dtype(np.object_),
}

_FROM_NUMPY: dict[np.dtype[np.generic], DataType] = {
    dtype: data_type for data_type, dtype in _TO_NUMPY.items() if data_type is not DataType.BYTES
}
"""The native numpy dtypes' DataTypes (a dtype is found only by one equal to it)."""

_TO_TF: dict[DataType, str] = {
    DataType.BOOL: "DT_BOOL",
    DataType.UINT8: "DT_UINT8",
    DataType.UINT16: "DT_UINT16",
    DataType.UINT32: "DT_UINT32",
    DataType.UINT64: "DT_UINT64",
    DataType.INT8: "DT_INT8",
    DataType.INT16: "DT_INT16",
    DataType.INT32: "DT_INT32",
    DataType.INT64: "DT_INT64",
    DataType.FP16: "DT_HALF",
    DataType.FP32: "DT_FLOAT",
    DataType.FP64: "DT_DOUBLE",
    DataType.BYTES: "DT_STRING",
}


def format_shape(shape: Sequence[int]) -> str:
    """``[-1, 4]`` -> ``[?, 4]``: how shapes appear in error messages."""
    return "[" + ", ".join("?" if d < 0 else str(d) for d in shape) + "]"


def overflowed(array: np.ndarray) -> bool:
    """True when ``array``, cast from numbers parsed from JSON, holds an infinity. JSON has no
    infinities, so that is a number too large for the type (1e39 as FP32, 70000 as FP16): an
    error to report, not an input of inf. Cast under ``np.errstate(over="ignore")``."""
    return array.dtype.kind == "f" and array.size > 0 and bool(np.isinf(array).any())


MAX_REQUEST_RANK = 32
"""The most dimensions a request's tensor may have (numpy before 2.0 allowed no more)."""

MAX_REQUEST_SPAN = 2**56
"""Bound on the product of a request shape's non-zero dimensions. numpy refuses an array whose
non-zero dimensions multiply past its index range in bytes even when another dimension is 0, so a
shape such as ``[0, 2**20, 2**20, 2**30]`` holds no data and still cannot be built."""


def request_element_count(shape: Sequence[int], what: str) -> int:
    """The number of elements of a request tensor's ``shape``; InvalidArgument naming ``what``
    for a negative dimension, more than ``MAX_REQUEST_RANK`` dimensions, or dimensions no array
    can have."""
    if any(d < 0 for d in shape):
        raise InvalidArgument(
            f"{what} has shape {list(shape)}; dimensions of a request must be >= 0"
        )
    if len(shape) > MAX_REQUEST_RANK:
        raise InvalidArgument(
            f"{what} has {len(shape)} dimensions; at most {MAX_REQUEST_RANK} are supported"
        )
    if math.prod(d for d in shape if d) > MAX_REQUEST_SPAN:
        raise InvalidArgument(
            f"{what} has shape {list(shape)}; its dimensions multiply to more than 2**56, "
            "which no tensor can have"
        )
    return math.prod(shape)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A named tensor of a signature. ``shape`` uses -1 for a dimension of any size."""

    name: str
    datatype: DataType
    shape: tuple[int, ...]

    def accepts_shape(self, shape: Sequence[int]) -> bool:
        """True when ``shape`` has this rank and matches every fixed dimension."""
        if len(shape) != len(self.shape):
            return False
        # A loop rather than all(...): no generator per call (this runs on every request).
        for want, got in zip(self.shape, shape, strict=True):
            if want >= 0 and want != got:
                return False
        return True

    def describe(self) -> str:
        """``x: FP32 [?, 4]``: how a spec appears in error messages."""
        return f"{self.name}: {self.datatype.value} {format_shape(self.shape)}"


DEFAULT_SIGNATURE = "serving_default"
"""The name of a model's default signature (TF Serving's); every model has one by this name."""


class SignatureMethod(enum.Enum):
    """What a signature computes, as TF Serving names it (a SavedModel SignatureDef's
    ``method_name``). Only PREDICT signatures take arbitrary tensors; CLASSIFY and REGRESS ones
    take serialized ``tf.Example``s and serve TF Serving's Classify and Regress APIs."""

    PREDICT = "tensorflow/serving/predict"
    CLASSIFY = "tensorflow/serving/classify"
    REGRESS = "tensorflow/serving/regress"


def unknown_signature(name: str, known: Iterable[str]) -> InvalidArgument:
    """The error for a request naming signature ``name`` that its model lacks: it names what was
    asked for and every signature the model has (``known``). Every layer that can meet an
    unknown name (the data plane, the in-process servable, the worker, a backend) raises this."""
    return InvalidArgument(
        f"serving signature {name!r} not found; this model has " + ", ".join(repr(n) for n in known)
    )


def signature_named(signatures: Mapping[str, Signature], name: str) -> Signature:
    """``signatures[name]``; ``unknown_signature`` when there is none by that name."""
    found = signatures.get(name)
    if found is None:
        raise unknown_signature(name, signatures)
    return found


_InputCheck = tuple[str, np.dtype[Any] | None, int, tuple[tuple[int, int], ...]]
"""An input as ``validate_inputs`` checks the usual request: its name, its numpy dtype (None for
BYTES), its rank, and the (index, size) of each fixed dimension."""


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs of one model version, in the order the model takes and returns them."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    method: SignatureMethod = SignatureMethod.PREDICT
    _checks: tuple[_InputCheck, ...] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )
    """The inputs as ``validate_inputs`` checks them (derived, not a field of the contract;
    None when input names repeat: then every request is checked the full way)."""
    output_names: tuple[str, ...] = field(
        default=(), init=False, repr=False, compare=False, hash=False
    )
    """Each output's name, in order (derived from ``outputs``)."""
    only_input: str | None = field(default=None, init=False, repr=False, compare=False, hash=False)
    """The name of the input when there is exactly one (derived): a request that passed
    ``validate_inputs`` has that input and no other, so it is the request's first input, the
    one statistics read the request's rows from (one dict look-up rather than an iterator)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_names", tuple(spec.name for spec in self.outputs))
        names = [spec.name for spec in self.inputs]
        object.__setattr__(self, "only_input", names[0] if len(names) == 1 else None)
        checks = None
        if len(set(names)) == len(names):
            checks = tuple(
                (
                    spec.name,
                    None if spec.datatype is DataType.BYTES else spec.datatype.numpy,
                    len(spec.shape),
                    tuple((index, size) for index, size in enumerate(spec.shape) if size >= 0),
                )
                for spec in self.inputs
            )
        object.__setattr__(self, "_checks", checks)

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise InvalidArgument(f"unknown input {name!r}; the model expects {self.describe_inputs()}")

    def output(self, name: str) -> TensorSpec:
        for spec in self.outputs:
            if spec.name == name:
                return spec
        raise InvalidArgument(
            f"unknown output {name!r}; the model returns "
            + ", ".join(s.describe() for s in self.outputs)
        )

    def describe_inputs(self) -> str:
        return ", ".join(s.describe() for s in self.inputs)

    def validate_inputs(self, inputs: Mapping[str, np.ndarray]) -> None:
        """Check names, dtypes and shapes of a request; raise InvalidArgument naming what is wrong.

        The message always says what the signature expects, so a client can fix its request
        without reading the model's metadata first.
        """
        # The usual request first, without a call: as many inputs as the signature has, each
        # found by name (so the names are the signature's: they do not repeat, see _checks),
        # its dtype the very one of its datatype, its rank and every fixed dimension equal.
        # Anything else, a valid request included (an equal dtype that is another object, a
        # big-endian one), is checked the full way below, which writes the messages.
        checks = self._checks
        if checks is not None and len(inputs) == len(checks):
            for name, dtype, rank, fixed in checks:
                array = inputs.get(name)
                if array is None or array.dtype is not dtype:
                    break
                shape = array.shape
                if len(shape) != rank:
                    break
                for index, size in fixed:
                    if shape[index] != size:
                        break
                else:
                    continue
                break
            else:
                return
        expected = {s.name for s in self.inputs}
        if inputs.keys() != expected:  # one comparison for the usual request; the names below
            unknown = sorted(set(inputs) - expected)
            if unknown:
                raise InvalidArgument(
                    f"unknown input {', '.join(map(repr, unknown))}; "
                    f"the model expects {self.describe_inputs()}"
                )
            missing = [s.name for s in self.inputs if s.name not in inputs]
            raise InvalidArgument(
                f"missing input {', '.join(map(repr, missing))}; "
                f"the model expects {self.describe_inputs()}"
            )
        for spec in self.inputs:
            array = inputs[spec.name]
            got = DataType.from_numpy(array.dtype)
            if got is not spec.datatype:
                raise InvalidArgument(
                    f"input {spec.name!r} has datatype {got.value}; expected {spec.describe()}"
                )
            if not spec.accepts_shape(array.shape):
                raise InvalidArgument(
                    f"input {spec.name!r} has shape {format_shape(array.shape)}; "
                    f"expected {spec.describe()}"
                )
