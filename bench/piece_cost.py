"""Instructions per call of single steps of the TF Serving REST path, in process, for A/B.

Each piece is called ``--calls`` times inside ``functools.reduce`` under callgrind
(``--toggle-collect=functools_reduce``, as ``adapter_cost.py``), once with 0 calls and once with
``--calls``: the difference over the calls is the piece's instructions per call, independent of
the machine's load. The pieces use APIs that every tree of session 11 and later has, so the same
file measures two trees (``PYTHONPATH`` picks the tree):

* ``resolve``: ``DataPlane.resolve(ModelRef("tiny"), "serving_default")`` (``_Resolver``'s call);
* ``validate``: ``Signature.validate_inputs`` of the tiny model's usual request;
* ``encode_answer``: ``tfserving.encode_answer`` of its 1 x 10 FP32 answer (row format);
* ``decode_post``: ``tfserving.decode_post`` of its body, resolving through ``_Resolver``.

    PYTHONPATH=src python bench/piece_cost.py [--pieces resolve,validate] [--calls 2000]
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

PIECES = ("resolve", "validate", "encode_answer", "decode_post")


def _piece(name: str) -> Callable[[], object]:
    import orjson
    from adapter_cost import _dataplane

    from modelyard.server.dataplane import InferResult, ModelRef
    from modelyard.server.http import tfserving

    plane: object = _dataplane()
    ref = ModelRef("tiny")
    x = np.random.default_rng(0).standard_normal((1, 64)).astype(np.float32)
    resolved = plane.resolve(ref, "serving_default")  # type: ignore[attr-defined]
    signature = resolved.signature
    if name == "resolve":
        return lambda: plane.resolve(ref, "serving_default")  # type: ignore[attr-defined]
    if name == "validate":
        inputs = {"x": x}
        return lambda: signature.validate_inputs(inputs)
    if name == "encode_answer":
        result = InferResult("tiny", 1, {"y": (x @ np.full((64, 10), 0.5, np.float32))})
        return lambda: tfserving.encode_answer("instances", result, signature)
    if name == "decode_post":
        body = orjson.dumps({"instances": x}, option=orjson.OPT_SERIALIZE_NUMPY)
        return lambda: tfserving.decode_post(
            ":predict",
            body,
            tfserving._Resolver(plane, ref),  # type: ignore[arg-type]
        )
    raise SystemExit(f"unknown piece {name!r}; pieces: {', '.join(PIECES)}")


def _repeat(call: Callable[[], object], calls: int) -> None:
    for _ in range(calls):  # each result dropped at once, as a request's is
        call()


def _collect(name: str, calls: int) -> None:
    call = _piece(name)
    _repeat(call, 200)
    functools.reduce(lambda _, __: _repeat(call, calls), range(1), None)


def _instructions(name: str, calls: int) -> float:
    with tempfile.TemporaryDirectory(prefix="piece-cg-") as tmp:
        counts = []
        for n in (0, calls):
            out = Path(tmp) / f"cg.{n}"
            env = {**os.environ, "PIECE_COST_COLLECT": "1", "PYTHONHASHSEED": "0"}
            subprocess.run(
                ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                 "--toggle-collect=functools_reduce", f"--callgrind-out-file={out}",
                 sys.executable, __file__, "--pieces", name, "--calls", str(n)],
                env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            text = out.read_text()
            match = re.search(r"^summary: (\d+)", text, re.M) or re.search(
                r"^totals: (\d+)", text, re.M
            )
            assert match is not None
            counts.append(int(match.group(1)))
    return (counts[1] - counts[0]) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--pieces", default=",".join(PIECES))
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    names = [n for n in args.pieces.split(",") if n]
    if os.environ.get("PIECE_COST_COLLECT"):
        _collect(names[0], args.calls)
        return
    for name in names:
        print(f"{name}: {_instructions(name, args.calls) / 1e3:.2f}k instructions per call")


if __name__ == "__main__":
    main()
