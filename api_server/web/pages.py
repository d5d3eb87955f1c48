"""The registration page a person opens from ``kachery-cloud-init``'s link, the page of an invitation link (which
says how to use it and never uses it up), and a plain index page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates

from ..db.models import now_ms
from ..errors import ApiError
from ..routes.deps import ContextDep
from ..services import identity, invitations

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@router.get("/", response_class=HTMLResponse)
def index(request: Request, context: ContextDep) -> HTMLResponse:
    return templates.TemplateResponse(
        request,
        "index.html",
        {"server_url": context.server_url, "mode": context.settings.registration_mode},
    )


@router.get("/register/{registration_id}", response_class=HTMLResponse)
def register_page(registration_id: str, request: Request, context: ContextDep) -> HTMLResponse:
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
    return templates.TemplateResponse(request, "register.html", page, status_code=status)


@router.get("/invite/{token}", response_class=HTMLResponse)
def invitation_page(token: str, request: Request, context: ContextDep) -> HTMLResponse:
    """What to run with an invitation link someone opened in a browser. Looking does not use the link."""
    import time

    page: dict[str, object] = {"server_url": context.server_url, "link": invitations.link_of(context.server_url, token)}
    with context.db.transaction() as session:
        invitation = invitations.find(session, token)
        state = invitations.invitation_state(invitation) if invitation is not None else "unknown"
        if invitation is not None:
            expires = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(invitation.expires_at_ms / 1000))
            page.update(project_id=invitation.project_id, role=invitation.role, expires=expires)
    messages = {
        "used": "This invitation link was already used; ask the lab's admin for a new one.",
        "expired": "This invitation link has expired; ask the lab's admin for a new one.",
        "unknown": "This is not an invitation link of this server; check that it was copied whole.",
    }
    page.update(state=state, message=messages.get(state, ""))
    status = {"open": 200, "used": 409, "expired": 410}.get(state, 404)
    return templates.TemplateResponse(request, "invite.html", page, status_code=status)
