"""The web app's templates and the pages every part of it shares: errors, a refused form, sign-in needed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from kachery_cloud.protocol.feed_format import feed_uri

from ..db.models import User
from ..errors import ApiError
from ..services.usage import human_bytes

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


def when(ms: int | None) -> str:
    """A time as people read it in a table: ``2026-12-07 17:52 UTC``; an em dash for never."""
    if not ms:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


def quota_text(quota: int | None) -> str:
    return "unlimited" if quota is None else human_bytes(quota)


templates.env.globals.update(human_bytes=human_bytes, when=when, quota_text=quota_text, feed_uri=feed_uri)


def render(
    request: Request, name: str, page: dict[str, Any], *, user: User | None = None, status: int = 200
) -> HTMLResponse:
    """``name`` with ``page``, the signed-in ``user`` (for the header) and the form token every form carries."""
    token = request.scope.get("csrftoken")
    context = {"user": user, "csrftoken": token() if callable(token) else "", **page}
    return templates.TemplateResponse(request, name, context, status_code=status)


def error_page(request: Request, exc: ApiError) -> HTMLResponse:
    """An API error raised under a page, as a page (same status). A private project and a missing one give the
    same message, so the same page."""
    sign_in = exc.error_code == "sign_in_required"
    response = render(
        request,
        "error.html",
        {"status": exc.status, "message": exc.message, "sign_in": sign_in, "title": _TITLES.get(exc.status, "Error")},
        status=exc.status,
    )
    for name, value in (exc.headers or {}).items():
        response.headers[name] = value
    return response


_TITLES = {
    400: "Not accepted",
    401: "Sign in",
    403: "Not allowed",
    404: "Not found",
    409: "Already done",
    410: "Expired",
    429: "Too many requests",
    503: "Unavailable",
}


async def csrf_failed(scope: dict, send: Any, _reason: object) -> None:
    """What asgi-csrf answers for a form without its token (or with another browser's): a page, not a trace."""
    body = (
        b"<!doctype html><meta charset=utf-8><title>Form refused</title>"
        b"<body style='font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto'>"
        b"<h1>Form refused</h1><p>This form did not carry this site's form token, so it may have come from another "
        b"site. Go back, reload the page and send it again.</p></body>"
    )
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
