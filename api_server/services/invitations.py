"""Invitations: how people without Google join a lab. An admin makes a one-time link for a project and a role
(``kachery-cloud-server admin invite``); whoever runs ``kachery-cloud-init --invite LINK`` with it is registered
as the invitation's user (made if new) with that role.

The link's secret is 32 random bytes; only its SHA-256 is stored. A link works once and until it expires.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ..db.models import ROLES, Client, Invitation, Membership, User, now_ms
from ..errors import Conflict, Forbidden, Gone, InvalidRequest, NotFound
from . import identity, projects

MAX_TTL_SEC = 365 * 86400
DEFAULT_TTL_SEC = 7 * 86400
INVITE_PATH = "/invite/"
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{20,64}")
_USER_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")


@dataclass(frozen=True)
class Accepted:
    client: Client
    user: User
    project_id: str
    role: str | None  # None: a machine link, which gives no role, and the user has none there
    new_user: bool


def validate_user_name(name: str) -> str:
    name = name.strip()
    if not _USER_NAME_RE.fullmatch(name):
        raise InvalidRequest(
            f"{name!r} is not a user name: use 1-100 letters, digits and . _ @ + - (starting with a letter or digit)"
        )
    return name


def create_invitation(
    session: Session,
    project_id: str,
    role: str,
    *,
    user_name: str | None,
    ttl_sec: int,
    created_by: str,
    add_client: bool = False,
    new_user_only: bool = False,
    grants_role: bool = True,
) -> tuple[str, Invitation]:
    """A new invitation; returns the secret (shown once, in the link) and the row.

    A named user who does not exist yet is made now, so that nobody else can take the name before the link is
    used. A named user who already has clients is refused unless ``add_client``: the link makes whoever holds it
    that user, with all of their projects, which for a new person is a mistake (or someone took the name).

    ``new_user_only`` (the web app's invitation form, which any project admin may use) refuses every existing
    user: a link naming one would hand its holder that account. ``add_client`` with ``grants_role`` False is a
    link that only adds a machine to its user, which the web app makes for a signed-in user's own machines (the
    server's owner included); using it gives no role, so a link made before a demotion cannot undo it."""
    if role not in ROLES:
        raise InvalidRequest(f"invalid role {role!r}: use one of {', '.join(ROLES)}")
    if not 1 <= ttl_sec <= MAX_TTL_SEC:
        raise InvalidRequest("an invitation lasts from one second to one year")
    projects.get_project(session, project_id)
    if user_name is not None:
        user_name = validate_user_name(user_name)
        existing = session.scalars(select(User).where(User.name == user_name)).first()
        if existing is not None and new_user_only:
            raise Conflict(
                f"{user_name} is an existing user: an invitation naming them would make whoever holds the link "
                f"{user_name}. Add them as a member instead, or invite a new name",
                error_code="user_exists",
            )
        if existing is None:
            session.add(User(name=user_name))
        elif existing.is_local_owner and grants_role:
            raise Forbidden(
                f"{user_name} is this server's owner; invitations are for other people", error_code="owner_invitation"
            )
        elif not add_client and session.scalar(
            select(func.count()).select_from(Client).where(Client.user_id == existing.id)
        ):
            raise Conflict(
                f"{user_name} already has registered clients: the link would make whoever holds it {user_name}, with "
                "all of their projects. For another machine of theirs, add --add-client; for someone new, invite "
                "without --user or with a new name",
                error_code="user_has_clients",
            )
    token = secrets.token_urlsafe(32)
    invitation = Invitation(
        token_sha256=token_digest(token),
        project_id=project_id,
        role=role,
        grants_role=grants_role,
        user_name=user_name,
        created_by=created_by[:255],
        expires_at_ms=now_ms() + ttl_sec * 1000,
    )
    session.add(invitation)
    session.flush()
    return token, invitation


def accept(session: Session, token: str, client_id: str, label: str, *, suggested_name: str) -> Accepted:
    """Use the invitation ``token`` for the (signature-proven) ``client_id``.

    A client not yet registered becomes the invitation's user: the named one (made if new), or, if none is
    named, a new user called after ``suggested_name``. An already registered client keeps its user, who gets the
    role; an invitation naming somebody else is refused. A role the user has already is never lowered.
    """
    identity.validate_client_id(client_id)
    invitation = _claim(session, token, client_id)
    client = session.get(Client, identity.validate_client_id(client_id))
    new_user = False
    if client is not None:
        user = session.get(User, client.user_id)
        assert user is not None
        if invitation.user_name is not None and invitation.user_name != user.name:
            raise Conflict(
                f"this invitation is for {invitation.user_name}, and this client is registered to {user.name}; use "
                "another KACHERY_CLOUD_DIR, or ask for an invitation without --user",
                error_code="invitation_for_another_user",
            )
    else:
        user, new_user = _user_to_become(session, invitation, suggested_name)
        client = identity.link_client(session, user, client_id, label)
    if invitation.grants_role:
        role = _grant(session, invitation.project_id, user, invitation.role)
    else:
        role = projects.role_of(session, invitation.project_id, user.id)
    session.flush()
    return Accepted(client=client, user=user, project_id=invitation.project_id, role=role, new_user=new_user)


@dataclass(frozen=True)
class BrowserAccepted:
    user: User
    project_id: str
    role: str
    new_user: bool


def accept_for_browser(session: Session, token: str, *, suggested_name: str) -> BrowserAccepted:
    """Use the invitation ``token`` in the web app: the person becomes the invitation's user (or a new one called
    after ``suggested_name``) with its role, and links machines later. An invitation that names a user who
    already has clients is refused here: signing in as them in a browser would be the whole account too, and
    ``--add-client`` promised only one more machine."""
    invitation = _claim(session, token, None)
    if not invitation.grants_role:
        raise Conflict(
            "this link adds a machine to an account: use it with kachery-cloud-init --invite on that machine",
            error_code="invitation_for_a_client",
        )
    if invitation.user_name is not None:
        existing = session.scalars(select(User).where(User.name == invitation.user_name)).first()
        if existing is not None and _has_clients(session, existing):
            raise Conflict(
                f"this invitation adds a machine to {invitation.user_name}'s account: use it with "
                "kachery-cloud-init --invite on that machine, not in a browser",
                error_code="invitation_for_a_client",
            )
    user, new_user = _user_to_become(session, invitation, suggested_name)
    role = _grant(session, invitation.project_id, user, invitation.role)
    session.flush()
    return BrowserAccepted(user=user, project_id=invitation.project_id, role=role, new_user=new_user)


def _claim(session: Session, token: str, client_id: str | None) -> Invitation:
    invitation = _open(session, token)
    # Claimed first, by a conditional update: of two clients using one link at once, one wins (the other's
    # transaction sees no row left to claim); a failure later rolls the claim back with everything else.
    claimed = session.execute(
        update(Invitation)
        .where(Invitation.token_sha256 == invitation.token_sha256, Invitation.used_at_ms.is_(None))
        .values(used_at_ms=now_ms(), used_by_client_id=client_id)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise Conflict(
            "this invitation link was already used; ask the lab's admin for a new one", error_code="invitation_used"
        )
    return invitation


def list_invitations(session: Session, project_id: str | None = None) -> list[Invitation]:
    query = select(Invitation).order_by(Invitation.created_at_ms)
    if project_id is not None:
        query = query.where(Invitation.project_id == project_id)
    return list(session.scalars(query))


def invitation_state(invitation: Invitation) -> str:
    if invitation.used_at_ms is not None:
        return "used"
    return "expired" if invitation.expires_at_ms <= now_ms() else "open"


def find(session: Session, token: str) -> Invitation | None:
    return session.get(Invitation, token_digest(token)) if _TOKEN_RE.fullmatch(token) else None


def _open(session: Session, token: str) -> Invitation:
    invitation = find(session, token)
    if invitation is None:
        raise NotFound(
            "this invitation link is not valid on this server; check that it was copied whole",
            error_code="invitation_not_found",
        )
    if invitation.used_at_ms is not None:
        raise Conflict(
            "this invitation link was already used; ask the lab's admin for a new one", error_code="invitation_used"
        )
    if invitation.expires_at_ms <= now_ms():
        raise Gone(
            "this invitation link has expired; ask the lab's admin for a new one", error_code="invitation_expired"
        )
    return invitation


def _user_to_become(session: Session, invitation: Invitation, suggested_name: str) -> tuple[User, bool]:
    if invitation.user_name is not None:
        existing = session.scalars(select(User).where(User.name == invitation.user_name)).first()
        if existing is not None:
            # The owner's own machine link (it grants no role) may add a machine of the owner's; nothing else.
            if existing.is_local_owner and invitation.grants_role:  # made an owner after the invitation was made
                raise Forbidden("invitations cannot make anyone this server's owner", error_code="owner_invitation")
            return existing, False
        wanted = invitation.user_name
    else:
        # Never an existing user of that name: the person asking chose it.
        wanted = _clean_suggestion(suggested_name)
    user = User(name=identity.unique_user_name(session, wanted))
    session.add(user)
    session.flush()
    return user, True


def _grant(session: Session, project_id: str, user: User, role: str) -> str:
    """Give ``user`` at least ``role``; the role they now have."""
    membership = session.get(Membership, (project_id, user.id))
    if membership is not None and ROLES.index(membership.role) >= ROLES.index(role):
        return membership.role
    projects.set_member(session, project_id, user, role)
    return role


def _has_clients(session: Session, user: User) -> bool:
    return bool(session.scalar(select(func.count()).select_from(Client).where(Client.user_id == user.id)))


def _clean_suggestion(name: str) -> str:
    # No "@" or "+": a name the person picks must not pass for an email (which add-member also looks users up
    # by) or for the owner's "<login>@localhost".
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "", name.strip())[:100].lstrip("._-")
    return cleaned or "member"


def token_digest(token: str) -> str:
    """What is stored of a link's secret (here and for sign-in links): its SHA-256, in hex."""
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def link_of(server_url: str, token: str) -> str:
    return f"{server_url.rstrip('/')}{INVITE_PATH}{token}"
