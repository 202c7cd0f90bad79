"""The cloud side: entropy decoding, the bottleneck decoder and the tail, behind REST and gRPC.

``CloudDecoder`` is the pipeline in-process; ``SplitInferServer`` (``cloud_server.server``) is the service:
settings -> model repository -> one data plane -> REST (FastAPI) and gRPC front ends. Each loads on first use:
``splitinfer --help`` reads the torch-free :mod:`cloud_server.options` alone.
"""

__all__ = ["CloudDecoder", "Prediction", "SplitInferServer", "Settings"]


def __getattr__(name):  # the modules load only when asked for
    if name in ("CloudDecoder", "Prediction"):
        from . import decoder

        return getattr(decoder, name)
    if name == "SplitInferServer":
        from .server import SplitInferServer

        return SplitInferServer
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module 'cloud_server' has no attribute {name!r}")
