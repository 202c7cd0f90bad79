"""Guards in front of the REST app: what a request must get through before an endpoint (or a thread) sees it, and
how a refusal is answered (:func:`error_response` in the app, :func:`error_app` before it).

:class:`BodyLimitMiddleware` (outermost) refuses a body over ``max_request_bytes``. :class:`RequestGuard` (ASGI
middleware, inside the body-size limit):

- while the server shuts down, every route but the probes and ``/metrics`` answers 503 (``Connection: close``),
  so that clients see a clean refusal during the grace period rather than a refused connection;
- ``/docs``, ``/redoc`` and ``/openapi.json`` need the API key when keys are configured;
- a request with a body is judged on its request line and headers before one byte of the body is read (issue 24,
  E3: 100 unauthenticated 10 MiB bodies held +1 GB): a route the app does not have gets 404 (405 for another
  method), a missing or wrong API key 401, a ``Content-Length`` over the route's limit 413, and a request at
  capacity 429, each with ``Connection: close`` so that the unread body is dropped with the connection. The
  limit is the route's: ``max_infer_bytes`` for ``/infer`` (one bitstream), ``max_request_bytes`` for uploads;
- a request body must arrive completely within ``rest_body_timeout_s`` (a slow-loris body gets 408 and its
  connection is closed) and within its route's limit (counted while reading: 413); the guard reads it, then
  replays it to the app;
- inference routes (``POST /v2/.../infer``, ``.../infer-image``) are admitted here, on the event loop, before any
  thread is taken: at capacity the answer is 429 with ``Retry-After`` within milliseconds, never a wait for one
  of the thread pool's threads. The slot travels to the data plane in a
  :class:`~cloud_server.scope.CallScope`, with a cancel token that is set when the client disconnects before
  its answer is sent (the data plane then drops the work);
- the thread pool that runs endpoints' blocking work is sized to the admission limit (so capacity is reachable
  through REST alone).

:func:`guarded_h11` is uvicorn's h11 protocol with a header timeout: a connection must deliver a request's headers
within ``rest_header_timeout_s`` of opening (or of the first byte of a keep-alive request), or it is answered 408
and closed. Uvicorn itself bounds the header size (``h11_max_incomplete_event_size``), idle keep-alive connections
(``timeout_keep_alive``); see ``cloud_server/server.py``. ``rest_max_connections`` caps the requests in progress
(:class:`RequestGuard`, 503 beyond; probes and ``/metrics`` are exempt), not connections: a connection that has not
sent its headers is no work yet, and the header timeout cuts it.

:func:`handshake_bounded_loop` is the event loop uvicorn runs on: with TLS, a connection must finish its handshake
within ``handshake_timeout_s`` or it is closed (issue 24, E5: asyncio's default held one that never sent a
ClientHello for 60 s; the header timer starts only once the handshake is done). Uvicorn has no setting for it.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from typing import List, Optional, Tuple

from fastapi.responses import JSONResponse

from ..auth import api_key
from ..dataplane import DataPlane
from ..errors import (InvalidArgument, MethodNotAllowed, NotFound, PayloadTooLarge, RequestTimeout, SplitInferError,
                      Unauthenticated, Unavailable)
from ..scope import CallScope, CancelToken, call_scope
from ..settings import Settings

__all__ = ["RequestGuard", "BodyLimitMiddleware", "guarded_h11", "handshake_bounded_loop", "error_app", "error_response", "authenticate",
           "INFER_SUFFIXES", "OPEN_PATHS", "DOCS_PATHS"]

INFER_SUFFIXES = ("/infer", "/infer-image")
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready", "/metrics"})
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


def error_app(e: SplitInferError, close: bool = False):
    """An ASGI app answering ``e`` as the REST front end does (``{"error", "kind"}`` JSON, its status), with
    ``Retry-After`` for retryable kinds and ``WWW-Authenticate`` for 401."""
    body = json.dumps({"error": e.message, "kind": e.kind}).encode()
    headers: List[Tuple[bytes, bytes]] = [(b"content-type", b"application/json"),
                                          (b"content-length", str(len(body)).encode())]
    if e.status_code == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    if e.retry_after_s is not None:
        # Retry-After has whole seconds only; retry-after-ms (as several HTTP APIs send) is spread between half and
        # all of it, so that clients refused in one burst do not all come back in the next
        headers.append((b"retry-after", str(max(1, math.ceil(e.retry_after_s))).encode()))
        headers.append((b"retry-after-ms", str(int(round(1e3 * e.retry_after_s * random.uniform(0.5, 1.0)))).encode()))
    if close:
        headers.append((b"connection", b"close"))

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": e.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def error_response(e: SplitInferError) -> JSONResponse:
    """``e`` as the app's exception handlers answer it (``{"error", "kind"}`` JSON, its status)."""
    headers = {"WWW-Authenticate": "Bearer"} if e.status_code == 401 else None
    return JSONResponse({"error": e.message, "kind": e.kind}, status_code=e.status_code, headers=headers)


def authenticate(dp: DataPlane, scope) -> None:
    """Raise Unauthenticated unless the request (its ASGI scope) carries a configured API key (none configured:
    open); the client's address (no port) is what the failed-key throttle counts."""
    client = scope.get("client")
    dp.authenticate(api_key(scope.get("headers")), client[0] if client else None)


# ------------------------------------------------------------------------------------------ body limit
class _BodyTooLarge(PayloadTooLarge):
    pass


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit`` bytes: by Content-Length up front, by counting while reading."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return await error_response(InvalidArgument("malformed Content-Length"))(scope, receive, send)
            if n > self.limit:
                err = PayloadTooLarge(f"request body of {n} bytes exceeds the limit of {self.limit} bytes")
                return await error_response(err)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge(f"request body exceeds the limit of {self.limit} bytes")
            return msg

        await self.app(scope, limited, send)


class _ClientGone(Exception):
    pass


def _content_length(scope) -> Optional[int]:
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the body limit outside answers malformed values
    return None


class RequestGuard:
    """ASGI middleware: shutdown 503, docs auth, route/auth/size/capacity from the headers, body read timeout,
    admission (429), cancel on disconnect."""

    def __init__(self, app, dataplane: DataPlane, settings: Settings, routes=()):
        self.app, self.dp, self.settings = app, dataplane, settings
        self.routes = routes  # the app's (Starlette routes): matched from the scope alone, before any body
        self._threads_sized = False
        self.requests = 0  # requests in progress (headers received), probes aside: the event loop's, no lock

    def _gate(self, scope) -> int:
        """Judge a request with a body from its request line and headers (see the module docstring); returns its
        route's body limit, or raises."""
        from starlette.routing import Match

        path, method = scope["path"], scope["method"]
        matches = [r.matches(scope)[0] for r in self.routes]
        if Match.FULL not in matches:
            if Match.PARTIAL in matches:
                raise MethodNotAllowed(f"{method} is not allowed on {path}")
            raise NotFound(f"no route {method} {path}")
        if self.dp.auth_required:  # every route that takes a body needs the key
            authenticate(self.dp, scope)
        s = self.settings
        infer = path.endswith("/infer")
        limit = s.max_infer_bytes if infer else s.max_request_bytes
        n = _content_length(scope)
        if n is not None and n > limit:
            what = "an inference request (one bitstream)" if infer else "this route"
            raise PayloadTooLarge(f"request body of {n} bytes exceeds the limit of {limit} bytes for {what}")
        if path.startswith("/v2/") and path.endswith(INFER_SUFFIXES) and self.dp.admission.at_capacity:
            self.dp.admit("rest", _model_of(path)).release()  # raises at capacity (a slot freed meanwhile: go on)
        return limit

    def _size_thread_pool(self) -> None:
        """Enough threads for every admitted request, plus some for metadata calls (anyio's default is 40)."""
        if self._threads_sized:
            return
        from anyio import to_thread

        limiter = to_thread.current_default_thread_limiter()
        limiter.total_tokens = max(limiter.total_tokens, self.settings.max_concurrent_requests + 16)
        self._threads_sized = True

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        self._size_thread_pool()
        path, method = scope["path"], scope["method"]
        if path in OPEN_PATHS and method not in _BODY_METHODS:  # probes and /metrics: cheap, never refused for load
            return await self.app(scope, receive, send)
        # the cap counts requests, established work, not connections still sending their headers (issue 24, E5:
        # 1,050 such connections made uvicorn answer 503 to health checks); those are cut by the header timeout
        if self.requests >= self.settings.rest_max_connections:
            return await error_app(Unavailable(f"{self.requests} requests in progress (limit "
                                               f"{self.settings.rest_max_connections}); retry later"),
                                   close=True)(scope, receive, send)
        self.requests += 1
        try:
            return await self._guarded(scope, receive, send, path, method)
        finally:
            self.requests -= 1

    async def _guarded(self, scope, receive, send, path: str, method: str):
        if not self.dp.ready():
            return await error_app(Unavailable("the server is shutting down"), close=True)(scope, receive, send)
        if path in DOCS_PATHS and self.dp.auth_required:
            try:
                authenticate(self.dp, scope)
            except Unauthenticated as e:
                return await error_app(e)(scope, receive, send)
        if method not in _BODY_METHODS:
            return await self.app(scope, receive, send)

        try:
            limit = self._gate(scope)
        except SplitInferError as e:  # nothing of the body read: the connection closes with the answer
            return await error_app(e, close=True)(scope, receive, send)
        try:
            body = await self._read_body(receive, limit)
        except _ClientGone:
            return None
        except SplitInferError as e:  # 408, or 413 from the body limit outside: the rest of the body is not read
            return await error_app(e, close=True)(scope, receive, send)

        admission = None
        if path.startswith("/v2/") and path.endswith(INFER_SUFFIXES):
            try:
                admission = self.dp.admit("rest", _model_of(path))
            except SplitInferError as e:
                return await error_app(e)(scope, receive, send)
        token = CancelToken()
        responded = False
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        disconnected: "asyncio.Future[dict]" = asyncio.get_running_loop().create_future()

        async def watch() -> None:  # the next message after the body: http.disconnect (client gone, or answered)
            try:
                msg = await receive()
                while msg["type"] != "http.disconnect":
                    msg = await receive()
            except Exception:  # noqa: BLE001 - the connection is gone one way or another
                msg = {"type": "http.disconnect"}
            if not responded:
                token.cancel()
            if not disconnected.done():
                disconnected.set_result(msg)

        async def replay():
            if pending:
                return pending.pop()
            return await asyncio.shield(disconnected)

        async def send_watched(message):
            nonlocal responded
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                responded = True
            await send(message)

        watcher = asyncio.ensure_future(watch())
        try:
            with call_scope(CallScope(token, admission)):
                await self.app(scope, replay, send_watched)
        finally:
            responded = True
            watcher.cancel()
            if admission is not None:
                admission.release()  # no-op when the data plane already released it

    async def _read_body(self, receive, max_bytes: int) -> bytes:
        loop = asyncio.get_running_loop()
        limit = self.settings.rest_body_timeout_s
        deadline = loop.time() + limit
        chunks, seen = [], 0
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                msg = await asyncio.wait_for(receive(), left)
            except asyncio.TimeoutError:
                raise RequestTimeout(f"the request body did not arrive within {limit:g} s") from None
            if msg["type"] == "http.disconnect":
                raise _ClientGone()
            chunk = msg.get("body", b"")
            seen += len(chunk)
            if seen > max_bytes:  # chunked, or longer than its Content-Length said
                raise PayloadTooLarge(f"request body exceeds the limit of {max_bytes} bytes for this route")
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)


def _model_of(path: str) -> Optional[str]:
    parts = path.split("/")  # "", "v2", "models", NAME, ...
    return parts[3] if len(parts) > 3 and parts[2] == "models" else None


def guarded_h11(header_timeout_s: float):
    """uvicorn's h11 protocol class with a request-header timeout (see the module docstring)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            waiting = self.cycle is None or self.cycle.response_complete
            if waiting and self._header_timer is None:  # first bytes of a request: its headers are due
                self._arm_header_timer()
            super().data_received(data)
            if self.cycle is not None and not self.cycle.response_complete:  # headers complete
                self._disarm_header_timer()

        def connection_lost(self, exc) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def on_response_complete(self) -> None:
            super().on_response_complete()  # the keep-alive timer takes over until the next byte

        def _arm_header_timer(self) -> None:
            self._disarm_header_timer()
            self._header_timer = self.loop.call_later(header_timeout_s, self._header_timeout)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is being served
            if not self.transport.is_closing():
                body = json.dumps({"error": f"request headers not received within {header_timeout_s:g} s",
                                   "kind": RequestTimeout.kind}).encode()
                self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                     b"connection: close\r\ncontent-length: " + str(len(body)).encode() +
                                     b"\r\n\r\n" + body)
                self.transport.close()

    return GuardedH11Protocol


def handshake_bounded_loop(handshake_timeout_s: float):
    """An event loop class (a loop factory) whose TLS servers close a connection that has not finished its
    handshake within ``handshake_timeout_s`` (asyncio's ``ssl_handshake_timeout``, which uvicorn leaves at its
    default of 60 s)."""

    class HandshakeBoundedLoop(asyncio.SelectorEventLoop):
        async def create_server(self, *args, **kwargs):
            if kwargs.get("ssl") is not None:
                kwargs.setdefault("ssl_handshake_timeout", handshake_timeout_s)
            return await super().create_server(*args, **kwargs)

    return HandshakeBoundedLoop
