"""The edge side: image -> bytes on the device, and the clients that send them to the cloud.

:class:`EdgeClient` and :class:`OnnxEdgeEncoder` run without PyTorch (ONNX Runtime + numpy: ``runtime``);
:class:`EdgeEncoder`, the PyTorch reference encoder, loads torch only when it is first used. Importing this
package never imports torch, the server, FastAPI, or a model's tail.
"""

from .client import BundleMismatchError, EdgeClient, ImageError, InferResult, ServiceError
from .package import EdgePackage, find_package
from .runtime import EncodedFrame, OnnxEdgeEncoder

__all__ = ["EdgeClient", "OnnxEdgeEncoder", "EdgeEncoder", "EncodedFrame", "EdgePackage", "find_package",
           "InferResult", "ServiceError", "BundleMismatchError", "ImageError"]


def __getattr__(name):
    if name == "EdgeEncoder":  # the PyTorch encoder: torch loads here, on first use
        from .encoder import EdgeEncoder

        return EdgeEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
