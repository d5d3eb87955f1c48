"""Projects and memberships: creation, roles, the public-read flag, permission checks.

A private project is visible to its members only: to anyone else it is answered exactly as a project that does
not exist (404 ``project_not_found``, the same message), so that nobody learns which private projects exist.
Members whose role is too low, and non-members of a public project, get 403.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import and_, bindparam, select
from sqlalchemy.orm import Session

from ..auth import Caller
from ..db.models import ROLES, Membership, Project, User
from ..errors import ClientNotRegistered, Conflict, Forbidden, InvalidRequest, NotFound

PROJECT_ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
_ROLE_RANK = {role: rank for rank, role in enumerate(ROLES)}


def validate_project_id(project_id: str) -> str:
    if not PROJECT_ID_RE.match(project_id):
        raise InvalidRequest(
            f"invalid project id {project_id!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return project_id


def new_project_id() -> str:
    return secrets.token_hex(6)


def create_project(
    session: Session,
    *,
    owner: User,
    project_id: str | None = None,
    label: str = "",
    public_read: bool = False,
    storage_quota_bytes: int | None = None,
) -> Project:
    """A project owned (and administered) by ``owner``."""
    project_id = validate_project_id(project_id) if project_id else new_project_id()
    if session.get(Project, project_id) is not None:
        raise Conflict(f"project {project_id} already exists", error_code="project_exists")
    project = Project(
        id=project_id,
        label=label,
        owner_user_id=owner.id,
        public_read=public_read,
        storage_quota_bytes=storage_quota_bytes,
    )
    session.add(project)
    session.flush()
    session.add(Membership(project_id=project_id, user_id=owner.id, role="admin"))
    if owner.default_project_id is None:
        owner.default_project_id = project_id
    session.flush()
    return project


def get_project(session: Session, project_id: str) -> Project:
    # An id no project can have (NUL, lone surrogates, odd text) is answered before it reaches the database,
    # which may refuse such text with an error of its own.
    project = session.get(Project, project_id) if PROJECT_ID_RE.match(project_id) else None
    if project is None:
        raise project_not_found(project_id)
    return project


def project_not_found(project_id: str) -> NotFound:
    """The answer for a project that does not exist, and for a private one to a non-member: the same."""
    return NotFound(
        f"project {project_id} does not exist, or is private to its members", error_code="project_not_found"
    )


def set_member(session: Session, project_id: str, user: User, role: str) -> Membership:
    """Give ``user`` exactly ``role`` in the project (adding or changing the membership)."""
    if role not in ROLES:
        raise InvalidRequest(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    project = get_project(session, project_id)
    membership = session.get(Membership, (project_id, user.id))
    if project.owner_user_id == user.id and role != "admin":
        raise Conflict(f"{user.name} owns project {project_id} and stays its admin", error_code="owner_role")
    if membership is None:
        membership = Membership(project_id=project_id, user_id=user.id, role=role)
        session.add(membership)
    else:
        membership.role = role
    if user.default_project_id is None:
        user.default_project_id = project_id
    session.flush()
    return membership


def remove_member(session: Session, project_id: str, user: User) -> bool:
    project = get_project(session, project_id)
    if project.owner_user_id == user.id:
        raise Conflict(f"{user.name} owns project {project_id} and cannot be removed", error_code="owner_role")
    membership = session.get(Membership, (project_id, user.id))
    if membership is None:
        return False
    session.delete(membership)
    if user.default_project_id == project_id:
        user.default_project_id = None
    return True


def set_public_read(session: Session, project_id: str, public_read: bool) -> Project:
    project = get_project(session, project_id)
    project.public_read = public_read
    return project


def role_of(session: Session, project_id: str, user_id: int | None) -> str | None:
    if user_id is None:
        return None
    membership = session.get(Membership, (project_id, user_id))
    return membership.role if membership is not None else None


_PROJECT_AND_ROLE = (
    select(Project, Membership.role)
    .outerjoin(Membership, and_(Membership.project_id == Project.id, Membership.user_id == bindparam("user_id")))
    .where(Project.id == bindparam("project_id"))
)


def require_role(
    session: Session, project_id: str, user: User | None, needed: str, *, members_only: bool = False
) -> Project:
    """The project, if ``user`` (None = anonymous) may act with role ``needed``; ``read`` on a public project
    is open to everyone, unless ``members_only``."""
    # The project and the user's role in it in one query (every request of a project asks this).
    found = (
        session.execute(_PROJECT_AND_ROLE, {"project_id": project_id, "user_id": user.id if user else None}).first()
        if PROJECT_ID_RE.match(project_id)
        else None
    )
    if found is None:
        raise project_not_found(project_id)
    project, role = found
    if needed == "read" and project.public_read and not members_only:
        return project
    if role is None:
        if not project.public_read:
            raise project_not_found(project_id)  # "not yours" answered as "no such thing"
        who = user.name if user is not None else "an anonymous client"
        raise Forbidden(f"{who} is not a member of project {project_id}", error_code="not_a_member")
    if _ROLE_RANK[role] < _ROLE_RANK[needed]:
        raise Forbidden(
            f"{user.name if user else 'anonymous'} has role '{role}' in project {project_id}; this needs '{needed}'",
            error_code="insufficient_role",
        )
    return project


def caller_project_id(caller: Caller, project_id: str | None) -> str:
    """``project_id``, else the caller's default project; a clear error if there is neither."""
    if project_id:
        return project_id
    if caller.user is not None and caller.user.default_project_id:
        return caller.user.default_project_id
    if caller.client_id is not None and caller.user is None:
        raise _not_registered(caller)
    who = caller.user.name if caller.user is not None else "an anonymous client"
    raise InvalidRequest(
        f"{who} has no default project; name one (project_id, or KACHERY_CLOUD_PROJECT)", error_code="no_project"
    )


def caller_project(session: Session, caller: Caller, project_id: str | None, needed: str) -> Project:
    """The project named (else the caller's default one), if the caller may act on it with role ``needed``."""
    return require_caller_role(session, caller_project_id(caller, project_id), caller, needed)


def require_caller_role(session: Session, project_id: str, caller: Caller, needed: str) -> Project:
    """:func:`require_role` for a request's caller: a signed but unregistered client that is refused is told to
    register, rather than that an anonymous client is not a member (whether the project exists or not, so
    that this answer tells nothing either)."""
    try:
        return require_role(session, project_id, caller.user, needed)
    except (Forbidden, NotFound):
        if caller.client_id is not None and caller.user is None:
            raise _not_registered(caller) from None
        raise


def _not_registered(caller: Caller) -> ClientNotRegistered:
    return ClientNotRegistered(f"client {caller.client_id} is not registered with this server; run kachery-cloud-init")


def projects_of_user(session: Session, user: User) -> list[tuple[Project, str]]:
    rows = session.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == user.id)
        .order_by(Project.id)
    ).all()
    return [(project, role) for project, role in rows]


def all_projects(session: Session) -> list[Project]:
    return list(session.scalars(select(Project).order_by(Project.id)))
