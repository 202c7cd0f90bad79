"""The edge client: encode images on the device, send the bitstreams to the cloud over gRPC (or REST).

::

    from edge_client import EdgeClient

    with EdgeClient("127.0.0.1:50051") as client:             # the embedded ladder
        r = client.infer("photo.jpg", bitrate=0.2)            # hint -> rung with the shared rule
        print(r.rung, r.n_bytes, r.bpp, r.latency_ms, r.topk[0])
        for r in client.stream(frames, bitrate=0.1):          # one InferStream for a camera
            ...

Before the first request the client asks the server for its models (``ModelMetadata``) and checks that one
of them serves the bundle this edge encodes with (same bundle id); otherwise :class:`BundleMismatchError`
says which bundles each side holds (and a request refused for another bundle, after the server's bundle
changed, raises it too). Each request has a deadline (``timeout_s``, retries included); an answer of kind
``overloaded`` or ``unavailable``, or a server that cannot be reached, is retried with exponential backoff.

The rooms: result types and errors in :mod:`edge_client.results`, the wire in :mod:`edge_client.transports` (one
:class:`~edge_client.transports.Transport` protocol, gRPC or REST), a camera's stream in :mod:`edge_client.stream`,
what an answer must be in :mod:`edge_client.answers`. The edge half runs on the torch-free runtime
(:class:`OnnxEdgeEncoder`: ONNX Runtime + numpy); ``runtime="torch"`` uses the PyTorch encoder instead (for
comparison; it needs the full install); either follows :class:`shared.frame.Encoder`. Only ``shared``'s torch-free
modules and the transports' ``grpc`` / ``httpx`` are imported: never torch, FastAPI, uvicorn, or the server.
"""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Tuple, Union

from shared.frame import Encoder, EncodedFrame, ImageLike
from shared.rate import BitrateHint, HintError
from shared.tasks import get_task

from .answers import answer_problem
from .results import (IMAGE_ERRORS, AnswerError, BundleMismatchError, ImageError, InferResult, ServiceError,
                      source_name)
from .runtime import OnnxEdgeEncoder
from .transports import GrpcTransport, RestTransport, Transport

__all__ = ["EdgeClient"]

FETCH_TIMEOUT_S = 300.0  # fetching the edge package: the server may export it first (tens of seconds on a small CPU)


class EdgeClient:
    """Edge encoder + a connection to the cloud.

    Args:
        server: ``HOST:PORT`` of the gRPC front end, or of the REST one with ``rest=True`` (a full
            ``http(s)://`` URL also works for REST).
        bundle: the ladder the edge encodes with: an edge package (``splitinfer export-edge``), a bundle folder
            (its edge package is exported once into ``$SPLITINFER_CACHE``, which needs PyTorch), or None: the
            package of the server's model (``model``, else the one serving the embedded ladder, else its first),
            fetched from the server on first use, checked against its metadata and cached (``edge_client.fetch``;
            a server without the call: the embedded ladder's, as before). weights: backbone weights for that
            export (default: pretrained).
        model: the server's model name; default: whichever server model serves this edge's bundle.
        timeout_s: deadline per request, retries included. retries / backoff_s: tries after an
            overloaded or unavailable answer, with exponential backoff (and jitter) starting at ``backoff_s``.
        api_key: sent as ``authorization: Bearer``. tls / root_cert: TLS (``root_cert``: PEM file of the CA).
        encoder: an encoder to use instead of building one (a :class:`shared.frame.Encoder`: :class:`OnnxEdgeEncoder`
            or the PyTorch ``EdgeEncoder``).
        runtime: "onnx" (default: ONNX Runtime + numpy, no torch) or "torch" (the PyTorch encoder).
        threads: the ONNX runtime's threads (default ``$SPLITINFER_EDGE_THREADS``, else 1).
        grpc_options: extra gRPC channel arguments, e.g. ``[("grpc.lb_policy_name", "round_robin")]`` to spread
            requests over every address of ``server="dns:///cloud:50051"`` (cloud replicas behind one name);
            ``$SPLITINFER_GRPC_LB_POLICY`` is the policy's default (for ``splitinfer edge`` and the edge image)
            where ``grpc_options`` name none.
    """

    def __init__(self, server: str, *, bundle=None, weights: Optional[str] = None, model: Optional[str] = None,
                 rest: bool = False, api_key: Optional[str] = None, timeout_s: float = 10.0, retries: int = 3,
                 backoff_s: float = 0.1, tls: bool = False, root_cert: Optional[Union[str, Path]] = None,
                 encoder: Optional[Encoder] = None, device: str = "cpu", top_k: int = 5,
                 check_bundle: bool = True, max_message_bytes: int = 4 << 20,
                 grpc_options: Sequence[Tuple[str, Any]] = (), runtime: str = "onnx", threads: Optional[int] = None):
        fetch = encoder is None and bundle is None and weights is None and runtime == "onnx"
        if encoder is None and not fetch:  # with fetch: made from the server's package on first use (``encoder``)
            if runtime == "onnx":
                encoder = OnnxEdgeEncoder(bundle, threads=threads, weights=weights)
            elif runtime == "torch":
                from shared.encoder import EdgeEncoder

                encoder = EdgeEncoder(bundle, weights=weights, device=device)
            else:
                raise ValueError(f"runtime must be 'onnx' or 'torch', not {runtime!r}")
        self._encoder, self._threads = encoder, threads
        self.timeout_s, self.retries, self.backoff_s, self.top_k = timeout_s, retries, backoff_s, top_k
        self.rest = rest
        self._model = model
        self._check_bundle = check_bundle
        self._checked = not check_bundle
        if rest:
            url = server if "://" in server else f"{'https' if tls else 'http'}://{server}"
            if root_cert:
                import ssl

                verify: Union[bool, "ssl.SSLContext"] = ssl.create_default_context(cafile=str(root_cert))
            else:
                verify = True
            self.transport: Transport = RestTransport(url, api_key, verify)
        else:
            cert = Path(root_cert).read_bytes() if root_cert else None
            self.transport = GrpcTransport(server, api_key, tls, cert, max_message_bytes, grpc_options,
                                           stream_retries=retries, backoff_s=backoff_s)

    # -- the edge package ----------------------------------------------------------------------------
    @property
    def encoder(self) -> Encoder:
        """The edge encoder; with no bundle given, made on first use from the package the server offers."""
        if self._encoder is None:
            self._encoder = self._fetched_encoder()
        return self._encoder

    @property
    def bundle(self):
        return self.encoder.bundle

    def _fetched_encoder(self) -> OnnxEdgeEncoder:
        from shared.bundle import default_bundle_path, load_bundle

        from .fetch import package_for

        deadline = time.monotonic() + max(self.timeout_s, FETCH_TIMEOUT_S)  # a server's first export takes a while
        models = self._with_retries(lambda t: self.transport.models(t), deadline)
        if self._model is not None:
            found = [m for m in models if m["name"] == self._model]
        else:
            embedded = load_bundle(default_bundle_path()).bundle_id
            found = [m for m in models if m["bundle_id"] == embedded] or list(models)
        if not found:
            names = ", ".join(m["name"] for m in models) or "nothing"
            raise BundleMismatchError(f"the server has no model {self._model!r}; it serves: {names}")
        try:
            pkg = package_for(found[0], lambda name: self._with_retries(
                lambda t: self.transport.edge_package(name, t), deadline))
        except ServiceError as e:
            if e.code != "UNIMPLEMENTED" and e.kind != "method_not_allowed":
                raise
            return OnnxEdgeEncoder(None, threads=self._threads)  # a server from before edge packages
        self._model = self._model or found[0]["name"]
        return OnnxEdgeEncoder(pkg, threads=self._threads)

    # -- bundle agreement ----------------------------------------------------------------------------
    @property
    def model(self) -> str:
        self.connect()
        return self._model

    def connect(self) -> "EdgeClient":
        """Ask the server for its models; check that one serves this edge's bundle (retries as a request)."""
        if self._checked:
            if self._model is None:
                self._model = self.bundle.served_name
            return self
        deadline = time.monotonic() + self.timeout_s
        models = self._with_retries(lambda t: self.transport.models(t), deadline)
        mine = self.bundle.bundle_id
        desc = ", ".join(f"{m['name']} (bundle {m['bundle_id']}, {m['backbone']}/{m['split']})" for m in models)
        if self._model is not None:
            found = [m for m in models if m["name"] == self._model]
            if not found:
                raise BundleMismatchError(f"the server has no model {self._model!r}; it serves: {desc or 'nothing'}")
            if found[0]["bundle_id"] != mine:
                raise BundleMismatchError(
                    f"the server's model {self._model!r} decodes bundle {found[0]['bundle_id']} "
                    f"({found[0]['backbone']}/{found[0]['split']}), but this edge encodes with bundle {mine} "
                    f"({self.bundle.model}/{self.bundle.split}, {self.bundle.root}): edge and cloud must hold the "
                    "same bundle")
        else:
            found = [m for m in models if m["bundle_id"] == mine]
            if not found:
                raise BundleMismatchError(
                    f"the server serves no model with this edge's bundle {mine} ({self.bundle.model}/"
                    f"{self.bundle.split}, {self.bundle.root}); it serves: {desc or 'nothing'}. Edge and cloud "
                    "must hold the same bundle")
            self._model = found[0]["name"]
        self._checked = True
        return self

    # -- requests ------------------------------------------------------------------------------------
    def _with_retries(self, call, deadline: float):
        """``call(seconds_left)`` until it answers; retries what :attr:`ServiceError.retryable` says (the server's
        error kind, on either transport) with exponential backoff and jitter, within the deadline. A bitstream
        refused for another bundle (the server's bundle changed) raises :class:`BundleMismatchError`, and the
        next request checks the server's models again."""
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceError("DEADLINE_EXCEEDED", f"no answer within {self.timeout_s:g} s")
            try:
                return call(left)
            except ServiceError as e:
                if e.kind == "bundle_mismatch":
                    self._checked = not self._check_bundle  # look at the server's models again next time
                    if not isinstance(e, BundleMismatchError):
                        raise BundleMismatchError(e.message) from None
                    raise
                if not e.retryable or attempt >= self.retries:
                    raise
                pause = self.backoff_s * (2 ** attempt) * (0.5 + random.random())
                if e.retry_after_s:  # the server's hint (overloaded, shutting down), spread out
                    pause = max(pause, e.retry_after_s * (1.0 + 0.5 * random.random()))
                if time.monotonic() + pause >= deadline:
                    raise
                time.sleep(pause)
                attempt += 1

    def encode(self, image: ImageLike, bitrate: Optional[float] = None, rung: Optional[int] = None,
               hint: Optional[BitrateHint] = None, controller=None) -> Tuple[EncodedFrame, BitrateHint, float]:
        """At the operating point the bundle's rate scheme gives the hint (``shared.rate``): a ladder, the rung the
        hint selects (or ``rung``); a variable-rate bundle, each message within the hint (bpp, or a link rate's bits
        per frame), or as a stream ``controller`` holds it. The frame's ``hint`` says whether it met the hint."""
        hint = hint if hint is not None else BitrateHint(target_bpp=bitrate)
        point = self.bundle.scheme.point(hint, rung=rung, controller=controller)
        t0 = time.perf_counter()
        frame = self.encoder.encode(image, point=point)
        return frame, hint, 1e3 * (time.perf_counter() - t0)

    def stream_controller(self, hint: Optional[BitrateHint]):
        """For a sequence of frames under a link-rate hint with a variable-rate bundle: a rate controller that
        holds the sent rate to the link (``shared.rate.StreamRateController``); else None (per frame)."""
        return self.bundle.scheme.stream_controller(hint)

    def infer(self, image: ImageLike, bitrate: Optional[float] = None, rung: Optional[int] = None,
              hint: Optional[BitrateHint] = None, request_id: Optional[str] = None) -> InferResult:
        """Encode one image at the rung the hint selects (or ``rung``) and send it; raises ServiceError."""
        self.connect()
        frame, hint, encode_ms = self.encode(image, bitrate, rung, hint)
        return self.send(frame, hint, source=source_name(image), request_id=request_id, encode_ms=encode_ms,
                         expected_rung=frame.rung if rung is None else None)

    def send(self, frame: EncodedFrame, hint: BitrateHint = BitrateHint(), source: str = "",
             request_id: Optional[str] = None, encode_ms: float = 0.0,
             expected_rung: Optional[int] = None) -> InferResult:
        """Send an encoded frame (the rung is asserted when ``expected_rung`` is given)."""
        self.connect()
        rid = request_id or uuid.uuid4().hex
        req = self.transport.request(self._model, frame, hint, expected_rung, rid, self.top_k)
        deadline = time.monotonic() + self.timeout_s
        res = self._with_retries(lambda t: self.transport.infer(req, t), deadline)
        res.source, res.encode_ms = source, encode_ms
        bad = self.vet(res, frame.n_bytes).error  # an answer that does not fit the frame sent
        if bad is not None:
            raise bad
        res.level, res.hint_outcome = frame.level, frame.hint
        return res

    def infer_many(self, images: Iterable[ImageLike], bitrate: Optional[float] = None, rung: Optional[int] = None,
                   hint: Optional[BitrateHint] = None) -> Iterator[InferResult]:
        """One unary request per image; a refused or unreadable image yields a result with ``error`` set (an
        :class:`ImageError` when the edge could not encode it) and the rest go on."""
        self.connect()
        ctl = self.stream_controller(hint)
        for image in images:
            if ctl is not None and ctl.skip():
                yield InferResult.empty(source_name(image), skipped=True)
                continue
            try:
                frame, h, encode_ms = self.encode(image, bitrate, rung, hint, ctl)
            except IMAGE_ERRORS as e:
                yield InferResult.empty(source_name(image), error=ImageError.of(image, e))
                continue
            try:
                yield self.send(frame, h, source=source_name(image), encode_ms=encode_ms,
                                expected_rung=frame.rung if rung is None else None)
            except BundleMismatchError:
                raise
            except ServiceError as e:
                yield InferResult.empty(source_name(image), error=e)

    def stream(self, images: Iterable[ImageLike], bitrate: Optional[float] = None, rung: Optional[int] = None,
               hint: Optional[BitrateHint] = None, timeout_s: Optional[float] = None,
               track_link: bool = False) -> Iterator[InferResult]:
        """Frames over the transport's stream (:mod:`edge_client.stream`), answers in order: on gRPC one
        ``InferStream``, frames in flight while earlier ones are answered; on REST one request per frame, one at
        a time (each within ``timeout_s`` of the client). A refused frame yields a result with ``error`` set and
        the stream goes on; so does an image the edge cannot read (an :class:`ImageError`, in its place in the
        order; nothing is sent for it). ``timeout_s`` bounds the whole stream (default: none). A broken stream
        (on REST: a frame with no answer at all) raises :class:`ServiceError`; frames are not resent or retried
        (a camera sends new ones).

        ``track_link`` (a variable-rate bundle and a ``kbit/s`` hint, gRPC): frames leave at the hint's fps, and
        the rate follows what the link delivers (:class:`shared.rate.LinkRateTracker`, from the answers'
        times), the hint's ``kbit/s`` being the most it asks for; each result carries its ``target_kbps``. A stream
        this cannot run raises :class:`shared.rate.HintError` (a ValueError) before anything is sent."""
        from .stream import stream_frames

        if track_link and self.rest:  # the tracker reads the delays of frames in flight; REST has one at a time
            raise HintError("following the link (--track-link) needs the gRPC stream, not REST")
        yield from stream_frames(self, images, bitrate, rung, hint, timeout_s, track_link)

    def vet(self, res: InferResult, n_bytes: int) -> InferResult:
        """``res``, or, when it does not fit the frame it answers (``edge_client.answers``), a failed result."""
        problem = answer_problem(res, rungs=len(self.bundle.rungs), num_classes=getattr(self.encoder, "num_classes",
                                 1 << 30), top_k=self.top_k, n_bytes=n_bytes, task=get_task(self.bundle.task))
        if problem is None:
            return res
        return InferResult.empty(res.source, res.request_id, res.latency_ms, res.encode_ms, level=res.level,
                                 target_kbps=res.target_kbps, error=AnswerError(f"{res.source}: {problem}"))

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "EdgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

