"""Container health check (stdlib + grpcio only; never imports torch or the server).

cloud: GET /v2/health/ready on the REST port when REST is enabled, else gRPC health (grpc.health.v1)
       on the gRPC port. TLS-only servers are probed over TLS without verifying the certificate
       (loopback liveness, not a trust decision).
edge:  gRPC health of the server the edge client sends to ($SPLITINFER_SERVER): an edge container is
       healthy when its cloud answers.
Exit 0 = healthy, 1 = not.
"""

import os
import ssl
import sys
import urllib.request


def _on(name: str, default: bool = True) -> bool:
    v = os.environ.get(name)
    return default if v is None else v.strip().lower() in {"1", "true", "yes", "on"}


def grpc_ready(target: str, tls: bool) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    ch = grpc.secure_channel(target, grpc.ssl_channel_credentials()) if tls else grpc.insecure_channel(target)
    with ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=3)
    return r.status == health_pb2.HealthCheckResponse.SERVING


def cloud() -> bool:
    tls = bool(os.environ.get("SPLITINFER_TLS_CERT_FILE"))
    if _on("SPLITINFER_ENABLE_REST"):
        port = os.environ.get("SPLITINFER_HTTP_PORT", "8000")
        ctx = ssl._create_unverified_context() if tls else None
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=3, context=ctx) as r:
            return r.status == 200
    return grpc_ready(f"127.0.0.1:{os.environ.get('SPLITINFER_GRPC_PORT', '50051')}", tls)


def edge() -> bool:
    return grpc_ready(os.environ["SPLITINFER_SERVER"], _on("SPLITINFER_TLS", False))


if __name__ == "__main__":
    try:
        ok = {"cloud": cloud, "edge": edge}[sys.argv[1] if len(sys.argv) > 1 else "cloud"]()
    except Exception as e:  # any failure is "unhealthy"
        print(f"unhealthy: {e}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0 if ok else 1)
