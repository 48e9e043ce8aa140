"""gRPC front end: the KServe v2 ``inference.GRPCInferenceService`` over the data plane.

``protos/`` holds the service definitions, ``generated/`` the stubs made from them by
``python -m modelyard.server.grpc.gen`` (committed; a unit test checks they are current).
"""
