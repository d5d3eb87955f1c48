"""A project's pages: overview and members, usage, recent blobs (with downloads), settings.

Who sees what: anyone who may read the project (anyone at all, for a public one) sees its overview, usage and
content; members also see who the members are; admins change members, make invitation links and change
settings. A private project answers a non-member exactly as a project that does not exist.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import ROLES, Blob, Client, Membership, Project, User
from ..errors import ApiError, Forbidden, InvalidRequest, NotFound
from ..routes.deps import ContextDep
from ..services import identity, invitations, projects
from ..services.blobs import stored_totals
from ..services.usage import add_usage, usage_of
from ..settings import parse_size
from . import charts
from .browser_session import OptionalWebUser, WebUser, flash, take_flash
from .render import render

router = APIRouter(include_in_schema=False)

RECENT_BLOBS = 100
_NEW_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_INVITE_TTLS = {"1h": 3600, "1d": 86400, "7d": 7 * 86400, "30d": 30 * 86400}


def readable_project(session: Session, user: User | None, project_id: str) -> tuple[Project, str | None]:
    """The project and the user's role in it (None: not a member), if the user may read it; 404 otherwise."""
    project = projects.require_role(session, project_id, user, "read")
    return project, projects.role_of(session, project_id, user.id if user is not None else None)


def project_page(
    request: Request, name: str, project: Project, role: str | None, tab: str, user: User | None, **page: object
) -> HTMLResponse:
    page = {"project": project, "role": role, "tab": tab, "notice": take_flash(request), **page}
    return render(request, name, page, user=user)


def _back_to(request: Request, project_id: str, tab: str = "", notice: str = "") -> RedirectResponse:
    if notice:
        flash(request, notice)
    return RedirectResponse(f"/projects/{project_id}{'/' + tab if tab else ''}", status_code=303)


# --- overview and members ---


@router.get("/projects/{project_id}", response_class=HTMLResponse)
def overview(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    return _overview(project_id, request, context, user, new_link="")


def _overview(project_id: str, request: Request, context: Any, user: User | None, *, new_link: str) -> HTMLResponse:
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
        blob_count, _ = stored_totals(session, project_id)
        owner = session.get(User, project.owner_user_id) if role is not None else None
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
        new_link=new_link,
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
    request: Request,
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
    return _back_to(request, project_id, notice=f"{name} has role {role}")


@router.post("/projects/{project_id}/members/remove")
def remove_member(
    project_id: str, request: Request, context: ContextDep, user: WebUser, who: Annotated[str, Form(max_length=320)]
) -> Response:
    with context.db.transaction() as session:
        projects.require_role(session, project_id, user, "admin", members_only=True)
        member = identity.find_user(session, who)
        removed = projects.remove_member(session, project_id, member)
    return _back_to(request, project_id, notice=f"removed {who}" if removed else f"{who} was not a member")


@router.post("/projects/{project_id}/invitations", response_class=HTMLResponse)
def make_invitation(
    project_id: str,
    request: Request,
    context: ContextDep,
    user: WebUser,
    role: Annotated[str, Form(max_length=16)],
    expires: Annotated[str, Form(max_length=8)] = "7d",
    for_user: Annotated[str, Form(max_length=100)] = "",
) -> HTMLResponse:
    """A one-time invitation link (admins), shown once: in this answer, never in a URL (where logs and the
    browser's history would keep it). It may name a new user only: naming an existing one would hand the
    link's holder that account."""
    if expires not in _INVITE_TTLS:
        raise InvalidRequest(f"expires: one of {', '.join(_INVITE_TTLS)}")
    name = for_user.strip()
    if name and not _NEW_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"{name!r}: a new user's name here is 1-100 letters, digits and . _ - (no @ or +, so that it cannot pass "
            "for someone's email)"
        )
    with context.db.transaction() as session:
        projects.require_role(session, project_id, user, "admin", members_only=True)
        token, _invitation = invitations.create_invitation(
            session,
            project_id,
            role,
            user_name=name or None,
            ttl_sec=_INVITE_TTLS[expires],
            created_by=user.name,
            new_user_only=True,
        )
    return _overview(project_id, request, context, user, new_link=invitations.link_of(context.server_url, token))


# --- usage ---


@router.get("/projects/{project_id}/usage", response_class=HTMLResponse)
def usage(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    context.usage_meter.flush()
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
    return project_page(request, "settings.html", project, "admin", "settings", user, can_set_quota=user.is_local_owner)


@router.post("/projects/{project_id}/settings")
def change_settings(
    project_id: str,
    request: Request,
    context: ContextDep,
    user: WebUser,
    label: Annotated[str, Form(max_length=255)] = "",
    visibility: Annotated[str, Form(max_length=16)] = "private",
    quota: Annotated[str, Form(max_length=32)] = "",
    sets_quota: Annotated[str, Form(max_length=1)] = "",
    task_request_role: Annotated[str, Form(max_length=16)] = "write",
) -> Response:
    """Label, visibility and who may request tasks (the project's admins); the quota too, for the server's
    owner only: a quota limits what the server keeps for a project, so its own admins do not set it."""
    if visibility not in ("public", "private"):
        raise InvalidRequest("visibility: public or private")
    if task_request_role not in ("read", "write"):
        raise InvalidRequest("who may request tasks: read or write")
    quota_bytes: int | None = None
    # The quota field is on the form only for the server's owner; an empty one means unlimited (a form field
    # left empty arrives as missing, hence this marker beside it).
    if sets_quota:
        if not user.is_local_owner:
            raise Forbidden("only the server's owner sets quotas", error_code="quota_is_the_servers")
        text = quota.strip()
        try:
            quota_bytes = None if text.lower() in ("", "none", "unlimited") else parse_size(text)
        except ValueError as e:
            raise InvalidRequest(f"quota: {e}") from None
    with context.db.transaction() as session:
        project = projects.require_role(session, project_id, user, "admin", members_only=True)
        project.label = identity.clean_label(label)
        project.public_read = visibility == "public"
        if sets_quota:
            project.storage_quota_bytes = quota_bytes
        project.task_request_role = task_request_role
    return _back_to(request, project_id, "settings", notice="saved")
