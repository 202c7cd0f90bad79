"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2 / Triton) on the data plane.

Served on the same server and port as the native ``splitinfer.v1.SplitInference`` (:func:`register`), so that
tritonclient.grpc and other OIP clients work unmodified: ServerLive, ServerReady, ServerMetadata (no API key),
ModelReady, ModelMetadata, ModelInfer and Triton's ModelStreamInfer (API key when keys are configured, as
``authorization: Bearer <key>`` or ``x-api-key`` metadata). Tensors, parameters and outputs translate as on
REST (:mod:`cloud_server.oip`); every tensor travels in ``raw_input_contents`` / ``raw_output_contents`` (BYTES elements
framed as a 4-byte little-endian length + bytes), or for inputs in ``contents.bytes_contents``.

Refusals end the call with the status of the error's class (``errors.py``) and its kind in the trailing metadata,
as on the native service (:func:`.status.answers_errors`); inside ModelStreamInfer a refused request gets
``error_message`` (and the stream goes on), except a failed API key, a shutdown or a cancelled call, which end
the stream. The port's call guard (admission, idle streams, request decoding) covers this service too.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import grpc
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from shared._proto import OIP_SERVICE_NAME, SERVICE_NAME, grpc_service_pb2 as pb, grpc_service_pb2_grpc as pb_grpc

from .. import oip
from ..dataplane import DataPlane
from ..errors import Cancelled, InvalidArgument, NotFound, SplitInferError, Unauthenticated, Unavailable
from ..types import InferenceResponse, ModelMetadata
# one reading of API keys, one status mapping and one refusal (kind in the trailing metadata) for both services
from .caller import authenticate
from .status import answers_errors, status_code

__all__ = ["OipServicer", "register", "to_call", "from_answer"]


# ------------------------------------------------------------------------------------------ converters
def _value(p: pb.InferParameter) -> Any:
    which = p.WhichOneof("parameter_choice")
    return None if which is None else getattr(p, which)


def _params(m) -> Dict[str, Any]:
    return {k: v for k, v in ((k, _value(p)) for k, p in m.items()) if v is not None}


def _set(p: pb.InferParameter, v: Any) -> None:
    if isinstance(v, bool):  # before int: bool is an int
        p.bool_param = v
    elif isinstance(v, int):
        p.int64_param = v
    elif isinstance(v, float):
        p.double_param = v
    else:
        p.string_param = str(v)


def _inputs(m: pb.ModelInferRequest) -> List[oip.InputTensor]:
    raw = m.raw_input_contents
    if raw and len(raw) != len(m.inputs):
        raise InvalidArgument(f"raw_input_contents has {len(raw)} entries for {len(m.inputs)} inputs")
    out = []
    for i, t in enumerate(m.inputs):
        if "shared_memory_region" in t.parameters:
            raise InvalidArgument(f"input {t.name!r}: shared memory is not supported; send the data in the request")
        bytes_type = t.datatype == "BYTES"
        if raw:
            if t.HasField("contents"):
                raise InvalidArgument(f"input {t.name!r} has both contents and raw_input_contents")
            elements = oip.unpack_bytes(raw[i], t.name, 1) if bytes_type else None
        else:
            elements = list(t.contents.bytes_contents) if bytes_type else None
        out.append(oip.InputTensor(t.name, t.datatype, tuple(t.shape), elements))
    return out


def _outputs(m: pb.ModelInferRequest) -> List[oip.RequestedOutput]:
    out = []
    for o in m.outputs:
        p = oip.parse_model(oip.OutputParameters, _params(o.parameters), f"parameters of output {o.name!r}")
        if p.shared_memory_region is not None:
            raise InvalidArgument(f"output {o.name!r}: shared memory is not supported")
        out.append(oip.RequestedOutput(o.name, None, p.classification or 0))
    return out


def to_call(m: pb.ModelInferRequest, meta: Optional[ModelMetadata], default_top_k: int) -> oip.OipCall:
    """A ModelInferRequest -> the data plane's request and the outputs to answer with (``meta``: None if unknown)."""
    oip.check_version(meta, m.model_version)
    if len(m.inputs) > 1:
        raise InvalidArgument(f"expected exactly one input ({oip.INPUT_NAME!r}, BYTES, shape [1]), got "
                              f"{len(m.inputs)}")
    oip.check_counts(len(m.outputs), m.inputs[0].shape if m.inputs else ())
    params = oip.parse_model(oip.RequestParameters, _params(m.parameters), "request parameters")
    return oip.make_call(m.model_name, meta, m.id or None, params, _inputs(m), _outputs(m), default_top_k)


def from_answer(r: InferenceResponse, call: oip.OipCall) -> pb.ModelInferResponse:
    tensors = oip.answer_tensors(r, call)
    out = pb.ModelInferResponse(
        model_name=r.model, model_version=r.bundle_id, id=r.request_id,
        outputs=[pb.ModelInferResponse.InferOutputTensor(name=t.name, datatype=t.datatype, shape=t.shape)
                 for t in tensors],
        raw_output_contents=[t.raw() for t in tensors])
    for k, v in oip.response_parameters(r).items():
        _set(out.parameters[k], v)
    return out


def _tensor_metadata(ts: List[oip.TensorMetadata]) -> List[pb.ModelMetadataResponse.TensorMetadata]:
    return [pb.ModelMetadataResponse.TensorMetadata(name=t.name, datatype=t.datatype, shape=t.shape) for t in ts]


# ------------------------------------------------------------------------------------------ servicer
class OipServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dp = dataplane

    def _lookup(self, name: str) -> Optional[ModelMetadata]:
        try:
            return self.dp.model_metadata(name)
        except NotFound:
            return None  # the data plane reports it (and counts it)

    @staticmethod
    def _timeout(context: grpc.ServicerContext, call: oip.OipCall) -> Optional[float]:
        left = context.time_remaining()
        if call.timeout_s is None:
            return left
        return call.timeout_s if left is None else min(left, call.timeout_s)

    def _infer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext,
               protocol: str) -> pb.ModelInferResponse:
        try:
            call = to_call(request, self._lookup(request.model_name), self.dp.settings.default_top_k)
        except SplitInferError as e:  # counted and logged as the data plane's own refusals are
            self.dp.refused(protocol, request.model_name, e, request.id or None)
            raise
        resp = self.dp.infer(call.request, protocol=protocol, timeout_s=self._timeout(context, call))
        return from_answer(resp, call)

    # -- health and metadata ---------------------------------------------------------------------------
    @answers_errors
    def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.ServicerContext) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=self.dp.live())

    @answers_errors
    def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.ServicerContext) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.dp.ready())

    @answers_errors
    def ServerMetadata(self, request: pb.ServerMetadataRequest,
                       context: grpc.ServicerContext) -> pb.ServerMetadataResponse:
        meta = oip.server_metadata(self.dp.server_metadata())
        return pb.ServerMetadataResponse(name=meta["name"], version=meta["version"], extensions=meta["extensions"])

    @answers_errors
    def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.ServicerContext) -> pb.ModelReadyResponse:
        authenticate(self.dp, context)
        oip.check_version(self.dp.model_metadata(request.name), request.version)
        return pb.ModelReadyResponse(ready=self.dp.model_ready(request.name))

    @answers_errors
    def ModelMetadata(self, request: pb.ModelMetadataRequest,
                      context: grpc.ServicerContext) -> pb.ModelMetadataResponse:
        authenticate(self.dp, context)
        m = self.dp.model_metadata(request.name)
        oip.check_version(m, request.version)
        body = oip.model_metadata(m)
        return pb.ModelMetadataResponse(name=body.name, versions=body.versions, platform=body.platform,
                                        inputs=_tensor_metadata(body.inputs), outputs=_tensor_metadata(body.outputs))

    # -- inference -------------------------------------------------------------------------------------
    @answers_errors
    def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.ServicerContext) -> pb.ModelInferResponse:
        authenticate(self.dp, context)
        return self._infer(request, context, "grpc-oip")

    @answers_errors
    def ModelStreamInfer(self, request_iterator: Iterator[pb.ModelInferRequest],
                         context: grpc.ServicerContext) -> Iterator[pb.ModelStreamInferResponse]:
        authenticate(self.dp, context)
        for request in request_iterator:
            try:
                yield pb.ModelStreamInferResponse(infer_response=self._infer(request, context, "grpc-oip-stream"))
            except (Unauthenticated, Unavailable, Cancelled):
                raise  # these end the stream
            except SplitInferError as e:
                # the id lets a client match the refusal; the kind and code say what the native Error says
                failed = pb.ModelInferResponse(model_name=request.model_name, id=request.id)
                _set(failed.parameters["error_kind"], e.kind)
                _set(failed.parameters["error_code"], status_code(e).name)
                yield pb.ModelStreamInferResponse(error_message=e.message, infer_response=failed)


# ------------------------------------------------------------------------------------------ registration
class _Pools:
    """The OIP stubs' own pool (see ``shared.proto_build``), then protobuf's default one: what reflection searches,
    so that it describes both services. Own pool first: an OIP client's stubs imported in the same process
    (tritonclient's full Triton service) must not stand in for what this server implements."""

    def __init__(self, *pools):
        self._pools = pools

    def __getattr__(self, name: str):
        def find(*args):
            error: Exception = KeyError(args[0] if args else name)
            for pool in self._pools:
                try:
                    return getattr(pool, name)(*args)
                except KeyError as e:
                    error = e
            raise error

        return find


def register(front_end) -> OipServicer:
    """Serve ``inference.GRPCInferenceService`` on ``front_end`` (a :class:`~.server.GrpcFrontEnd`, not yet
    started): the servicer, its health status, and reflection that lists it beside the native service."""
    from google.protobuf import descriptor_pool

    servicer = OipServicer(front_end.dp)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, front_end.server)
    front_end.health.set(OIP_SERVICE_NAME, health_pb2.HealthCheckResponse.SERVING)
    # A second reflection service replaces the first (registered methods are looked up by name, the latest
    # registration wins); it lists every service of this server and finds the OIP types in their own pool.
    names = (SERVICE_NAME, OIP_SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
             reflection.SERVICE_NAME)
    reflection.enable_server_reflection(names, front_end.server,
                                        pool=_Pools(pb.DESCRIPTOR.pool, descriptor_pool.Default()))
    return servicer
