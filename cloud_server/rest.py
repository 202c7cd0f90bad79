"""The REST front end (FastAPI): the Open Inference Protocol (KServe v2) where it fits, plus an image upload.

Routes (the table in :func:`create_app`):

- ``GET /v2/health/live``, ``GET /v2/health/ready``, ``GET /v2`` (server metadata), ``GET /metrics``: open;
- ``GET /v2/models``, ``GET /v2/models/{name}``, ``GET /v2/models/{name}/ready``: model metadata;
- ``POST /v2/models/{name}/infer``: a KServe v2 inference request whose one BYTES input holds the bitstream,
  base64 in the JSON, or raw with the binary data extension (``Inference-Header-Content-Length``);
  the bitrate hint and the rest are request ``parameters`` (``target_bpp``, or ``kbit_per_s`` + ``fps``,
  ``expected_rung``, ``top_k``);
- ``POST /v2/models/{name}/infer-image``: a JPEG/PNG/WebP upload (multipart field ``image``, or the raw
  body), encoded by the edge half in-process; the hint and ``rung`` / ``top_k`` are query parameters.

Endpoints only translate; the data plane validates and answers. Every refusal is a JSON body
``{"error": message, "kind": kind}`` with the status of its :mod:`cloud_server.errors` class.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, Dict, List, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.hint import BitrateHint

from .dataplane import DataPlane
from .errors import InternalError, InvalidArgument, PayloadTooLarge, SplitInferError
from .settings import Settings
from .types import InferenceResponse, parse_request

__all__ = ["create_app", "to_request_fields", "to_kserve_response"]

log = logging.getLogger("splitinfer.server")
BINARY_HEADER = "inference-header-content-length"
_PARAMS = ("target_bpp", "kbit_per_s", "fps", "expected_rung", "top_k")


# ------------------------------------------------------------------------------------------ converters
def _split_binary(body: bytes, header_len: str) -> tuple[bytes, bytes]:
    try:
        n = int(header_len)
    except ValueError:
        raise InvalidArgument(f"{BINARY_HEADER} must be an integer, got {header_len!r}") from None
    if not 0 < n <= len(body):
        raise InvalidArgument(f"{BINARY_HEADER} {n} does not fit a body of {len(body)} bytes")
    return body[:n], body[n:]


def to_request_fields(name: str, body: bytes, binary_header: Optional[str] = None) -> Dict[str, Any]:
    """A KServe v2 inference request (JSON, or JSON + binary tensor data) -> data-plane request fields."""
    binary = b""
    if binary_header is not None:
        body, binary = _split_binary(body, binary_header)
    try:
        doc = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InvalidArgument(f"the request body is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("the request body must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidArgument("missing field 'inputs': one BYTES input holding the bitstream")
    if len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidArgument(f"expected exactly one input (the bitstream), got {len(inputs)}")
    inp = inputs[0]
    if inp.get("datatype", "BYTES") != "BYTES":
        raise InvalidArgument(f"input {inp.get('name')!r} must have datatype BYTES, not {inp.get('datatype')!r}")
    iparams = inp.get("parameters") or {}
    if not isinstance(iparams, dict):
        raise InvalidArgument("input 'parameters' must be an object")
    if "binary_data_size" in iparams:
        size = iparams["binary_data_size"]
        if not isinstance(size, int) or size != len(binary):
            raise InvalidArgument(f"binary_data_size {size!r} does not match the {len(binary)} bytes after the "
                                  f"JSON header")
        data = binary
    else:
        if binary:
            raise InvalidArgument("binary data sent, but the input has no 'binary_data_size' parameter")
        raw = inp.get("data")
        if isinstance(raw, list) and len(raw) == 1:
            raw = raw[0]
        if not isinstance(raw, str) or not raw:
            raise InvalidArgument("missing field 'inputs[0].data': the bitstream as one base64 string")
        try:
            data = base64.b64decode(raw, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidArgument(f"inputs[0].data is not valid base64: {e}") from None
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be an object")
    unknown = sorted(set(params) - set(_PARAMS))
    if unknown:
        raise InvalidArgument(f"unknown parameters {unknown}; known: {list(_PARAMS)}")
    fields = {"model": name, "bitstream": data, **{k: params[k] for k in _PARAMS if params.get(k) is not None}}
    if doc.get("id") is not None:
        fields["request_id"] = doc["id"]
    return fields


def to_kserve_response(r: InferenceResponse) -> Dict[str, Any]:
    k = len(r.topk)
    outputs: List[Dict[str, Any]] = [
        {"name": "topk_index", "datatype": "INT64", "shape": [1, k], "data": [c.index for c in r.topk]},
        {"name": "topk_score", "datatype": "FP32", "shape": [1, k], "data": [c.score for c in r.topk]},
        {"name": "topk_name", "datatype": "BYTES", "shape": [1, k], "data": [c.name for c in r.topk]},
    ]
    if r.mask_png:
        outputs.append({"name": "mask_png", "datatype": "BYTES", "shape": [1],
                        "parameters": {"content_type": "base64"}, "data": [base64.b64encode(r.mask_png).decode()]})
    if r.class_pixels is not None:
        outputs.append({"name": "class_pixels", "datatype": "INT64", "shape": [1, len(r.class_pixels)],
                        "data": list(r.class_pixels)})
    params = {"rung": r.rung, "bytes_received": r.bytes_received, "bpp": r.bpp, "bundle_id": r.bundle_id,
              "batch_size": r.batch_size, "input_height": r.input_hw[0], "input_width": r.input_hw[1],
              **{f"{stage}_ms": v for stage, v in r.timings_ms.items()}}
    if r.hinted_rung is not None:
        params["hinted_rung"] = r.hinted_rung
    return {"model_name": r.model, "model_version": r.bundle_id, "id": r.request_id, "parameters": params,
            "outputs": outputs}


def plain_response(r: InferenceResponse) -> Dict[str, Any]:
    out = r.model_dump(exclude={"mask_png"})
    if r.mask_png:
        out["mask_png"] = base64.b64encode(r.mask_png).decode()
    return out


# ------------------------------------------------------------------------------------------ errors, limits
def error_response(e: SplitInferError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status_code == 401 else None
    return JSONResponse({"error": e.message, "kind": e.kind}, status_code=e.status_code, headers=headers)


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


# ------------------------------------------------------------------------------------------ endpoints
class Endpoints:
    def __init__(self, dataplane: DataPlane):
        self.dp = dataplane

    def _auth(self, request: Request) -> None:
        if not self.dp.auth_required:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        self.dp.authenticate(token.strip() if scheme.lower() == "bearer" else None)

    async def live(self) -> Dict[str, bool]:
        return {"live": self.dp.live()}

    async def ready(self):
        ok = self.dp.ready()
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def server_metadata(self) -> Dict[str, Any]:
        return self.dp.server_metadata()

    async def metrics(self) -> Response:
        body, ctype = self.dp.metrics.render()
        return Response(body, media_type=ctype)

    async def models(self, request: Request) -> Dict[str, Any]:
        self._auth(request)
        return {"models": [m.model_dump() for m in self.dp.metadata()]}

    async def model_metadata(self, name: str, request: Request) -> Dict[str, Any]:
        self._auth(request)
        m = self.dp.model_metadata(name)
        outputs = [{"name": "topk_index", "datatype": "INT64", "shape": [1, -1]},
                   {"name": "topk_score", "datatype": "FP32", "shape": [1, -1]},
                   {"name": "topk_name", "datatype": "BYTES", "shape": [1, -1]}]
        if m.task == "segmentation":
            outputs += [{"name": "mask_png", "datatype": "BYTES", "shape": [1]},
                        {"name": "class_pixels", "datatype": "INT64", "shape": [1, m.num_classes]}]
        return {**m.model_dump(), "versions": [m.bundle_id],
                "inputs": [{"name": "bitstream", "datatype": "BYTES", "shape": [1]}], "outputs": outputs}

    async def model_ready(self, name: str, request: Request):
        self._auth(request)
        ok = self.dp.model_ready(name)
        return JSONResponse({"name": name, "ready": ok}, status_code=200 if ok else 503)

    async def infer(self, name: str, request: Request) -> Dict[str, Any]:
        self._auth(request)
        body = await request.body()
        fields = to_request_fields(name, body, request.headers.get(BINARY_HEADER))
        req = parse_request(fields)
        resp = await run_in_threadpool(self.dp.infer, req, "rest")
        return to_kserve_response(resp)

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


def create_app(dataplane: DataPlane, settings: Settings) -> FastAPI:
    app = FastAPI(title="splitinfer", version=dataplane.server_metadata()["version"],
                  description="Split inference: the cloud half. Open Inference Protocol (KServe v2) endpoints.")
    e = Endpoints(dataplane)
    routes = [
        ("GET", "/v2/health/live", e.live),
        ("GET", "/v2/health/ready", e.ready),
        ("GET", "/v2", e.server_metadata),
        ("GET", "/metrics", e.metrics),
        ("GET", "/v2/models", e.models),
        ("GET", "/v2/models/{name}", e.model_metadata),
        ("GET", "/v2/models/{name}/ready", e.model_ready),
        ("POST", "/v2/models/{name}/infer", e.infer),
        ("POST", "/v2/models/{name}/infer-image", e.infer_image),
    ]
    for method, path, endpoint in routes:
        app.add_api_route(path, endpoint, methods=[method])

    @app.exception_handler(SplitInferError)
    async def _splitinfer_error(request: Request, exc: SplitInferError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"error": str(exc.detail), "kind": kind}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg')}" for err in exc.errors()]
        return error_response(InvalidArgument("invalid request: " + "; ".join(parts)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(InternalError(f"internal error: {type(exc).__name__}"))

    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    return app
