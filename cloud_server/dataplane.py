"""The data plane: every request of both front ends is handled, validated and answered here.

REST (``rest.py``) and gRPC (``grpc_server.py``) only translate their wire types to the pydantic types of
``types.py`` and call :class:`DataPlane`; errors leave as :mod:`cloud_server.errors`, which each front end
maps to its status codes. Nothing here knows about HTTP or gRPC.

What a front end knows about the call travels in a :class:`CallScope` (a context variable, so that it reaches the
thread that runs the work): its :class:`CancelToken` (set when the client cancels, disconnects or its call ends)
and, when the front end admitted the request before queueing it for a thread (REST), its :class:`Admission`.
Work for a cancelled or timed-out request is dropped at the next stage boundary (before decoding, before the
tail, and while queued for a batch), never run to the end for nobody.
"""

from __future__ import annotations

import heapq
import hmac
import itertools
import logging
import os
import threading
import time
import uuid
from contextlib import contextmanager
from contextvars import ContextVar
from collections import deque
from typing import Callable, Deque, Dict, Iterator, List, Optional

from shared import __version__
from shared.bitstream import BitstreamError, unpack
from shared.rate import BitrateHint, HintError
from shared.imageprep import resized_size

from .errors import (BundleMismatch, Cancelled, DeadlineExceeded, InternalError, InvalidArgument, Overloaded,
                     PayloadTooLarge, SplitInferError, Unauthenticated, Unavailable)
from .image_guard import DECODE_BLOCK, MAX_JPEG_SEGMENTS, MAX_PNG_CHUNKS, GuardedReader, jpeg_structure, png_chunks
from .metrics import Metrics
from .repository import ModelRepository, ServedModel
from .settings import Settings
from .types import (ClassScore, InferenceRequest, InferenceResponse, LevelPoint, ModelMetadata, RungMetadata, VariableRate,
                    parse_request)

__all__ = ["DataPlane", "IMAGE_FORMATS", "CancelToken", "Admission", "CallScope", "current_scope", "call_scope"]

log = logging.getLogger("splitinfer.server")
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP")
# failed API keys: an address with this many failures within the window is refused without comparing its keys
# (brute force); at most this many addresses are remembered
_AUTH_FAILURES, _AUTH_WINDOW_S, _AUTH_PEERS = 20, 60.0, 10_000
# deadline-aware admission: the pace (seconds between answers while busy) is an EWMA of this weight (about the last
# 20 answers: a few batches), measured from this many answers on; one gap counts at most this long
_PACE_ALPHA, _PACE_WARMUP, _PACE_MAX_S = 0.05, 8, 5.0
# bytes per pixel of PIL's in-memory image by mode (everything else: 4, e.g. RGB is stored as RGBX)
_PIL_BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


# ------------------------------------------------------------------------------------------ call scope
class CancelToken:
    """Set once when the client is gone (gRPC call terminated, HTTP connection closed); callbacks run then."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cancelled = False
        self._callbacks: List[Callable[[], None]] = []

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        with self._lock:
            if self._cancelled:
                return
            self._cancelled = True
            callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            try:
                fn()
            except Exception:  # noqa: BLE001 - one bad callback must not stop the others
                log.exception("cancel callback failed")

    def add_callback(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Run ``fn`` on cancel (at once if already cancelled); returns a function that removes it."""
        with self._lock:
            if not self._cancelled:
                self._callbacks.append(fn)

                def remove() -> None:
                    with self._lock:
                        if fn in self._callbacks:  # a second remove() is a no-op
                            self._callbacks.remove(fn)

                return remove
        fn()
        return lambda: None


class Admission:
    """One slot of ``max_concurrent_requests``; :meth:`release` is idempotent."""

    def __init__(self, dataplane: "DataPlane"):
        self._dp, self._held = dataplane, True

    def release(self) -> None:
        if self._held:
            self._held = False
            self._dp._release_slot()


class CallScope:
    """What a front end knows about the call that data-plane methods run for (see the module docstring)."""

    __slots__ = ("token", "admission")

    def __init__(self, token: Optional[CancelToken] = None, admission: Optional[Admission] = None):
        self.token = token if token is not None else CancelToken()
        self.admission = admission

    def take_admission(self) -> Optional[Admission]:
        """The front end's slot, handed to the first request that runs in this scope."""
        a, self.admission = self.admission, None
        return a


_SCOPE: ContextVar[Optional[CallScope]] = ContextVar("splitinfer_call_scope", default=None)


class DeadlineGate:
    """``n`` slots handed out earliest deadline first (in arrival order among equal deadlines). A semaphore wakes its
    waiters in no useful order (a newcomer may take a slot before threads that wait, and a waiter that wakes to check
    its deadline goes to the back), so a request admitted because its deadline leaves time for the work ahead of it
    could be overtaken by later ones and miss it (issue 24: goodput at capacity with 2 s deadlines)."""

    def __init__(self, n: int):
        self._lock = threading.Lock()
        self._free = n
        self._waiting: list = []  # heap of [deadline, seq, event, gone]
        self._seq = itertools.count()

    def acquire(self, deadline: float, check: Callable[[], None], poll_s: float = 0.05) -> None:
        """Take a slot, waiting in deadline order; ``check`` (called every ``poll_s`` while waiting) raises to give
        up (the client went away, the deadline passed)."""
        check()
        with self._lock:
            if self._free > 0 and not self._waiting:
                self._free -= 1
                return
            entry = [deadline, next(self._seq), threading.Event(), False]
            heapq.heappush(self._waiting, entry)
        try:
            while True:
                check()
                if entry[2].wait(max(0.0, min(poll_s, deadline - time.monotonic()))):
                    return
        except BaseException:
            with self._lock:
                if entry[2].is_set():  # handed a slot meanwhile: to the next one
                    self._hand_on()
                else:
                    entry[3] = True  # left in the heap, skipped when it comes up
            raise

    def release(self) -> None:
        with self._lock:
            self._hand_on()

    def _hand_on(self) -> None:
        while self._waiting:
            entry = heapq.heappop(self._waiting)
            if not entry[3]:
                entry[2].set()
                return
        self._free += 1


def current_scope() -> Optional[CallScope]:
    return _SCOPE.get()


@contextmanager
def call_scope(scope: CallScope) -> Iterator[CallScope]:
    """Run the block (and whatever it hands to threads with a copied context) in ``scope``."""
    reset = _SCOPE.set(scope)
    try:
        yield scope
    finally:
        _SCOPE.reset(reset)


def enter_scope(scope: CallScope) -> None:
    """Set ``scope`` for the rest of the current context (gRPC runs each call in a context of its own)."""
    _SCOPE.set(scope)


class DataPlane:
    def __init__(self, settings: Settings, repository: ModelRepository, metrics: Optional[Metrics] = None):
        self.settings = settings
        self.repository = repository
        self.metrics = metrics or Metrics()
        repository.on_batch = lambda backbone, n: self.metrics.batch.labels(backbone).observe(n)
        self._capacity = settings.max_concurrent_requests
        self._inflight = 0
        self._slot_lock = threading.Lock()
        self._image_slots = threading.BoundedSemaphore(settings.max_concurrent_image_decodes)
        self._decode_slots = DeadlineGate(settings.max_concurrent_decodes or os.cpu_count() or 1)
        self._api_keys = [k.encode() for k in settings.all_api_keys()]
        self._auth_lock = threading.Lock()
        self._auth_failures: Dict[str, Deque[float]] = {}  # client address -> times of its recent failed keys
        # deadline-aware admission: the measured time between answers while busy (1 / throughput), an EWMA
        self._pace_lock = threading.Lock()
        self._pace_s: Optional[float] = None
        self._pace_n = 0
        self._last_done: Optional[float] = None
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
            self._check_fits(deadline)
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
            self._check_fits(deadline)
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
                img = self._open_image(image, encoder.preprocess_spec, deadline, ctx["token"])
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

    def check_image_size(self, size, pre, mode: str = "RGB") -> None:
        """Refuse an image by its header alone: pixels, decoded memory (``mode``: PIL's), aspect ratio, and the
        size the resize would produce (``pre``: the model's preprocessing). Nothing is decoded or resized before
        this passes."""
        s = self.settings
        w, h = size
        if w < 1 or h < 1:
            raise InvalidArgument(f"image of {w}x{h} pixels is empty")
        if w * h > s.max_image_pixels:
            raise PayloadTooLarge(f"image of {w}x{h} pixels exceeds the limit of {s.max_image_pixels} pixels")
        need = w * h * (_PIL_BYTES_PER_PIXEL.get(mode, 4) + (0 if mode == "RGB" else 4))
        if need > s.max_image_decode_bytes:
            raise PayloadTooLarge(f"image of {w}x{h} pixels ({mode}) would take {need >> 20} MiB to decode, over the "
                                  f"limit of {s.max_image_decode_bytes >> 20} MiB")
        if max(w, h) > s.max_image_aspect_ratio * min(w, h):
            raise InvalidArgument(f"image of {w}x{h} pixels: aspect ratio {max(w, h) / min(w, h):.4g}:1 exceeds the "
                                  f"limit of {s.max_image_aspect_ratio:g}:1")
        rw, rh = resized_size((w, h), pre)
        if rw * rh > s.max_resized_pixels:
            raise PayloadTooLarge(f"image of {w}x{h} pixels would be resized to {rw}x{rh}, over the limit of "
                                  f"{s.max_resized_pixels} pixels")

    def check_decode_work(self, data: bytes) -> None:
        """Refuse an upload whose decoding would cost far more than its pixels suggest, from its markers alone: a
        progressive JPEG with more scans than encoders write, or more pixels x scans than ``max_jpeg_scan_pixels``;
        a JPEG or PNG of more segments or chunks than Pillow parses quickly (``image_guard``: otherwise PNG and
        WebP decoding is bounded by the pixel limit)."""
        s = self.settings
        chunks = png_chunks(data)
        if chunks is not None and chunks > MAX_PNG_CHUNKS:
            raise PayloadTooLarge(f"PNG with more than {MAX_PNG_CHUNKS} chunks (encoders write a few thousand at "
                                  "most): refused before decoding")
        st = jpeg_structure(data, s.max_jpeg_scans)
        if st is None:
            return
        if st.segments > MAX_JPEG_SEGMENTS:
            raise PayloadTooLarge(f"JPEG with more than {MAX_JPEG_SEGMENTS} marker segments (real files have a few "
                                  "dozen): refused before decoding")
        if st.scans > s.max_jpeg_scans:
            raise PayloadTooLarge(f"progressive JPEG with more than {s.max_jpeg_scans} scans (encoders write 6 to "
                                  "about 20; each scan is another decoding pass): refused before decoding")
        if st.width * st.height * st.scans > s.max_jpeg_scan_pixels:
            raise PayloadTooLarge(f"JPEG of {st.width}x{st.height} pixels in {st.scans} scans: pixels x scans "
                                  f"exceeds the decoding limit of {s.max_jpeg_scan_pixels}")

    def _open_image(self, data: bytes, pre, deadline: float, token: Optional[CancelToken]):
        from PIL import Image, UnidentifiedImageError

        try:
            self.check_decode_work(data)
            # the decoder reads the upload a block at a time through this: each read checks the deadline and the
            # client, so that a decode nobody waits for stops there
            fp = GuardedReader(data, lambda: self._check(deadline, token, "the image was decoded"))
            img = Image.open(fp, formats=IMAGE_FORMATS)
            img.decodermaxblock = DECODE_BLOCK
            self.check_image_size(img.size, pre, img.mode)  # the header only: nothing decoded yet
            self._check(deadline, token, "decoding the image")
            img.load()
            if img.mode != "RGB":
                self._check(deadline, token, "converting the image")
                rgb = img.convert("RGB")
                img.close()
                img = rgb
            return img
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
            batch_size=res.batch_size, **ans.extras)

    # -- admission -------------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        """Admitted requests not finished yet."""
        return self._inflight

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def at_capacity(self) -> bool:
        """A new request would be refused now (a hint for front ends: :meth:`admit` decides)."""
        return self._inflight >= self._capacity

    def admit(self, protocol: str = "python", model: Optional[str] = None) -> Admission:
        """Take a slot of ``max_concurrent_requests`` now or raise (Unavailable while shutting down, Overloaded at
        capacity): never waits. Front ends that queue work for a thread call this before queueing it and hand the
        slot to the request through :class:`CallScope`; otherwise the request takes its own."""
        if not self._ready:
            err: SplitInferError = Unavailable("the server is shutting down")
        else:
            with self._slot_lock:
                if self._inflight < self._capacity:
                    self._inflight += 1
                    self.metrics.inflight.inc()
                    return Admission(self)
            err = Overloaded(f"too many requests in flight (limit {self._capacity}); retry later")
        label = model if model is not None and model in self.repository else "unknown"
        self.metrics.errors.labels(protocol, err.kind).inc()
        self.metrics.requests.labels(protocol, label, err.kind).inc()
        raise err

    @property
    def pace_s(self) -> Optional[float]:
        """Measured seconds between answers while more than one request is in flight (1 / throughput; an EWMA over
        about the last 20 answers); None until measured."""
        return self._pace_s if self._pace_n >= _PACE_WARMUP else None

    def expected_s(self) -> Optional[float]:
        """How long a request admitted now would take to be answered: the requests in flight (itself included) at
        the measured pace; None when nothing is queued or nothing is measured yet."""
        pace, n = self.pace_s, self._inflight
        return None if pace is None or n < 2 else n * pace

    def _check_fits(self, deadline: float) -> None:
        """Deadline-aware admission: refuse at once (``overloaded``, retryable) a request that cannot be answered
        before its deadline at the measured pace, instead of letting it wait in the queue and time out after taking a
        slot (and the work of the ones before it) for nothing."""
        need = self.expected_s()
        if need is None:
            return
        left = deadline - time.monotonic()
        if need > left:
            raise Overloaded(f"cannot be answered before its deadline: about {need:.2f} s of work is ahead of it "
                             f"({self._inflight} requests in flight), {max(0.0, left):.2f} s left; retry later")

    def _record_answer(self) -> None:
        """One request answered: the time since the one before counts toward the pace when the server was busy."""
        now = time.monotonic()
        with self._pace_lock:
            if self._last_done is not None and self._inflight >= 2:
                dt = min(now - self._last_done, _PACE_MAX_S)
                self._pace_s = dt if self._pace_s is None else self._pace_s + _PACE_ALPHA * (dt - self._pace_s)
                self._pace_n += 1
            self._last_done = now

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

    def _release_slot(self) -> None:
        with self._slot_lock:
            self._inflight -= 1
            self.metrics.inflight.dec()

    @contextmanager
    def _request(self, model: str, protocol: str, request_id: Optional[str]) -> Iterator[dict]:
        """Admission (concurrency limit), metrics, one structured log line, and error normalisation."""
        rid = request_id or uuid.uuid4().hex
        scope = _SCOPE.get()
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
                self._record_answer()  # before the slot goes: the count says whether others were in flight
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
