"""Render ``deploy/haproxy/haproxy.cfg`` for a set of ``splitinfer serve`` replicas (stdlib only).

    python deploy/haproxy/render.py --replica 10.0.0.5:50051:8000 --replica 10.0.0.6:50051:8000 > haproxy.cfg

``benchmarks/scale_out.py`` and ``tests/test_scale_out.py`` call :func:`render` on the same template.
"""

from __future__ import annotations

import argparse
import string
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

TEMPLATE = Path(__file__).resolve().with_name("haproxy.cfg")

Replica = Tuple[str, int, int]  # host, gRPC port, REST port


def parse_replica(text: str) -> Replica:
    """``HOST:GRPC_PORT:HTTP_PORT`` (an IPv6 host in brackets: ``[::1]:50051:8000``)."""
    host, sep, ports = text.rpartition(":")
    host, sep2, grpc_port = host.rpartition(":")
    if not (sep and sep2 and host and grpc_port.isdigit() and ports.isdigit()):
        raise ValueError(f"replica {text!r}: expected HOST:GRPC_PORT:HTTP_PORT, e.g. 10.0.0.5:50051:8000")
    g, h = int(grpc_port), int(ports)
    if not (0 < g < 65536 and 0 < h < 65536):
        raise ValueError(f"replica {text!r}: ports must be 1..65535")
    return host, g, h


def render(replicas: Sequence[Replica], grpc_bind: str = "*:50051", rest_bind: str = "*:8000",
           template: Path = TEMPLATE) -> str:
    """The HAProxy configuration for ``replicas``: each one's gRPC port in the HTTP/2 backend (health-checked on
    its REST readiness probe), its REST port in the HTTP/1.1 backend."""
    if not replicas:
        raise ValueError("at least one replica is needed")
    grpc_lines, rest_lines = [], []
    for i, (host, grpc_port, http_port) in enumerate(replicas):
        grpc_lines.append(f"    server r{i} {host}:{grpc_port} proto h2 check port {http_port} check-proto h1")
        rest_lines.append(f"    server r{i} {host}:{http_port} track grpc_replicas/r{i}")
    # substitute() (not safe_substitute): a placeholder this code does not fill is an error, not a literal "$x"
    return string.Template(template.read_text()).substitute(
        grpc_bind=grpc_bind, rest_bind=rest_bind, grpc_servers="\n".join(grpc_lines),
        rest_servers="\n".join(rest_lines))


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--replica", action="append", required=True, metavar="HOST:GRPC_PORT:HTTP_PORT",
                   help="one splitinfer serve replica (repeat for each)")
    p.add_argument("--grpc-bind", default="*:50051", help="where HAProxy takes gRPC (default *:50051)")
    p.add_argument("--rest-bind", default="*:8000", help="where HAProxy takes REST (default *:8000)")
    args = p.parse_args(argv)
    try:
        replicas = [parse_replica(r) for r in args.replica]
    except ValueError as e:
        p.error(str(e))
    sys.stdout.write(render(replicas, args.grpc_bind, args.rest_bind))
    return 0


if __name__ == "__main__":
    sys.exit(main())
