"""The data plane: every request of both front ends is handled, validated and answered here.

The front ends (``grpc/``, ``rest/``) only translate their wire types to the pydantic types of ``types.py`` and
call :class:`DataPlane`; errors leave as :mod:`cloud_server.errors`, which each front end maps to its status
codes. Nothing here knows about HTTP or gRPC.

What a front end knows about the call arrives in a :class:`~cloud_server.scope.CallScope` (its cancel token, and
the admission slot a front end took before queueing the request for a thread). Work for a cancelled or timed-out
request is dropped at the next stage boundary (before decoding, before the tail, and while queued for a batch),
never run to the end for nobody. Admission (``max_concurrent_requests``, deadline-aware) is
:mod:`cloud_server.scope`'s; an upload is judged and decoded by :mod:`cloud_server.uploads`.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
import uuid
from collections import deque
from contextlib import contextmanager
from typing import Deque, Dict, Iterator, List, Optional

from shared import __version__
from shared.bitstream import BitstreamError, unpack
from shared.rate import BitrateHint, HintError

from .errors import (BundleMismatch, Cancelled, DeadlineExceeded, InternalError, InvalidArgument, Overloaded,
                     PayloadTooLarge, SplitInferError, Unauthenticated, Unavailable)
from .metrics import Metrics
from .repository import ModelRepository, ServedModel
from .scope import Admission, AdmissionControl, CancelToken, DeadlineGate, current_scope
from .settings import Settings
from .types import (ClassScore, InferenceRequest, InferenceResponse, LevelPoint, ModelMetadata, RungMetadata, VariableRate,
                    parse_request)
from .uploads import open_image

__all__ = ["DataPlane"]

log = logging.getLogger("splitinfer.server")
# failed API keys: an address with this many failures within the window is refused without comparing its keys
# (brute force); at most this many addresses are remembered
_AUTH_FAILURES, _AUTH_WINDOW_S, _AUTH_PEERS = 20, 60.0, 10_000


class DataPlane:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Optional[Metrics] = None):
        self.settings = settings
        self.repository = repository
        self.metrics = metrics or Metrics()
        repository.on_batch = lambda backbone, n: self.metrics.batch.labels(backbone).observe(n)
        self.admission = AdmissionControl(settings.max_concurrent_requests, self.metrics.inflight)
        self._image_slots = threading.BoundedSemaphore(settings.max_concurrent_image_decodes)
        self._decode_slots = DeadlineGate(settings.max_concurrent_decodes or os.cpu_count() or 1)
        self._api_keys = [k.encode() for k in settings.all_api_keys()]
        self._auth_lock = threading.Lock()
        self._auth_failures: Dict[str, Deque[float]] = {}  # client address -> times of its recent failed keys
        self._ready = True
        self._update_resident()

    # -- health, metadata, auth ------------------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self._ready

    def model_ready(self, name: str) -> bool:
        self.repository.get(name)
        return self._ready

    def begin_shutdown(self) -> None:
        """Stop reporting ready; requests already admitted finish."""
        self._ready = False

    def close(self) -> None:
        self._ready = False
        self.repository.close()

    @property
    def auth_required(self) -> bool:
        return bool(self._api_keys)

    def authenticate(self, token: Optional[str], peer: Optional[str] = None) -> None:
        """Raise Unauthenticated unless ``token`` is a configured API key (no keys configured: open). ``peer`` (the
        client's address, without its port) is throttled after ``_AUTH_FAILURES`` failed keys within
        ``_AUTH_WINDOW_S``: its keys are then refused without being compared until the window has passed."""
        if not self._api_keys:
            return
        if peer is not None and self._auth_throttled(peer):
            self.metrics.errors.labels("auth", Unauthenticated.kind).inc()
            raise Unauthenticated(f"too many failed API keys from this address (over {_AUTH_FAILURES} in "
                                  f"{_AUTH_WINDOW_S:g} s); wait before trying again")
        if not token:
            self.metrics.errors.labels("auth", Unauthenticated.kind).inc()
            raise Unauthenticated("missing API key (send 'authorization: Bearer <key>')")
        given = token.encode()
        ok = False
        for k in self._api_keys:  # compare with every key: time does not depend on which one matched
            ok |= hmac.compare_digest(given, k)
        if not ok:
            self.metrics.errors.labels("auth", Unauthenticated.kind).inc()
            if peer is not None:
                self._auth_failed(peer)
            raise Unauthenticated("invalid API key")

    def _auth_throttled(self, peer: str) -> bool:
        with self._auth_lock:
            times = self._auth_failures.get(peer)
            if not times:
                return False
            cutoff = time.monotonic() - _AUTH_WINDOW_S
            while times and times[0] < cutoff:
                times.popleft()
            if not times:
                del self._auth_failures[peer]
                return False
            return len(times) >= _AUTH_FAILURES

    def _auth_failed(self, peer: str) -> None:
        with self._auth_lock:
            if peer not in self._auth_failures and len(self._auth_failures) >= _AUTH_PEERS:
                self._auth_failures.pop(next(iter(self._auth_failures)))  # the oldest address goes
            self._auth_failures.setdefault(peer, deque(maxlen=_AUTH_FAILURES)).append(time.monotonic())

    def server_metadata(self) -> dict:
        return {"name": "splitinfer", "version": __version__, "extensions": ["binary_tensor_data", "infer_image"]}

    def metadata(self, name: Optional[str] = None) -> List[ModelMetadata]:
        models = [self.repository.get(name)] if name else self.repository.models()
        return [self._model_metadata(m) for m in models]

    def model_metadata(self, name: str) -> ModelMetadata:
        return self._model_metadata(self.repository.get(name))

    def _model_metadata(self, m: ServedModel) -> ModelMetadata:
        b, resident, task = m.bundle, set(m.codec.resident), m.decoder.task
        rungs = []
        for r in b.rungs:
            mt = r.metrics
            figures = {k: mt.get(k) for k in task.metrics}  # the task's accuracy figures, by name
            rungs.append(RungMetadata(index=r.index, lam=r.lam, bpp=mt.get("bpp"), agreement=mt.get("agreement"),
                                      n_images=int(mt.get("n_images") or 0), resident=r.index in resident, **figures))
        vr, scheme = None, b.scheme
        if scheme.variable:
            curve = [LevelPoint(level=p["level"], bpp=p["bpp"], agreement=p.get("agreement"),
                                n_images=int(p.get("n_images") or 0), **{k: p.get(k) for k in task.metrics})
                     for p in scheme.curve]
            vr = VariableRate(levels=scheme.levels, curve=curve)
        return ModelMetadata(name=m.name, bundle_id=b.bundle_id, backbone=b.model, split=b.split,
                             task=task.name, input_hw=m.input_hw, rate_model=b.config.rate_model,
                             num_classes=m.decoder.model.spec.num_classes, backbone_loaded=m.backbone_loaded,
                             rungs=rungs, variable_rate=vr, head_weights=m.decoder.model.fingerprints()["head"])

    def _update_resident(self) -> None:
        for m in self.repository.models():
            self.metrics.resident.labels(m.name).set(len(m.codec.resident))

    # -- inference -------------------------------------------------------------------------------------
    def infer(self, request: InferenceRequest, protocol: str = "python",
              timeout_s: Optional[float] = None) -> InferenceResponse:
        """Decode one bitstream and run the tail. Raises a :class:`SplitInferError` on any refusal."""
        with self._request(request.model, protocol, request.request_id) as ctx:
            served = self._served(request.model)
            deadline = self._deadline(timeout_s)
            self.admission.check_fits(deadline)
            with served.batcher.track():
                resp = self._infer(served, request, ctx, deadline)
            ctx["response"] = resp
            return resp

    def infer_image(self, model: str, image: bytes, hint: BitrateHint = BitrateHint(), rung: Optional[int] = None,
                    top_k: Optional[int] = None, request_id: Optional[str] = None, protocol: str = "rest",
                    timeout_s: Optional[float] = None) -> InferenceResponse:
        """The whole pipeline in the cloud: image -> edge encoder (in-process) -> bitstream -> tail."""
        with self._request(model, protocol, request_id) as ctx:
            served = self._served(model)
            deadline = self._deadline(timeout_s)
            self.admission.check_fits(deadline)
            if not image:
                raise InvalidArgument("missing image (upload a JPEG or PNG file)")
            if len(image) > self.settings.max_upload_bytes:
                raise PayloadTooLarge(f"image of {len(image)} bytes exceeds the limit of "
                                      f"{self.settings.max_upload_bytes} bytes")
            t0 = time.perf_counter()
            if rung is not None and hint.is_set:
                raise InvalidArgument("give either a rung or a bitrate hint, not both")
            try:  # the edge's own rule: a rung, or the message itself within the hint (variable rate)
                point = served.bundle.scheme.point(hint, rung=rung)
            except HintError as e:
                raise InvalidArgument(str(e)) from None
            encoder = served.encoder()
            # the big part (the decoded upload) lives only inside this block; a few at a time
            if not self._image_slots.acquire(timeout=max(0.0, min(2.0, deadline - time.monotonic()))):
                self._check(deadline, ctx["token"], "decoding the image")
                raise Overloaded(f"{self.settings.max_concurrent_image_decodes} images are being decoded; retry later")
            try:
                img = open_image(self.settings, image, encoder.preprocess_spec,
                                 lambda stage: self._check(deadline, ctx["token"], stage))
                self._check(deadline, ctx["token"], "encoding")
                frame = encoder.encode(img, point=point)
                del img
            finally:
                self._image_slots.release()
            encode_ms = 1e3 * (time.perf_counter() - t0)
            req = parse_request(dict(model=model, bitstream=frame.data, target_bpp=hint.target_bpp,
                                     kbit_per_s=hint.kbit_per_s, fps=hint.fps, expected_rung=point.rung,
                                     request_id=ctx["request_id"], top_k=top_k))
            with served.batcher.track():
                resp = self._infer(served, req, ctx, deadline)
            resp.timings_ms["encode"] = encode_ms
            resp.timings_ms["total"] += encode_ms
            ctx["response"] = resp
            return resp

    def _served(self, name: str) -> ServedModel:
        # shutting down: refused at admission (``admit``); a request admitted before that finishes
        return self.repository.get(name)

    def _deadline(self, timeout_s: Optional[float]) -> float:
        t = self.settings.request_timeout_s
        if timeout_s is not None:
            t = min(t, max(0.0, timeout_s))
        return time.monotonic() + t

    @staticmethod
    def _check(deadline: float, token: Optional[CancelToken], stage: str) -> None:
        """Stage boundary: stop here when the client is gone or the deadline has passed."""
        if token is not None and token.cancelled:
            raise Cancelled(f"the client went away before {stage}; the request was dropped")
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"deadline exceeded before {stage}")

    def _infer(self, served: ServedModel, req: InferenceRequest, ctx: dict, deadline: float) -> InferenceResponse:
        t0 = time.perf_counter()
        data = req.bitstream
        if not data:
            raise InvalidArgument("missing field 'bitstream' (empty)")
        if len(data) > self.settings.max_bitstream_bytes:
            raise PayloadTooLarge(f"bitstream of {len(data)} bytes exceeds the limit of "
                                  f"{self.settings.max_bitstream_bytes} bytes")
        bundle, codec = served.bundle, served.codec
        token = ctx["token"]
        n = len(bundle.rungs)
        try:
            sent_for = unpack(data)[0].bundle_id
        except BitstreamError as e:
            raise InvalidArgument(f"bad bitstream: {e}") from None
        if sent_for != bundle.id_bytes:  # before any rung check: the rungs of another ladder mean nothing here
            raise BundleMismatch(
                f"the bitstream was encoded with bundle {sent_for.hex()}…, but model {served.name!r} serves bundle "
                f"{bundle.bundle_id} ({bundle.model}/{bundle.split}): the server's bundle changed, or the edge holds "
                "another one. Edge and cloud must hold the same bundle (re-read the server's models)")
        hint = req.hint
        hinted = hint.rung(bundle) if hint.is_set else None
        if req.expected_rung is not None:
            if req.expected_rung >= n:
                raise InvalidArgument(f"rung {req.expected_rung} is not in bundle {bundle.bundle_id} "
                                      f"(rungs 0..{n - 1})")
            if hinted is not None and hinted != req.expected_rung:
                raise InvalidArgument(f"the hint ({hint}) maps to rung {hinted} on this server's ladder, not rung "
                                      f"{req.expected_rung}: the edge and the server disagree on the ladder")
        try:
            hdr, _ = codec.parse(data)
        except BitstreamError as e:
            raise InvalidArgument(f"bad bitstream: {e}") from None
        if req.expected_rung is not None and hdr.rung != req.expected_rung:
            raise InvalidArgument(f"the bitstream was encoded with rung {hdr.rung}, the request expects rung "
                                  f"{req.expected_rung}")
        tw = time.perf_counter()
        # a blocked thread costs no CPU and no GIL; earliest deadline first, so that the admission's estimate holds
        self._decode_slots.acquire(deadline, lambda: self._check(deadline, token, "decoding"))
        t1 = time.perf_counter()
        try:
            feat, hdr = codec.decode(data)
        except BitstreamError as e:
            raise InvalidArgument(f"bad bitstream: {e}") from None
        finally:
            self._decode_slots.release()
        t2 = time.perf_counter()
        self._check(deadline, token, "the tail")
        res = served.batcher.run(feat, hdr.input_hw, deadline, token)
        ans = served.decoder.answer(res.output, req.top_k or self.settings.default_top_k)
        t3 = time.perf_counter()
        bpp = 8.0 * len(data) / (hdr.input_hw[0] * hdr.input_hw[1])
        timings = {"parse": 1e3 * (tw - t0), "decode_wait": 1e3 * (t1 - tw), "decode": 1e3 * (t2 - t1),
                   "queue": res.queue_ms, "tail": res.tail_ms, "total": 1e3 * (t3 - t0)}
        m = self.metrics
        m.bytes.labels(served.name, str(hdr.rung)).observe(len(data))
        m.bpp.labels(served.name, str(hdr.rung)).observe(bpp)
        for stage in ("decode", "queue", "tail"):
            m.stage.labels(stage).observe(timings[stage] / 1e3)
        m.resident.labels(served.name).set(len(codec.resident))
        return InferenceResponse(
            request_id=ctx["request_id"], model=served.name, bundle_id=bundle.bundle_id, rung=hdr.rung,
            hinted_rung=hinted, bytes_received=len(data), bpp=bpp, input_hw=hdr.input_hw,
            topk=[ClassScore(index=i, name=nm, score=s) for i, nm, s in ans.topk], timings_ms=timings,
            batch_size=res.batch_size, outputs=ans.outputs)

    # -- admission -------------------------------------------------------------------------------------
    def admit(self, protocol: str = "python", model: Optional[str] = None) -> Admission:
        """Take a slot of ``max_concurrent_requests`` now or raise (Unavailable while shutting down, Overloaded at
        capacity): never waits. Front ends that queue work for a thread call this before queueing it and hand the
        slot to the request through :class:`~cloud_server.scope.CallScope`; otherwise the request takes its own."""
        if not self._ready:
            err: SplitInferError = Unavailable("the server is shutting down")
        else:
            slot = self.admission.take()
            if slot is not None:
                return slot
            err = Overloaded(f"too many requests in flight (limit {self.admission.capacity}); retry later")
        label = model if model is not None and model in self.repository else "unknown"
        self.metrics.errors.labels(protocol, err.kind).inc()
        self.metrics.requests.labels(protocol, label, err.kind).inc()
        raise err

    def refused(self, protocol: str, model: Optional[str], err: SplitInferError,
                request_id: Optional[str] = None) -> None:
        """Count and log a request a front end refused before it reached :meth:`infer` (while translating its wire
        format: a bad tensor, an unknown output, a mistyped parameter), as :meth:`infer` counts its own refusals."""
        label = model if model is not None and model in self.repository else "unknown"
        self.metrics.requests.labels(protocol, label, err.kind).inc()
        self.metrics.errors.labels(protocol, err.kind).inc()
        rid = request_id or uuid.uuid4().hex
        log.info("infer %s %s", rid, err.kind, extra={"fields": {
            "event": "infer", "request_id": rid, "protocol": protocol, "model": model, "outcome": err.kind,
            "ms": 0.0, "error": err.message, "stage": "translation"}})

    @contextmanager
    def _request(self, model: str, protocol: str, request_id: Optional[str]) -> Iterator[dict]:
        """Admission (concurrency limit), metrics, one structured log line, and error normalisation."""
        rid = request_id or uuid.uuid4().hex
        scope = current_scope()
        ctx = {"request_id": rid, "token": scope.token if scope is not None else None}
        m = self.metrics
        label = model if model in self.repository else "unknown"  # no label per unknown name
        t0 = time.perf_counter()
        # admitted by the front end (before shutdown began: it finishes), or now (refused while shutting down)
        admission = scope.take_admission() if scope is not None else None
        if admission is None:
            admission = self.admit(protocol, model)
        outcome, err = "ok", None
        try:
            yield ctx
        except SplitInferError as e:
            outcome, err = e.kind, e
            raise
        except Exception as e:  # noqa: BLE001 - a bug; the client gets a clean INTERNAL with the request id
            log.exception("request %s failed", rid)
            err = InternalError(f"internal error while serving request {rid}: {type(e).__name__}")
            outcome = err.kind
            raise err from e
        finally:
            if err is None:
                self.admission.record_answer()  # before the slot goes: the count says whether others were in flight
            admission.release()
            dt = time.perf_counter() - t0
            m.requests.labels(protocol, label, outcome).inc()
            m.latency.labels(protocol, label).observe(dt)
            fields = {"event": "infer", "request_id": rid, "protocol": protocol, "model": model,
                      "outcome": outcome, "ms": round(1e3 * dt, 3)}
            if err is not None:
                m.errors.labels(protocol, err.kind).inc()
                fields["error"] = err.message
            resp = ctx.get("response")
            if resp is not None:
                fields.update(rung=resp.rung, bytes=resp.bytes_received, bpp=round(resp.bpp, 5),
                              batch=resp.batch_size)
            log.info("infer %s %s", rid, outcome, extra={"fields": fields})
