"""A project's pages: overview and members, usage, recent blobs (with downloads), settings.

Who sees what: anyone who may read the project (anyone at all, for a public one) sees its overview, usage and
content; members also see who the members are; admins change members, make invitation links and change
settings. A private project answers a non-member exactly as a project that does not exist.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import ROLES, Blob, Client, Membership, Project, User
from ..errors import ApiError, InvalidRequest, NotFound
from ..routes.deps import ContextDep
from ..services import identity, invitations, projects
from ..services.blobs import stored_totals
from ..services.usage import add_usage, usage_of
from ..settings import parse_size
from . import charts
from .browser_session import OptionalWebUser, WebUser
from .render import render

router = APIRouter(include_in_schema=False)

RECENT_BLOBS = 100
_INVITE_TTLS = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


def readable_project(session: Session, user: User | None, project_id: str) -> tuple[Project, str | None]:
    """The project and the user's role in it (None: not a member), if the user may read it; 404 otherwise."""
    project = projects.require_role(session, project_id, user, "read")
    return project, projects.role_of(session, project_id, user.id if user is not None else None)


def project_page(
    request: Request, name: str, project: Project, role: str | None, tab: str, user: User | None, **page: object
) -> HTMLResponse:
    return render(request, name, {"project": project, "role": role, "tab": tab, **page}, user=user)


def _back_to(project_id: str, tab: str = "", notice: str = "") -> RedirectResponse:
    from urllib.parse import quote

    url = f"/projects/{project_id}{'/' + tab if tab else ''}"
    return RedirectResponse(f"{url}?notice={quote(notice)}" if notice else url, status_code=303)


# --- overview and members ---


@router.get("/projects/{project_id}", response_class=HTMLResponse)
def overview(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
        blob_count, _ = stored_totals(session, project_id)
        owner = session.get(User, project.owner_user_id)
        members = (
            session.execute(
                select(User, Membership.role)
                .join(Membership, Membership.user_id == User.id)
                .where(Membership.project_id == project_id)
                .order_by(User.name)
            ).all()
            if role is not None
            else []
        )
        open_invitations = (
            [i for i in invitations.list_invitations(session, project_id) if invitations.invitation_state(i) == "open"]
            if role == "admin"
            else []
        )
    return project_page(
        request,
        "project.html",
        project,
        role,
        "overview",
        user,
        owner=owner.name if owner else "",
        blob_count=blob_count,
        members=members,
        roles=ROLES,
        open_invitations=open_invitations,
        notice=request.query_params.get("notice", "")[:300],
        new_link=request.query_params.get("link", "")[:300],
    )


def _member_form_user(session: Session, who: str) -> User:
    who = who.strip()
    if not who:
        raise InvalidRequest("name a user (their user name, or an email for someone who will sign in with Google)")
    try:
        return identity.find_user(session, who)
    except ApiError:
        return identity.find_or_add_user_by_email(session, who)


@router.post("/projects/{project_id}/members")
def set_member(
    project_id: str,
    context: ContextDep,
    user: WebUser,
    who: Annotated[str, Form(max_length=320)],
    role: Annotated[str, Form(max_length=16)],
) -> Response:
    """Add a member, or change a member's role (admins)."""
    with context.db.transaction() as session:
        projects.require_role(session, project_id, user, "admin", members_only=True)
        member = _member_form_user(session, who)
        projects.set_member(session, project_id, member, role)
        name = member.name
    return _back_to(project_id, notice=f"{name} has role {role}")


@router.post("/projects/{project_id}/members/remove")
def remove_member(
    project_id: str, context: ContextDep, user: WebUser, who: Annotated[str, Form(max_length=320)]
) -> Response:
    with context.db.transaction() as session:
        projects.require_role(session, project_id, user, "admin", members_only=True)
        member = identity.find_user(session, who)
        removed = projects.remove_member(session, project_id, member)
    return _back_to(project_id, notice=f"removed {who}" if removed else f"{who} was not a member")


@router.post("/projects/{project_id}/invitations")
def make_invitation(
    project_id: str,
    context: ContextDep,
    user: WebUser,
    role: Annotated[str, Form(max_length=16)],
    expires: Annotated[str, Form(max_length=8)] = "7d",
    for_user: Annotated[str, Form(max_length=100)] = "",
) -> Response:
    """A one-time invitation link (admins), shown once on the page that follows."""
    from urllib.parse import quote

    if expires not in _INVITE_TTLS:
        raise InvalidRequest(f"expires: one of {', '.join(_INVITE_TTLS)}")
    with context.db.transaction() as session:
        projects.require_role(session, project_id, user, "admin", members_only=True)
        token, _invitation = invitations.create_invitation(
            session,
            project_id,
            role,
            user_name=for_user.strip() or None,
            ttl_sec=_INVITE_TTLS[expires],
            created_by=user.name,
        )
    link = invitations.link_of(context.server_url, token)
    return RedirectResponse(f"/projects/{project_id}?link={quote(link)}", status_code=303)


# --- usage ---


@router.get("/projects/{project_id}/usage", response_class=HTMLResponse)
def usage(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
        rows = usage_of(session, project_id)
    labels, series = charts.daily_series(rows)
    return project_page(
        request,
        "usage.html",
        project,
        role,
        "usage",
        user,
        charts=[charts.bar_chart(labels, s) for s in series],
        rows=list(reversed(rows))[:60],
    )


# --- blobs ---


@router.get("/projects/{project_id}/blobs", response_class=HTMLResponse)
def blobs(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
        recent = session.execute(
            select(Blob, Client.label)
            .outerjoin(Client, Client.id == Blob.created_by_client_id)
            .where(Blob.project_id == project_id)
            .order_by(Blob.created_at_ms.desc(), Blob.sha1)
            .limit(RECENT_BLOBS)
        ).all()
        count, total = stored_totals(session, project_id)
    return project_page(request, "blobs.html", project, role, "blobs", user, recent=recent, count=count, total=total)


@router.get("/projects/{project_id}/blobs/{sha1}")
def download(project_id: str, sha1: str, context: ContextDep, user: OptionalWebUser) -> Response:
    """The blob's bytes: a redirect to a presigned URL on the store (the server never streams a whole blob); a
    small blob inside a pack (64 KiB at most) is read here, since a browser cannot ask the store for a range."""
    with context.db.transaction() as session:
        project, _role = readable_project(session, user, project_id)
        public = project.public_read
        blob = session.get(Blob, (project_id, sha1.lower())) if len(sha1) == 40 else None
        if blob is None:
            raise NotFound(f"project {project_id} has no blob {sha1[:40]}", error_code="blob_not_found")
        add_usage(session, project_id, requests=1, bytes_out=blob.size)
    storage = context.storage
    key = blob.object_key or storage.blob_key(project_id, blob.sha1)
    if blob.pack_offset is not None:
        data = storage.read_range(key, blob.pack_offset, blob.size)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{blob.sha1}"'},
        )
    url = (storage.public_url(key) if public else None) or storage.presign_get(key)
    return RedirectResponse(url, status_code=303)


# --- settings ---


@router.get("/projects/{project_id}/settings", response_class=HTMLResponse)
def settings_page(project_id: str, request: Request, context: ContextDep, user: WebUser) -> HTMLResponse:
    with context.db.transaction() as session:
        project = projects.require_role(session, project_id, user, "admin", members_only=True)
    return project_page(
        request,
        "settings.html",
        project,
        "admin",
        "settings",
        user,
        notice=request.query_params.get("notice", "")[:300],
    )


@router.post("/projects/{project_id}/settings")
def change_settings(
    project_id: str,
    context: ContextDep,
    user: WebUser,
    label: Annotated[str, Form(max_length=255)] = "",
    visibility: Annotated[str, Form(max_length=16)] = "private",
    quota: Annotated[str, Form(max_length=32)] = "",
    task_request_role: Annotated[str, Form(max_length=16)] = "write",
) -> Response:
    if visibility not in ("public", "private"):
        raise InvalidRequest("visibility: public or private")
    if task_request_role not in ("read", "write"):
        raise InvalidRequest("who may request tasks: read or write")
    quota = quota.strip()
    try:
        quota_bytes = None if quota.lower() in ("", "none", "unlimited") else parse_size(quota)
    except ValueError as e:
        raise InvalidRequest(f"quota: {e}") from None
    with context.db.transaction() as session:
        project = projects.require_role(session, project_id, user, "admin", members_only=True)
        project.label = identity.clean_label(label)
        project.public_read = visibility == "public"
        project.storage_quota_bytes = quota_bytes
        project.task_request_role = task_request_role
    return _back_to(project_id, "settings", notice="saved")
