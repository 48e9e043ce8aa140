"""Our TF messages and TensorProto codec against tensorflow's and tensorflow-serving-api's own."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelyard.server.grpc.tfcodec import array_to_tensor, tensor_to_array
from modelyard.testing.protos import assert_same_message, fields
from modelyard.tfproto.generated import tensorflow_core_pb2 as core


def test_matches_tensorflows_own_encoding() -> None:
    tf = pytest.importorskip("tensorflow")
    array = np.arange(6, dtype=np.float64).reshape(3, 2)
    theirs = core.TensorProto.FromString(tf.make_tensor_proto(array).SerializeToString())
    np.testing.assert_array_equal(tensor_to_array(theirs, "x"), array)
    ours = tf.make_ndarray(
        type(tf.make_tensor_proto(array)).FromString(array_to_tensor(array).SerializeToString())
    )
    np.testing.assert_array_equal(ours, array)


def _tf_counterparts() -> dict[str, Any]:
    """Our TF message descriptors by full name, each with tensorflow-serving-api's own."""
    apis = pytest.importorskip("tensorflow_serving.apis.prediction_service_pb2")
    from tensorflow_serving.apis import model_service_pb2
    from tensorflow_serving.config import model_server_config_pb2

    theirs: dict[str, Any] = {}

    def collect(file: Any) -> None:
        for message in file.message_types_by_name.values():
            theirs.setdefault(message.full_name, message)
        for dependency in file.dependencies:
            collect(dependency)

    for module in (apis, model_service_pb2, model_server_config_pb2):
        collect(module.DESCRIPTOR)
    return theirs


def test_tf_messages_and_services_match_tensorflow_serving_api() -> None:
    """Every TF message and RPC we declare has the names and numbers TF Serving's clients use.

    BatchingParameters is not in tensorflow-serving-api; its numbers are checked by hand in
    tests/unit/config/test_tfserving_config.py.
    """
    from modelyard.tfproto.generated import (
        tensorflow_core_pb2,
        tensorflow_serving_apis_pb2,
        tensorflow_serving_config_pb2,
    )

    theirs = _tf_counterparts()
    checked = 0
    for module in (tensorflow_core_pb2, tensorflow_serving_config_pb2, tensorflow_serving_apis_pb2):
        for message in module.DESCRIPTOR.message_types_by_name.values():
            if message.full_name == "tensorflow.serving.BatchingParameters":
                continue
            other = theirs[message.full_name]
            ours_fields = fields(message)
            assert ours_fields == {n: f for n, f in fields(other).items() if n in ours_fields}
            for nested in message.nested_types:
                if not nested.GetOptions().map_entry:
                    assert_same_message(nested, other.nested_types_by_name[nested.name])
            checked += 1
    assert checked >= 30
    from tensorflow_serving.apis import model_service_pb2, prediction_service_pb2

    for service_module, name in (
        (prediction_service_pb2, "PredictionService"),
        (model_service_pb2, "ModelService"),
    ):
        ours = tensorflow_serving_apis_pb2.DESCRIPTOR.services_by_name[name]
        their_service = service_module.DESCRIPTOR.services_by_name[name]
        assert ours.full_name == their_service.full_name
        for method in ours.methods:
            other_method = their_service.methods_by_name[method.name]
            assert method.input_type.full_name == other_method.input_type.full_name
            assert method.output_type.full_name == other_method.output_type.full_name
