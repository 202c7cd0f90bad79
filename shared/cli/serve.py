"""``splitinfer serve`` (the cloud server: REST and gRPC in one process around one data plane) and ``demo`` (a
round trip through it on loopback: :mod:`shared.demo`).

Flags override ``SPLITINFER_*`` environment variables, which override ``--config FILE`` (JSON); see
``cloud_server/settings.py`` for every setting.
"""

from __future__ import annotations

import argparse

from . import WEIGHTS_HELP
from ..errors import UserError
from ..options import positive


def setup_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", action="append", default=None, metavar="[NAME=]DIR",
                   help="bundle folder to serve (repeatable; NAME= sets the model name, default "
                        "<backbone>-<split>); default: the embedded ladder")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--host", default=None, help="address to bind (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=None, help="REST port (default 8000; 0 = any free port)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default 50051; 0 = any free port)")
    p.add_argument("--preload", action="store_true", default=None, help="load every rung at start")
    p.add_argument("--no-rest", dest="enable_rest", action="store_false", default=None, help="gRPC only")
    p.add_argument("--no-grpc", dest="enable_grpc", action="store_false", default=None, help="REST only")
    p.add_argument("--batch-max-size", type=int, default=None, help="largest tail batch (1 = no batching; default 8)")
    p.add_argument("--batch-max-wait-ms", type=float, default=None, help="batching wait (default 2 ms)")
    p.add_argument("--api-key-file", default=None, help="file with one accepted API key per line")
    p.add_argument("--tls-cert", dest="tls_cert_file", default=None, help="PEM certificate chain (TLS on both ports)")
    p.add_argument("--tls-key", dest="tls_key_file", default=None, help="PEM private key")
    p.add_argument("--device", default=None, help="torch device (default cpu)")
    p.add_argument("--config", default=None, help="JSON settings file (SPLITINFER_CONFIG_FILE)")
    p.add_argument("--log-format", default=None, choices=["json", "text"],
                   help="log lines as JSON objects (one per line, for collectors) or as text (default: json)")


def run_serve(args) -> int:
    from pydantic import ValidationError

    from cloud_server.logs import configure_logging
    from cloud_server.server import SplitInferServer
    from cloud_server.settings import BundleSpec, load_settings

    overrides = {k: getattr(args, k) for k in (
        "weights", "host", "http_port", "grpc_port", "preload", "enable_rest", "enable_grpc", "batch_max_size",
        "batch_max_wait_ms", "api_key_file", "tls_cert_file", "tls_key_file", "device", "log_format")}
    if args.bundle:
        overrides["bundles"] = [BundleSpec(name=n, path=p) if sep else BundleSpec(path=v)
                                for v in args.bundle for n, sep, p in [v.partition("=")]]
    try:
        settings = load_settings(args.config, **overrides)
    except ValidationError as e:
        raise UserError("invalid settings: " + "; ".join(
            f"{'.'.join(map(str, err['loc'])) or 'settings'}: {err['msg']}" for err in e.errors())) from None
    configure_logging(settings.log_format, settings.log_level)
    try:
        server = SplitInferServer(settings)
    except (OSError, RuntimeError) as e:  # a port in use, an unreadable certificate, ...
        raise UserError(f"cannot start the server: {e}") from None
    names = ", ".join(m.name for m in server.repository.models())
    where = []
    if server.grpc_port is not None:
        where.append(f"gRPC {settings.host}:{server.grpc_port}")
    if server.http_port is not None:
        where.append(f"REST http{'s' if settings.tls else ''}://{settings.host}:{server.http_port}")
    print(f"splitinfer serving {names} on {' and '.join(where)} (Ctrl-C stops)", flush=True)
    server.serve_forever()
    return 0


def setup_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=None, help="bundle folder (default: the embedded ladder)")
    p.add_argument("--weights", default=None, help=WEIGHTS_HELP)
    p.add_argument("--images", default=None, help="folder with labels.csv (default: the embedded samples)")
    p.add_argument("--bitrates", default=None, type=lambda s: [positive("positive bpp values")(v) for v in s.split(",")],
                   help="comma-separated bpp hints (default: the measured bpp of the top, a middle and the bottom rung)")
    p.add_argument("--rest", action="store_true", help="send over REST instead of gRPC")


def run_demo(args) -> int:
    from ..demo import run_demo

    return run_demo(args.bundle, args.weights, args.images, args.bitrates, args.rest)
