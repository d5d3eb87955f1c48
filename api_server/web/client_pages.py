"""Your clients: the machines and processes linked to your account, when each was last seen, revoking one, and
a link that adds another machine."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from ..db.models import Client, User
from ..errors import InvalidRequest, NotFound
from ..routes.deps import ContextDep
from ..services import identity, invitations, projects
from .browser_session import WebUser, flash, take_flash
from .render import render

router = APIRouter(include_in_schema=False)

MACHINE_LINK_TTL_SEC = 3600


@router.get("/clients", response_class=HTMLResponse)
def clients(request: Request, context: ContextDep, user: WebUser) -> HTMLResponse:
    return _clients_page(request, context, user, new_link="")


def _clients_page(request: Request, context: Any, user: User, *, new_link: str) -> HTMLResponse:
    with context.db.transaction() as session:
        rows = list(session.scalars(select(Client).where(Client.user_id == user.id).order_by(Client.created_at_ms)))
        memberships = projects.projects_of_user(session, user)
    page = {
        "clients": rows,
        "memberships": memberships,
        "server_url": context.server_url,
        "notice": take_flash(request),
        "new_link": new_link,
    }
    return render(request, "clients.html", page, user=user)


@router.post("/clients/revoke")
def revoke(
    request: Request, context: ContextDep, user: WebUser, client_id: Annotated[str, Form(max_length=64)]
) -> Response:
    """Unlink one of your clients: its key is worth nothing here from now on."""
    with context.db.transaction() as session:
        client = session.get(Client, client_id)
        if client is None or client.user_id != user.id:
            raise NotFound(f"you have no client {client_id}", error_code="client_not_found")
        label = client.label or client_id[:12]
        identity.remove_client(session, client_id)
    flash(request, f"revoked {label}")
    return RedirectResponse("/clients", status_code=303)


@router.post("/clients/link", response_class=HTMLResponse)
def link_machine(
    request: Request, context: ContextDep, user: WebUser, project_id: Annotated[str, Form(max_length=64)]
) -> HTMLResponse:
    """A one-time link (an hour) that registers another machine as you. It gives no role: the machine acts with
    the roles you have when it acts (so a link made before a demotion cannot undo it). Shown in this answer
    only, never in a URL."""
    with context.db.transaction() as session:
        if projects.role_of(session, project_id, user.id) is None:
            raise InvalidRequest("choose one of your projects", error_code="not_a_member")
        token, _ = invitations.create_invitation(
            session,
            project_id,
            "read",
            user_name=user.name,
            ttl_sec=MACHINE_LINK_TTL_SEC,
            created_by=user.name,
            add_client=True,
            grants_role=False,
        )
    return _clients_page(request, context, user, new_link=invitations.link_of(context.server_url, token))
