"""The REST app (FastAPI): the routes of :mod:`.routes` behind the guards of :mod:`.guards`.

Every refusal is a JSON body ``{"error": message, "kind": kind}`` with the status of its
:mod:`cloud_server.errors` class: the data plane's errors, FastAPI's own (an unknown route, a mistyped query
parameter) and anything unexpected (500, logged).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..dataplane import DataPlane
from ..errors import InternalError, InvalidArgument, SplitInferError, describe_validation
from ..settings import Settings
from .guards import BodyLimitMiddleware, RequestGuard, error_response
from .routes import Endpoints

__all__ = ["create_app"]

log = logging.getLogger("splitinfer.server")


def create_app(dataplane: DataPlane, settings: Settings) -> FastAPI:
    """The app: its routes (the table below), its error handlers, and the guards in front of them."""
    app = FastAPI(title="splitinfer", version=dataplane.server_metadata()["version"],
                  description="Split inference: the cloud half. Open Inference Protocol (KServe v2 / Triton) "
                              "endpoints.")
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
        ("GET", "/v2/models/{name}/versions/{version}", e.version_metadata),
        ("GET", "/v2/models/{name}/versions/{version}/ready", e.version_ready),
        ("POST", "/v2/models/{name}/versions/{version}/infer", e.version_infer),
        ("POST", "/v2/models/{name}/infer-image", e.infer_image),
        ("GET", "/v2/models/{name}/edge-package", e.edge_package),
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
        return error_response(InvalidArgument(f"invalid request: {describe_validation(exc.errors())}"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(InternalError(f"internal error: {type(exc).__name__}"))

    # shutdown 503, docs auth, body timeout, admission (429), cancel: inside the body limit; judges bodies by the
    # app's routes before reading them
    app.add_middleware(RequestGuard, dataplane=dataplane, settings=settings, routes=app.router.routes)
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_request_bytes)
    return app
