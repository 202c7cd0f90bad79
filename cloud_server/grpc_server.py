"""The gRPC front end: translates ``splitinfer.v1.SplitInference`` messages to the data plane's types.

Also serves ``grpc.health.v1.Health`` (SERVING once loaded, NOT_SERVING while shutting down) and server
reflection. Health and reflection need no API key; the inference service does when keys are configured
(``authorization: Bearer <key>`` or ``x-api-key: <key>`` metadata).
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Iterator, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared._proto import SERVICE_NAME, splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

from .dataplane import DataPlane
from .errors import SplitInferError, Unauthenticated, Unavailable
from .settings import Settings
from .types import InferenceResponse, ModelMetadata, parse_request

__all__ = ["InferenceServicer", "GrpcFrontEnd", "to_request_fields", "from_response", "status_code"]

log = logging.getLogger("splitinfer.server")
# headroom over the largest bitstream for the other fields of a request
_MESSAGE_SLACK = 64 * 1024


def status_code(e: SplitInferError) -> grpc.StatusCode:
    return grpc.StatusCode[e.grpc_code]


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
        timings_ms=r.timings_ms, mask_png=r.mask_png or b"", class_pixels=r.class_pixels or [])
    if r.hinted_rung is not None:
        out.hinted_rung = r.hinted_rung
    return out


def from_metadata(m: ModelMetadata) -> pb.ModelInfo:
    rungs = []
    for r in m.rungs:
        ri = pb.RungInfo(index=r.index, resident=r.resident, n_images=r.n_images)
        setattr(ri, "lambda", r.lam)  # a Python keyword
        for k in ("bpp", "top1", "top5", "miou", "pixel_acc", "agreement"):
            if getattr(r, k) is not None:
                setattr(ri, k, getattr(r, k))
        rungs.append(ri)
    return pb.ModelInfo(name=m.name, bundle_id=m.bundle_id, backbone=m.backbone, split=m.split, task=m.task,
                        input_height=m.input_hw[0], input_width=m.input_hw[1], rate_model=m.rate_model,
                        rungs=rungs, backbone_loaded=m.backbone_loaded, num_classes=m.num_classes)


def _token(context: grpc.ServicerContext) -> Optional[str]:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        if key == "x-api-key":
            return value
    return None


# ------------------------------------------------------------------------------------------ servicer
class InferenceServicer(pb_grpc.SplitInferenceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dp = dataplane

    def _abort(self, context: grpc.ServicerContext, e: SplitInferError):
        context.abort(status_code(e), e.message)

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        try:
            self.dp.authenticate(_token(context))
            req = parse_request(to_request_fields(request))
            return from_response(self.dp.infer(req, protocol="grpc", timeout_s=context.time_remaining()))
        except SplitInferError as e:
            self._abort(context, e)

    def InferStream(self, request_iterator: Iterator[pb.InferRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.InferStreamResponse]:
        try:
            self.dp.authenticate(_token(context))
        except SplitInferError as e:
            self._abort(context, e)
        for request in request_iterator:
            rid = request.request_id
            try:
                req = parse_request(to_request_fields(request))
                resp = self.dp.infer(req, protocol="grpc-stream", timeout_s=context.time_remaining())
                yield pb.InferStreamResponse(request_id=resp.request_id, result=from_response(resp))
            except (Unauthenticated, Unavailable) as e:
                self._abort(context, e)
            except SplitInferError as e:
                yield pb.InferStreamResponse(
                    request_id=rid, error=pb.Error(code=status_code(e).value[0], kind=e.kind, message=e.message))

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext):
        try:
            self.dp.authenticate(_token(context))
            models = self.dp.metadata(request.model or None)
        except SplitInferError as e:
            self._abort(context, e)
        from shared import __version__

        return pb.ModelMetadataResponse(models=[from_metadata(m) for m in models], server_version=__version__)


# ------------------------------------------------------------------------------------------ server
class GrpcFrontEnd:
    """The gRPC server around one data plane: inference service, health, reflection, limits, TLS."""

    def __init__(self, dataplane: DataPlane, settings: Settings):
        self.dp, self.settings = dataplane, settings
        max_msg = settings.max_bitstream_bytes + _MESSAGE_SLACK
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.grpc_workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", max_msg),
                     ("grpc.max_send_message_length", max(max_msg, 4 << 20)),
                     ("grpc.so_reuseport", 0)])
        pb_grpc.add_SplitInferenceServicer_to_server(InferenceServicer(dataplane), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        address = f"{settings.host}:{settings.grpc_port}"
        if settings.tls:
            creds = grpc.ssl_server_credentials(
                [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")

    def start(self) -> None:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC on %s:%d%s", self.settings.host, self.port, " (TLS)" if self.settings.tls else "")

    def stop(self, grace: Optional[float] = None) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in flight finish for up to ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.settings.shutdown_grace_s if grace is None else grace).wait()
