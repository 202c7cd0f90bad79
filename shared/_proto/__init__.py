"""Generated gRPC stubs of ``proto/splitinfer.proto``, shared by the edge client and the cloud server.

The modules themselves are not committed: importing this package generates them on first use (or when
the ``.proto`` changed) via :mod:`shared.proto_build`. Import them as::

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

from . import splitinfer_pb2, splitinfer_pb2_grpc  # noqa: E402

SERVICE_NAME = splitinfer_pb2.DESCRIPTOR.services_by_name["SplitInference"].full_name

__all__ = ["splitinfer_pb2", "splitinfer_pb2_grpc", "SERVICE_NAME"]
