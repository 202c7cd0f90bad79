"""The options of the cloud's commands: ``splitinfer decode`` (one bitstream file) and ``serve``
(:class:`ServeOptions`: the :class:`~cloud_server.settings.Settings` a command line may set).

Each :class:`ServeOptions` field but ``bundle`` and ``config`` is the setting of the same name; None means "not given", so the
setting's environment variable (``SPLITINFER_*``), the ``--config`` file or its default applies instead
(:func:`cloud_server.settings.serve_settings`). A test checks that the names are settings and the defaults the
help texts state are the settings' defaults. Torch- and pydantic-free: ``splitinfer --help`` imports it, on an
edge install too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from shared.options import BUNDLE_HELP, WEIGHTS_HELP, option

__all__ = ["ServeOptions", "DecodeOptions", "ExportCloudOptions"]


@dataclass
class DecodeOptions:
    """``splitinfer decode``: the cloud half on a bitstream file."""

    bitstream: str = option(help="file written by `splitinfer encode`", positional=True)
    bundle: Optional[str] = option(None, BUNDLE_HELP)
    topk: int = option(5, "classes to print, best first (default 5)")
    weights: Optional[str] = option(None, WEIGHTS_HELP)
    json: bool = option(False, "print one JSON object (rung, bytes, bpp, topk, timings)")


@dataclass(kw_only=True)
class ExportCloudOptions:
    """The package holds each rung's bottleneck decoder (g_s) and the tail as ONNX, the integer hyper-decoder's
    weights and the entropy coder's tables as arrays, and the bundle's manifest; it is tied to the bundle id and
    the tail's weights fingerprint. Serve it without PyTorch (ONNX Runtime, numpy and the project's rANS decoder):
      splitinfer serve --bundle CLOUD_DIR"""

    bundle: Optional[str] = option(None, BUNDLE_HELP)
    out: str = option(help="folder to write (replaced if it exists)", metavar="CLOUD_DIR")
    weights: Optional[str] = option(None, WEIGHTS_HELP)


@dataclass
class ServeOptions:
    bundle: Optional[List[str]] = option(None, "bundle folder to serve (repeatable; NAME= sets the model name, "
                                               "default <backbone>-<split>); default: the embedded ladder",
                                         metavar="[NAME=]DIR")
    weights: Optional[str] = option(None, WEIGHTS_HELP)
    host: Optional[str] = option(None, "address to bind (default 127.0.0.1)")
    http_port: Optional[int] = option(None, "REST port (default 8000; 0 = any free port)")
    grpc_port: Optional[int] = option(None, "gRPC port (default 50051; 0 = any free port)")
    preload: Optional[bool] = option(None, "load every rung at start", action="store_true")
    enable_rest: Optional[bool] = option(None, "gRPC only", flag="no-rest", action="store_false")
    enable_grpc: Optional[bool] = option(None, "REST only", flag="no-grpc", action="store_false")
    batch_max_size: Optional[int] = option(None, "largest tail batch (1 = no batching; default 8)")
    batch_max_wait_ms: Optional[float] = option(None, "batching wait (default 2 ms)")
    api_key_file: Optional[str] = option(None, "file with one accepted API key per line")
    tls_cert_file: Optional[str] = option(None, "PEM certificate chain (TLS on both ports)", flag="tls-cert")
    tls_key_file: Optional[str] = option(None, "PEM private key", flag="tls-key")
    device: Optional[str] = option(None, "torch device (default cpu)")
    config: Optional[str] = option(None, "JSON settings file (SPLITINFER_CONFIG_FILE)")
    log_format: Optional[str] = option(None, "log lines as JSON objects (one per line, for collectors) or as text "
                                             "(default: json)", choices=["json", "text"])
