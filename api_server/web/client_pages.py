"""Your clients: the machines and processes linked to your account, when each was last seen, revoking one, and
a link that adds another machine."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from ..db.models import Client
from ..errors import InvalidRequest, NotFound
from ..routes.deps import ContextDep
from ..services import identity, invitations, projects
from .browser_session import WebUser
from .render import render

router = APIRouter(include_in_schema=False)

MACHINE_LINK_TTL_SEC = 3600


@router.get("/clients", response_class=HTMLResponse)
def clients(request: Request, context: ContextDep, user: WebUser) -> HTMLResponse:
    with context.db.transaction() as session:
        rows = list(session.scalars(select(Client).where(Client.user_id == user.id).order_by(Client.created_at_ms)))
        memberships = projects.projects_of_user(session, user)
    page = {
        "clients": rows,
        "memberships": memberships,
        "server_url": context.server_url,
        "notice": request.query_params.get("notice", "")[:300],
        "new_link": request.query_params.get("link", "")[:300],
    }
    return render(request, "clients.html", page, user=user)


@router.post("/clients/revoke")
def revoke(context: ContextDep, user: WebUser, client_id: Annotated[str, Form(max_length=64)]) -> Response:
    """Unlink one of your clients: its key is worth nothing here from now on."""
    with context.db.transaction() as session:
        client = session.get(Client, client_id)
        if client is None or client.user_id != user.id:
            raise NotFound(f"you have no client {client_id}", error_code="client_not_found")
        label = client.label or client_id[:12]
        identity.remove_client(session, client_id)
    return RedirectResponse(f"/clients?notice={quote(f'revoked {label}')}", status_code=303)


@router.post("/clients/link")
def link_machine(context: ContextDep, user: WebUser, project_id: Annotated[str, Form(max_length=64)]) -> Response:
    """A one-time link (an hour) that registers another machine as you, with your role in ``project_id``."""
    with context.db.transaction() as session:
        role = projects.role_of(session, project_id, user.id)
        if role is None:
            raise InvalidRequest("choose one of your projects", error_code="not_a_member")
        token, _ = invitations.create_invitation(
            session,
            project_id,
            role,
            user_name=user.name,
            ttl_sec=MACHINE_LINK_TTL_SEC,
            created_by=user.name,
            add_client=True,
        )
    link = invitations.link_of(context.server_url, token)
    return RedirectResponse(f"/clients?link={quote(link)}", status_code=303)
