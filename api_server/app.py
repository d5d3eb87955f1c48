"""Server layer 8: the app factory. Every error leaves as JSON ``{"error_code", "message"}``."""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__
from .context import ServerContext
from .errors import ApiError, DatabaseUnavailable, StoreUnavailable
from .routes import blobs, clients, feeds, health, mutables, projects, tasks
from .web import api_docs, browser_session, client_pages, content_pages, pages, project_pages
from .web.render import error_page

log = logging.getLogger("kachery_cloud_server")
STATIC_DIR = Path(__file__).parent / "web" / "static"

# Errors raised by the framework itself (400: a body it could not parse, e.g. JSON nested past the parser's depth).
_HTTP_ERROR_CODES = {400: "invalid_request", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def create_app(context: ServerContext) -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="kachery-cloud project API",
        version=__version__,
        description="Identity, projects and presigned URLs for kachery-cloud. Requests are signed with the "
        "client's Ed25519 key; see the X-Kachery-* headers.",
        docs_url=None,  # served from the package's own assets (web/api_docs.py)
        redoc_url=None,
    )
    app.state.context = context
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    browser_session.install(app, context)
    app.add_middleware(_RequestGuard, allowed_hosts=_allowed_hosts(context))  # outermost: before anything reads
    for router in (
        health.router,
        clients.router,
        projects.router,
        blobs.router,
        mutables.router,
        feeds.router,
        tasks.router,
        pages.router,
        project_pages.router,
        content_pages.router,
        client_pages.router,
        api_docs.router,
    ):
        app.include_router(router)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return _answer(exc) if _is_api(request) else error_page(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        details = [
            {"location": ".".join(str(p) for p in err.get("loc", ())), "problem": err.get("msg", "")}
            for err in exc.errors()
        ]
        summary = "; ".join(f"{d['location']}: {d['problem']}" for d in details[:5])
        if not _is_api(request):
            return error_page(request, _page_error(422, f"the form was not filled in as expected: {summary}"))
        return _error(422, "invalid_request", f"invalid request: {summary}", details=details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = _HTTP_ERROR_CODES.get(exc.status_code, f"http_{exc.status_code}")
        if not _is_api(request) and exc.status_code in _PAGE_ERRORS:
            return error_page(request, _page_error(exc.status_code, _PAGE_ERRORS[exc.status_code], code))
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, _exc: DataError) -> JSONResponse:
        # A value the database refuses (PostgreSQL text cannot hold NUL): no such record can exist.
        return _error(400, "invalid_request", "the request holds a value that cannot be stored (such as NUL)")

    @app.exception_handler(UnicodeEncodeError)
    async def _not_unicode(_request: Request, _exc: UnicodeEncodeError) -> JSONResponse:
        # Text with lone surrogates (valid in JSON, not in UTF-8) that no check caught before the database.
        return _error(400, "invalid_request", "the request holds text that is not valid Unicode (a lone surrogate)")

    @app.exception_handler(OperationalError)
    @app.exception_handler(PoolTimeout)
    async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL restarting or out of reach, SQLite locked by another process past its busy timeout, the
        # connection pool exhausted: the transaction was rolled back, so the client may ask again.
        log.warning("the database failed in %s %s: %s", request.method, request.url.path, str(exc).splitlines()[0])
        return _answer(DatabaseUnavailable("the database is unavailable or busy; try again"))

    @app.exception_handler(RecursionError)
    async def _too_deep(_request: Request, _exc: RecursionError) -> JSONResponse:
        # JSON nested deeper than Python's recursion limit, found while parsing or checking it.
        return _error(400, "invalid_request", "the request nests values too deeply")

    @app.exception_handler(IntegrityError)
    async def _conflict(_request: Request, _exc: IntegrityError) -> JSONResponse:
        # Two requests raced for the same unique row; the loser's transaction was rolled back.
        return _error(409, "conflict", "a concurrent request changed the same record; try again")

    @app.exception_handler(BotoConnectionError)
    @app.exception_handler(HTTPClientError)
    async def _store_unreachable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("the object store could not be reached in %s %s: %s", request.method, request.url.path, exc)
        return _answer(StoreUnavailable("the object store could not be reached; try again"))

    @app.exception_handler(ClientError)
    async def _store_failed(request: Request, exc: ClientError) -> JSONResponse:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        if status < 500:
            return _internal_error(request)
        log.warning("the object store failed in %s %s: %s", request.method, request.url.path, exc)
        return _answer(StoreUnavailable(f"the object store answered HTTP {status}; try again"))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, _exc: Exception) -> JSONResponse:
        return _internal_error(request)

    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: ServerContext = app.state.context
    stop = threading.Event()
    threading.Thread(target=_sweep_uploads, args=(context, stop), name="kachery-upload-sweeper", daemon=True).start()
    context.wakeups.start()
    context.usage_meter.start()
    try:
        yield
    finally:
        stop.set()
        context.wakeups.close()
        context.blobs.close()
        context.usage_meter.close()


def _sweep_uploads(context: ServerContext, stop: threading.Event) -> None:
    """Abort abandoned uploads now and then (every minute, or sooner when uploads expire sooner)."""
    interval = max(1.0, min(60.0, context.settings.upload_ttl_sec / 2))
    while not stop.is_set():
        try:
            context.blobs.sweep_expired_uploads()
        except Exception:
            log.exception("sweeping abandoned uploads failed; trying again later")
        stop.wait(interval)


MAX_BODY_BYTES = 1 << 20  # API bodies are small JSON; blob bytes come here only in small batches of small blobs
# Except these: a mutable value (1 MiB, which JSON escaping can make 6 MiB), a feed append (4 MiB of
# messages, which escaping inside JSON strings can double), a task request (1 MiB of input as JSON) and
# small blobs sent inline (4 MiB, base64).
LARGE_BODY_BYTES = 16 << 20
_LARGE_BODY_PATHS = re.compile(r"^/api/(mutables/set|feeds/[^/]+/messages|tasks/request|blobs/inline)\Z")


class _RequestGuard:
    """Checks every request before the app sees it:

    - the Host header names this server, except on the health paths (stops DNS rebinding, where a web page
      points its own domain at 127.0.0.1 and drives the local API from a visitor's browser);
    - the body is at most :data:`MAX_BODY_BYTES` (:data:`LARGE_BODY_BYTES` for the endpoints that take
      large values), 413 before reading it when Content-Length says so;
    - responses forbid framing (clickjacking of the registration page).
    """

    def __init__(self, app: Any, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed_hosts = None if "*" in allowed_hosts else {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        # A balancer's health check may send no Host, or its own: the health paths say nothing private.
        if self.allowed_hosts is not None and scope.get("path") not in _HOST_FREE_PATHS:
            host = _host_name(headers.get(b"host", b"").decode("latin-1"))
            if host not in self.allowed_hosts:
                await _error(400, "invalid_host", "this server does not answer to that host name")(scope, receive, send)
                return
        limit = LARGE_BODY_BYTES if _LARGE_BODY_PATHS.match(scope.get("path", "")) else MAX_BODY_BYTES
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _error(413, "request_too_large", f"request body over {limit} bytes")(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise StarletteHTTPException(413, f"request body over {limit} bytes")
            return message

        async def framing_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", b"frame-ancestors 'none'"),
                ]
            await send(message)

        await self.app(scope, limited_receive, framing_send)


_HOST_FREE_PATHS = frozenset({"/api/health", "/api/health/ready"})


def _host_name(host_header: str) -> str:
    """``example.org:7733`` → ``example.org``; ``[::1]:7733`` → ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _allowed_hosts(context: ServerContext) -> list[str]:
    from urllib.parse import urlsplit

    hosts = {"localhost", "127.0.0.1", "::1", context.settings.host}
    public_host = urlsplit(context.server_url).hostname
    if public_host:
        hosts.add(public_host)
    if context.settings.host in ("0.0.0.0", "::", "") and not context.settings.public_url:
        return ["*"]  # listening everywhere without a public_url: any name may be used
    return sorted(hosts)


_PAGE_ERRORS = {
    404: "There is no such page.",
    405: "That page does not take this kind of request.",
    413: "That was too much to send at once.",
}


def _page_error(status: int, message: str, code: str = "invalid_request") -> ApiError:
    error = ApiError(message, error_code=code)
    error.status = status
    return error


def _is_api(request: Request) -> bool:
    """Whether an error goes back as the API's JSON rather than as a page: always under ``/api/``, and elsewhere
    unless a browser asks (its navigations and forms accept text/html; clients and scripts do not)."""
    path = request.url.path
    if path.startswith("/api/") or path == "/openapi.json":
        return True
    return "text/html" not in request.headers.get("accept", "")


def _internal_error(request: Request) -> JSONResponse:
    """Log the exception being handled; answer 500. Starlette re-raises after this answer and uvicorn then
    closes the connection: say so, so that a client does not send its next request down it."""
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return _error(
        500,
        "internal_error",
        "internal server error; the server log has the details",
        headers={"Connection": "close"},
    )


def _answer(exc: ApiError) -> JSONResponse:
    return _error(exc.status, exc.error_code, exc.message, headers=exc.headers, fields=exc.fields)


def _error(
    status: int,
    code: str,
    message: str,
    *,
    details: list[dict[str, str]] | None = None,
    headers: dict | None = None,
    fields: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {**(fields or {}), "error_code": code, "message": _printable(message)}
    if details is not None:
        body["details"] = [{k: _printable(v) for k, v in d.items()} for d in details]
    return JSONResponse(body, status_code=status, headers=headers)


def _printable(text: str) -> str:
    # A message may quote what the client sent, lone surrogates included, which UTF-8 cannot carry.
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
