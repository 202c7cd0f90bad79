"""``splitinfer.v1.SplitInference`` on the data plane: its messages translated to the data plane's types and back.

The inference methods need an API key when keys are configured (``authorization: Bearer <key>`` or
``x-api-key: <key>`` metadata). A refusal ends the call (:mod:`.status`); inside ``InferStream`` a refused
request is answered with an ``Error`` and the stream goes on, except a failed API key, a shutdown or a cancelled
call, which end it.
"""

from __future__ import annotations

from typing import Iterator

import grpc

from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc
from shared.tasks import wire

from ..dataplane import DataPlane
from ..errors import Cancelled, SplitInferError, Unauthenticated, Unavailable
from ..types import InferenceResponse, ModelMetadata, parse_request
from .caller import authenticate
from .status import answers_errors, status_code

__all__ = ["InferenceServicer", "to_request_fields", "from_response", "from_metadata"]


# ------------------------------------------------------------------------------------------ converters
def to_request_fields(m: pb.InferRequest) -> dict:
    fields = {"model": m.model or None, "bitstream": m.bitstream or None,
              "request_id": m.request_id or None, "top_k": m.top_k or None}
    which = m.WhichOneof("bitrate")
    if which == "target_bpp":
        fields["target_bpp"] = m.target_bpp
    elif which == "link":
        fields["kbit_per_s"], fields["fps"] = m.link.kbit_per_s, m.link.fps
    if m.HasField("expected_rung"):
        fields["expected_rung"] = m.expected_rung
    return {k: v for k, v in fields.items() if v is not None}


def from_response(r: InferenceResponse) -> pb.InferResponse:
    out = pb.InferResponse(
        request_id=r.request_id, model=r.model, bundle_id=r.bundle_id, rung=r.rung, bytes_received=r.bytes_received,
        bpp=r.bpp, input_height=r.input_hw[0], input_width=r.input_hw[1], batch_size=r.batch_size,
        topk=[pb.ClassScore(index=c.index, name=c.name, score=c.score) for c in r.topk],
        timings_ms=r.timings_ms)
    wire.to_pb(r.outputs, out.outputs)
    if r.hinted_rung is not None:
        out.hinted_rung = r.hinted_rung
    return out


_RUNG_FIELDS = frozenset(pb.RungInfo.DESCRIPTOR.fields_by_name) - {"metrics"}


def from_metadata(m: ModelMetadata) -> pb.ModelInfo:
    rungs = []
    for r in m.rungs:
        figures = r.metrics()
        ri = pb.RungInfo(index=r.index, resident=r.resident, n_images=r.n_images, metrics=figures)
        setattr(ri, "lambda", r.lam)  # a Python keyword
        for k, v in (("bpp", r.bpp), ("agreement", r.agreement), *figures.items()):
            if v is not None and k in _RUNG_FIELDS:  # the figures older clients read from fields of their own
                setattr(ri, k, v)
        rungs.append(ri)
    info = pb.ModelInfo(name=m.name, bundle_id=m.bundle_id, backbone=m.backbone, split=m.split, task=m.task,
                        input_height=m.input_hw[0], input_width=m.input_hw[1], rate_model=m.rate_model,
                        rungs=rungs, backbone_loaded=m.backbone_loaded, num_classes=m.num_classes,
                        head_weights=m.head_weights)
    if m.variable_rate is not None:
        v = m.variable_rate
        info.variable_rate.CopyFrom(pb.VariableRate(level_min=v.levels[0], level_max=v.levels[1], curve=[
            pb.LevelPoint(level=p.level, bpp=p.bpp, n_images=p.n_images, metrics=p.metrics(),
                          **({} if p.agreement is None else {"agreement": p.agreement})) for p in v.curve]))
    return info


# ------------------------------------------------------------------------------------------ servicer
class InferenceServicer(pb_grpc.SplitInferenceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dp = dataplane

    @answers_errors
    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        authenticate(self.dp, context)
        req = parse_request(to_request_fields(request))
        return from_response(self.dp.infer(req, protocol="grpc", timeout_s=context.time_remaining()))

    @answers_errors
    def InferStream(self, request_iterator: Iterator[pb.InferRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.InferStreamResponse]:
        authenticate(self.dp, context)
        for request in request_iterator:
            rid = request.request_id
            try:
                req = parse_request(to_request_fields(request))
                resp = self.dp.infer(req, protocol="grpc-stream", timeout_s=context.time_remaining())
                yield pb.InferStreamResponse(request_id=resp.request_id, result=from_response(resp))
            except (Unauthenticated, Unavailable, Cancelled):
                raise  # these end the stream
            except SplitInferError as e:
                yield pb.InferStreamResponse(
                    request_id=rid, error=pb.Error(code=status_code(e).value[0], kind=e.kind, message=e.message))

    @answers_errors
    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext):
        from shared import __version__

        authenticate(self.dp, context)
        models = self.dp.metadata(request.model or None)
        return pb.ModelMetadataResponse(models=[from_metadata(m) for m in models], server_version=__version__)

    @answers_errors
    def EdgePackage(self, request: pb.EdgePackageRequest, context: grpc.ServicerContext):
        from ..edge_packages import grpc_chunks  # the served models' edge packages (issue 25): its own module

        authenticate(self.dp, context)
        yield from grpc_chunks(self.dp, request.model)
