# mypy: disable-error-code="untyped-decorator"
"""Small SavedModels for tests and docs, exported with TensorFlow at call time.

- ``export_half_plus_two``: TF Serving's classic example. ``serving_default`` takes ``x``
  (FP32 ``[?, 3]``) and returns ``y = 0.5 * x + 2``; the named signature ``double`` returns
  ``doubled = 2 * x`` and ``total`` (FP32 ``[?]``, the row sums).
- ``export_strings``: ``serving_default`` takes ``text`` (BYTES ``[?]``) and returns ``upper``
  (BYTES) and ``length`` (INT32).
- ``export_classify_regress``: TF Serving's Classify/Regress signatures over serialized
  ``tf.Example``s with a float feature ``x`` of 2 values: ``classify`` returns ``classes``
  (``["neg", "pos"]`` per example) and ``scores`` (softmax of ``[-s, s]``, ``s = x0 + x1``);
  ``regress`` returns ``outputs`` = ``x0 * 3 + x1``; ``serving_default`` is ``regress``'s
  function with method predict. The method names are set in ``saved_model.pb`` after export,
  as TF 2 writes every signature as predict.

Each returns the version folder written (``base/<version>``). tensorflow is imported inside.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

CLASSIFY_LABELS = (b"neg", b"pos")


def export_half_plus_two(base: Path, version: int = 1, *, offset: float = 2.0) -> Path:
    import tensorflow as tf

    class HalfPlusTwo(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": x * 0.5 + offset}

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
        def double(self, x: Any) -> dict[str, Any]:
            return {"doubled": x * 2.0, "total": tf.reduce_sum(x, axis=1)}

    module = HalfPlusTwo()
    path = base / str(version)
    tf.saved_model.save(
        module, str(path), signatures={"serving_default": module.serve, "double": module.double}
    )
    return path


def export_strings(base: Path, version: int = 1) -> Path:
    import tensorflow as tf

    class Strings(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
        def serve(self, text: Any) -> dict[str, Any]:
            return {"upper": tf.strings.upper(text), "length": tf.strings.length(text)}

    module = Strings()
    path = base / str(version)
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def export_classify_regress(base: Path, version: int = 1) -> Path:
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    features = {"x": tf.io.FixedLenFeature([2], tf.float32)}

    class ClassifyRegress(tf.Module):  # type: ignore[misc]
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def classify(self, inputs: Any) -> dict[str, Any]:
            x = tf.io.parse_example(inputs, features)["x"]
            s = tf.reduce_sum(x, axis=1, keepdims=True)
            scores = tf.nn.softmax(tf.concat([-s, s], axis=1))
            classes = tf.tile(tf.constant([list(CLASSIFY_LABELS)]), [tf.shape(inputs)[0], 1])
            return {"classes": classes, "scores": scores}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="inputs")])
        def regress(self, inputs: Any) -> dict[str, Any]:
            x = tf.io.parse_example(inputs, features)["x"]
            return {"outputs": x[:, 0] * 3.0 + x[:, 1]}

    module = ClassifyRegress()
    path = base / str(version)
    tf.saved_model.save(
        module,
        str(path),
        signatures={
            "serving_default": module.regress,
            "classify": module.classify,
            "regress": module.regress,
        },
    )
    pb_path = path / "saved_model.pb"
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString(pb_path.read_bytes())
    defs = saved.meta_graphs[0].signature_def
    defs["classify"].method_name = "tensorflow/serving/classify"
    defs["regress"].method_name = "tensorflow/serving/regress"
    pb_path.write_bytes(saved.SerializeToString())
    return path


def serialized_example(x: tuple[float, float]) -> bytes:
    """A ``tf.Example`` with float feature ``x``, serialized (for ``export_classify_regress``)."""
    from modelyard.tfproto.generated import tensorflow_core_pb2 as core

    example = core.Example()
    example.features.feature["x"].float_list.value.extend(x)
    data: bytes = example.SerializeToString()
    return data


__all__ = [
    "CLASSIFY_LABELS",
    "export_classify_regress",
    "export_half_plus_two",
    "export_strings",
    "serialized_example",
]
