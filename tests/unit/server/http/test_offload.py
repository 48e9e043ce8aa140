"""What a body decoding helper may answer: the decoders' values, never a callable."""

from __future__ import annotations

import os
import pickle

import numpy as np
import orjson
import pytest

from modelyard.server.dataplane import InferResult
from modelyard.server.http import kserve_codec as codec
from modelyard.server.http.offload import load_answer
from modelyard.server.http.tfserving import PredictBody, _SignatureTable, decode_post, encode_answer
from modelyard.tensors import DataType, Signature, TensorSpec

SIG = Signature(
    (TensorSpec("x", DataType.FP32, (-1, 4)),), (TensorSpec("y", DataType.FP32, (-1, 2)),)
)
X = np.arange(12, dtype=np.float32).reshape(3, 4)


def test_every_decoder_answer_crosses_back_intact() -> None:
    table = _SignatureTable({"serving_default": SIG})
    kserve = {
        "id": "7",
        "inputs": [
            {"name": "x", "datatype": "FP32", "shape": [3, 4], "data": X.ravel().tolist()},
            {"name": "s", "datatype": "BYTES", "shape": [1], "data": ["ab"]},
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }
    answers = [
        decode_post(":predict", orjson.dumps({"instances": X.tolist()}), table),
        decode_post(":predict", orjson.dumps({"instances": [{"x": r} for r in X.tolist()]}), table),
        decode_post(":regress", orjson.dumps({"examples": [{"a": 1}]}), table),
        codec.decode_request(orjson.dumps(kserve)),
        encode_answer("instances", InferResult("m", 1, {"y": X}), SIG),
        codec.encode_response("m", 1, None, {"y": X}, {"y": False}),
    ]
    for answer in answers:
        back = load_answer(pickle.dumps(("ok", answer), protocol=pickle.HIGHEST_PROTOCOL))
        assert back[0] == "ok"
        if isinstance(answer, PredictBody):
            assert back[1].signature == answer.signature
            np.testing.assert_array_equal(back[1].inputs["x"], X)
        elif isinstance(answer, codec.InferRequest):
            assert back[1].outputs == answer.outputs
            assert back[1].inputs["s"].tolist() == [b"ab"]
        else:
            assert back[1] == answer


class _Runs:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned",))


def test_an_answer_that_names_a_callable_is_refused() -> None:
    with pytest.raises(pickle.UnpicklingError, match="system"):
        load_answer(pickle.dumps(("ok", _Runs())))
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        load_answer(pickle.dumps(("ok", eval)))
