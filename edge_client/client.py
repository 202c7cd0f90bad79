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
``overloaded`` or ``unavailable`` (on gRPC the ``splitinfer-error-kind`` trailing metadata, on REST the JSON
``kind``), or a server that cannot be reached, is retried with exponential backoff.

The edge half runs on the torch-free runtime (:class:`OnnxEdgeEncoder`: ONNX Runtime + numpy); ``runtime="torch"``
uses the PyTorch encoder instead (for comparison; it needs the full install). Only ``shared``'s torch-free
modules, ``grpc`` / the generated stubs and ``httpx`` are imported: never torch, FastAPI, uvicorn, or the server.
"""

from __future__ import annotations

import base64
import json
import os
import random
import struct
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Deque, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from shared.rate import BitrateHint, HintError, HintOutcome

from .answers import answer_problem, lost_frames
from .failover import StreamBroken, reset_by_the_path, resumable_infer_stream
from .runtime import EncodedFrame, ImageLike, OnnxEdgeEncoder

__all__ = ["EdgeClient", "InferResult", "ServiceError", "BundleMismatchError", "ImageError", "AnswerError"]

# Retries follow the server's error kind, the same on both transports: "overloaded" (429 / RESOURCE_EXHAUSTED)
# and "unavailable" (503 / UNAVAILABLE: starting, shutting down). An answer without a kind did not come from the
# server's data plane (a proxy, a refused connection): retried on these transport codes only.
_RETRY_KINDS = ("overloaded", "unavailable")
_RETRY_WITHOUT_KIND = ("UNAVAILABLE", 429, 502, 503, 504)
_KIND_KEY, _RETRY_AFTER_KEY = "splitinfer-error-kind", "splitinfer-retry-after-ms"  # gRPC trailing metadata
FETCH_TIMEOUT_S = 300.0  # fetching the edge package: the server may export it first (tens of seconds on a small CPU)


class ServiceError(Exception):
    """The server refused a request or could not be reached. ``code``: gRPC status name or HTTP status;
    ``kind``: the server's error kind (``overloaded``, ``invalid_argument``, ...; empty when the answer did not
    come from the server); ``retry_after_s``: the server's retry hint, when it gave one."""

    def __init__(self, code: Union[str, int], message: str, kind: str = "", retry_after_s: Optional[float] = None):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.kind, self.retry_after_s = code, message, kind, retry_after_s

    @property
    def retryable(self) -> bool:
        if self.kind:
            return self.kind in _RETRY_KINDS
        return self.code in _RETRY_WITHOUT_KIND or reset_by_the_path(self)  # a proxy's reset: replica gone


class BundleMismatchError(ServiceError):
    """The server serves no model with this edge's bundle: the two would not decode each other's bytes."""

    def __init__(self, message: str):
        super().__init__("FAILED_PRECONDITION", message, "bundle_mismatch")


class ImageError(ServiceError):
    """An image this edge could not read or encode (missing, unreadable, not an image): nothing was sent."""

    def __init__(self, message: str):
        super().__init__("BAD_IMAGE", message, "bad_image")


class AnswerError(ServiceError):
    """An answer the edge does not accept (``edge_client.answers``: a rung, class or score out of range, other bytes
    than were sent), or a stream that broke its order (an answer with no frame waiting, an unknown request id, frames
    left unanswered when it ended). ``lost``: the frames left without an answer, by name."""

    def __init__(self, message: str, lost: Sequence[str] = ()):
        self.lost = list(lost)
        super().__init__("BAD_ANSWER", message + (f"; {lost_frames(self.lost)}" if self.lost else ""), "bad_answer")


def _encode_error(image, e: Exception) -> ImageError:
    return ImageError(f"{_name(image)}: cannot encode: {type(e).__name__}: {e}")


# what reading or encoding one bad image raises (PIL's UnidentifiedImageError and DecompressionBombError are
# OSError / ValueError subclasses); anything else is a bug and propagates
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError)


@dataclass
class InferResult:
    source: str
    request_id: str
    rung: int
    n_bytes: int
    bpp: float
    topk: List[Tuple[int, str, float]]
    latency_ms: float  # client side: request sent -> answer received (network + server)
    encode_ms: float = 0.0  # edge side: preprocessing, head, bottleneck encoder, entropy coding
    hinted_rung: Optional[int] = None
    server_timings_ms: Dict[str, float] = field(default_factory=dict)
    batch_size: int = 1
    error: Optional[ServiceError] = None  # stream mode: a refused frame (the stream goes on)
    mask_png: Optional[bytes] = None  # segmentation: the class mask (8-bit PNG of class indexes)
    class_pixels: Optional[List[int]] = None  # segmentation: pixels of each class in the mask
    level: Optional[int] = None  # variable-rate bundles: the quality level the edge encoded at
    target_kbps: Optional[float] = None  # a stream following its link (track_link): the rate it aimed at then
    skipped: bool = False  # stream control dropped this frame: the link carries less than the coarsest level
    hint_outcome: HintOutcome = HintOutcome(None)  # whether the message met its bitrate hint, and why not

    @property
    def ok(self) -> bool:
        """Answered (neither refused nor skipped)."""
        return self.error is None and not self.skipped

    @property
    def label(self) -> Optional[Tuple[int, str, float]]:
        return self.topk[0] if self.topk else None


def _variable_rate(m) -> Dict[str, Any]:
    """A ModelInfo's variable-rate section as the REST API gives it: levels and the measured curve."""
    v = m.variable_rate
    return {"levels": [v.level_min, v.level_max],
            "curve": [{"level": p.level, "bpp": p.bpp, "n_images": p.n_images, **dict(p.metrics),
                       **({"agreement": p.agreement} if p.HasField("agreement") else {})} for p in v.curve]}


def _result_from_pb(r, source: str, latency_ms: float, encode_ms: float) -> InferResult:
    return InferResult(
        source=source, request_id=r.request_id, rung=r.rung, n_bytes=r.bytes_received, bpp=r.bpp,
        topk=[(c.index, c.name, c.score) for c in r.topk], latency_ms=latency_ms, encode_ms=encode_ms,
        hinted_rung=r.hinted_rung if r.HasField("hinted_rung") else None,
        server_timings_ms=dict(r.timings_ms), batch_size=r.batch_size, mask_png=r.mask_png or None,
        class_pixels=list(r.class_pixels) or None)


# ------------------------------------------------------------------------------------------ transports
LB_POLICY_ENV = "SPLITINFER_GRPC_LB_POLICY"
_FROM_ENV = object()


def grpc_channel_options(max_message: int, extra_options: Sequence[Tuple[str, Any]] = (),
                         lb_policy: Optional[str] = None) -> List[Tuple[str, Any]]:
    """The channel arguments, from the arguments alone: message limits, then ``extra_options``; ``lb_policy``
    (e.g. round_robin over every address of dns:///cloud:50051, replicas behind one name) only where
    ``extra_options`` names no ``grpc.lb_policy_name`` itself (an explicit option wins)."""
    options = [("grpc.max_send_message_length", max_message), ("grpc.max_receive_message_length", max_message)]
    extra = list(extra_options)
    if lb_policy and not any(k == "grpc.lb_policy_name" for k, _ in extra):
        options.append(("grpc.lb_policy_name", lb_policy))
    return options + extra


class _GrpcTransport:
    def __init__(self, target: str, api_key: Optional[str], tls: bool, root_cert: Optional[bytes],
                 max_message: int, extra_options: Sequence[Tuple[str, Any]] = (), lb_policy: Any = _FROM_ENV):
        """``lb_policy``: the gRPC load-balancing policy; its default (only) is ``$SPLITINFER_GRPC_LB_POLICY``,
        read here once; None: gRPC's own. The options passed are then the one source of the channel's settings."""
        import grpc

        from shared._proto import splitinfer_pb2 as pb, splitinfer_pb2_grpc as pb_grpc

        self.grpc, self.pb = grpc, pb
        if lb_policy is _FROM_ENV:
            lb_policy = os.environ.get(LB_POLICY_ENV) or None
        options = grpc_channel_options(max_message, extra_options, lb_policy)
        if tls:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_cert), options)
        else:
            self.channel = grpc.insecure_channel(target, options)
        self.stub = pb_grpc.SplitInferenceStub(self.channel)
        self.metadata = [("authorization", f"Bearer {api_key}")] if api_key else []
        self.target = target

    def error(self, e) -> ServiceError:
        code = e.code()
        name = code.name if code is not None else "UNKNOWN"
        try:
            md = dict(e.trailing_metadata() or ())
        except Exception:  # noqa: BLE001 - not every RpcError carries metadata
            md = {}
        kind = md.get(_KIND_KEY, "")
        # the server's retry hint in whole milliseconds; anything else is not a hint (retry on the client's own backoff)
        ms = str(md.get(_RETRY_AFTER_KEY, ""))
        retry_after = int(ms) / 1e3 if ms.isdigit() else None
        if kind == "bundle_mismatch":
            return BundleMismatchError(e.details() or str(e))
        details = e.details() or str(e)
        return ServiceError(name, details + _grpc_cause(details, self.target) if not kind else details, kind,
                            retry_after)

    def request(self, model: str, frame: EncodedFrame, hint: BitrateHint, expected_rung: Optional[int],
                request_id: str, top_k: int):
        pb = self.pb
        req = pb.InferRequest(model=model, bitstream=frame.data, request_id=request_id, top_k=top_k)
        if hint.target_bpp is not None:
            req.target_bpp = hint.target_bpp
        elif hint.kbit_per_s is not None:
            req.link.kbit_per_s, req.link.fps = hint.kbit_per_s, hint.fps
        if expected_rung is not None:
            req.expected_rung = expected_rung
        return req

    def models(self, timeout: float) -> List[Dict[str, Any]]:
        try:
            resp = self.stub.ModelMetadata(self.pb.ModelMetadataRequest(), timeout=timeout, metadata=self.metadata)
        except self.grpc.RpcError as e:
            raise self.error(e) from None
        return [{"name": m.name, "bundle_id": m.bundle_id, "backbone": m.backbone, "split": m.split,
                 "head_weights": m.head_weights,
                 "variable_rate": _variable_rate(m) if m.HasField("variable_rate") else None} for m in resp.models]

    def edge_package(self, model: str, timeout: float):
        """The server's edge package of ``model`` (``edge_client.fetch.Archive``), its chunks bounded."""
        from .fetch import MAX_ARCHIVE_BYTES, Archive

        parts, n, first = [], 0, None
        try:
            for chunk in self.stub.EdgePackage(self.pb.EdgePackageRequest(model=model), timeout=timeout,
                                               metadata=self.metadata):
                first = first or chunk
                n += len(chunk.data)
                if n > min(MAX_ARCHIVE_BYTES, first.total_bytes):
                    raise ServiceError("BAD_ANSWER", f"the edge package of {model!r} runs past the "
                                       f"{min(MAX_ARCHIVE_BYTES, first.total_bytes):,} bytes announced", "bad_answer")
                parts.append(chunk.data)
        except self.grpc.RpcError as e:
            raise self.error(e) from None
        if first is None or n != first.total_bytes:
            raise ServiceError("BAD_ANSWER", f"the edge package of {model!r} ended after {n:,} of "
                               f"{first.total_bytes if first else 0:,} bytes", "bad_answer")
        return Archive(b"".join(parts), first.package_id, "", "", first.sha256)

    def infer(self, req, timeout: float, source: str, encode_ms: float) -> InferResult:
        t0 = time.perf_counter()
        try:
            resp = self.stub.Infer(req, timeout=timeout, metadata=self.metadata)
        except self.grpc.RpcError as e:
            raise self.error(e) from None
        return _result_from_pb(resp, source, 1e3 * (time.perf_counter() - t0), encode_ms)

    def close(self) -> None:
        self.channel.close()


class _RestTransport:
    def __init__(self, base_url: str, api_key: Optional[str], verify):
        import socket

        import httpx

        self.httpx = httpx
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        # h11 writes headers and body separately: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
        transport = httpx.HTTPTransport(verify=verify, socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)])
        self.client = httpx.Client(base_url=base_url, headers=headers, transport=transport)

    def _check(self, r) -> Dict[str, Any]:
        try:
            body = r.json()
        except ValueError:
            body = {"error": r.text[:200]}
        if r.status_code != 200:
            raise ServiceError(r.status_code, body.get("error", str(body)), body.get("kind", ""),
                               _retry_after(r.headers))
        return body

    def _send(self, method: str, url: str, timeout: float, **kw) -> Dict[str, Any]:
        try:
            return self._check(self.client.request(method, url, timeout=timeout, **kw))
        except self.httpx.TimeoutException as e:
            raise ServiceError("DEADLINE_EXCEEDED", f"no answer in time: {e}") from None
        except self.httpx.RemoteProtocolError as e:  # an answer, but not HTTP/1.1: e.g. the gRPC port (HTTP/2 only)
            raise ServiceError(503, f"the server's answer is not HTTP/1.1 ({e}): is {self.client.base_url} the gRPC "
                                    "port? Drop --rest (REST: the server's HTTP port, 8000 by default)",
                               "unavailable") from None
        except self.httpx.TransportError as e:  # connection refused, reset, ...
            raise ServiceError(503, f"cannot reach the server: {e}" + _refused(str(e), str(self.client.base_url)),
                               "unavailable") from None

    def request(self, model: str, frame: EncodedFrame, hint: BitrateHint, expected_rung: Optional[int],
                request_id: str, top_k: int):
        params = {"target_bpp": hint.target_bpp, "kbit_per_s": hint.kbit_per_s, "fps": hint.fps,
                  "expected_rung": expected_rung, "top_k": top_k}
        # the binary tensor extension: a BYTES element is a 4-byte little-endian length, then its bytes
        data = struct.pack("<I", len(frame.data)) + frame.data
        header = json.dumps({
            "id": request_id,
            "parameters": {k: v for k, v in params.items() if v is not None},
            "inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1],
                        "parameters": {"binary_data_size": len(data)}}],
        }).encode()
        return model, header, data

    def models(self, timeout: float) -> List[Dict[str, Any]]:
        return self._send("GET", "/v2/models", timeout)["models"]

    def edge_package(self, model: str, timeout: float):
        """The server's edge package of ``model`` (``edge_client.fetch.Archive``), read up to its size limit."""
        from urllib.parse import quote

        from .fetch import MAX_ARCHIVE_BYTES, Archive

        try:
            with self.client.stream("GET", f"/v2/models/{quote(model, safe='')}/edge-package", timeout=timeout) as r:
                if r.status_code != 200:
                    r.read()
                    self._check(r)
                parts, n = [], 0
                for part in r.iter_bytes():
                    n += len(part)
                    if n > MAX_ARCHIVE_BYTES:
                        raise ServiceError("BAD_ANSWER", f"the edge package of {model!r} is over "
                                           f"{MAX_ARCHIVE_BYTES:,} bytes", "bad_answer")
                    parts.append(part)
        except self.httpx.TimeoutException as e:
            raise ServiceError("DEADLINE_EXCEEDED", f"no answer in time: {e}") from None
        except self.httpx.TransportError as e:
            raise ServiceError(503, f"cannot reach the server: {e}", "unavailable") from None
        h = r.headers
        return Archive(b"".join(parts), h.get("x-splitinfer-package-id", ""), h.get("x-splitinfer-bundle-id", ""),
                       h.get("x-splitinfer-head-weights", ""), h.get("x-splitinfer-sha256"))

    def infer(self, req, timeout: float, source: str, encode_ms: float) -> InferResult:
        model, header, data = req
        t0 = time.perf_counter()
        body = self._send("POST", f"/v2/models/{model}/infer", timeout, content=header + data, headers={
            "content-type": "application/octet-stream", "inference-header-content-length": str(len(header))})
        latency = 1e3 * (time.perf_counter() - t0)
        p = body["parameters"]
        out = {o["name"]: o["data"] for o in body["outputs"]}
        topk = list(zip(out["topk_index"], out["topk_name"], out["topk_score"]))
        timings = {k[:-3]: v for k, v in p.items() if k.endswith("_ms")}
        mask = base64.b64decode(out["mask_png"][0]) if "mask_png" in out else None
        return InferResult(source=source, request_id=body["id"], rung=p["rung"], n_bytes=p["bytes_received"],
                           bpp=p["bpp"], topk=topk, latency_ms=latency, encode_ms=encode_ms,
                           hinted_rung=p.get("hinted_rung"), server_timings_ms=timings,
                           batch_size=p.get("batch_size", 1), mask_png=mask, class_pixels=out.get("class_pixels"))

    def close(self) -> None:
        self.client.close()


# ------------------------------------------------------------------------------------------ client
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
        encoder: an encoder to use instead of building one (:class:`OnnxEdgeEncoder` or the PyTorch ``EdgeEncoder``).
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
                 encoder: Optional[EdgeEncoder] = None, device: str = "cpu", top_k: int = 5,
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
            self.transport: Union[_GrpcTransport, _RestTransport] = _RestTransport(url, api_key, verify)
        else:
            cert = Path(root_cert).read_bytes() if root_cert else None
            self.transport = _GrpcTransport(server, api_key, tls, cert, max_message_bytes, grpc_options)

    # -- the edge package ----------------------------------------------------------------------------
    @property
    def encoder(self):
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
        return self.send(frame, hint, source=_name(image), request_id=request_id, encode_ms=encode_ms,
                         expected_rung=frame.rung if rung is None else None)

    def send(self, frame: EncodedFrame, hint: BitrateHint = BitrateHint(), source: str = "",
             request_id: Optional[str] = None, encode_ms: float = 0.0,
             expected_rung: Optional[int] = None) -> InferResult:
        """Send an encoded frame (the rung is asserted when ``expected_rung`` is given)."""
        self.connect()
        rid = request_id or uuid.uuid4().hex
        req = self.transport.request(self._model, frame, hint, expected_rung, rid, self.top_k)
        deadline = time.monotonic() + self.timeout_s
        res = self._with_retries(lambda t: self.transport.infer(req, t, source, encode_ms), deadline)
        bad = self._vetted(res, frame.n_bytes).error  # an answer that does not fit the frame sent
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
                yield InferResult(_name(image), "", -1, 0, 0.0, [], 0.0, skipped=True)
                continue
            try:
                frame, h, encode_ms = self.encode(image, bitrate, rung, hint, ctl)
            except _IMAGE_ERRORS as e:
                yield InferResult(_name(image), "", -1, 0, 0.0, [], 0.0, error=_encode_error(image, e))
                continue
            try:
                yield self.send(frame, h, source=_name(image), encode_ms=encode_ms,
                                expected_rung=frame.rung if rung is None else None)
            except BundleMismatchError:
                raise
            except ServiceError as e:
                yield InferResult(_name(image), "", -1, 0, 0.0, [], 0.0, error=e)

    def stream(self, images: Iterable[ImageLike], bitrate: Optional[float] = None, rung: Optional[int] = None,
               hint: Optional[BitrateHint] = None, timeout_s: Optional[float] = None,
               track_link: bool = False) -> Iterator[InferResult]:
        """Frames over one ``InferStream`` (gRPC), answers in order; a refused frame yields a result with
        ``error`` set and the stream goes on; so does an image the edge cannot read (an :class:`ImageError`, in its
        place in the order; nothing is sent for it). ``timeout_s`` bounds the whole stream (default: none).
        A stream broken on the way (a replica behind a balancer gone) is reopened, its frames sent but not
        answered sent again, up to ``retries`` times in a row (``edge_client.failover``); then :class:`ServiceError`.
        Over REST this falls back to one request per frame (with retries).

        ``track_link`` (a variable-rate bundle and a ``kbit/s`` hint, gRPC): frames leave at the hint's fps, and
        the rate follows what the link delivers (:class:`shared.rate.LinkRateTracker`, from the answers'
        times), the hint's ``kbit/s`` being the most it asks for; each result carries its ``target_kbps``. A stream
        this cannot run raises :class:`shared.rate.HintError` (a ValueError) before anything is sent."""
        if track_link and self.rest:
            raise HintError("following the link (--track-link) needs the gRPC stream, not REST")
        self.bundle.scheme.check_stream(hint, track_link)
        ctl = self.stream_controller(hint)
        if self.rest:
            yield from self.infer_many(images, bitrate, rung, hint)
            return
        self.connect()
        t = self.transport
        # per frame in send order: (source, encode ms, send time, None) for a frame sent, or (source, 0, 0, result)
        # for one not sent (unreadable, or skipped by stream control); the encoding thread appends, this one pops
        pending: Deque[Tuple[str, float, float, Optional[InferResult]]] = deque()
        ids: Deque[str] = deque()  # per frame sent: its request id, which its answer must carry
        # per frame sent: its quality level (variable-rate bundles), bytes, the rate aimed at and its hint's outcome
        levels: Deque[Tuple[Optional[int], int, Optional[float], HintOutcome]] = deque()
        tracker, lock = None, threading.Lock()  # the controller is used by the encoding and the answering threads
        if track_link:
            from shared.rate import LinkRateTracker

            tracker = LinkRateTracker(hint.kbit_per_s)

        def requests():
            start = time.perf_counter()
            for k, image in enumerate(images):
                if tracker is not None:  # a camera's pace (frame k leaves at k / fps), not as fast as files load
                    time.sleep(max(0.0, start + k / hint.fps - time.perf_counter()))
                try:
                    with lock:
                        target = ctl.kbit_per_s if tracker is not None else None
                        skip = ctl is not None and ctl.skip()
                        if not skip:
                            frame, h, encode_ms = self.encode(image, bitrate, rung, hint, ctl)
                except _IMAGE_ERRORS as e:
                    pending.append((_name(image), 0.0, 0.0, InferResult(_name(image), "", -1, 0, 0.0, [], 0.0,
                                                                        error=_encode_error(image, e))))
                    continue
                if skip:
                    pending.append((_name(image), 0.0, 0.0, InferResult(_name(image), "", -1, 0, 0.0, [], 0.0,
                                                                        skipped=True, target_kbps=target)))
                    continue
                rid = uuid.uuid4().hex
                ids.append(rid)
                levels.append((frame.level, frame.n_bytes, target, frame.hint))
                pending.append((_name(image), encode_ms, time.perf_counter(), None))
                yield t.request(self._model, frame, h, frame.rung if rung is None else None, rid, self.top_k)

        def not_sent() -> Iterator[InferResult]:  # unreadable or skipped frames, in their place
            while pending and pending[0][3] is not None:
                yield pending.popleft()[3]

        def unanswered() -> List[str]:
            return [p[0] for p in pending if p[3] is None]

        try:  # a stream the path resets (a replica gone) goes on in a new call, its unanswered frames resent
            call = resumable_infer_stream(t, requests(), timeout_s, self.retries, self.backoff_s)
            for resp in call:
                yield from not_sent()
                if not pending or not ids:
                    call.cancel()
                    raise AnswerError(f"the server sent an answer (request id {resp.request_id[:40]!r}) with no frame "
                                      "waiting for one (two answers for a frame, or one before the first frame)", unanswered())
                if resp.request_id != ids[0]:
                    call.cancel()
                    raise AnswerError(f"the server answered request id {resp.request_id[:40]!r}, not the next frame's "
                                      f"({pending[0][0]}, id {ids[0]!r}): answers must come in order, one per frame",
                                      unanswered())
                ids.popleft()
                source, encode_ms, sent, _ = pending.popleft()
                level, n_bytes, target, outcome = levels.popleft()
                now = time.perf_counter()
                latency = 1e3 * (now - sent)
                if tracker is not None:
                    with lock:
                        ctl.set_rate(tracker.acked(n_bytes, sent, now))
                if resp.WhichOneof("outcome") is None:
                    yield InferResult(source, resp.request_id, -1, 0, 0.0, [], latency, encode_ms, level=level,
                                      target_kbps=target, error=AnswerError(f"{source}: neither a result nor an error"))
                elif resp.WhichOneof("outcome") == "error":
                    if resp.error.kind == "bundle_mismatch":
                        err: ServiceError = BundleMismatchError(resp.error.message)
                    else:
                        err = ServiceError(_code_name(resp.error.code), resp.error.message, resp.error.kind)
                    yield InferResult(source, resp.request_id, -1, 0, 0.0, [], latency, encode_ms, error=err, level=level,
                                      target_kbps=target)
                else:
                    res = _result_from_pb(resp.result, source, latency, encode_ms)
                    res.level, res.target_kbps, res.hint_outcome = level, target, outcome
                    yield self._vetted(res, n_bytes)
        except t.grpc.RpcError as e:
            raise t.error(e) from None
        except StreamBroken as e:
            err = t.error(e.cause)
            raise ServiceError(err.code, f"{e}; {lost_frames(unanswered())}", err.kind) from None
        yield from not_sent()
        if unanswered():
            raise AnswerError("the server ended the stream without answering every frame", unanswered())

    def _vetted(self, res: InferResult, n_bytes: int) -> InferResult:
        """``res``, or, when it does not fit the frame it answers (``edge_client.answers``), a failed result."""
        problem = answer_problem(res, rungs=len(self.bundle.rungs), num_classes=getattr(self.encoder, "num_classes",
                                 1 << 30), top_k=self.top_k, n_bytes=n_bytes)
        if problem is None:
            return res
        return InferResult(res.source, res.request_id, -1, 0, 0.0, [], res.latency_ms, res.encode_ms, level=res.level,
                           target_kbps=res.target_kbps, error=AnswerError(f"{res.source}: {problem}"))

    # -- lifecycle -----------------------------------------------------------------------------------
    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> "EdgeClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _retry_after(headers) -> Optional[float]:
    """The server's retry hint in seconds: ``retry-after-ms`` when sent (finer, spread by the server), else
    ``Retry-After`` (whole seconds; the date form is ignored)."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        try:
            value = headers.get(name)
            if value:
                return max(0.0, float(value) * scale)
        except ValueError:
            continue
    return None


def _grpc_cause(details: str, target: str) -> str:
    """The likely cause of a gRPC transport failure, named (gRPC's own wording says it only in HTTP/2 terms)."""
    if "HTTP/2" in details or "HTTP status" in details or "http1" in details.lower():
        return (f" -- {target} answered HTTP/1, not gRPC: it is likely the server's REST port; use --rest with it, or "
                "the gRPC port (50051 by default)")
    return _refused(details, target)


def _refused(details: str, target: str) -> str:
    if "refused" in details.lower():
        return f" -- nothing listens at {target}: is the server running (splitinfer serve), and is this its port?"
    return ""


def _code_name(code: int) -> str:
    import grpc

    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)


def _name(image: ImageLike) -> str:
    return str(image) if isinstance(image, (str, Path)) else getattr(image, "filename", "") or "<image>"
