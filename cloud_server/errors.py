"""One error hierarchy for the service, mapped to an HTTP status (REST) and a gRPC status code (gRPC).

The data plane raises these; the REST room turns one into a JSON body ``{"error": message, "kind": kind}`` with its
``status_code`` (``rest/guards.py``), the gRPC room ends the call with ``grpc.StatusCode[grpc_code]``, the same
message and the kind as trailing metadata (``splitinfer-error-kind``; ``grpc/status.py``). Nothing else reaches a
client: an unexpected exception becomes :class:`InternalError`. The ``kind`` is the contract (clients branch on it,
e.g. the edge client retries ``overloaded`` and ``unavailable``); status codes are what each protocol makes of it.
"""

from __future__ import annotations

__all__ = [  # the error classes (tests map each); MAX_MESSAGE_CHARS, bounded, describe_validation: imported by name
    "SplitInferError",
    "InvalidArgument",
    "BundleMismatch",
    "NotFound",
    "MethodNotAllowed",
    "PayloadTooLarge",
    "Unauthenticated",
    "Overloaded",
    "DeadlineExceeded",
    "RequestTimeout",
    "Cancelled",
    "Unavailable",
    "InternalError",
]


# an error message names what was wrong, never echoes the request: longer ones are cut (issue 24, E10: 500,000
# output names made a 2 MB grpc-message the client could not even receive)
MAX_MESSAGE_CHARS = 1000


def bounded(message: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``message``, cut to ``limit`` characters with a note of how much was cut."""
    if len(message) <= limit:
        return message
    return f"{message[:limit]}... ({len(message) - limit} more characters cut)"


def describe_validation(errors, root: str = "") -> str:
    """pydantic's ``ValidationError.errors()`` as one line, ``"where: what; ..."``: the one wording of a refused
    field for requests (both transports), OIP parameters and settings. ``root``: the name of a whole-model error
    (empty: the message alone)."""
    parts = []
    for err in errors:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "__root__") or root
        msg = "missing field" if err.get("type") == "missing" else err.get("msg", "invalid").removeprefix(
            "Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


class SplitInferError(Exception):
    status_code = 500
    grpc_code = "INTERNAL"  # name of a grpc.StatusCode member (kept as text: no grpc import here)
    kind = "internal"
    retry_after_s = None  # a hint for clients (HTTP Retry-After, gRPC splitinfer-retry-after-ms); None: no retry

    def __init__(self, message: str):
        message = bounded(str(message))
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidArgument(SplitInferError):
    """Malformed request, a bitstream that cannot be decoded, a rung that disagrees with the request."""

    status_code, grpc_code, kind = 400, "INVALID_ARGUMENT", "invalid_argument"


class BundleMismatch(InvalidArgument):
    """A bitstream encoded with another bundle than the one the model serves (typically: the server's bundle
    changed after the edge checked it). Same status codes as InvalidArgument; its own kind, so that a client can
    re-read the server's models instead of reporting a corrupt stream."""

    kind = "bundle_mismatch"


class NotFound(SplitInferError):
    status_code, grpc_code, kind = 404, "NOT_FOUND", "not_found"


class MethodNotAllowed(SplitInferError):
    """A REST route asked with a method it does not serve."""

    status_code, grpc_code, kind = 405, "UNIMPLEMENTED", "method_not_allowed"


class PayloadTooLarge(SplitInferError):
    status_code, grpc_code, kind = 413, "RESOURCE_EXHAUSTED", "payload_too_large"


class Unauthenticated(SplitInferError):
    status_code, grpc_code, kind = 401, "UNAUTHENTICATED", "unauthenticated"


class Overloaded(SplitInferError):
    """Too many requests in flight; the client should retry later."""

    status_code, grpc_code, kind = 429, "RESOURCE_EXHAUSTED", "overloaded"
    retry_after_s = 1.0


class DeadlineExceeded(SplitInferError):
    status_code, grpc_code, kind = 504, "DEADLINE_EXCEEDED", "deadline_exceeded"


class RequestTimeout(SplitInferError):
    """The client did not send its request (headers or body) in time (REST)."""

    status_code, grpc_code, kind = 408, "DEADLINE_EXCEEDED", "request_timeout"


class Cancelled(SplitInferError):
    """The client went away (cancelled the call, closed the connection): its work is dropped. Nobody reads this
    answer; HTTP 499 is nginx's "client closed request"."""

    status_code, grpc_code, kind = 499, "CANCELLED", "cancelled"


class Unavailable(SplitInferError):
    """Not ready yet, or shutting down."""

    status_code, grpc_code, kind = 503, "UNAVAILABLE", "unavailable"
    retry_after_s = 1.0


class InternalError(SplitInferError):
    pass
