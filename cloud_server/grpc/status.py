"""How a refusal ends a gRPC call: its status code, its message, and its kind as trailing metadata.

Every method of a servicer on the port wears :func:`answers_errors` (the call guard's own handlers run
:class:`answering` the call): a :class:`~cloud_server.errors.SplitInferError` raised inside ends the call with
``grpc.StatusCode[e.grpc_code]``, the message as details and ``splitinfer-error-kind`` (plus
``splitinfer-retry-after-ms`` when a retry makes sense) in the trailing metadata. This is the one place that aborts
a call.
"""

from __future__ import annotations

import functools
import inspect
import random

import grpc

from ..errors import SplitInferError

__all__ = ["ERROR_KIND_KEY", "RETRY_AFTER_KEY", "status_code", "error_metadata", "answering", "answers_errors"]

ERROR_KIND_KEY = "splitinfer-error-kind"
RETRY_AFTER_KEY = "splitinfer-retry-after-ms"


def status_code(e: SplitInferError) -> grpc.StatusCode:
    return grpc.StatusCode[e.grpc_code]


def error_metadata(e: SplitInferError) -> tuple:
    """Trailing metadata of a refusal: the error kind, and a retry hint for retryable kinds. The hint is spread
    between half and all of the error's ``retry_after_s``: clients that wait exactly the hint, refused together
    in a burst, come back spread out instead of as the next burst."""
    md = [(ERROR_KIND_KEY, e.kind)]
    if e.retry_after_s is not None:
        md.append((RETRY_AFTER_KEY, str(int(round(1e3 * e.retry_after_s * random.uniform(0.5, 1.0))))))
    return tuple(md)


def _abort(context: grpc.ServicerContext, e: SplitInferError):
    """End the call with ``e``'s status code and message, its kind in the trailing metadata (raises)."""
    context.set_trailing_metadata(error_metadata(e))
    context.abort(status_code(e), e.message)


class answering:
    """``with answering(context):``: a :class:`SplitInferError` raised in the block ends the call as the module
    docstring says; anything else passes through (gRPC's own abort, and a bug, which gRPC reports as UNKNOWN). For
    handlers made per call (the call guard's), where decorating each would cost time on the polling thread."""

    __slots__ = ("context",)

    def __init__(self, context: grpc.ServicerContext):
        self.context = context

    def __enter__(self) -> "answering":
        return self

    def __exit__(self, kind, e, tb) -> bool:
        if isinstance(e, SplitInferError):
            _abort(self.context, e)
        return False


def answers_errors(fn):
    """Decorate a handler (a function or a generator function) that has a parameter named ``context`` (the call's
    :class:`grpc.ServicerContext`): its body runs :class:`answering` that context."""
    code = fn.__code__
    at = code.co_varnames[:code.co_argcount].index("context")

    def context_of(args, kwargs) -> grpc.ServicerContext:
        return kwargs["context"] if "context" in kwargs else args[at]

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def stream(*args, **kwargs):
            with answering(context_of(args, kwargs)):
                yield from fn(*args, **kwargs)

        return stream

    @functools.wraps(fn)
    def unary(*args, **kwargs):
        with answering(context_of(args, kwargs)):
            return fn(*args, **kwargs)

    return unary
