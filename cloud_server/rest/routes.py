"""The REST routes: the Open Inference Protocol (KServe v2 / Triton HTTP), plus an image upload and edge packages.

Routes (the table in :func:`~.app.create_app`; :class:`Endpoints` answers them):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata), ``GET /metrics``: open;
- ``GET /v2/models``, ``GET /v2/models/{name}[/versions/{version}]``, ``.../ready``: model metadata, readiness
  (a model's one version is its bundle id);
- ``POST /v2/models/{name}[/versions/{version}]/infer``: an OIP inference request whose one BYTES input
  ``bitstream`` holds the bitstream: base64 in the JSON, or with the binary tensor extension
  (``Inference-Header-Content-Length``; the element framed as a 4-byte little-endian length + bytes).
  Requested ``outputs`` come back as JSON or binary (``binary_data``, ``binary_data_output``), with
  ``classification`` on ``topk_score``; the bitrate hint and the rest are request ``parameters``
  (``target_bpp``, or ``kbit_per_s`` + ``fps``, ``expected_rung``, ``top_k``). Tensor conversion:
  :mod:`cloud_server.oip`;
- ``POST /v2/models/{name}/infer-image``: a JPEG/PNG/WebP upload (multipart field ``image``, or the raw
  body), encoded by the edge half in-process; the hint and ``rung`` / ``top_k`` are query parameters.

Endpoints only translate; the data plane validates and answers. Every refusal is a JSON body
``{"error": message, "kind": kind}`` with the status of its :mod:`cloud_server.errors` class (:mod:`.app`).
"""

from __future__ import annotations

import zlib
from typing import Any, Dict, List, Optional, Tuple

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from shared.hint import BitrateHint
from shared.tasks import wire

from .. import oip
from ..dataplane import DataPlane
from ..errors import InvalidArgument, NotFound, PayloadTooLarge, SplitInferError, bounded
from ..types import InferenceResponse, ModelMetadata
from .guards import authenticate

__all__ = ["Endpoints", "decode_body", "parse_infer_body", "requested_outputs", "plain_response"]

BINARY_HEADER = "inference-header-content-length"


# ------------------------------------------------------------------------------------------ converters
def _binary_split(body: bytes, header_len: Optional[str]) -> Tuple[bytes, bytes]:
    """Split a body into its JSON and the binary tensor data after it (the binary tensor extension)."""
    if header_len is None:
        return body, b""
    try:
        n = int(header_len)
    except ValueError:
        raise InvalidArgument(f"{BINARY_HEADER} must be an integer, got {header_len!r}") from None
    if not 0 < n <= len(body):
        raise InvalidArgument(f"{BINARY_HEADER} {n} does not fit a body of {len(body)} bytes")
    return body[:n], body[n:]


def decode_body(body: bytes, encoding: Optional[str], limit: int) -> bytes:
    """A request body sent with ``Content-Encoding: gzip`` or ``deflate`` (tritonclient's request compression),
    inflated to at most ``limit`` bytes (413 beyond: the bytes on the wire were judged against the route's limit
    already, what they inflate to is judged here, without inflating more than that)."""
    enc = (encoding or "identity").strip().lower()
    if enc == "identity":
        return body
    if enc not in ("gzip", "x-gzip", "deflate"):
        raise InvalidArgument(f"unsupported Content-Encoding {bounded(enc, 40)!r} (gzip, deflate or none)")
    d = zlib.decompressobj(wbits=31 if "gzip" in enc else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise InvalidArgument(f"the request body is not valid {enc} data: {e}") from None
    if len(out) > limit or d.unconsumed_tail:
        raise PayloadTooLarge(f"the request body inflates to more than {limit} bytes, the limit of this route")
    if not d.eof or d.unused_data:
        raise InvalidArgument(f"the request body is not one complete {enc} stream")
    return out


def parse_infer_body(body: bytes, header_len: Optional[str]) -> Tuple[oip.InferRequestBody, List[oip.InputTensor]]:
    """An OIP REST inference request (JSON, or JSON + binary tensor data) -> the typed request and its inputs.

    Binary inputs take their ``binary_data_size`` bytes of the binary section in input order; a BYTES tensor
    there is framed element by element (4-byte little-endian length + bytes), as the spec and tritonclient's
    ``serialize_byte_tensor`` do. JSON BYTES data are base64 strings."""
    header, binary = _binary_split(body, header_len)
    doc = oip.parse_model(oip.InferRequestBody, oip.load_json(header), "inference request")
    inputs, pos = [], 0
    for i in doc.inputs:
        p = i.parameters
        if p is not None and p.shared_memory_region is not None:
            raise InvalidArgument(f"input {i.name!r}: shared memory is not supported; send the data in the request")
        size = p.binary_data_size if p is not None else None
        if size is not None:
            if i.data is not None:
                raise InvalidArgument(f"input {i.name!r} has both 'data' and 'binary_data_size'")
            if header_len is None:
                raise InvalidArgument(f"input {i.name!r} has 'binary_data_size' but the request has no "
                                      f"{BINARY_HEADER} header")
            if size > len(binary) - pos:
                raise InvalidArgument(f"input {i.name!r}: binary_data_size {size} exceeds the {len(binary) - pos} "
                                      "bytes of binary data left")
            raw = binary[pos:pos + size]
            pos += size
            elements = oip.unpack_bytes(raw, i.name, 1) if i.datatype == "BYTES" else None
        elif i.data is None:
            raise InvalidArgument(f"input {i.name!r} has no data: give 'data' (base64 strings) or "
                                  "'parameters.binary_data_size'")
        else:
            elements = oip.decode_base64_elements(i.data, i.name) if i.datatype == "BYTES" else None
        inputs.append(oip.InputTensor(i.name, i.datatype, tuple(i.shape), elements))
    if pos != len(binary):
        raise InvalidArgument(f"{len(binary) - pos} bytes of binary data that no input's binary_data_size covers")
    return doc, inputs


def requested_outputs(doc: oip.InferRequestBody) -> List[oip.RequestedOutput]:
    out = []
    for o in doc.outputs or ():
        p = o.parameters or oip.OutputParameters()
        if p.shared_memory_region is not None:
            raise InvalidArgument(f"output {o.name!r}: shared memory is not supported")
        out.append(oip.RequestedOutput(o.name, p.binary_data, p.classification or 0))
    return out


def plain_response(r: InferenceResponse) -> Dict[str, Any]:
    """The infer-image answer as JSON: the response's fields, and the task's own outputs as tensors (datatype,
    shape, data; BYTES in base64)."""
    out = r.model_dump(exclude={"outputs"})
    out["outputs"] = wire.to_json(r.outputs)
    return out


# ------------------------------------------------------------------------------------------ endpoints
class Endpoints:
    def __init__(self, dataplane: DataPlane):
        self.dp = dataplane

    def _auth(self, request: Request) -> None:
        authenticate(self.dp, request.scope)

    async def live(self) -> Dict[str, bool]:
        return {"live": self.dp.live()}

    async def ready(self):
        ok = self.dp.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self) -> Dict[str, Any]:
        return oip.server_metadata(self.dp.server_metadata())

    async def metrics(self) -> Response:
        body, ctype = self.dp.metrics.render()
        return Response(body, media_type=ctype)

    async def models(self, request: Request) -> Dict[str, Any]:
        self._auth(request)
        return {"models": [m.model_dump() for m in self.dp.metadata()]}

    async def edge_package(self, name: str, request: Request) -> Response:
        from ..edge_packages import rest_response  # the served models' edge packages (issue 25): its own module

        self._auth(request)
        return await rest_response(self.dp, name)

    # Each OIP route exists with and without /versions/{version}: the endpoints FastAPI sees take exactly their
    # path parameters (an optional ``version`` argument would become a query parameter)
    async def model_metadata(self, name: str, request: Request) -> Dict[str, Any]:
        return self._model_metadata(name, None, request)

    async def version_metadata(self, name: str, version: str, request: Request) -> Dict[str, Any]:
        return self._model_metadata(name, version, request)

    async def model_ready(self, name: str, request: Request) -> JSONResponse:
        return self._model_ready(name, None, request)

    async def version_ready(self, name: str, version: str, request: Request) -> JSONResponse:
        return self._model_ready(name, version, request)

    async def infer(self, name: str, request: Request) -> Response:
        return await self._infer(name, None, request)

    async def version_infer(self, name: str, version: str, request: Request) -> Response:
        return await self._infer(name, version, request)

    def _model_metadata(self, name: str, version: Optional[str], request: Request) -> Dict[str, Any]:
        self._auth(request)
        m = self.dp.model_metadata(name)
        oip.check_version(m, version)
        return oip.model_metadata(m).model_dump()

    def _model_ready(self, name: str, version: Optional[str], request: Request) -> JSONResponse:
        self._auth(request)
        oip.check_version(self.dp.model_metadata(name), version)
        ok = self.dp.model_ready(name)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    def _lookup(self, name: str) -> Optional[ModelMetadata]:
        try:
            return self.dp.model_metadata(name)
        except NotFound:
            return None

    async def _infer(self, name: str, version: Optional[str], request: Request) -> Response:
        self._auth(request)
        body = await request.body()
        # parsing a large body is CPU work too: off the event loop, in the same thread as the inference
        content, header_len = await run_in_threadpool(self._infer_body, name, version, body,
                                                      request.headers.get(BINARY_HEADER),
                                                      request.headers.get("content-encoding"))
        if header_len is None:
            return Response(content, media_type="application/json")
        return Response(content, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(header_len)})

    def _infer_body(self, name: str, version: Optional[str], body: bytes, header_len: Optional[str],
                    encoding: Optional[str] = None) -> Tuple[bytes, Optional[int]]:
        meta = self._lookup(name)  # None: unknown, which the data plane reports (and counts)
        try:
            body = decode_body(body, encoding, self.dp.settings.max_infer_bytes)
            oip.check_version(meta, version)
            doc, inputs = parse_infer_body(body, header_len)
            call = oip.make_call(name, meta, doc.id, doc.parameters or oip.RequestParameters(), inputs,
                                 requested_outputs(doc), self.dp.settings.default_top_k)
        except SplitInferError as e:  # counted and logged as the data plane's own refusals are
            self.dp.refused("rest", name, e)
            raise
        resp = self.dp.infer(call.request, "rest", call.timeout_s)
        return oip.render_rest(resp, oip.answer_tensors(resp, call))

    async def infer_image(self, name: str, request: Request, target_bpp: Optional[float] = None,
                          kbit_per_s: Optional[float] = None, fps: Optional[float] = None,
                          rung: Optional[int] = None, top_k: Optional[int] = None,
                          id: Optional[str] = None) -> Dict[str, Any]:
        self._auth(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            form = await request.form(max_files=1, max_fields=8)
            try:
                upload = form.get("image")
                if upload is None or isinstance(upload, str):
                    raise InvalidArgument("missing file field 'image' in the multipart form")
                data = await upload.read()
            finally:
                await form.close()
        else:
            data = await request.body()
        try:
            hint = BitrateHint(target_bpp, kbit_per_s, fps)
        except ValueError as e:
            raise InvalidArgument(f"invalid bitrate hint: {e}") from None
        if top_k is not None and not 1 <= top_k <= 100:
            raise InvalidArgument("top_k must be between 1 and 100")
        if id is not None and len(id) > 128:
            raise InvalidArgument("id: at most 128 characters")
        resp = await run_in_threadpool(self.dp.infer_image, name, data, hint, rung, top_k, id, "rest-image")
        return plain_response(resp)
