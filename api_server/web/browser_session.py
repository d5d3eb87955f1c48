"""Browser sessions and CSRF protection of the web app.

- The session cookie is Starlette's ``SessionMiddleware`` (signed, HttpOnly, SameSite=Lax, Secure when the
  server's public URL is https). It carries only a random session secret; the session itself is a database row
  (:mod:`..services.web_sessions`), so signing out, or removing a user, ends it on every replica at once.
- Every form is protected by asgi-csrf (a signed double-submit token: a cookie and a hidden field that must
  match). The API under ``/api/`` is exempt: its requests are signed by client keys and carry no cookies'
  authority. The sign-in forms are protected even for a browser without cookies, which stops a page elsewhere
  from signing a visitor in as someone else.
- Both are signed with the database's web secret, so every replica accepts what another one set.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated, Any

from asgi_csrf import asgi_csrf
from fastapi import Depends, Request
from starlette.middleware.sessions import SessionMiddleware

from ..context import ServerContext
from ..db.models import User
from ..errors import AuthenticationFailed
from ..routes.deps import get_context
from ..services import web_sessions

SESSION_COOKIE = "kachery_session"
CSRF_COOKIE = "kachery_csrf"
CSRF_FIELD = "csrftoken"  # asgi-csrf's fixed form field name
# Forms used before anyone is signed in: checked even when the browser sends no cookie at all.
SIGN_IN_FORMS = frozenset({"/sign-in", "/sign-in/google", "/invitations/join"})


class SignInRequired(AuthenticationFailed):
    """A page for signed-in people only (the web app shows how to sign in)."""

    def __init__(self) -> None:
        super().__init__("sign in to see this page", error_code="sign_in_required")


def install(app: Any, context: ServerContext) -> None:
    """Add the session and CSRF layers to ``app`` (inside the request guard, which the caller adds last)."""
    secure = context.server_url.startswith("https://")
    app.add_middleware(
        _PagesOnly,
        session=dict(
            secret_key=_derived(context.web_secret, "session"),
            session_cookie=SESSION_COOKIE,
            max_age=context.settings.web_session_ttl_sec,
            same_site="lax",
            https_only=secure,
        ),
        csrf=dict(signing_secret=_derived(context.web_secret, "csrf"), cookie_secure=secure),
    )


class _PagesOnly:
    """The session and CSRF layers around the pages; API requests (signed by client keys, never by cookies) go
    straight to the app, which spares every API request two layers that had nothing to do for it."""

    def __init__(self, app: Any, *, session: dict[str, Any], csrf: dict[str, Any]) -> None:
        self.api = app
        self.pages = SessionMiddleware(_CsrfProtection(app, **csrf), **session)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/"):
            await self.api(scope, receive, send)
        else:
            await self.pages(scope, receive, send)


class _CsrfProtection:
    """asgi-csrf, behind a check of where a form comes from. The token alone is not enough: its cookie is readable
    by scripts, and cookies ignore ports, so a page served from another port of this host (the embedded store's,
    a notebook server's) could read it and post forms with it. Browsers name the page a form comes from in
    ``Origin`` (or, failing that, ``Referer``): a page form is taken only from this server's own pages."""

    def __init__(self, app: Any, *, signing_secret: str, cookie_secure: bool) -> None:
        from .render import csrf_failed

        self.refuse = csrf_failed
        self.checked = asgi_csrf(
            app,
            cookie_name=CSRF_COOKIE,
            signing_secret=signing_secret,
            always_protect=SIGN_IN_FORMS,
            skip_if_scope=lambda scope: scope["path"].startswith("/api/"),
            cookie_secure=cookie_secure,
            send_csrf_failed=csrf_failed,
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in _SAFE_METHODS or scope["path"].startswith("/api/"):
            await self.checked(scope, receive, send)
            return
        # As for the token: a request without cookies carries no one's authority (an API client's, say), except
        # on the sign-in forms, where a page elsewhere could sign a visitor in as someone else.
        carries_cookies = any(name == b"cookie" for name, _ in scope.get("headers") or [])
        if (carries_cookies or scope["path"] in SIGN_IN_FORMS) and not _from_this_server(scope):
            await self.refuse(scope, send, "the form came from another site")
            return
        try:
            await self.checked(scope, receive, send)
        except (IndexError, UnicodeDecodeError, AssertionError):
            # A body asgi-csrf cannot parse (a multipart header without "; boundary=", text that is not UTF-8):
            # a refusal, not a 500. It fails before the app runs, so nothing was answered yet.
            await self.refuse(scope, send, "the form could not be read")


_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


def _from_this_server(scope: dict) -> bool:
    """Whether the request's ``Origin`` (else ``Referer``) names the host and port it was sent to. Cookies go
    to every port of a host, so a page on another port is "the same site" to the browser but not to us."""
    from urllib.parse import urlsplit

    headers = dict(scope.get("headers") or [])
    host = headers.get(b"host", b"").decode("latin-1").strip().lower()
    source = headers.get(b"origin") or headers.get(b"referer") or b""
    try:
        netloc = urlsplit(source.decode("latin-1").strip()).netloc.lower()
    except ValueError:
        return False
    return bool(host) and netloc == host


def _derived(secret: str, purpose: str) -> str:
    return hmac.new(secret.encode(), purpose.encode(), hashlib.sha256).hexdigest()


def optional_web_user(request: Request, context: Annotated[ServerContext, Depends(get_context)]) -> User | None:
    """The signed-in user, or None (never signed in, signed out, or the session expired or was ended). Every
    page counts against its address's rate limit, as unsigned API requests do."""
    context.authenticator.limiter.address_request(request.client.host if request.client else "unknown")
    token = request.session.get("sid")
    if not isinstance(token, str):
        return None
    with context.db.transaction() as session:
        user = web_sessions.user_of_session(session, token)
    if user is None:
        request.session.clear()  # a dead session's cookie is dropped
    return user


def signed_in_user(user: Annotated[User | None, Depends(optional_web_user)]) -> User:
    if user is None:
        raise SignInRequired()
    return user


def begin(request: Request, context: ServerContext, user: User, how: str) -> None:
    """Sign this browser in as ``user`` (a new session secret, so a cookie from before is worth nothing)."""
    with context.db.transaction() as session:
        old = request.session.get("sid")
        if isinstance(old, str):
            web_sessions.end_session(session, old)
        token = web_sessions.start_session(session, user, how, context.settings.web_session_ttl_sec)
    request.session.clear()
    request.session["sid"] = token


def end(request: Request, context: ServerContext) -> None:
    token = request.session.get("sid")
    if isinstance(token, str):
        with context.db.transaction() as session:
            web_sessions.end_session(session, token)
    request.session.clear()


def flash(request: Request, notice: str) -> None:
    """A message for the next page this browser shows (kept in its signed session cookie, never in the URL,
    where anyone could write one: "Run this command…" on the lab's own page)."""
    request.session["notice"] = notice[:300]


def take_flash(request: Request) -> str:
    notice = request.session.pop("notice", "")
    return notice if isinstance(notice, str) else ""


OptionalWebUser = Annotated[User | None, Depends(optional_web_user)]
WebUser = Annotated[User, Depends(signed_in_user)]
