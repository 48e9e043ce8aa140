"""TensorFlow Serving's messages, declared in modelyard's own ``.proto`` files.

``protos/`` holds the subset of TensorFlow and TF Serving messages that modelyard reads and
writes: ``models.config`` and batching parameters (``tensorflow_serving_config.proto``), tensors,
signatures and ``tf.Example`` (``tensorflow_core.proto``), and the ``PredictionService`` and
``ModelService`` APIs (``tensorflow_serving_apis.proto``). Package, message and field names and
numbers are those of TensorFlow Serving, so the wire format, ``google.protobuf.Any`` type URLs
and gRPC method paths are the ones its clients use; fields modelyard does not serve are left out
(protobuf keeps them as unknown fields on the wire; the text parser reports them with their line).

``generated/`` holds the stubs, written by ``python -m modelyard.server.grpc.gen`` into a private
descriptor pool, so these names never clash with tensorflow's own registrations in the same
process. This package imports protobuf only (the ``*_pb2_grpc`` modules also import grpc; only
the gRPC server imports those).
"""
