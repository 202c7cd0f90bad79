"""One error hierarchy for the service, mapped to an HTTP status (REST) and a gRPC status code (gRPC).

The data plane raises these; ``rest.py`` turns one into a JSON body ``{"error": message, "kind": kind}``
with its ``status_code``, ``grpc_server.py`` aborts the call with ``grpc.StatusCode[grpc_code]`` and the
same message. Nothing else reaches a client: an unexpected exception becomes :class:`InternalError`.
"""

from __future__ import annotations

__all__ = [
    "SplitInferError",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "Unauthenticated",
    "Overloaded",
    "DeadlineExceeded",
    "Unavailable",
    "InternalError",
]


class SplitInferError(Exception):
    status_code = 500
    grpc_code = "INTERNAL"  # name of a grpc.StatusCode member (kept as text: no grpc import here)
    kind = "internal"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SplitInferError):
    """Malformed request, a bitstream that cannot be decoded, a rung that disagrees with the request."""

    status_code, grpc_code, kind = 400, "INVALID_ARGUMENT", "invalid_argument"


class NotFound(SplitInferError):
    status_code, grpc_code, kind = 404, "NOT_FOUND", "not_found"


class PayloadTooLarge(SplitInferError):
    status_code, grpc_code, kind = 413, "RESOURCE_EXHAUSTED", "payload_too_large"


class Unauthenticated(SplitInferError):
    status_code, grpc_code, kind = 401, "UNAUTHENTICATED", "unauthenticated"


class Overloaded(SplitInferError):
    """Too many requests in flight; the client should retry later."""

    status_code, grpc_code, kind = 429, "RESOURCE_EXHAUSTED", "overloaded"


class DeadlineExceeded(SplitInferError):
    status_code, grpc_code, kind = 504, "DEADLINE_EXCEEDED", "deadline_exceeded"


class Unavailable(SplitInferError):
    """Not ready yet, or shutting down."""

    status_code, grpc_code, kind = 503, "UNAVAILABLE", "unavailable"


class InternalError(SplitInferError):
    pass
