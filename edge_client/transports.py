"""How the edge reaches the cloud: one :class:`Transport` protocol, over gRPC (:class:`GrpcTransport`) or REST
(:class:`RestTransport`, KServe v2 with the binary tensor extension).

The client and the stream (:mod:`edge_client.stream`) speak only this protocol; this is the one module of the edge
that touches gRPC stubs, call metadata or httpx (``tests/test_structure.py``). Each transport turns what its wire
says into :class:`~edge_client.results.InferResult`, :class:`~edge_client.results.StreamAnswer` and
:class:`~edge_client.results.ServiceError` (the server's error kind: on gRPC the ``splitinfer-error-kind`` trailing
metadata, on REST the JSON ``kind``).

A stream is one ``InferStream`` call on gRPC (frames in flight while earlier ones are answered). REST has no
bidirectional stream: :meth:`RestTransport.stream` sends each frame as its own request, in order, one at a time,
and yields its answer (a frame the server refused: its error; no answer at all, as when the server cannot be
reached: the stream breaks, as a broken gRPC stream does). Neither retries a frame: a camera sends new ones.
"""

from __future__ import annotations

import base64
import json
import os
import struct
import time
from typing import Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Protocol, Sequence, Tuple, runtime_checkable

from shared.frame import EncodedFrame
from shared.rate import BitrateHint
from shared.tasks import TOPK_INDEX, TOPK_NAME, TOPK_SCORE, OutputTensor, wire

from .failover import ResumableStream, StreamBroken
from .results import AnswerError, BundleMismatchError, InferResult, ServiceError, StreamAnswer

__all__ = ["Transport", "GrpcTransport", "RestTransport", "grpc_channel_options", "LB_POLICY_ENV"]

_KIND_KEY, _RETRY_AFTER_KEY = "splitinfer-error-kind", "splitinfer-retry-after-ms"  # gRPC trailing metadata
LB_POLICY_ENV = "SPLITINFER_GRPC_LB_POLICY"
_FROM_ENV = object()


@runtime_checkable
class Transport(Protocol):
    """What the client and the stream need of a connection to the server. A request is whatever
    :meth:`request` made (a transport's own message); every failure is a :class:`ServiceError`."""

    def request(self, model: str, frame: EncodedFrame, hint: BitrateHint, expected_rung: Optional[int],
                request_id: str, top_k: int) -> Any:
        """The message that asks ``model`` to decode ``frame`` (the rung asserted when ``expected_rung`` is given)."""

    def infer(self, request: Any, timeout: float) -> InferResult:
        """One request, one answer (``source`` and ``encode_ms`` left for the caller; ``latency_ms`` measured)."""

    def stream(self, requests: Iterable[Any], timeout: Optional[float], frame_timeout: float) -> Iterator[StreamAnswer]:
        """The answers to ``requests``, as they come; ``timeout`` bounds the whole stream (None: no bound),
        ``frame_timeout`` each frame where frames go one by one. Closing the iterator ends (cancels) the call."""

    def models(self, timeout: float) -> List[Dict[str, Any]]:
        """The server's models: name, bundle_id, backbone, split, head_weights, variable_rate (or None)."""

    def edge_package(self, model: str, timeout: float) -> Any:
        """The server's edge package of ``model`` (an ``edge_client.fetch.Archive``), its size bounded."""

    def close(self) -> None:
        ...


# ------------------------------------------------------------------------------------------ gRPC
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


class GrpcTransport:
    def __init__(self, target: str, api_key: Optional[str], tls: bool, root_cert: Optional[bytes],
                 max_message: int, extra_options: Sequence[Tuple[str, Any]] = (), lb_policy: Any = _FROM_ENV,
                 stream_retries: int = 3, backoff_s: float = 0.1):
        """``lb_policy``: the gRPC load-balancing policy; its default (only) is ``$SPLITINFER_GRPC_LB_POLICY``,
        read here once; None: gRPC's own. The options passed are then the one source of the channel's settings.
        ``stream_retries`` / ``backoff_s``: new calls in a row for a stream the path resets (``stream``)."""
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
        self.stream_retries, self.backoff_s = stream_retries, backoff_s

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

    def infer(self, request, timeout: float) -> InferResult:
        t0 = time.perf_counter()
        try:
            resp = self.stub.Infer(request, timeout=timeout, metadata=self.metadata)
        except self.grpc.RpcError as e:
            raise self.error(e) from None
        return _result_from_pb(resp, 1e3 * (time.perf_counter() - t0))

    def stream(self, requests: Iterable[Any], timeout: Optional[float], frame_timeout: float) -> Iterator[StreamAnswer]:
        """One ``InferStream`` call (``frame_timeout`` unused: the call has one deadline, ``timeout``), reopened
        when the path resets it (a replica behind a balancer gone): the frames it sent and left unanswered are sent
        again on the new call, each answered once (``edge_client.failover``), up to ``stream_retries`` new calls in
        a row; then :class:`ServiceError`."""
        end = None if timeout is None else time.monotonic() + timeout  # the whole stream, new calls included

        def open_call(reqs):
            left = None if end is None else max(0.0, end - time.monotonic())
            return self.stub.InferStream(reqs, timeout=left, metadata=self.metadata)

        call = ResumableStream(open_call, iter(requests), request_key=lambda r: r.request_id,
                               answer_key=lambda a: a.request_id, tries=self.stream_retries, backoff_s=self.backoff_s,
                               resumable=lambda e: isinstance(e, self.grpc.RpcError) and self.error(e).retryable)
        try:
            for resp in call:
                outcome = resp.WhichOneof("outcome")
                if outcome == "result":
                    yield StreamAnswer(resp.request_id, result=_result_from_pb(resp.result, 0.0))
                elif outcome == "error":
                    e = resp.error
                    yield StreamAnswer(resp.request_id, error=BundleMismatchError(e.message)
                                       if e.kind == "bundle_mismatch" else ServiceError(_code_name(e.code), e.message,
                                                                                        e.kind))
                else:
                    yield StreamAnswer(resp.request_id)
        except self.grpc.RpcError as e:
            raise self.error(e) from None
        except StreamBroken as e:
            err = self.error(e.cause)
            raise ServiceError(err.code, str(e), err.kind) from None
        finally:  # the caller stopped reading (closed the iterator, or raised): end the call, not only our side
            call.cancel()

    def close(self) -> None:
        self.channel.close()


def _variable_rate(m) -> Dict[str, Any]:
    """A ModelInfo's variable-rate section as the REST API gives it: levels and the measured curve."""
    v = m.variable_rate
    return {"levels": [v.level_min, v.level_max],
            "curve": [{"level": p.level, "bpp": p.bpp, "n_images": p.n_images, **dict(p.metrics),
                       **({"agreement": p.agreement} if p.HasField("agreement") else {})} for p in v.curve]}


def _result_from_pb(r, latency_ms: float) -> InferResult:
    return InferResult(
        source="", request_id=r.request_id, rung=r.rung, n_bytes=r.bytes_received, bpp=r.bpp,
        topk=[(c.index, c.name, c.score) for c in r.topk], latency_ms=latency_ms,
        hinted_rung=r.hinted_rung if r.HasField("hinted_rung") else None,
        server_timings_ms=dict(r.timings_ms), batch_size=r.batch_size, outputs=_own_outputs(wire.from_pb, r.outputs))


def _code_name(code: int) -> str:
    import grpc

    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)


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


# ------------------------------------------------------------------------------------------ REST
class _RestRequest(NamedTuple):
    model: str
    header: bytes  # the JSON inference header
    data: bytes  # the binary tensor after it
    request_id: str


class RestTransport:
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

    def _exchange(self, method: str, url: str, timeout: float, **kw):
        """The server's answer, whatever its status; no answer at all is a :class:`ServiceError`."""
        try:
            return self.client.request(method, url, timeout=timeout, **kw)
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
                request_id: str, top_k: int) -> _RestRequest:
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
        return _RestRequest(model, header, data, request_id)

    def models(self, timeout: float) -> List[Dict[str, Any]]:
        return self._check(self._exchange("GET", "/v2/models", timeout))["models"]

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

    def _post(self, req: _RestRequest, timeout: float):
        return self._exchange("POST", f"/v2/models/{req.model}/infer", timeout, content=req.header + req.data,
                              headers={"content-type": "application/octet-stream",
                                       "inference-header-content-length": str(len(req.header))})

    def infer(self, request: _RestRequest, timeout: float) -> InferResult:
        t0 = time.perf_counter()
        body = self._check(self._post(request, timeout))
        return _result_from_json(body, 1e3 * (time.perf_counter() - t0))

    def stream(self, requests: Iterable[_RestRequest], timeout: Optional[float],
               frame_timeout: float) -> Iterator[StreamAnswer]:
        """The unary fallback: each frame one request, in order. A refusal the server sent is that frame's answer;
        no answer (unreachable, out of time) ends the stream with a :class:`ServiceError`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for req in requests:
            left = frame_timeout if deadline is None else min(frame_timeout, deadline - time.monotonic())
            if left <= 0:
                raise ServiceError("DEADLINE_EXCEEDED", f"the stream ran past its {timeout:g} s")
            r = self._post(req, left)  # no answer: raises, the stream is broken
            try:
                body = self._check(r)
            except ServiceError as e:  # the server refused this frame: the stream goes on
                if e.kind == "bundle_mismatch":
                    e = BundleMismatchError(e.message)
                yield StreamAnswer(req.request_id, error=e)
                continue
            yield StreamAnswer(str(body.get("id", "")), result=_result_from_json(body, 0.0))

    def close(self) -> None:
        self.client.close()


def _result_from_json(body: Dict[str, Any], latency_ms: float) -> InferResult:
    p = body["parameters"]
    out = {o["name"]: o for o in body["outputs"]}
    topk = list(zip(*(out.pop(o.name)["data"] for o in (TOPK_INDEX, TOPK_NAME, TOPK_SCORE))))
    timings = {k[:-3]: v for k, v in p.items() if k.endswith("_ms")}
    return InferResult(source="", request_id=body["id"], rung=p["rung"], n_bytes=p["bytes_received"],
                       bpp=p["bpp"], topk=topk, latency_ms=latency_ms, hinted_rung=p.get("hinted_rung"),
                       server_timings_ms=timings, batch_size=p.get("batch_size", 1),
                       outputs=_own_outputs(lambda d: {name: _oip_tensor(o) for name, o in d.items()}, out))


def _oip_tensor(o: Dict[str, Any]) -> OutputTensor:
    """A task's own output in OIP's JSON: BYTES elements are text, or base64 with ``content_type: base64``."""
    data = o["data"]
    if o["datatype"] == "BYTES":
        b64 = (o.get("parameters") or {}).get("content_type") == "base64"
        data = [base64.b64decode(v, validate=True) if b64 else v.encode() for v in data]
    return OutputTensor(o["datatype"], tuple(o["shape"]), tuple(data))


def _own_outputs(read, source) -> Dict[str, OutputTensor]:
    """The task's own outputs of an answer, read by ``read``; a server that sends something else than tensors gets
    an :class:`AnswerError`, not a traceback (whether they are the task's is checked with the rest of the answer:
    ``edge_client.answers``)."""
    try:
        return read(source)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise AnswerError(f"an output of the answer is not a tensor: {type(e).__name__}: {e}") from None


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
