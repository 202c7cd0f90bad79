"""The cloud side: entropy decoding, the bottleneck decoder and the tail, behind REST and gRPC.

``CloudDecoder`` is the pipeline in-process; ``SplitInferServer`` (``cloud_server.server``) is the service:
settings -> model repository -> one data plane -> REST (FastAPI) and gRPC front ends.
"""

from .decoder import CloudDecoder, Prediction

__all__ = ["CloudDecoder", "Prediction", "SplitInferServer", "Settings"]


def __getattr__(name):  # the service's modules load only when asked for
    if name == "SplitInferServer":
        from .server import SplitInferServer

        return SplitInferServer
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module 'cloud_server' has no attribute {name!r}")
