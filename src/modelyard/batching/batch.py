"""Pure batch arithmetic: which requests may share a batch, joining them, splitting outputs.

No asyncio and no state here, so every rule of how rows are joined, padded and handed back can be
tested with plain arrays. Row order is the order requests were added: request ``i`` owns rows
``[offset_i, offset_i + rows_i)`` of the joined inputs and of every output.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence

import numpy as np

from modelyard.errors import Internal

BatchKey = tuple[tuple[str, str, tuple[int, ...]], ...]
"""Per input, in signature order: (name, dtype, every dimension after the first). Requests join
one batch only when their keys are equal, so concatenation along dim 0 is always well defined."""


def batch_key(inputs: Mapping[str, np.ndarray], order: Sequence[str]) -> BatchKey:
    """The key of a request whose inputs are named by ``order`` (the signature's inputs)."""
    return tuple((name, inputs[name].dtype.str, inputs[name].shape[1:]) for name in order)


def count_rows(inputs: Mapping[str, np.ndarray]) -> int | None:
    """The request's row count: dim 0, shared by every input; None when the inputs disagree or
    one is a scalar (such a request cannot be joined with others and runs alone)."""
    rows: int | None = None
    for array in inputs.values():
        if array.ndim == 0:
            return None
        if rows is None:
            rows = array.shape[0]
        elif array.shape[0] != rows:
            return None
    return rows


def padded_size(rows: int, allowed: Sequence[int] | None) -> int:
    """The smallest allowed batch size holding ``rows``; ``rows`` itself when there is no list
    or ``rows`` is beyond its end (an oversized request runs alone at its own size)."""
    if not allowed:
        return rows
    index = bisect.bisect_left(allowed, rows)
    return allowed[index] if index < len(allowed) else rows


def join(
    parts: Sequence[Mapping[str, np.ndarray]], order: Sequence[str], size: int
) -> dict[str, np.ndarray]:
    """Concatenate ``parts`` along dim 0 and pad to ``size`` rows by repeating the first row.

    Padding repeats a real row rather than adding zeros (as TF Serving does) so that a model
    never sees inputs no client sent, e.g. an all-zero row that a normalisation divides by.
    A single part that needs no padding is returned as is: no copy.
    """
    if len(parts) == 1 and _rows(parts[0]) == size:
        return dict(parts[0])
    joined: dict[str, np.ndarray] = {}
    for name in order:
        arrays = [part[name] for part in parts]
        have = sum(a.shape[0] for a in arrays)
        if size > have:
            first = next(a for a in arrays if a.shape[0])
            arrays.append(np.repeat(first[:1], size - have, axis=0))
        joined[name] = np.concatenate(arrays, axis=0)
    return joined


def split(
    outputs: Mapping[str, np.ndarray], counts: Sequence[int], size: int
) -> list[dict[str, np.ndarray]]:
    """Hand each request its rows of every output, as views (no copy); pad rows are dropped.

    Raises Internal when an output does not have ``size`` rows: the model broke the batching
    contract (outputs row-aligned with inputs) and no request can be answered correctly.
    """
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != size:
            got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise Internal(
                f"output {name!r} has {got} for a batch of {size} rows; batching needs every "
                "output to have one row per input row (remove `batching:` for this model)"
            )
    results: list[dict[str, np.ndarray]] = []
    offset = 0
    for count in counts:
        end = offset + count
        results.append({name: array[offset:end] for name, array in outputs.items()})
        offset = end
    return results


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    return next(iter(inputs.values())).shape[0] if inputs else 0
