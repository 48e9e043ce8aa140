"""TF Serving's gRPC API over the data plane: ``tensorflow.serving.PredictionService``
(Predict, GetModelMetadata, Classify, Regress) and ``tensorflow.serving.ModelService``
(GetModelStatus, HandleReloadConfigRequest), on the same server and port as KServe v2.

Messages are the project's own declarations (``modelyard.tfproto``) with TF Serving's names and
numbers, so ``tensorflow-serving-api`` clients work unchanged. Errors: a ``ModelyardError``
aborts the RPC with its status (as in ``kserve``); anything else is logged and aborts with
INTERNAL. ``HandleReloadConfigRequest`` answers in its ``status`` field, as TF Serving does;
it is a guarded method (``modelyard.management.access``): without the management token the
server's gate aborts it with UNAUTHENTICATED (PERMISSION_DENIED when management is off) before
it runs, and a new base path outside the model roots is PERMISSION_DENIED in ``status``.

Async safety: one servicer per server and event loop; handlers run on that loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import text_format

from modelyard import deadlines
from modelyard.config.schema import ServerConfig
from modelyard.config.tfserving import parse_tf_serving_config
from modelyard.errors import InvalidArgument, ModelyardError
from modelyard.lifecycle.states import ModelState
from modelyard.observability.calls import TFSERVING_GRPC_INDEX
from modelyard.server import tfexamples
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.server.defaults import DEFAULT_MAX_REQUEST_BYTES
from modelyard.server.grpc.hotpath import predict_response
from modelyard.server.grpc.status import rpc_errors
from modelyard.server.grpc.tfcodec import tensor_to_array
from modelyard.tensors import DEFAULT_SIGNATURE, Signature, TensorSpec
from modelyard.tfproto.generated import tensorflow_core_pb2 as core
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2 as pb
from modelyard.tfproto.generated import tensorflow_serving_apis_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

Reconfigure = Callable[[ServerConfig], Awaitable[None]]
"""Applies a new model config (the server's ``reconfigure``)."""

_STATE = {
    ModelState.START: pb.ModelVersionStatus.START,
    ModelState.LOADING: pb.ModelVersionStatus.LOADING,
    ModelState.AVAILABLE: pb.ModelVersionStatus.AVAILABLE,
    ModelState.UNLOADING: pb.ModelVersionStatus.UNLOADING,
    ModelState.END: pb.ModelVersionStatus.END,
    ModelState.FAILED: pb.ModelVersionStatus.END,
}

_rpc = rpc_errors("tensorflow.serving")

_INT64_MAX = 2**63 - 1


def model_ref(spec: Any) -> ModelRef:
    """What a ``ModelSpec`` names: a model and at most one of a version or a label."""
    if not spec.name:
        raise InvalidArgument("model_spec.name is empty")
    choice = spec.WhichOneof("version_choice")
    if choice == "version":
        return ModelRef(spec.name, version=ModelRef.check_version(spec.version.value))
    if choice == "version_label":
        return ModelRef(spec.name, label=spec.version_label)
    return ModelRef(spec.name)


def _spec_out(name: str, version: int, signature_name: str) -> Any:
    spec = pb.ModelSpec(name=name, signature_name=signature_name)
    spec.version.value = version
    return spec


def _examples(request: Any) -> list[bytes]:
    kind = request.input.WhichOneof("kind")
    if kind == "example_list":
        return tfexamples.merge_context(request.input.example_list.examples, None)
    if kind == "example_list_with_context":
        listed = request.input.example_list_with_context
        return tfexamples.merge_context(listed.examples, listed.context)
    raise InvalidArgument("input has no examples (set example_list or example_list_with_context)")


class PredictionServicer:
    """``tensorflow.serving.PredictionService``; register with ``add_to_server``."""

    def __init__(
        self, dataplane: DataPlane, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    ) -> None:
        self._dataplane = dataplane
        self._limit = max_request_bytes

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_PredictionServiceServicer_to_server(self, server)

    @_rpc
    async def Predict(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        deadline = self._dataplane.deadlines.grpc(context.time_remaining())
        ref = model_ref(request.model_spec)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        inputs = {key: tensor_to_array(t, key, self._limit) for key, t in request.inputs.items()}
        result = await self._dataplane.infer(
            ref,
            inputs,
            list(request.output_filter) or None,
            signature_name=name,
            deadline=deadline,
            lane=TFSERVING_GRPC_INDEX,
        )
        # Serialised here: protobuf's message objects (a map of TensorProtos) cost more.
        return predict_response(result.model, result.version, name, result.outputs)

    @_rpc
    async def GetModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ref = model_ref(request.model_spec)
        unknown = [f for f in request.metadata_field if f != "signature_def"]
        if unknown or not request.metadata_field:
            raise InvalidArgument(
                "metadata_field must list 'signature_def' (the only metadata served); got "
                + (", ".join(repr(f) for f in request.metadata_field) or "none")
            )
        meta = self._dataplane.metadata(ref)
        defs = pb.SignatureDefMap()
        for name, signature in (meta.signatures or {DEFAULT_SIGNATURE: meta.signature}).items():
            _signature_def(signature, defs.signature_def[name])
        response = pb.GetModelMetadataResponse(model_spec=_spec_out(meta.name, meta.version, ""))
        response.metadata["signature_def"].Pack(defs)
        return response

    @_rpc
    async def Classify(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ref = model_ref(request.model_spec)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        with deadlines.given(self._dataplane.deadlines.grpc(context.time_remaining())):
            version, results = await tfexamples.classify(
                self._dataplane, ref, _examples(request), name
            )
        response = pb.ClassificationResponse(model_spec=_spec_out(ref.name, version, name))
        for result in results:
            classifications = response.result.classifications.add()
            for label, score in result.classes:
                classifications.classes.add(label=label.decode(errors="replace"), score=score)
        return response

    @_rpc
    async def Regress(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        ref = model_ref(request.model_spec)
        name = request.model_spec.signature_name or DEFAULT_SIGNATURE
        with deadlines.given(self._dataplane.deadlines.grpc(context.time_remaining())):
            version, values = await tfexamples.regress(
                self._dataplane, ref, _examples(request), name
            )
        response = pb.RegressionResponse(model_spec=_spec_out(ref.name, version, name))
        for value in values:
            response.result.regressions.add(value=value)
        return response


class ModelServicer:
    """``tensorflow.serving.ModelService``; register with ``add_to_server``.

    Without ``reconfigure``, HandleReloadConfigRequest answers UNIMPLEMENTED in its status.
    """

    def __init__(self, dataplane: DataPlane, reconfigure: Reconfigure | None = None) -> None:
        self._dataplane = dataplane
        self._reconfigure = reconfigure

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_ModelServiceServicer_to_server(self, server)

    @_rpc
    async def GetModelStatus(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        """Every version's state. A version folder numbered past int64 (``ModelVersionStatus``
        cannot carry it, and no TF Serving client can name it) is left out rather than failing
        the whole answer; an error message is sent as valid UTF-8 whatever bytes it quotes
        (a file name that is not UTF-8)."""
        ref = model_ref(request.model_spec)
        response = pb.GetModelStatusResponse()
        for status in self._dataplane.status(ref):
            if status.version > _INT64_MAX:
                continue
            failed = status.state is ModelState.FAILED
            response.model_version_status.add(
                version=status.version,
                state=_STATE[status.state],
                status=pb.StatusProto(
                    error_code=pb.UNKNOWN if failed else pb.OK,
                    error_message=_utf8(status.error),
                ),
            )
        return response

    @_rpc
    async def HandleReloadConfigRequest(
        self, request: Any, context: grpc.aio.ServicerContext
    ) -> Any:
        if self._reconfigure is None:
            return _reload_status(pb.UNIMPLEMENTED, "this server cannot reload its config")
        try:
            # Through the text form, so a reload reads exactly as a models.config file would.
            config = parse_tf_serving_config(
                text_format.MessageToString(request.config), source="ReloadConfigRequest"
            )
            await self._reconfigure(config)
        except ModelyardError as exc:
            return _reload_status(pb.ErrorCode.Value(exc.code.value), exc.message)
        return _reload_status(pb.OK, "")


def _reload_status(code: int, message: str) -> Any:
    status = pb.StatusProto(error_code=code, error_message=_utf8(message))
    return pb.ReloadConfigResponse(status=status)


def _utf8(text: str) -> str:
    """``text`` as protobuf can send it: lone surrogates (undecodable bytes of a file name,
    kept by ``os.fsdecode``) become "?" instead of failing the serialisation."""
    return text.encode("utf-8", errors="replace").decode("utf-8")


def _signature_def(signature: Signature, out: Any) -> None:
    out.method_name = signature.method.value
    for specs, target in ((signature.inputs, out.inputs), (signature.outputs, out.outputs)):
        for spec in specs:
            _tensor_info(spec, target[spec.name])


def _tensor_info(spec: TensorSpec, out: Any) -> None:
    out.name = spec.name
    out.dtype = core.DataType.Value(spec.datatype.tf_name)
    for size in spec.shape:
        out.tensor_shape.dim.add(size=size)


def tfserving_servicers(
    dataplane: DataPlane,
    reconfigure: Reconfigure | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
) -> list[Callable[[grpc.aio.Server], None]]:
    """The ``extra_servicers`` for ``start_grpc_server`` that add TF Serving's two services."""
    return [
        PredictionServicer(dataplane, max_request_bytes).add_to_server,
        ModelServicer(dataplane, reconfigure).add_to_server,
    ]


__all__ = ["ModelServicer", "PredictionServicer", "model_ref", "tfserving_servicers"]
