"""The data plane: every request of both front ends is handled, validated and answered here.

REST (``rest.py``) and gRPC (``grpc_server.py``) only translate their wire types to the pydantic types of
``types.py`` and call :class:`DataPlane`; errors leave as :mod:`cloud_server.errors`, which each front end
maps to its status codes. Nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations

import hmac
import io
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Iterator, List, Optional

from shared import __version__
from shared.bitstream import BitstreamError
from shared.hint import BitrateHint

from .errors import (DeadlineExceeded, InternalError, InvalidArgument, Overloaded, PayloadTooLarge, SplitInferError,
                     Unauthenticated, Unavailable)
from .metrics import Metrics
from .repository import ModelRepository, ServedModel
from .settings import Settings
from .types import ClassScore, InferenceRequest, InferenceResponse, ModelMetadata, RungMetadata, parse_request

__all__ = ["DataPlane", "IMAGE_FORMATS"]

log = logging.getLogger("splitinfer.server")
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")


class DataPlane:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Optional[Metrics] = None):
        self.settings = settings
        self.repository = repository
        self.metrics = metrics or Metrics()
        repository.on_batch = lambda backbone, n: self.metrics.batch.labels(backbone).observe(n)
        self._slots = threading.BoundedSemaphore(settings.max_concurrent_requests)
        self._api_keys = [k.encode() for k in settings.all_api_keys()]
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

    def authenticate(self, token: Optional[str]) -> None:
        """Raise Unauthenticated unless ``token`` is a configured API key (no keys configured: open)."""
        if not self._api_keys:
            return
        if not token:
            self.metrics.errors.labels("auth", Unauthenticated.kind).inc()
            raise Unauthenticated("missing API key (send 'authorization: Bearer <key>')")
        given = token.encode()
        ok = False
        for k in self._api_keys:  # compare with every key: time does not depend on which one matched
            ok |= hmac.compare_digest(given, k)
        if not ok:
            self.metrics.errors.labels("auth", Unauthenticated.kind).inc()
            raise Unauthenticated("invalid API key")

    def server_metadata(self) -> dict:
        return {"name": "splitinfer", "version": __version__, "extensions": ["binary_tensor_data", "infer_image"]}

    def metadata(self, name: Optional[str] = None) -> List[ModelMetadata]:
        models = [self.repository.get(name)] if name else self.repository.models()
        return [self._model_metadata(m) for m in models]

    def model_metadata(self, name: str) -> ModelMetadata:
        return self._model_metadata(self.repository.get(name))

    def _model_metadata(self, m: ServedModel) -> ModelMetadata:
        b, resident = m.bundle, set(m.codec.resident)
        rungs = []
        for r in b.rungs:
            mt = r.metrics
            rungs.append(RungMetadata(index=r.index, lam=r.lam, bpp=mt.get("bpp"), top1=mt.get("top1"),
                                      top5=mt.get("top5"), miou=mt.get("miou"), pixel_acc=mt.get("pixel_acc"),
                                      agreement=mt.get("agreement"),
                                      n_images=int(mt.get("n_images") or 0), resident=r.index in resident))
        return ModelMetadata(name=m.name, bundle_id=b.bundle_id, backbone=b.model, split=b.split,
                             task=m.decoder.task, input_hw=m.input_hw, rate_model=b.config.rate_model,
                             num_classes=m.decoder.model.spec.num_classes, backbone_loaded=True, rungs=rungs)

    def _update_resident(self) -> None:
        for m in self.repository.models():
            self.metrics.resident.labels(m.name).set(len(m.codec.resident))

    # -- inference -------------------------------------------------------------------------------------
    def infer(self, request: InferenceRequest, protocol: str = "python",
              timeout_s: Optional[float] = None) -> InferenceResponse:
        """Decode one bitstream and run the tail. Raises a :class:`SplitInferError` on any refusal."""
        with self._request(request.model, protocol, request.request_id) as ctx:
            served = self._served(request.model)
            with served.batcher.track():
                resp = self._infer(served, request, ctx, self._deadline(timeout_s))
            ctx["response"] = resp
            return resp

    def infer_image(self, model: str, image: bytes, hint: BitrateHint = BitrateHint(), rung: Optional[int] = None,
                    top_k: Optional[int] = None, request_id: Optional[str] = None, protocol: str = "rest",
                    timeout_s: Optional[float] = None) -> InferenceResponse:
        """The whole pipeline in the cloud: image -> edge encoder (in-process) -> bitstream -> tail."""
        with self._request(model, protocol, request_id) as ctx:
            served = self._served(model)
            deadline = self._deadline(timeout_s)
            if not image:
                raise InvalidArgument("missing image (upload a JPEG or PNG file)")
            if len(image) > self.settings.max_upload_bytes:
                raise PayloadTooLarge(f"image of {len(image)} bytes exceeds the limit of "
                                      f"{self.settings.max_upload_bytes} bytes")
            t0 = time.perf_counter()
            img = self._open_image(image)
            n = len(served.bundle.rungs)
            if rung is not None and hint.is_set:
                raise InvalidArgument("give either a rung or a bitrate hint, not both")
            if rung is not None and not 0 <= rung < n:
                raise InvalidArgument(f"rung {rung} is not in bundle {served.bundle.bundle_id} (rungs 0..{n - 1})")
            r = hint.rung(served.bundle) if rung is None else rung
            frame = served.encoder().encode(img, rung=r)
            encode_ms = 1e3 * (time.perf_counter() - t0)
            req = parse_request(dict(model=model, bitstream=frame.data, target_bpp=hint.target_bpp,
                                     kbit_per_s=hint.kbit_per_s, fps=hint.fps, expected_rung=r,
                                     request_id=ctx["request_id"], top_k=top_k))
            with served.batcher.track():
                resp = self._infer(served, req, ctx, deadline)
            resp.timings_ms["encode"] = encode_ms
            resp.timings_ms["total"] += encode_ms
            ctx["response"] = resp
            return resp

    def _served(self, name: str) -> ServedModel:
        if not self._ready:
            raise Unavailable("the server is shutting down")
        return self.repository.get(name)

    def _deadline(self, timeout_s: Optional[float]) -> float:
        t = self.settings.request_timeout_s
        if timeout_s is not None:
            t = min(t, max(0.0, timeout_s))
        return time.monotonic() + t

    @staticmethod
    def _check_deadline(deadline: float, stage: str) -> None:
        if time.monotonic() > deadline:
            raise DeadlineExceeded(f"deadline exceeded before {stage}")

    def _open_image(self, data: bytes):
        from PIL import Image, UnidentifiedImageError

        try:
            img = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            w, h = img.size
            if w * h > self.settings.max_image_pixels:
                raise PayloadTooLarge(f"image of {w}x{h} pixels exceeds the limit of "
                                      f"{self.settings.max_image_pixels} pixels")
            img.load()
            return img.convert("RGB")
        except UnidentifiedImageError:
            raise InvalidArgument(f"not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
        except Image.DecompressionBombError as e:
            raise PayloadTooLarge(f"image too large: {e}") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise InvalidArgument(f"cannot decode the image: {e}") from None

    def _infer(self, served: ServedModel, req: InferenceRequest, ctx: dict, deadline: float) -> InferenceResponse:
        t0 = time.perf_counter()
        data = req.bitstream
        if not data:
            raise InvalidArgument("missing field 'bitstream' (empty)")
        if len(data) > self.settings.max_bitstream_bytes:
            raise PayloadTooLarge(f"bitstream of {len(data)} bytes exceeds the limit of "
                                  f"{self.settings.max_bitstream_bytes} bytes")
        bundle, codec = served.bundle, served.codec
        n = len(bundle.rungs)
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
        t1 = time.perf_counter()
        self._check_deadline(deadline, "decoding")
        try:
            feat, hdr = codec.decode(data)
        except BitstreamError as e:
            raise InvalidArgument(f"bad bitstream: {e}") from None
        t2 = time.perf_counter()
        self._check_deadline(deadline, "the tail")
        res = served.batcher.run(feat, hdr.input_hw, deadline)
        top, mask, pixels = served.decoder.answer(res.output, req.top_k or self.settings.default_top_k)
        t3 = time.perf_counter()
        bpp = 8.0 * len(data) / (hdr.input_hw[0] * hdr.input_hw[1])
        timings = {"parse": 1e3 * (t1 - t0), "decode": 1e3 * (t2 - t1), "queue": res.queue_ms, "tail": res.tail_ms,
                   "total": 1e3 * (t3 - t0)}
        m = self.metrics
        m.bytes.labels(served.name, str(hdr.rung)).observe(len(data))
        m.bpp.labels(served.name, str(hdr.rung)).observe(bpp)
        for stage in ("decode", "queue", "tail"):
            m.stage.labels(stage).observe(timings[stage] / 1e3)
        m.resident.labels(served.name).set(len(codec.resident))
        return InferenceResponse(
            request_id=ctx["request_id"], model=served.name, bundle_id=bundle.bundle_id, rung=hdr.rung,
            hinted_rung=hinted, bytes_received=len(data), bpp=bpp, input_hw=hdr.input_hw,
            topk=[ClassScore(index=i, name=nm, score=s) for i, nm, s in top], timings_ms=timings,
            batch_size=res.batch_size, mask_png=mask, class_pixels=pixels)

    @contextmanager
    def _request(self, model: str, protocol: str, request_id: Optional[str]) -> Iterator[dict]:
        """Admission (concurrency limit), metrics, one structured log line, and error normalisation."""
        rid = request_id or uuid.uuid4().hex
        ctx = {"request_id": rid}
        m = self.metrics
        label = model if model in self.repository else "unknown"  # no label per unknown name
        t0 = time.perf_counter()
        if not self._slots.acquire(blocking=False):
            m.errors.labels(protocol, Overloaded.kind).inc()
            m.requests.labels(protocol, label, Overloaded.kind).inc()
            raise Overloaded(f"too many requests in flight (limit {self.settings.max_concurrent_requests}); "
                             "retry later")
        m.inflight.inc()
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
            self._slots.release()
            m.inflight.dec()
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
