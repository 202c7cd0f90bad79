"""The edge side: image -> bytes on the device, and the clients that send them to the cloud.

:class:`EdgeClient` and :class:`OnnxEdgeEncoder` run without PyTorch (ONNX Runtime + numpy: ``runtime``);
:class:`EdgeEncoder`, the PyTorch reference encoder (:mod:`shared.encoder`), loads torch only when it is first used.
Importing this package never imports torch, the server, FastAPI, or a model's tail, and loads each module on
first use (``splitinfer edge --help`` reads :mod:`edge_client.options` alone).
"""

from __future__ import annotations

import importlib

__all__ = ["EdgeClient", "OnnxEdgeEncoder", "EdgeEncoder", "Encoder", "EncodedFrame", "EdgePackage", "find_package",
           "InferResult", "ServiceError", "BundleMismatchError", "ImageError", "AnswerError", "EdgeOptions"]

# name -> the module that defines it (EdgeEncoder: the PyTorch encoder, torch loads on first use)
_WHERE = {"EdgeClient": ".client", "InferResult": ".results", "ServiceError": ".results",
          "BundleMismatchError": ".results", "ImageError": ".results", "AnswerError": ".results",
          "EdgePackage": ".package", "find_package": ".package", "OnnxEdgeEncoder": ".runtime",
          "Encoder": "shared.frame", "EncodedFrame": "shared.frame", "EdgeEncoder": "shared.encoder",
          "EdgeOptions": ".options"}


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = globals()[name] = getattr(importlib.import_module(_WHERE[name], __name__), name)
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
