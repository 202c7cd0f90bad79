"""The composition root: settings -> model repository -> one data plane -> REST and gRPC front ends.

Both front ends (the rooms ``grpc/`` and ``rest/``) run in one process and share the same
:class:`~cloud_server.dataplane.DataPlane` (so one set of limits, metrics and loaded models). ``splitinfer serve``
builds a :class:`SplitInferServer` and calls :meth:`SplitInferServer.serve_forever`; tests use it as a context
manager on ephemeral ports.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import threading
import time
from typing import Optional

from .dataplane import DataPlane
from .repository import ModelRepository
from .settings import Settings

__all__ = ["SplitInferServer"]

log = logging.getLogger("splitinfer.server")


class SplitInferServer:
    def __init__(self, settings: Optional[Settings] = None):
        self.settings = s = settings or Settings()
        self.repository = ModelRepository(s).load()
        self.dataplane = DataPlane(s, self.repository)
        self.grpc = None
        self.app = None
        if s.enable_grpc:
            from .grpc.oip_service import register as register_oip
            from .grpc.server import GrpcFrontEnd

            self.grpc = GrpcFrontEnd(self.dataplane, s)
            register_oip(self.grpc)  # inference.GRPCInferenceService (OIP) on the same port
        self._http = None
        self._http_thread: Optional[threading.Thread] = None
        self._sock: Optional[socket.socket] = None
        if s.enable_rest:
            from .rest.app import create_app

            self.app = create_app(self.dataplane, s)
            self._sock = self._bind(s.host, s.http_port)
            self._http_port = self._sock.getsockname()[1]
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # proto must say TCP: asyncio sets TCP_NODELAY on accepted sockets only when sock.proto == IPPROTO_TCP,
        # and without it Nagle + delayed ACK add ~40 ms to every keep-alive response
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.set_inheritable(True)
        return sock

    @property
    def http_port(self) -> Optional[int]:
        return self._http_port if self._sock is not None else None

    @property
    def grpc_port(self) -> Optional[int]:
        return self.grpc.port if self.grpc is not None else None

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> "SplitInferServer":
        s = self.settings
        # what is loaded by now (modules, models) lives as long as the process: out of the cyclic collector's
        # reach, a full collection under load takes milliseconds instead of 100-200 ms that stall every thread
        # (refusals and health checks included; measured with benchmarks/hardening_limits.py)
        gc.collect()
        gc.freeze()
        if self.grpc is not None:
            self.grpc.start()
        if self.app is not None:
            import uvicorn

            from .rest.guards import guarded_h11

            config = uvicorn.Config(
                self.app, log_config=None, access_log=False, lifespan="off",
                timeout_graceful_shutdown=max(1, int(round(s.shutdown_grace_s))) if s.shutdown_grace_s else None,
                ssl_certfile=str(s.tls_cert_file) if s.tls else None,
                ssl_keyfile=str(s.tls_key_file) if s.tls else None,
                # read limits: header timeout (the protocol class), header size, idle keep-alive, connections
                http=guarded_h11(s.rest_header_timeout_s), h11_max_incomplete_event_size=s.rest_max_header_bytes,
                # requests in progress are capped by the RequestGuard (rest_max_connections), not connections
                timeout_keep_alive=s.rest_keep_alive_s, limit_concurrency=None)
            self._http = uvicorn.Server(config)
            self._http_thread = threading.Thread(target=self._run_http, name="http", daemon=True)
            self._http_thread.start()
            t0 = time.monotonic()
            while not self._http.started:
                if not self._http_thread.is_alive() or time.monotonic() - t0 > 30:
                    raise RuntimeError("the HTTP server did not start")
                time.sleep(0.01)
            log.info("REST on %s:%d%s", s.host, self.http_port, " (TLS)" if s.tls else "")
        return self

    def _run_http(self) -> None:
        """uvicorn's ``Server.run`` on an event loop that bounds the TLS handshake (``handshake_timeout_s``)."""
        import asyncio

        from .rest.guards import handshake_bounded_loop

        with asyncio.Runner(loop_factory=handshake_bounded_loop(self.settings.handshake_timeout_s)) as runner:
            runner.run(self._http.serve(sockets=[self._sock]))

    def stop(self, grace: Optional[float] = None) -> None:
        """Graceful: stop reporting ready, refuse new requests, let requests in flight finish (up to
        ``grace`` seconds, default ``settings.shutdown_grace_s``), then release the models."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            grace = self.settings.shutdown_grace_s if grace is None else grace
            log.info("shutting down (grace %.1f s)", grace)
            t0 = time.monotonic()
            self.dataplane.begin_shutdown()
            threads = []
            if self.grpc is not None:
                threads.append(threading.Thread(target=self.grpc.stop, args=(grace,)))
            for t in threads:
                t.start()
            if self._http is not None:
                # keep accepting while requests are in flight: new REST requests get a clean 503 (the guard),
                # not a refused connection; then uvicorn stops (waiting for what is left, up to the grace)
                while self.dataplane.admission.inflight > 0 and time.monotonic() - t0 < grace:
                    time.sleep(0.01)
                self._http.should_exit = True
            if self._http_thread is not None:
                self._http_thread.join(grace + 5)
            for t in threads:
                t.join()
            if self._sock is not None:
                self._sock.close()
            self.dataplane.close()
            gc.unfreeze()  # what start() froze may be garbage now (the models of this server)
            self._stopped.set()
            log.info("stopped")

    def serve_forever(self) -> None:
        """Start, then block until SIGINT or SIGTERM; stop gracefully."""
        stop = threading.Event()
        previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            while not stop.wait(0.5):
                pass
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)
            self.stop()

    def __enter__(self) -> "SplitInferServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
