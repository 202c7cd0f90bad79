"""``splitinfer serve``: the cloud server, REST and gRPC in one process around one data plane.

Flags override ``SPLITINFER_*`` environment variables, which override ``--config FILE`` (JSON); see
``cloud_server/settings.py`` for every setting.
"""

from __future__ import annotations

import argparse
import sys


def setup_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", action="append", default=None, metavar="[NAME=]DIR",
                   help="bundle folder to serve (repeatable; NAME= sets the model name, default "
                        "<backbone>-<split>); default: the embedded ladder")
    p.add_argument("--weights", default=None, help="backbone weights file (default: pretrained)")
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
    p.add_argument("--log-format", default=None, choices=["json", "text"])


def _bundle_specs(values):
    from cloud_server.settings import BundleSpec

    specs = []
    for v in values:
        name, sep, path = v.partition("=")
        specs.append(BundleSpec(name=name, path=path) if sep else BundleSpec(path=v))
    return specs


def run(args) -> int:
    from pydantic import ValidationError

    from cloud_server.logs import configure_logging
    from cloud_server.server import SplitInferServer
    from cloud_server.settings import load_settings

    overrides = {k: getattr(args, k) for k in (
        "weights", "host", "http_port", "grpc_port", "preload", "enable_rest", "enable_grpc", "batch_max_size",
        "batch_max_wait_ms", "api_key_file", "tls_cert_file", "tls_key_file", "device", "log_format")}
    if args.bundle:
        overrides["bundles"] = _bundle_specs(args.bundle)
    try:
        settings = load_settings(args.config, **overrides)
    except ValidationError as e:
        print(f"error: invalid settings: {e}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    try:
        server = SplitInferServer(settings)
    except (OSError, RuntimeError) as e:  # a port in use, an unreadable certificate, ...
        print(f"error: cannot start the server: {e}", file=sys.stderr)
        return 2
    names = ", ".join(m.name for m in server.repository.models())
    where = []
    if server.grpc_port is not None:
        where.append(f"gRPC {settings.host}:{server.grpc_port}")
    if server.http_port is not None:
        where.append(f"REST http{'s' if settings.tls else ''}://{settings.host}:{server.http_port}")
    print(f"splitinfer serving {names} on {' and '.join(where)} (Ctrl-C stops)", flush=True)
    server.serve_forever()
    return 0
