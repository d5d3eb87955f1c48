"""Server layer 8: the app factory. Every error leaves as JSON ``{"error_code", "message"}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .context import ServerContext
from .errors import ApiError
from .routes import clients, health, projects
from .web import pages

log = logging.getLogger("kachery_cloud_server")

_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def create_app(context: ServerContext) -> FastAPI:
    app = FastAPI(
        title="kachery-cloud project API",
        version=__version__,
        description="Identity, projects and presigned URLs for kachery-cloud. Requests are signed with the "
        "client's Ed25519 key; see the X-Kachery-* headers.",
    )
    app.state.context = context
    for router in (health.router, clients.router, projects.router, pages.router):
        app.include_router(router)

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error_code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"location": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{d['location']}: {d['problem']}" for d in details[:5])
        return _error(422, "invalid_request", f"invalid request: {summary}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(IntegrityError)
    async def _conflict(_request: Request, _exc: IntegrityError) -> JSONResponse:
        # Two requests raced for the same unique row; the loser's transaction was rolled back.
        return _error(409, "conflict", "a concurrent request changed the same record; try again")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        return _error(500, "internal_error", "internal server error; the server log has the details")

    return app


def _error(
    status: int, code: str, message: str, *, details: list[dict[str, str]] | None = None, headers: dict | None = None
) -> JSONResponse:
    body: dict[str, object] = {"error_code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)
