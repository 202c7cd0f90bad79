"""Generated gRPC stubs of ``proto/*.proto``, shared by the edge client and the cloud server.

- ``splitinfer_pb2`` / ``splitinfer_pb2_grpc``: the native service ``splitinfer.v1.SplitInference``;
- ``grpc_service_pb2`` / ``grpc_service_pb2_grpc``: the Open Inference Protocol's
  ``inference.GRPCInferenceService`` (KServe v2 / Triton), served by ``cloud_server.grpc.oip_service``.

The modules themselves are not committed: importing this package generates them on first use (or when
a ``.proto`` changed) via :mod:`shared.proto_build`. Import them as::

    from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

Only ``grpc`` and ``protobuf`` are imported here: nothing from the server.
"""

from ..proto_build import GENERATED as _GENERATED, OUT_DIR as _OUT_DIR, ensure_generated as _ensure_generated

try:
    _ensure_generated()
except (OSError, RuntimeError) as _e:  # e.g. a read-only install: use the stubs that are there, if any
    if not all((_OUT_DIR / _f).is_file() for _f in _GENERATED):
        raise
    import warnings

    warnings.warn(f"could not regenerate the gRPC stubs ({_e}); using the existing ones", RuntimeWarning)

from . import grpc_service_pb2, grpc_service_pb2_grpc, splitinfer_pb2, splitinfer_pb2_grpc  # noqa: E402

SERVICE_NAME = splitinfer_pb2.DESCRIPTOR.services_by_name["SplitInference"].full_name
OIP_SERVICE_NAME = grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name

__all__ = ["splitinfer_pb2", "splitinfer_pb2_grpc", "grpc_service_pb2", "grpc_service_pb2_grpc", "SERVICE_NAME",
           "OIP_SERVICE_NAME"]
