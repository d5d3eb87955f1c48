"""The home page, signing in and out, the registration page a person opens from ``kachery-cloud-init``'s link,
and the page of an invitation link (which says how to use it, and can use it to join in the browser)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from ..db.models import now_ms
from ..errors import ApiError, InvalidRequest
from ..routes.deps import ContextDep
from ..services import identity, invitations, projects, web_sessions
from . import browser_session
from .browser_session import OptionalWebUser
from .render import render, when

router = APIRouter(include_in_schema=False)


def _see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303)


@router.get("/", response_class=HTMLResponse)
def index(request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    page: dict[str, object] = {"server_url": context.server_url, "google_client_id": context.settings.google_client_id}
    if user is None:
        return render(request, "index.html", page)
    with context.db.transaction() as session:
        page["rows"] = projects.projects_of_user(session, user)
    return render(request, "home.html", page, user=user)


# --- sign-in links (admin web-login) ---


@router.get("/sign-in/{token}", response_class=HTMLResponse)
def sign_in_page(token: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    """Whom the link signs in, and a button that does. Looking does not use the link (mail scanners and link
    previews open links too)."""
    with context.db.transaction() as session:
        state, link_user = web_sessions.sign_in_link_state(session, token)
    messages = {
        "used": "This sign-in link was already used. Ask for a new one (kachery-cloud-server admin web-login).",
        "expired": "This sign-in link has expired. Ask for a new one (kachery-cloud-server admin web-login).",
        "unknown": "This is not a sign-in link of this server; check that it was copied whole.",
    }
    page = {
        "server_url": context.server_url,
        "state": state,
        "token": token,
        "link_user": link_user.name if link_user is not None else "",
        "message": messages.get(state, ""),
    }
    status = {"open": 200, "used": 409, "expired": 410}.get(state, 404)
    return render(request, "sign_in.html", page, user=user, status=status)


@router.post("/sign-in")
def sign_in(request: Request, context: ContextDep, token: Annotated[str, Form(max_length=100)]) -> Response:
    with context.db.transaction() as session:
        user = web_sessions.use_sign_in_link(session, token)
    browser_session.begin(request, context, user, "link")
    return _see_other("/")


@router.post("/sign-in/google")
def sign_in_with_google(
    request: Request, context: ContextDep, credential: Annotated[str, Form(max_length=8192)]
) -> Response:
    if context.google is None:
        raise InvalidRequest("Google sign-in is not configured on this server", error_code="google_not_configured")
    google_identity = context.google.verify(credential)
    with context.db.transaction() as session:
        user = identity.user_for_google_identity(session, google_identity, context.settings.default_storage_quota_bytes)
    browser_session.begin(request, context, user, "google")
    return _see_other("/")


@router.post("/sign-out")
def sign_out(request: Request, context: ContextDep) -> Response:
    browser_session.end(request, context)
    return _see_other("/")


# --- invitations ---


@router.get("/invite/{token}", response_class=HTMLResponse)
def invitation_page(token: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    """What to run with an invitation link someone opened in a browser, and a form to join in the browser.
    Looking does not use the link."""
    page: dict[str, object] = {
        "server_url": context.server_url,
        "link": invitations.link_of(context.server_url, token),
        "token": token,
    }
    with context.db.transaction() as session:
        invitation = invitations.find(session, token)
        state = invitations.invitation_state(invitation) if invitation is not None else "unknown"
        if invitation is not None:
            page.update(
                project_id=invitation.project_id,
                role=invitation.role,
                expires=when(invitation.expires_at_ms),
                for_user=invitation.user_name,
            )
    messages = {
        "used": "This invitation link was already used; ask the lab's admin for a new one.",
        "expired": "This invitation link has expired; ask the lab's admin for a new one.",
        "unknown": "This is not an invitation link of this server; check that it was copied whole.",
    }
    page.update(state=state, message=messages.get(state, ""))
    status = {"open": 200, "used": 409, "expired": 410}.get(state, 404)
    return render(request, "invite.html", page, user=user, status=status)


@router.post("/invitations/join")
def join_in_browser(
    request: Request,
    context: ContextDep,
    token: Annotated[str, Form(max_length=100)],
    name: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """Use an invitation in the browser: the person becomes its user (or a new one called ``name``) with its
    role, and is signed in."""
    with context.db.transaction() as session:
        accepted = invitations.accept_for_browser(session, token, suggested_name=name or "member")
    browser_session.begin(request, context, accepted.user, "invitation")
    return _see_other(f"/projects/{accepted.project_id}")


# --- browser registration of a client ---


@router.get("/register/{registration_id}", response_class=HTMLResponse)
def register_page(registration_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    page: dict[str, object] = {"server_url": context.server_url, "google_client_id": context.settings.google_client_id}
    status = 200
    try:
        with context.db.transaction() as session:
            registration = identity.get_registration(session, registration_id)
            page.update(
                state=identity.registration_state(registration),
                client_id=registration.client_id,
                label=registration.label,
                minutes_left=max(0, (registration.expires_at_ms - now_ms()) // 60000),
                complete_url=f"{context.server_url}/api/registrations/{registration.id}/google",
            )
    except ApiError as e:
        page.update(state="invalid", error=e.message)
        status = e.status
    return render(request, "register.html", page, user=user, status=status)
