"""The edge side: head + bottleneck encoder + entropy coding, and the clients that send the bytes.

Importing this package never imports the server, FastAPI, or a model's tail.
"""

from .client import BundleMismatchError, EdgeClient, InferResult, ServiceError
from .encoder import EdgeEncoder, EncodedFrame

__all__ = ["EdgeEncoder", "EncodedFrame", "EdgeClient", "InferResult", "ServiceError", "BundleMismatchError"]
