"""KServe v2 ``inference.GRPCInferenceService`` over the data plane.

A thin adapter: it decodes protobuf messages into numpy arrays exactly as the client described
them (name, datatype, shape), lets the ``DataPlane`` check them against the model's signature and
run the model, and encodes the outputs as ``raw_output_contents``, which is what Triton sends and
what ``tritonclient`` reads. Checks that need the wire format live here: unknown datatype names,
raw byte counts, typed-contents element counts, mixing raw and typed contents.

Errors: a ``ModelyardError`` aborts the RPC with the status of ``status.GRPC_STATUS`` and its
message; any other exception is logged and aborts with INTERNAL. A request never crashes the
server.

Async safety: one servicer per server and event loop; handlers run on that loop only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import grpc
import numpy as np

from modelyard import codec
from modelyard.errors import InvalidArgument, NotFound, PermissionDenied, Unimplemented
from modelyard.management import Management
from modelyard.management.access import OFF_MESSAGE
from modelyard.management.requests import model_entry
from modelyard.observability.calls import KSERVE_GRPC_INDEX
from modelyard.server.dataplane import DataPlane, ModelRef
from modelyard.server.grpc import extensions
from modelyard.server.grpc.generated import grpc_service_pb2 as pb
from modelyard.server.grpc.generated import grpc_service_pb2_grpc as pb_grpc
from modelyard.server.grpc.hotpath import KSERVE_LAYOUTS, model_infer_response, raw_array
from modelyard.server.grpc.status import rpc_errors
from modelyard.tensors import DataType, TensorSpec

log = logging.getLogger(__name__)


# InferTensorContents field for each datatype, and the numpy dtype protobuf hands it back as.
# 8- and 16-bit integers travel widened to 32 bits (the spec says so); FP16 has no typed field.
_CONTENTS_FIELD: dict[DataType, tuple[str, np.dtype[Any]]] = {
    DataType.BOOL: ("bool_contents", np.dtype(np.bool_)),
    DataType.INT8: ("int_contents", np.dtype(np.int32)),
    DataType.INT16: ("int_contents", np.dtype(np.int32)),
    DataType.INT32: ("int_contents", np.dtype(np.int32)),
    DataType.INT64: ("int64_contents", np.dtype(np.int64)),
    DataType.UINT8: ("uint_contents", np.dtype(np.uint32)),
    DataType.UINT16: ("uint_contents", np.dtype(np.uint32)),
    DataType.UINT32: ("uint_contents", np.dtype(np.uint32)),
    DataType.UINT64: ("uint64_contents", np.dtype(np.uint64)),
    DataType.FP32: ("fp32_contents", np.dtype(np.float32)),
    DataType.FP64: ("fp64_contents", np.dtype(np.float64)),
    DataType.BYTES: ("bytes_contents", np.dtype(object)),
}

# Triton extensions that change what a tensor means; answering without them would be wrong.
_UNSUPPORTED_INPUT_PARAMETERS = ("shared_memory_region",)
_UNSUPPORTED_OUTPUT_PARAMETERS = ("shared_memory_region", "classification")


def model_ref(name: str, version: str) -> ModelRef:
    """The model a request names; an empty version means the default version."""
    return ModelRef(name, ModelRef.parse_version(version) if version else None)


_REFS: dict[tuple[str, str], ModelRef] = {}


def _ref(name: str, version: str) -> ModelRef:
    """``model_ref``, remembered for the names and versions requests repeat (a ``ModelRef`` is
    frozen: one can serve every request that names the same model)."""
    ref = _REFS.get((name, version))
    if ref is None:
        ref = model_ref(name, version)  # InvalidArgument for a bad version: not remembered
        if len(_REFS) >= 256:
            _REFS.clear()
        _REFS[(name, version)] = ref
    return ref


def decode_inputs(request: Any) -> dict[str, np.ndarray]:
    """The inputs of a ``ModelInferRequest`` as arrays, decoded as the request describes them.

    Raw contents, when present, carry every input in order and no input may also carry typed
    contents. Does not check the model's signature: the data plane does that. The common raw
    tensor takes ``hotpath.raw_array``; anything else, and every error, ``codec``'s way.
    """
    raw = request.raw_input_contents
    tensors = request.inputs
    if raw and len(raw) != len(tensors):
        raise InvalidArgument(
            f"the request has {len(tensors)} inputs but {len(raw)} raw_input_contents; "
            "when raw_input_contents is used it must hold the data of every input, in order"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(tensors):
        name = tensor.name
        if name in inputs:
            raise InvalidArgument(f"input {name!r} appears more than once in the request")
        if tensor.parameters:  # (reading a map's keys costs more than asking if it has any)
            _reject_parameters(tensor.parameters, _UNSUPPORTED_INPUT_PARAMETERS, f"input {name!r}")
        layout = KSERVE_LAYOUTS.get(tensor.datatype)
        if layout is None:  # the codec says why the name is unknown
            layout = (codec.kserve_datatype(tensor.datatype, f"input {name!r}"), None)
        datatype, dtype = layout
        shape = tensor.shape[:]  # a list: tuple() over the repeated field costs five times more
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(
                    f"input {name!r} has typed contents but the request uses "
                    "raw_input_contents; use one or the other for all inputs"
                )
            data = raw[index]
            array = raw_array(data, dtype, shape)
            if array is None:
                array = codec.decode_raw(data, datatype, tuple(shape), f"input {name!r}")
            inputs[name] = array
        else:
            inputs[name] = _decode_contents(tensor.contents, datatype, tuple(shape), name)
    return inputs


def _decode_contents(
    contents: Any, datatype: DataType, shape: tuple[int, ...], name: str
) -> np.ndarray:
    what = f"input {name!r}"
    codec.element_count(shape, what)
    if datatype not in _CONTENTS_FIELD:
        raise InvalidArgument(
            f"{what} is {datatype.value}, which has no typed contents field; "
            "send it in raw_input_contents"
        )
    field, wire_dtype = _CONTENTS_FIELD[datatype]
    values = getattr(contents, field)[:]  # a list: numpy reads it faster than the field
    codec.check_count(what, len(values), f"contents.{field}", shape)
    if datatype is DataType.BYTES:
        array = np.empty(len(values), dtype=object)
        array[:] = values
        return array.reshape(shape)
    return codec.narrow(np.array(values, dtype=wire_dtype), datatype, what).reshape(shape)


def _reject_parameters(
    parameters: Mapping[str, Any], unsupported: tuple[str, ...], where: str
) -> None:
    for key in unsupported:
        if key in parameters:
            raise Unimplemented(f"{where}: parameter {key!r} is not supported by modelyard")


def _tensor_metadata(spec: TensorSpec) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype.value, shape=list(spec.shape)
    )


_rpc = rpc_errors("inference.GRPCInferenceService")


class KServeServicer:
    """Handlers of ``inference.GRPCInferenceService``; register with ``add_to_server``."""

    def __init__(self, dataplane: DataPlane, management: Management | None = None) -> None:
        """``management`` turns the repository RPCs on (as the REST repository extension);
        without it they answer PERMISSION_DENIED. Who may call them is the gRPC server's gate
        (``start_grpc_server``), not this servicer's business."""
        self._dataplane = dataplane
        self._management = management

    def add_to_server(self, server: grpc.aio.Server) -> None:
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(self, server)

    @_rpc
    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerLiveResponse(live=self._dataplane.live())

    @_rpc
    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return pb.ServerReadyResponse(ready=self._dataplane.ready())

    @_rpc
    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        # As Triton answers: a model or version the server does not hold (never configured,
        # unloaded, removed) is not ready, not an error, so tritonclient's is_model_ready
        # returns False for it instead of raising.
        try:
            ready = self._dataplane.model_ready(model_ref(request.name, request.version))
        except NotFound:
            ready = False
        return pb.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        plane = self._dataplane
        return pb.ServerMetadataResponse(
            name=plane.server_name, version=plane.version, extensions=list(plane.extensions)
        )

    @_rpc
    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        meta = self._dataplane.metadata(model_ref(request.name, request.version))
        return pb.ModelMetadataResponse(
            name=meta.name,
            versions=[str(v) for v in meta.versions],
            platform=meta.platform,
            inputs=[_tensor_metadata(s) for s in meta.signature.inputs],
            outputs=[_tensor_metadata(s) for s in meta.signature.outputs],
        )

    @_rpc
    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        deadline = self._dataplane.deadlines.grpc(context.time_remaining())
        ref = _ref(request.model_name, request.model_version)
        inputs = decode_inputs(request)
        wanted: list[str] | None = None
        if request.outputs:
            wanted = []
            for output in request.outputs:
                if output.parameters:
                    _reject_parameters(
                        output.parameters, _UNSUPPORTED_OUTPUT_PARAMETERS, f"output {output.name!r}"
                    )
                wanted.append(output.name)
        result = await self._dataplane.infer(
            ref, inputs, wanted, deadline=deadline, lane=KSERVE_GRPC_INDEX
        )
        # Outputs in the order the client asked for them (all, in signature order, if none),
        # as raw_output_contents; serialised here (protobuf's message objects cost more).
        return model_infer_response(result.model, str(result.version), request.id, result.outputs)

    # -- Triton's statistics and model configuration extensions ----------------------------

    @_rpc
    async def ModelStatistics(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return extensions.model_statistics(self._dataplane, request)

    @_rpc
    async def ModelConfig(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return extensions.model_config(self._dataplane, request)

    # -- Triton's repository extension (the management API) --------------------------------

    def _manager(self, context: grpc.aio.ServicerContext, repository: str) -> Management:
        if self._management is None:
            raise PermissionDenied(OFF_MESSAGE)
        if repository:
            raise NotFound(f"repository {repository!r} is not served; leave repository_name empty")
        return self._management

    @_rpc
    async def RepositoryIndex(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        rows = self._manager(context, request.repository_name).index()
        if request.ready:
            rows = [r for r in rows if r.ready]
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(
                    name=r.name,
                    version="" if r.version is None else str(r.version),
                    state=r.state.value,
                    reason=r.reason,
                )
                for r in rows
            ]
        )

    @_rpc
    async def RepositoryModelLoad(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        management = self._manager(context, request.repository_name)
        config = (
            request.parameters["config"].string_param if "config" in request.parameters else None
        )
        await management.load(request.model_name, model_entry(config))
        return pb.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._manager(context, request.repository_name).unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()
