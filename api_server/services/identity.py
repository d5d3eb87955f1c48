"""Users, clients and registration: the local owner of the embedded server, Google sign-in, admin-registered
clients, and what a client may learn about itself."""

from __future__ import annotations

import getpass
import secrets
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from kachery_cloud.protocol.request_signing import CLIENT_ID_RE

from ..db.models import Client, Registration, User, now_ms
from ..errors import Conflict, Gone, InvalidRequest, NotFound, RateLimited
from ..google_tokens import GoogleIdentity
from . import projects

DEFAULT_PROJECT_ID = "default"
MAX_LABEL_LENGTH = 255


def clean_label(label: str | None) -> str:
    label = (label or "").strip()
    if len(label) > MAX_LABEL_LENGTH or any(ord(c) < 32 for c in label):
        raise InvalidRequest(f"a label has at most {MAX_LABEL_LENGTH} printable characters")
    return label


def validate_client_id(client_id: str) -> str:
    if not CLIENT_ID_RE.match(client_id):
        raise InvalidRequest(
            f"invalid client id {client_id!r}: expected 64 lowercase hex digits (an Ed25519 public key)"
        )
    return client_id


# --- users ---


def ensure_local_owner(session: Session) -> User:
    """The embedded server's owner and its ``default`` project, created on first start."""
    owner = session.scalars(select(User).where(User.is_local_owner.is_(True))).first()
    if owner is None:
        name = f"{_login_name()}@localhost"
        owner = User(name=unique_user_name(session, name), is_local_owner=True)
        session.add(owner)
        session.flush()
    if session.get(projects.Project, DEFAULT_PROJECT_ID) is None:
        projects.create_project(session, owner=owner, project_id=DEFAULT_PROJECT_ID, label="default project")
    return owner


def find_user(session: Session, name_or_email: str) -> User:
    key = name_or_email.strip()
    user = session.scalars(select(User).where((User.name == key) | (User.email == key.lower()))).first()
    if user is None:
        raise NotFound(f"no user named {name_or_email!r}", error_code="user_not_found")
    return user


def create_user(session: Session, name: str, *, email: str | None = None) -> User:
    """A new user (who will join by invitation, or sign in with Google as ``email``)."""
    from .invitations import validate_user_name

    name = validate_user_name(name)
    if session.scalars(select(User).where(User.name == name)).first() is not None:
        raise Conflict(f"there is already a user named {name!r}", error_code="user_exists")
    if email is not None:
        email = email.strip().lower()
        if "@" not in email:
            raise InvalidRequest(f"{email!r} is not an email address")
        if session.scalars(select(User).where(User.email == email)).first() is not None:
            raise Conflict(f"another user has the email {email}", error_code="email_taken")
    user = User(name=name, email=email)
    session.add(user)
    session.flush()
    return user


def remove_user(session: Session, name: str, *, give_projects_to: str | None = None) -> dict[str, Any]:
    """Remove a user with their clients (whose signatures are refused from then on), memberships and the open
    invitations naming them. Projects they own go to ``give_projects_to`` (who becomes their admin); without
    it, owning a project stops the removal. The server's owner cannot be removed."""
    from ..db.models import Invitation, Membership

    user = find_user(session, name)
    if user.is_local_owner:
        raise Conflict(f"{user.name} is this server's owner and cannot be removed", error_code="owner_role")
    owned = list(session.scalars(select(projects.Project).where(projects.Project.owner_user_id == user.id)))
    if owned and give_projects_to is None:
        raise Conflict(
            f"{user.name} owns {', '.join(p.id for p in owned)}; name who takes them over with --give-projects-to",
            error_code="owns_projects",
        )
    if owned:
        heir = find_user(session, give_projects_to or "")
        if heir.id == user.id:
            raise InvalidRequest("a user cannot take over their own projects")
        for project in owned:
            project.owner_user_id = heir.id
            projects.set_member(session, project.id, heir, "admin")
    client_ids = list(session.scalars(select(Client.id).where(Client.user_id == user.id)))
    for client_id in client_ids:
        remove_client(session, client_id)
    session.execute(delete(Membership).where(Membership.user_id == user.id))
    session.execute(delete(Registration).where(Registration.user_id == user.id))
    session.execute(delete(Invitation).where(Invitation.user_name == user.name, Invitation.used_at_ms.is_(None)))
    session.delete(user)
    session.flush()
    return {"user": user.name, "clients": len(client_ids), "projects_given": [p.id for p in owned]}


def find_or_add_user_by_email(session: Session, email: str) -> User:
    """The user with this email, or a new one who has not signed in yet (so admins can add people before
    they first sign in with Google)."""
    email = email.strip().lower()
    if "@" not in email:
        raise InvalidRequest(f"{email!r} is neither a known user name nor an email address")
    user = session.scalars(select(User).where(User.email == email)).first()
    if user is None:
        user = User(name=unique_user_name(session, email), email=email)
        session.add(user)
        session.flush()
    return user


def user_for_google_identity(session: Session, identity: GoogleIdentity, default_quota: int | None) -> User:
    """The user behind a verified Google identity: by Google's subject id, else by the verified email an admin
    added; a new user gets a personal project as default."""
    user = session.scalars(select(User).where(User.google_sub == identity.sub)).first()
    if user is None:
        user = session.scalars(select(User).where(User.email == identity.email)).first()
        if user is not None and user.google_sub is not None:
            raise Conflict(
                f"{identity.email} belongs to another Google account on this server; ask an administrator",
                error_code="email_taken",
            )
        if user is not None:
            user.google_sub = identity.sub
    if user is None:
        user = User(name=unique_user_name(session, identity.email), email=identity.email, google_sub=identity.sub)
        session.add(user)
        session.flush()
    if user.default_project_id is None and not projects.projects_of_user(session, user):
        projects.create_project(
            session, owner=user, label=f"personal project of {user.name}", storage_quota_bytes=default_quota
        )
    return user


def unique_user_name(session: Session, wanted: str) -> str:
    name, n = wanted, 1
    while session.scalar(select(func.count()).select_from(User).where(User.name == name)):
        n += 1
        name = f"{wanted}-{n}"
    return name


def _login_name() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "owner"


# --- clients ---


def link_client(session: Session, user: User, client_id: str, label: str) -> Client:
    """Register ``client_id`` to ``user``; idempotent for the same user, a conflict for another one."""
    validate_client_id(client_id)
    client = session.get(Client, client_id)
    if client is not None:
        if client.user_id != user.id:
            raise Conflict(
                f"client {client_id} is already registered to another user; remove it first",
                error_code="client_registered_elsewhere",
            )
        label = clean_label(label)
        if label:
            client.label = label
        return client
    client = Client(id=client_id, user_id=user.id, label=clean_label(label))
    session.add(client)
    session.flush()
    return client


def remove_client(session: Session, client_id: str) -> None:
    client = session.get(Client, client_id)
    if client is None:
        raise NotFound(f"client {client_id} is not registered", error_code="client_not_found")
    session.delete(client)
    # An old registration link must not bring the client back.
    session.execute(delete(Registration).where(Registration.client_id == client_id))


def list_clients(session: Session) -> list[tuple[Client, User]]:
    return [(c, u) for c, u in session.execute(select(Client, User).join(User).order_by(User.name, Client.id))]


def client_info(session: Session, client: Client, server_url: str) -> dict[str, Any]:
    user = session.get(User, client.user_id)
    assert user is not None
    return {
        "client_id": client.id,
        "label": client.label,
        "user": user.name,
        "email": user.email,
        "default_project_id": user.default_project_id,
        "projects": [
            {"project_id": p.id, "label": p.label, "role": role, "public_read": p.public_read}
            for p, role in projects.projects_of_user(session, user)
        ],
        "server_url": server_url,
    }


# --- browser registration ---


MAX_CODE_ATTEMPTS = 5


def start_registration(
    session: Session, client_id: str, label: str, ttl_sec: int, *, address: str, max_per_address: int
) -> Registration:
    """A pending registration for a client that proved its key; its id is the secret in the link. The same
    client asking again gets its pending registration back; one ``address`` may have ``max_per_address``
    pending at once (:class:`RateLimited` beyond), since anyone can make keys to register."""
    now = now_ms()
    # Expired registrations are of no use to anyone: drop them (a day late, so a late page view still
    # says "expired" rather than "unknown").
    session.execute(delete(Registration).where(Registration.expires_at_ms < now - 86_400_000))
    pending = (Registration.user_id.is_(None), Registration.expires_at_ms > now)
    mine = session.scalars(
        select(Registration).where(Registration.client_id == client_id, *pending).order_by(Registration.expires_at_ms)
    ).first()
    if mine is not None and mine.expires_at_ms - now > 60_000:  # still a minute to go: time to sign in
        return mine
    from_address = session.scalars(
        select(Registration.expires_at_ms)
        .where(Registration.address == address, *pending)
        .order_by(Registration.expires_at_ms)
    ).all()
    if len(from_address) >= max_per_address:
        wait = max(1, (from_address[0] - now + 999) // 1000)
        raise RateLimited(
            f"{len(from_address)} registrations from this address are waiting for someone to sign in (at most "
            f"{max_per_address}); complete one, or try again in {wait} s",
            retry_after_sec=wait,
        )
    registration = Registration(
        id=secrets.token_urlsafe(24),
        client_id=validate_client_id(client_id),
        label=clean_label(label),
        verification_code=_verification_code(),
        failed_attempts=0,
        address=address[:64],
        expires_at_ms=now + ttl_sec * 1000,
    )
    session.add(registration)
    session.flush()
    return registration


def get_registration(session: Session, registration_id: str) -> Registration:
    registration = session.get(Registration, registration_id) if len(registration_id) <= 64 else None
    if registration is None:
        raise NotFound("this registration link is not valid", error_code="registration_not_found")
    return registration


def open_registration(session: Session, registration_id: str) -> Registration:
    """A registration that a person may still complete."""
    registration = get_registration(session, registration_id)
    if registration.user_id is not None:
        raise Conflict("this registration link was already used", error_code="registration_used")
    if registration.expires_at_ms < now_ms():
        raise Gone("this registration link has expired; run kachery-cloud-init again")
    return registration


def check_verification_code(registration: Registration, typed: str) -> bool:
    """Whether ``typed`` is the code kachery-cloud-init printed (case, spaces and dashes ignored). After
    :data:`MAX_CODE_ATTEMPTS` wrong codes the registration is closed. The caller commits either way."""
    expected = _normalize_code(registration.verification_code)
    if secrets.compare_digest(_normalize_code(typed).encode(), expected.encode()):
        return True
    registration.failed_attempts += 1
    if registration.failed_attempts >= MAX_CODE_ATTEMPTS:
        registration.expires_at_ms = 0
    return False


def complete_registration(session: Session, registration_id: str, user: User) -> Client:
    registration = open_registration(session, registration_id)
    registration.user_id = user.id
    return link_client(session, user, registration.client_id, registration.label)


def registration_state(registration: Registration) -> str:
    if registration.user_id is not None:
        return "registered"
    return "expired" if registration.expires_at_ms < now_ms() else "pending"


def _normalize_code(code: str) -> str:
    return "".join(c for c in code.upper() if c.isalnum())[:32]


def _verification_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I
    code = "".join(secrets.choice(alphabet) for _ in range(8))
    return f"{code[:4]}-{code[4:]}"
