"""The gRPC front end: translates ``splitinfer.v1.SplitInference`` messages to the data plane's types.

Also serves ``grpc.health.v1.Health`` (SERVING once loaded, NOT_SERVING while shutting down) and server
reflection. Health and reflection need no API key; the inference service does when keys are configured
(``authorization: Bearer <key>`` or ``x-api-key: <key>`` metadata).

Every call on the port, whatever its service, passes :class:`CallGuard` (a server interceptor, run on gRPC's
polling thread before a worker is taken):

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
- each call runs in a :class:`~cloud_server.dataplane.CallScope` whose cancel token is set when the call ends
  (client cancel, deadline, disconnect), so the data plane drops the work of a client that went away.

Refusals carry their error kind as trailing metadata ``splitinfer-error-kind`` (and ``splitinfer-retry-after-ms``
when a retry makes sense); :func:`abort` does that for any servicer on this port.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import threading
import time
from concurrent import futures
from typing import Callable, Iterator, Optional

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from shared._proto import SERVICE_NAME, splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

from .dataplane import CallScope, DataPlane, enter_scope
from .errors import Cancelled, InvalidArgument, Overloaded, SplitInferError, Unauthenticated, Unavailable
from .settings import Settings
from .types import InferenceResponse, ModelMetadata, parse_request

__all__ = ["InferenceServicer", "GrpcFrontEnd", "CallGuard", "to_request_fields", "from_response", "status_code",
           "abort", "error_metadata", "peer_address", "ERROR_KIND_KEY", "RETRY_AFTER_KEY"]

log = logging.getLogger("splitinfer.server")
# headroom over the largest bitstream for the other fields of a request
_MESSAGE_SLACK = 64 * 1024
ERROR_KIND_KEY = "splitinfer-error-kind"
RETRY_AFTER_KEY = "splitinfer-retry-after-ms"
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


def abort(context: grpc.ServicerContext, e: SplitInferError):
    """End the call with ``e``'s status code and message, its kind in the trailing metadata (raises)."""
    context.set_trailing_metadata(error_metadata(e))
    context.abort(status_code(e), e.message)


# ------------------------------------------------------------------------------------------ converters
def to_request_fields(m: pb.InferRequest) -> dict:
    fields = {"model": m.model or None, "bitstream": m.bitstream or None,
              "request_id": m.request_id or None, "top_k": m.top_k or None}
    which = m.WhichOneof("bitrate")
    if which == "target_bpp":
        fields["target_bpp"] = m.target_bpp
    elif which == "link":
        fields["kbit_per_s"], fields["fps"] = m.link.kbit_per_s, m.link.fps
    if m.HasField("expected_rung"):
        fields["expected_rung"] = m.expected_rung
    return {k: v for k, v in fields.items() if v is not None}


def from_response(r: InferenceResponse) -> pb.InferResponse:
    out = pb.InferResponse(
        request_id=r.request_id, model=r.model, bundle_id=r.bundle_id, rung=r.rung, bytes_received=r.bytes_received,
        bpp=r.bpp, input_height=r.input_hw[0], input_width=r.input_hw[1], batch_size=r.batch_size,
        topk=[pb.ClassScore(index=c.index, name=c.name, score=c.score) for c in r.topk],
        timings_ms=r.timings_ms, mask_png=r.mask_png or b"", class_pixels=r.class_pixels or [])
    if r.hinted_rung is not None:
        out.hinted_rung = r.hinted_rung
    return out


_RUNG_FIELDS = frozenset(pb.RungInfo.DESCRIPTOR.fields_by_name) - {"metrics"}


def from_metadata(m: ModelMetadata) -> pb.ModelInfo:
    rungs = []
    for r in m.rungs:
        figures = r.metrics()
        ri = pb.RungInfo(index=r.index, resident=r.resident, n_images=r.n_images, metrics=figures)
        setattr(ri, "lambda", r.lam)  # a Python keyword
        for k, v in (("bpp", r.bpp), ("agreement", r.agreement), *figures.items()):
            if v is not None and k in _RUNG_FIELDS:  # the figures older clients read from fields of their own
                setattr(ri, k, v)
        rungs.append(ri)
    info = pb.ModelInfo(name=m.name, bundle_id=m.bundle_id, backbone=m.backbone, split=m.split, task=m.task,
                        input_height=m.input_hw[0], input_width=m.input_hw[1], rate_model=m.rate_model,
                        rungs=rungs, backbone_loaded=m.backbone_loaded, num_classes=m.num_classes,
                        head_weights=m.head_weights)
    if m.variable_rate is not None:
        v = m.variable_rate
        info.variable_rate.CopyFrom(pb.VariableRate(level_min=v.levels[0], level_max=v.levels[1], curve=[
            pb.LevelPoint(level=p.level, bpp=p.bpp, n_images=p.n_images, metrics=p.metrics(),
                          **({} if p.agreement is None else {"agreement": p.agreement})) for p in v.curve]))
    return info


def peer_address(context: grpc.ServicerContext) -> Optional[str]:
    """The client's address without its port ("ipv4:127.0.0.1:5000" -> "ipv4:127.0.0.1"), for the failed-key
    throttle."""
    try:
        peer = context.peer() or ""
    except Exception:  # noqa: BLE001
        return None
    return peer.rsplit(":", 1)[0] if peer.count(":") > 1 else (peer or None)


def _token(context: grpc.ServicerContext) -> Optional[str]:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = value.partition(" ")
            return token.strip() if scheme.lower() == "bearer" else None
        if key == "x-api-key":
            return value
    return None


# ------------------------------------------------------------------------------------------ servicer
class InferenceServicer(pb_grpc.SplitInferenceServicer):
    def __init__(self, dataplane: DataPlane):
        self.dp = dataplane

    def _abort(self, context: grpc.ServicerContext, e: SplitInferError):
        abort(context, e)

    def Infer(self, request: pb.InferRequest, context: grpc.ServicerContext) -> pb.InferResponse:
        try:
            self.dp.authenticate(_token(context), peer_address(context))
            req = parse_request(to_request_fields(request))
            return from_response(self.dp.infer(req, protocol="grpc", timeout_s=context.time_remaining()))
        except SplitInferError as e:
            self._abort(context, e)

    def InferStream(self, request_iterator: Iterator[pb.InferRequest],
                    context: grpc.ServicerContext) -> Iterator[pb.InferStreamResponse]:
        try:
            self.dp.authenticate(_token(context), peer_address(context))
        except SplitInferError as e:
            self._abort(context, e)
        for request in request_iterator:
            rid = request.request_id
            try:
                req = parse_request(to_request_fields(request))
                resp = self.dp.infer(req, protocol="grpc-stream", timeout_s=context.time_remaining())
                yield pb.InferStreamResponse(request_id=resp.request_id, result=from_response(resp))
            except (Unauthenticated, Unavailable, Cancelled) as e:
                self._abort(context, e)
            except SplitInferError as e:
                yield pb.InferStreamResponse(
                    request_id=rid, error=pb.Error(code=status_code(e).value[0], kind=e.kind, message=e.message))

    def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.ServicerContext):
        try:
            self.dp.authenticate(_token(context), peer_address(context))
            models = self.dp.metadata(request.model or None)
        except SplitInferError as e:
            self._abort(context, e)
        from shared import __version__

        return pb.ModelMetadataResponse(models=[from_metadata(m) for m in models], server_version=__version__)

    def EdgePackage(self, request: pb.EdgePackageRequest, context: grpc.ServicerContext):
        from .edge_packages import grpc_chunks  # the served models' edge packages (issue 25): its own module

        try:
            self.dp.authenticate(_token(context), peer_address(context))
            yield from grpc_chunks(self.dp, request.model)
        except SplitInferError as e:
            self._abort(context, e)


# ------------------------------------------------------------------------------------------ guard
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
            elif method in ADMITTED_METHODS and self.dp is not None and self.dp.at_capacity:
                err = Overloaded(f"too many requests in flight (limit {self.dp.capacity}); retry later")
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
            abort(context, err)

        refuse.experimental_thread_pool = self.refusal_pool
        return grpc.stream_stream_rpc_method_handler(refuse)

    # -- the wrapped handler (a worker thread) ---------------------------------------------------------------
    def _wrap(self, handler: grpc.RpcMethodHandler, method: str, release: Callable[..., None],
              pool: Optional[futures.ThreadPoolExecutor], stream_slot: bool = False) -> grpc.RpcMethodHandler:
        """Every handler becomes request-streaming with raw bytes in: the guard reads (with a timeout) and
        deserializes the request messages itself."""
        guard, deserialize = self, handler.request_deserializer
        ser = handler.response_serializer

        def decode(call: _Call, raw: bytes):
            if deserialize is None:
                return raw
            try:
                return deserialize(raw)
            except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
                abort(call.context, InvalidArgument(f"cannot decode the request message of {method}: {e}"))

        def first_request(call: _Call, request_iterator):
            call.arm(guard.message_s)
            try:
                raw = next(request_iterator)
            except StopIteration:
                abort(call.context, InvalidArgument(f"{method} takes exactly one request message, got none"))
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

        if handler.request_streaming and handler.response_streaming:
            inner = handler.stream_stream

            def behavior(request_iterator, context):
                call = _Call(guard, context, method, release, stream_slot)
                try:
                    return responses(call, inner(requests(call, request_iterator), context), False)
                except BaseException:
                    call.release()
                    raise
        elif handler.request_streaming:
            inner = handler.stream_unary

            def behavior(request_iterator, context):
                call = _Call(guard, context, method, release, stream_slot)
                try:
                    return inner(requests(call, request_iterator), context)
                finally:
                    call.release()
        elif handler.response_streaming:
            inner = handler.unary_stream

            def behavior(request_iterator, context):
                call = _Call(guard, context, method, release, stream_slot)
                try:
                    return responses(call, inner(first_request(call, request_iterator), context),
                                     method != HEALTH_WATCH)
                except BaseException:
                    call.release()
                    raise
        else:
            inner = handler.unary_unary

            def behavior(request_iterator, context):
                call = _Call(guard, context, method, release, stream_slot)
                try:
                    return inner(first_request(call, request_iterator), context)
                finally:
                    call.release()

        if pool is not None:
            behavior.experimental_thread_pool = pool
        if handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(behavior, None, ser)
        return grpc.stream_unary_rpc_method_handler(behavior, None, ser)


# ------------------------------------------------------------------------------------------ server
def http2_options(settings: Settings) -> list:
    """gRPC core's HTTP/2 limits against stream abuse (HTTP/2 rapid reset, CVE-2023-44487): a connection may have
    ``grpc_max_streams_per_connection`` streams, and a stream counts until the server has let go of it, not until
    the client resets it (``grpc.http.overload_protection``), so a client that opens and at once resets streams gets
    REFUSED_STREAM from the transport itself beyond that, without reaching Python. (The transport also starts at most
    32 new streams per read, its default ``grpc.http2.max_requests_per_read``, before it reads other connections.)"""
    return [("grpc.max_concurrent_streams", settings.grpc_streams_per_connection),
            ("grpc.http.overload_protection", 1),
            # a connection that never finishes its TLS handshake or HTTP/2 preface is closed (E5: held 120 s)
            ("grpc.server_handshake_timeout_ms", int(1000 * settings.handshake_timeout_s))]


class GrpcFrontEnd:
    """The gRPC server around one data plane: inference service, health, reflection, limits, TLS."""

    def __init__(self, dataplane: DataPlane, settings: Settings):
        self.dp, self.settings = dataplane, settings
        max_msg = settings.max_bitstream_bytes + _MESSAGE_SLACK
        self.guard = CallGuard(settings, dataplane)
        self._pool = futures.ThreadPoolExecutor(max_workers=settings.grpc_threads, thread_name_prefix="grpc")
        self.server = grpc.server(
            self._pool, interceptors=[self.guard],
            options=[("grpc.max_receive_message_length", max_msg),
                     ("grpc.max_send_message_length", max(max_msg, 4 << 20)),
                     ("grpc.so_reuseport", 0), *http2_options(settings)])
        pb_grpc.add_SplitInferenceServicer_to_server(InferenceServicer(dataplane), self.server)
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME),
            self.server)
        address = f"{settings.host}:{settings.grpc_port}"
        if settings.tls:
            creds = grpc.ssl_server_credentials(
                [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())])
            self.port = self.server.add_secure_port(address, creds)
        else:
            self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise OSError(f"cannot bind gRPC to {address}")

    def start(self) -> None:
        self.server.start()
        for name in ("", SERVICE_NAME):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("gRPC on %s:%d%s", self.settings.host, self.port, " (TLS)" if self.settings.tls else "")

    def stop(self, grace: Optional[float] = None) -> None:
        """Report NOT_SERVING, refuse new calls, let calls in flight finish for up to ``grace`` seconds."""
        self.health.enter_graceful_shutdown()
        self.server.stop(self.settings.shutdown_grace_s if grace is None else grace).wait()
        self.guard.close()
        self._pool.shutdown(wait=False)
