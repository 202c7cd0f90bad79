"""The gRPC front end: one server on the gRPC port around the data plane.

It serves ``splitinfer.v1.SplitInference`` (:mod:`.native_service`), ``grpc.health.v1.Health`` (SERVING once
loaded, NOT_SERVING while shutting down) and server reflection; ``cloud_server.server`` adds the Open Inference
Protocol's service (:func:`.oip_service.register`). Health and reflection need no API key. Every call passes the
:class:`~.guard.CallGuard` first; the transport's own limits are :func:`http2_options`.
"""

from __future__ import annotations

import logging
from concurrent import futures
from typing import Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared._proto import SERVICE_NAME, splitinfer_pb2_grpc as pb_grpc

from ..dataplane import DataPlane
from ..settings import Settings
from .guard import CallGuard
from .native_service import InferenceServicer

__all__ = ["GrpcFrontEnd", "http2_options"]

log = logging.getLogger("splitinfer.server")
# headroom over the largest bitstream for the other fields of a request
_MESSAGE_SLACK = 64 * 1024


def http2_options(settings: Settings) -> list:
    """gRPC core's HTTP/2 limits against stream abuse (HTTP/2 rapid reset, CVE-2023-44487): a connection may have
    ``grpc_max_streams_per_connection`` streams, and a stream counts until the server has let go of it, not until
    the client resets it (``grpc.http.overload_protection``), so a client that opens and at once resets streams gets
    REFUSED_STREAM from the transport itself beyond that, without reaching Python. (The transport also starts at most
    32 new streams per read, its default ``grpc.http2.max_requests_per_read``, before it reads other connections.)"""
    return [("grpc.max_concurrent_streams", settings.grpc_streams_per_connection),
            ("grpc.http.overload_protection", 1),
            # a connection that never finishes its TLS handshake or HTTP/2 preface is closed (E5: held 120 s)
            ("grpc.server_handshake_timeout_ms", int(1000 * settings.handshake_timeout_s))]


class GrpcFrontEnd:
    """The gRPC server around one data plane: inference service, health, reflection, limits, TLS."""

    def __init__(self, dataplane: DataPlane, settings: Settings):
        self.dp, self.settings = dataplane, settings
        max_msg = settings.max_bitstream_bytes + _MESSAGE_SLACK
        self.guard = CallGuard(settings, dataplane)
        self._pool = futures.ThreadPoolExecutor(max_workers=settings.grpc_threads, thread_name_prefix="grpc")
        self.server = grpc.server(
            self._pool, interceptors=[self.guard],
            options=[("grpc.max_receive_message_length", max_msg),
                     ("grpc.max_send_message_length", max(max_msg, 4 << 20)),
                     ("grpc.so_reuseport", 0), *http2_options(settings)])
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
        self.guard.close()
        self._pool.shutdown(wait=False)
