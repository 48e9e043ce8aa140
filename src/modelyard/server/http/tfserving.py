"""TensorFlow Serving's REST API over the data plane.

    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]             model status
    GET  /v1/models/{m}[/versions/{v}|/labels/{l}]/metadata    signature_def
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:predict     row or columnar predict
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:classify    tf.Example classify
    POST /v1/models/{m}[/versions/{v}|/labels/{l}]:regress     tf.Example regress

Request and response bodies are shaped exactly as TF Serving shapes them, so existing clients
work unchanged: ``instances`` (row format) answers ``predictions``; ``inputs`` (columnar)
answers ``outputs``; errors are ``{"error": "..."}``. JSON values are converted to the
signature's dtype strictly: numbers for numeric inputs, booleans for BOOL, strings or
``{"b64": ...}`` for string inputs; anything else is a 400 that names the input.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from modelyard import codec
from modelyard.errors import InvalidArgument, ModelyardError, NotFound
from modelyard.lifecycle.states import ModelState
from modelyard.observability.calls import TFSERVING_REST_INDEX
from modelyard.server import tfexamples
from modelyard.server.dataplane import DataPlane, InferResult, ModelRef, Resolved
from modelyard.server.http import jsonarrays, offload
from modelyard.server.http.common import JSONResponse, encode_json, parse_json, read_body
from modelyard.tensors import (
    DEFAULT_SIGNATURE,
    DataType,
    Signature,
    TensorSpec,
    format_shape,
    signature_named,
)


def routes(dataplane: DataPlane, *, max_request_bytes: int) -> list[BaseRoute]:
    api = TFServingAPI(dataplane, max_request_bytes)
    return [
        Route("/v1/models/{path:path}", api.get, methods=["GET"]),
        Route("/v1/models/{path:path}", api.post, methods=["POST"]),
    ]


def parse_path(path: str) -> tuple[ModelRef, str]:
    """``m/versions/2/metadata`` -> (ModelRef(m, 2), "metadata"); ``m:predict`` -> (.., ":predict").

    The last part is "" for the status URL, "metadata", or ":<verb>".
    """
    verb = ""
    parts = path.split("/")
    if ":" in parts[-1]:
        parts[-1], verb = parts[-1].split(":", 1)
        verb = ":" + verb
    elif parts[-1] == "metadata" and len(parts) > 1:
        verb = parts.pop()
    if not parts or not parts[0]:
        raise NotFound("no model name in the URL; expected /v1/models/<name>")
    name = parts[0]
    rest = parts[1:]
    if not rest:
        return ModelRef(name), verb
    if len(rest) == 2 and rest[0] == "versions":
        return ModelRef(name, version=ModelRef.parse_version(rest[1])), verb
    if len(rest) == 2 and rest[0] == "labels" and rest[1]:
        return ModelRef(name, label=rest[1]), verb
    raise NotFound(
        f"unknown path /v1/models/{path}; expected /v1/models/<name>[/versions/<n>|"
        "/labels/<label>][/metadata|:predict]"
    )


def post_path(path: str) -> tuple[ModelRef, str]:
    """``parse_path`` for a POST: NotFound unless the verb is one a POST takes."""
    ref, verb = parse_path(path)
    if verb not in (":predict", ":classify", ":regress"):
        raise NotFound(
            f"unsupported verb {verb or '(none)'!r}; POST /v1/models/<name>:predict "
            "(or :classify, :regress)"
        )
    return ref, verb


class TFServingAPI:
    def __init__(self, dataplane: DataPlane, max_request_bytes: int) -> None:
        self._dataplane = dataplane
        self._limit = max_request_bytes

    async def get(self, request: Request) -> Response:
        ref, verb = parse_path(request.path_params["path"])
        if verb == "metadata":
            return JSONResponse(self._metadata(ref))
        if verb:
            raise NotFound(f"GET does not take {verb}; use POST for {verb}")
        return JSONResponse(self._status(ref))

    async def post(self, request: Request) -> Response:
        ref, verb = post_path(request.path_params["path"])
        raw = await read_body(request, self._limit)
        if verb == ":predict":
            return Response(await self.predict(ref, raw), media_type=JSONResponse.media_type)
        found, decoded = await self._decode(ref, verb, raw)
        assert isinstance(decoded, dict)  # decode_post: only :predict gives a PredictBody
        return await self._classify_or_regress(
            ref if found is None else found, verb, decoded, decoded["signature_name"]
        )

    async def predict(self, ref: ModelRef, raw: bytes) -> bytes:
        """The JSON answer to the ``:predict`` body ``raw`` for ``ref``; a ModelyardError for
        anything the client gets an error for. Both ways in call this (the Starlette route and
        ``modelyard.server.http.lean``)."""
        # The usual small body is decoded and answered on the loop without a coroutine for
        # either step: at one request in flight each is CPU on the answer's path.
        if len(raw) <= offload.OFF_LOOP_BYTES:
            found, decoded = self._decode_here(ref, ":predict", raw)
        else:
            found, decoded = await self._decode(ref, ":predict", raw)
        assert isinstance(decoded, PredictBody)
        if found is None or found.signature is not decoded.signature:
            found = self._target(ref, found, decoded.signature_name)
        result = await self._dataplane.infer(found, decoded.inputs, lane=TFSERVING_REST_INDEX)
        # ``found.signature`` is the one the request was decoded against, resolved before it
        # ran: a request in flight when the server starts stopping still gets its answer.
        nbytes = 0
        for array in result.outputs.values():  # no generator per request
            nbytes += array.nbytes
        size = offload.JSON_EXPANSION * nbytes
        try:
            if size <= offload.OFF_LOOP_BYTES:
                return encode_answer(decoded.key, result, found.signature)
            return await offload.run(size, encode_answer, decoded.key, result, found.signature)
        except ModelyardError as exc:  # e.g. outputs that cannot be rows: the model ran
            exc.counted = True  # the data plane counted the request (a success): once only
            raise

    async def _decode(
        self, ref: ModelRef, verb: str, raw: bytes
    ) -> tuple[Resolved | None, PredictBody | dict[str, Any]]:
        """``raw`` decoded for ``verb`` (``decode_post``), and the model it was decoded for
        (None when the body named no signature to decode against)."""
        # The request's model is resolved once (while its body is decoded, or before for a body
        # decoded in another process) and the request runs on the version it was decoded for.
        if len(raw) <= offload.OFF_LOOP_BYTES:
            return self._decode_here(ref, verb, raw)
        # Decoded in another process: it gets a snapshot of the model's signatures.
        found = self._dataplane.resolve(ref)
        table = _SignatureTable(dict(found.signatures))
        return found, await offload.run(len(raw), decode_post, verb, raw, table)

    def _decode_here(
        self, ref: ModelRef, verb: str, raw: bytes
    ) -> tuple[Resolved | None, PredictBody | dict[str, Any]]:
        """``_decode`` on the loop (a body of at most ``offload.OFF_LOOP_BYTES``)."""
        resolver = _Resolver(self._dataplane, ref)
        decoded = decode_post(verb, raw, resolver)
        return resolver.target, decoded

    def _target(self, ref: ModelRef, found: Resolved | None, signature_name: str) -> Resolved:
        """What ``ref`` resolved to (``found``, else resolved now), with ``signature_name``."""
        if found is None:
            return self._dataplane.resolve(ref, signature_name)
        return found.named(signature_name)

    async def _classify_or_regress(
        self, ref: ModelRef | Resolved, verb: str, body: dict[str, Any], signature_name: str
    ) -> Response:
        """TF Serving's ``{"examples": [...], "context": {...}}`` -> ``{"result": [...]}``."""
        examples = tfexamples.examples_from_json(body.get("examples"), body.get("context"))
        if verb == ":classify":
            _, classes = await tfexamples.classify(self._dataplane, ref, examples, signature_name)
            return JSONResponse({"result": tfexamples.classification_json(classes)})
        _, values = await tfexamples.regress(self._dataplane, ref, examples, signature_name)
        return JSONResponse({"result": values})

    def _status(self, ref: ModelRef) -> dict[str, Any]:
        return {
            "model_version_status": [
                {
                    "version": str(s.version),
                    "state": "END" if s.state is ModelState.FAILED else s.state.value,
                    "status": {
                        "error_code": "UNKNOWN" if s.state is ModelState.FAILED else "OK",
                        "error_message": s.error,
                    },
                }
                for s in self._dataplane.status(ref)
            ]
        }

    def _metadata(self, ref: ModelRef) -> dict[str, Any]:
        meta = self._dataplane.metadata(ref)
        return {
            "model_spec": {"name": meta.name, "signature_name": "", "version": str(meta.version)},
            "metadata": {
                "signature_def": {
                    "signature_def": {
                        name: {
                            "inputs": {s.name: _tensor_info(s) for s in signature.inputs},
                            "outputs": {s.name: _tensor_info(s) for s in signature.outputs},
                            "method_name": signature.method.value,
                        }
                        for name, signature in (
                            meta.signatures or {DEFAULT_SIGNATURE: meta.signature}
                        ).items()
                    }
                }
            },
        }


def _tensor_info(spec: TensorSpec) -> dict[str, Any]:
    return {
        "dtype": spec.datatype.tf_name,
        "tensor_shape": {
            "dim": [{"size": str(d), "name": ""} for d in spec.shape],
            "unknown_rank": False,
        },
        "name": spec.name,
    }


# -- decoding ----------------------------------------------------------------------------

SignatureLookup = Callable[[str], Signature]
"""A model's signature by name; InvalidArgument for a name it does not have."""


@dataclass(frozen=True, slots=True)
class PredictBody:
    """A ``:predict`` body decoded against its signature."""

    signature_name: str
    signature: Signature
    key: str  # "instances" (row format) or "inputs" (columnar)
    inputs: dict[str, np.ndarray]


class _Resolver:
    """A ``SignatureLookup`` that resolves the request's model when decoding first asks for a
    signature (so a malformed body is reported before an unknown model, as TF Serving does) and
    keeps what it found in ``target``."""

    __slots__ = ("_dataplane", "_ref", "target")

    def __init__(self, dataplane: DataPlane, ref: ModelRef) -> None:
        self._dataplane = dataplane
        self._ref = ref
        self.target: Resolved | None = None

    def __call__(self, name: str) -> Signature:
        found = self.target
        self.target = (
            self._dataplane.resolve(self._ref, name) if found is None else found.named(name)
        )
        return self.target.signature


@dataclass(frozen=True, slots=True)
class _SignatureTable:
    """A model's signatures as a ``SignatureLookup``; a snapshot of them (a ``dict``) can cross
    to the decoding process."""

    signatures: Mapping[str, Signature]

    def __call__(self, name: str) -> Signature:
        return signature_named(self.signatures, name)


def decode_post(verb: str, raw: bytes, lookup: SignatureLookup) -> PredictBody | dict[str, Any]:
    """A POST body: a ``:predict`` body decoded against ``lookup(its signature_name)``; for
    ``:classify`` and ``:regress`` the JSON object, with ``signature_name`` set (the default
    one when absent). Pure (no event loop, no server state), so it may run in another process
    (``modelyard.server.http.offload``); raises InvalidArgument for a malformed body."""
    if verb == ":predict" and jsonarrays.use_fast_path(raw):
        fast = jsonarrays.decode_predict(raw, lookup)
        if fast is not None:
            return PredictBody(fast.signature_name, fast.signature, fast.key, fast.inputs)
    body = parse_json(raw)
    if not isinstance(body, dict):
        raise InvalidArgument("the request body must be a JSON object")
    signature_name = body.get("signature_name") or DEFAULT_SIGNATURE
    if not isinstance(signature_name, str):
        raise InvalidArgument("'signature_name' must be a string")
    if verb != ":predict":
        return {**body, "signature_name": signature_name}
    signature = lookup(signature_name)
    if len(body) == 1 and len(signature.inputs) == 1:  # the usual body: one float tensor?
        key, value = next(iter(body.items()))
        spec = signature.inputs[0]
        array = jsonarrays.small_floats(raw, key, value, spec.datatype)
        if array is not None:
            return PredictBody(signature_name, signature, key, {spec.name: array})
    if "instances" in body and "inputs" in body:
        raise InvalidArgument(
            "give either 'instances' (row format) or 'inputs' (columnar), not both"
        )
    if "instances" in body:
        return PredictBody(
            signature_name, signature, "instances", decode_instances(body["instances"], signature)
        )
    if "inputs" in body:
        return PredictBody(
            signature_name, signature, "inputs", decode_columnar(body["inputs"], signature)
        )
    raise InvalidArgument(
        "the request has neither 'instances' nor 'inputs'; send "
        '{"instances": [...]} (row format) or {"inputs": ...} (columnar)'
    )


def to_array(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """A JSON value as an array of ``spec``'s dtype; InvalidArgument naming ``where`` otherwise.

    The rules and messages are ``modelyard.codec``'s, as for KServe's JSON tensors; strings
    may also be ``{"b64": ...}`` here, as in TF Serving. The signature is known here (the JSON
    has no datatypes), so a message also says what the model expects.
    """
    try:
        if spec.datatype is DataType.BYTES:
            return codec.json_strings(where, value, lambda item: _b64(item, where), _STRINGS)
        return codec.json_numbers(where, spec.datatype, value)
    except InvalidArgument as exc:
        raise InvalidArgument(f"{exc.message}; the model expects {spec.describe()}") from None


_STRINGS = 'strings or {"b64": ...} objects'


def _b64(item: Any, where: str) -> bytes | None:
    if isinstance(item, dict) and set(item) == {"b64"}:
        return tfexamples.b64_bytes(item["b64"], where)
    return None


def decode_instances(instances: Any, signature: Signature) -> dict[str, np.ndarray]:
    """Row format: a list with one entry per row, stacked along a new batch dimension.

    With one input an entry is that input's value (or an object naming it); with several it
    must be an object holding every input.
    """
    if not isinstance(instances, list) or not instances:
        raise InvalidArgument("'instances' must be a non-empty list with one entry per row")
    names = [s.name for s in signature.inputs]
    if len(names) == 1 and not (isinstance(instances[0], dict) and set(instances[0]) == {names[0]}):
        spec = signature.inputs[0]
        return {spec.name: to_array(instances, spec, f"input {spec.name!r}")}
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row, instance in enumerate(instances):
        if not isinstance(instance, dict):
            raise InvalidArgument(
                f"instances[{row}] is not an object; with several inputs each instance must "
                f"name every input: {signature.describe_inputs()}"
            )
        unknown = sorted(set(instance) - set(names))
        if unknown:
            raise InvalidArgument(
                f"instances[{row}] has unknown input {', '.join(map(repr, unknown))}; "
                f"the model expects {signature.describe_inputs()}"
            )
        for name in names:
            if name not in instance:
                raise InvalidArgument(
                    f"instances[{row}] is missing input {name!r}; "
                    f"the model expects {signature.describe_inputs()}"
                )
            columns[name].append(instance[name])
    return {
        spec.name: to_array(columns[spec.name], spec, f"input {spec.name!r}")
        for spec in signature.inputs
    }


def decode_columnar(inputs: Any, signature: Signature) -> dict[str, np.ndarray]:
    """Columnar format: one value per input (a bare value when the model has one input)."""
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        return {
            name: to_array(value, signature.input(name), f"input {name!r}")
            for name, value in inputs.items()
        }
    if len(signature.inputs) != 1:
        raise InvalidArgument(
            "'inputs' must be an object naming every input for a model with several inputs: "
            + signature.describe_inputs()
        )
    spec = signature.inputs[0]
    return {spec.name: to_array(inputs, spec, f"input {spec.name!r}")}


# -- encoding ----------------------------------------------------------------------------


def _jsonable(array: np.ndarray) -> Any:
    if array.dtype == object:
        return [_jsonable(a) if isinstance(a, np.ndarray) else _bytes_value(a) for a in array]
    if not array.ndim:  # a scalar is written as one (ascontiguousarray would make it a list)
        return array[()]
    # orjson serialises C-contiguous numpy arrays natively, without a Python-object detour.
    return np.ascontiguousarray(array)


def _bytes_value(value: Any) -> Any:
    """A BYTES element as TF Serving writes it: its text, or ``{"b64": ...}`` if not UTF-8."""
    data = codec.bytes_element(value)
    try:
        return data.decode()
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode()}


def encode_answer(key: str, result: InferResult, signature: Signature) -> bytes:
    """The JSON body answering a ``:predict`` whose payload was under ``key``: ``instances``
    (row format) answers ``predictions``, ``inputs`` (columnar) answers ``outputs``. Pure, so
    it may run in another process (``modelyard.server.http.offload``)."""
    if key == "instances":
        return encode_json({"predictions": encode_predictions(result, signature)})
    return encode_json({"outputs": encode_outputs(result)})


def encode_predictions(result: InferResult, signature: Signature) -> Any:
    """Row format answer: one entry per row; an object per row when there are several outputs."""
    outputs = result.outputs
    if len(outputs) == 1:
        return _jsonable(next(iter(outputs.values())))
    batch = {a.shape[0] if a.ndim else -1 for a in outputs.values()}
    if len(batch) != 1 or -1 in batch:
        shapes = ", ".join(f"{n}: {format_shape(a.shape)}" for n, a in outputs.items())
        raise InvalidArgument(
            "the outputs do not share a batch dimension, so they cannot be returned as rows "
            f"({shapes}); send 'inputs' (columnar) instead of 'instances'"
        )
    arrays = {name: _jsonable(a) for name, a in outputs.items()}
    return [{name: a[i] for name, a in arrays.items()} for i in range(batch.pop())]


def encode_outputs(result: InferResult) -> Any:
    """Columnar answer: the bare value for one output, else an object of all outputs."""
    outputs: Mapping[str, np.ndarray] = result.outputs
    if len(outputs) == 1:
        return _jsonable(next(iter(outputs.values())))
    return {name: _jsonable(a) for name, a in outputs.items()}
