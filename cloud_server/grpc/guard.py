"""The call guard: every call on the gRPC port, whatever its service, passes :class:`CallGuard` (a server
interceptor, run on gRPC's polling thread before a worker is taken):

- a call never waits for a worker: beyond ``grpc_threads`` calls, or ``grpc_stream_limit`` streaming calls, or
  an inference call while the data plane is at ``max_concurrent_requests``, it is refused at once with
  RESOURCE_EXHAUSTED (kind ``overloaded``), on the polling thread itself (no worker, no hand-off);
- ``grpc.health.v1.Health/Check`` runs on a pool of its own, so it answers while every worker is busy;
- a stream that makes no progress for ``grpc_idle_timeout_s`` is cancelled (a watchdog thread; its worker is
  freed): progress is an answer that is not an error (a request answered with an error, or a message that only
  resets the timer, does not count), and an answer the client does not read within that time is none either; a
  unary call whose request has not arrived after ``grpc_message_timeout_s`` is cancelled too;
- when every stream slot is taken, a new stream takes the slot of the open stream whose last progress is the
  oldest, if that was at least ``grpc_stream_preempt_s`` ago (that stream is cancelled, as the idle timer would
  later): streams that trickle refused frames and open again as soon as they are cut cannot keep legitimate ones
  out (issue 24);
- ``grpc.health.v1.Health/Watch`` is exempt from the idle timer (it answers only when the status changes, and
  clients keep it open) and runs on threads of its own, at most ``_WATCH_CALLS`` at once, outside the stream slots;
- requests are deserialized by the guard: an undecodable message is INVALID_ARGUMENT, not INTERNAL;
- each call runs in a :class:`~cloud_server.scope.CallScope` whose cancel token is set when the call ends
  (client cancel, deadline, disconnect), so the data plane drops the work of a client that went away.

Refusals end the call as a servicer's do (:class:`.status.answering`: the kind in the trailing metadata).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent import futures
from typing import Callable, Optional

import grpc

from shared._proto import splitinfer_pb2 as pb

from ..dataplane import DataPlane
from ..errors import InvalidArgument, Overloaded, SplitInferError
from ..scope import CallScope, enter_scope
from ..settings import Settings
from .status import answering

__all__ = ["CallGuard", "is_progress", "HEALTH_CHECK", "HEALTH_WATCH", "ADMITTED_METHODS"]

log = logging.getLogger("splitinfer.server")
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_WATCH = "/grpc.health.v1.Health/Watch"
# unary inference methods: refused by the guard itself (no worker, no decoding) while the data plane is full
ADMITTED_METHODS = frozenset({"/splitinfer.v1.SplitInference/Infer", "/inference.GRPCInferenceService/ModelInfer"})
_HEALTH_THREADS, _HEALTH_CALLS = 4, 16  # Health/Check: its own threads; calls beyond _HEALTH_CALLS are refused
_WATCH_CALLS = 16  # Health/Watch: a thread each, of its own (outside the workers and stream slots); more are refused


def is_progress(response) -> bool:
    """Whether a stream's answer is progress for the idle timer: not an error answer (``InferStream``'s ``error``,
    ``ModelStreamInfer``'s ``error_message``)."""
    if isinstance(response, pb.InferStreamResponse):
        return not response.HasField("error")
    return not getattr(response, "error_message", "")



class _Watchdog:
    """One thread that runs a callback when an armed timer expires (cancels calls that wait on the client)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list = []  # (when, seq, entry)
        self._seq = itertools.count()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="grpc-watchdog", daemon=True)
        self._thread.start()

    def arm(self, seconds: float, fn: Callable[[], None]) -> list:
        """Run ``fn`` in ``seconds`` unless :meth:`disarm` is called with the returned entry first."""
        entry = [fn]
        with self._cond:
            when = time.monotonic() + seconds
            first = not self._heap or when < self._heap[0][0]
            heapq.heappush(self._heap, (when, next(self._seq), entry))
            if first:
                self._cond.notify()
        return entry

    @staticmethod
    def disarm(entry: Optional[list]) -> None:
        if entry is not None:
            entry[0] = None  # lazily removed when it comes due

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    while self._heap and self._heap[0][2][0] is None:
                        heapq.heappop(self._heap)
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(timeout=(self._heap[0][0] - now) if self._heap else None)
                if self._stopped:
                    return
                _, _, entry = heapq.heappop(self._heap)
                fn, entry[0] = entry[0], None
            try:
                fn()
            except Exception:  # noqa: BLE001
                log.exception("watchdog callback failed")


class _Inline(futures.ThreadPoolExecutor):
    """An "executor" that runs what it is given at once, in the submitting thread (gRPC's polling thread). Only for
    refusals: they read nothing and end the call at once, and running them where the call arrived spares the
    hand-off to another thread (and its wait for the GIL) when the server is busiest."""

    def __init__(self):
        super().__init__(max_workers=1)

    def submit(self, fn, /, *args, **kwargs):
        f: futures.Future = futures.Future()
        try:
            f.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the future, as a pool would
            f.set_exception(e)
        return f


class _Call:
    """One guarded call: its scope, its watchdog timer, and its place in the guard's counts."""

    __slots__ = ("guard", "context", "method", "release_fn", "scope", "_timer", "timed_out", "progress_at",
                 "stream_slot", "preempted")

    def __init__(self, guard: "CallGuard", context, method: str, release_fn: Callable[..., None],
                 stream_slot: bool = False):
        self.guard, self.context, self.method, self.release_fn = guard, context, method, release_fn
        self.scope = CallScope()
        self._timer = None
        self.timed_out = False
        self.preempted = False  # its stream slot was given to a new stream (it is being cancelled)
        self.progress_at = time.monotonic()  # the call's start, then its last answer that was not an error
        self.stream_slot = stream_slot  # holds one of the guard's stream slots (a candidate for preemption)
        if stream_slot:
            guard.register_stream(self)
        enter_scope(self.scope)  # gRPC runs each call in a contextvars.Context of its own
        if not context.add_callback(self.scope.token.cancel):  # the call has already ended
            self.scope.token.cancel()

    def release(self) -> None:
        fn, self.release_fn = self.release_fn, None
        if fn is not None:
            fn(self)

    def arm(self, seconds: float) -> None:
        self._timer = self.guard.watchdog.arm(seconds, self._expire)

    def arm_progress(self) -> None:
        """Until the idle time since the last progress is over (at once when it already is)."""
        self.arm(max(0.0, self.progress_at + self.guard.idle_s - time.monotonic()))

    def disarm(self) -> None:
        _Watchdog.disarm(self._timer)
        self._timer = None

    def _expire(self) -> None:
        self.timed_out = True
        log.info("cancelling %s: no progress from the client", self.method,
                 extra={"fields": {"event": "grpc_idle_cancel", "method": self.method}})
        self.context.cancel()

    def _preempt(self) -> None:
        self.timed_out = True
        idle = time.monotonic() - self.progress_at
        log.info("cancelling %s: its stream slot went to a new stream (no progress for %.1f s)", self.method, idle,
                 extra={"fields": {"event": "grpc_stream_preempted", "method": self.method, "idle_s": round(idle, 1)}})
        self.context.cancel()


class CallGuard(grpc.ServerInterceptor):
    """Admission, worker accounting, timeouts and request decoding for every call on the port (module docstring)."""

    def __init__(self, settings: Settings, dataplane: Optional[DataPlane] = None):
        self.threads = settings.grpc_threads
        self.stream_limit = settings.grpc_stream_limit
        self.idle_s = settings.grpc_idle_timeout_s
        self.message_s = settings.grpc_message_timeout_s
        self.preempt_s = settings.grpc_stream_preempt_s
        self.dp = dataplane
        self.health_pool = futures.ThreadPoolExecutor(_HEALTH_THREADS, thread_name_prefix="grpc-health")
        self.refusal_pool = _Inline()
        self.watchdog = _Watchdog()
        self._lock = threading.Lock()
        self.active = 0  # calls holding (or about to hold) a worker thread
        self.streams = 0  # of which streaming calls
        self.health_calls = 0
        self.watch_pool = futures.ThreadPoolExecutor(_WATCH_CALLS, thread_name_prefix="grpc-watch")
        self.watch_calls = 0
        self._open_streams: set = set()  # the calls holding a stream slot (registered once their worker runs)
        self.preempting = 0  # of the streams counted, those whose slot went to a new stream (being cancelled)

    def register_stream(self, call: "_Call") -> None:
        with self._lock:
            self._open_streams.add(call)

    def _victim(self) -> Optional["_Call"]:
        """The open stream with the oldest progress, if that was at least ``preempt_s`` ago (under the lock)."""
        if self.preempt_s is None or not self._open_streams:
            return None
        victim = min((c for c in self._open_streams if not c.preempted), key=lambda c: c.progress_at, default=None)
        if victim is None or time.monotonic() - victim.progress_at < self.preempt_s:
            return None
        return victim

    def close(self) -> None:
        self.watchdog.stop()
        self.health_pool.shutdown(wait=False)
        self.watch_pool.shutdown(wait=False)
        self.refusal_pool.shutdown(wait=False)

    # -- the interceptor (gRPC's polling thread: must not block) ------------------------------------------
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # UNIMPLEMENTED
        method = handler_call_details.method
        streaming = handler.request_streaming or handler.response_streaming
        err: Optional[SplitInferError] = None
        victim: Optional[_Call] = None
        with self._lock:
            if method == HEALTH_CHECK:
                if self.health_calls >= _HEALTH_CALLS:
                    err = Overloaded(f"too many health checks at once (limit {_HEALTH_CALLS}); retry later")
                else:
                    self.health_calls += 1
            elif method == HEALTH_WATCH:
                if self.watch_calls >= _WATCH_CALLS:
                    err = Overloaded(f"too many health watches at once (limit {_WATCH_CALLS}); retry later")
                else:
                    self.watch_calls += 1
            elif self.active >= self.threads:
                err = Overloaded(f"all {self.threads} gRPC workers are busy; retry later")
            elif method in ADMITTED_METHODS and self.dp is not None and self.dp.admission.at_capacity:
                err = Overloaded(f"too many requests in flight (limit {self.dp.admission.capacity}); retry later")
            elif (streaming and self.streams - self.preempting >= self.stream_limit
                  and (victim := self._victim()) is None):
                err = Overloaded(f"too many open streams (limit {self.stream_limit}); retry later")
            else:
                if victim is not None:  # its slot is this call's now; counted until its worker lets go
                    victim.preempted = True
                    self.preempting += 1
                self.active += 1
                self.streams += streaming
        if victim is not None:
            self.watchdog.arm(0.0, victim._preempt)  # cancelled off the polling thread, as the idle timer does
        if err is not None:
            if self.dp is not None:
                self.dp.metrics.errors.labels("grpc", err.kind).inc()
            return self._refusal(err)
        if method == HEALTH_CHECK:
            return self._wrap(handler, method, self._release_health, self.health_pool)
        if method == HEALTH_WATCH:
            return self._wrap(handler, method, self._release_watch, self.watch_pool)
        return self._wrap(handler, method, self._releaser(streaming), None, stream_slot=streaming)

    def _release_health(self, call: Optional[_Call] = None) -> None:
        with self._lock:
            self.health_calls -= 1

    def _release_watch(self, call: Optional[_Call] = None) -> None:
        with self._lock:
            self.watch_calls -= 1

    def _releaser(self, streaming: bool) -> Callable[..., None]:
        def release(call: Optional[_Call] = None) -> None:
            with self._lock:
                self.active -= 1
                self.streams -= streaming
                if call is not None and call.stream_slot:
                    self._open_streams.discard(call)
                    self.preempting -= call.preempted

        return release

    def _refusal(self, err: SplitInferError) -> grpc.RpcMethodHandler:
        def refuse(request_iterator, context):  # reads nothing: answers at once
            with answering(context):
                raise err

        refuse.experimental_thread_pool = self.refusal_pool
        return grpc.stream_stream_rpc_method_handler(refuse)

    # -- the wrapped handler (a worker thread) ---------------------------------------------------------------
    def _wrap(self, handler: grpc.RpcMethodHandler, method: str, release: Callable[..., None],
              pool: Optional[futures.ThreadPoolExecutor], stream_slot: bool = False) -> grpc.RpcMethodHandler:
        """Every handler becomes request-streaming with raw bytes in: the guard reads (with a timeout) and
        deserializes the request messages itself. What they raise ends the call as a servicer's refusals do,
        whichever handler reads them (``behavior`` and ``responses`` answer errors, not only the servicers)."""
        guard, deserialize = self, handler.request_deserializer
        ser = handler.response_serializer

        def decode(call: _Call, raw: bytes):
            if deserialize is None:
                return raw
            try:
                return deserialize(raw)
            except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
                raise InvalidArgument(f"cannot decode the request message of {method}: {e}") from None

        def first_request(call: _Call, request_iterator):
            call.arm(guard.message_s)
            try:
                raw = next(request_iterator)
            except StopIteration:
                raise InvalidArgument(f"{method} takes exactly one request message, got none") from None
            finally:
                call.disarm()
            return decode(call, raw)

        def requests(call: _Call, request_iterator):
            while True:
                call.arm_progress()  # a message that arrives is not progress: an answer that is not an error is
                try:
                    raw = next(request_iterator)
                except StopIteration:
                    return
                finally:
                    call.disarm()
                yield decode(call, raw)

        def responses(call: _Call, response_iterator, watch_inner: bool):
            """``watch_inner``: the client can send nothing more (unary request), so the time the handler takes to
            produce the next answer counts as idle too (not for Health/Watch); a bidirectional handler waits on the
            client through ``requests``, which has its own timer. An answer that is not an error is progress."""
            try:
                with answering(call.context):
                    while True:
                        if watch_inner:
                            call.arm(guard.idle_s)
                        try:
                            response = next(response_iterator)
                        except StopIteration:
                            return
                        finally:
                            if watch_inner:
                                call.disarm()
                        if is_progress(response):
                            call.progress_at = time.monotonic()
                        call.arm(guard.idle_s)  # until gRPC asks for the next one: the client took this one
                        yield response
                        call.disarm()
            finally:
                call.disarm()
                call.release()
                close = getattr(response_iterator, "close", None)
                if close is not None:
                    close()

        # one behavior for the four kinds: how the requests come in (a guarded stream, or the one request), and
        # whether the call's slot is released when the handler returns or when its response stream ends
        inner = {(True, True): handler.stream_stream, (True, False): handler.stream_unary,
                 (False, True): handler.unary_stream, (False, False): handler.unary_unary}[
            (handler.request_streaming, handler.response_streaming)]
        take = requests if handler.request_streaming else first_request
        # a server stream's own waits are watched too, except a unary request's health Watch (it waits by design)
        watch_inner = not handler.request_streaming and method != HEALTH_WATCH

        def behavior(request_iterator, context):
            with answering(context):
                call = _Call(guard, context, method, release, stream_slot)
                if not handler.response_streaming:
                    try:
                        return inner(take(call, request_iterator), context)
                    finally:
                        call.release()
                try:  # the response stream releases the slot when it ends; until it exists, we do
                    return responses(call, inner(take(call, request_iterator), context), watch_inner)
                except BaseException:
                    call.release()
                    raise

        if pool is not None:
            behavior.experimental_thread_pool = pool
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(behavior, None, ser)
        return grpc.stream_unary_rpc_method_handler(behavior, None, ser)


