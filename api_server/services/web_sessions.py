"""Browser sign-in for the web app: one-time sign-in links (``admin web-login``), sessions, and joining a
project in the browser with an invitation link.

Every secret that a browser holds (a sign-in link, a session cookie) is 32 random bytes; only its SHA-256 is
stored, so a copy of the database signs nobody in. A link is used by a conditional UPDATE, so of two browsers
racing with one link, one gets in.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from ..db.models import ServerIdentity, SignInLink, User, WebSession, now_ms
from ..errors import Conflict, Gone, NotFound
from . import invitations
from .invitations import token_digest

SIGN_IN_PATH = "/sign-in/"
DEFAULT_LINK_TTL_SEC = 15 * 60
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{20,64}")


def web_secret(session: Session) -> str:
    """The secret that signs the web app's cookies, shared by every replica (migration 0009 made it)."""
    found = session.scalars(select(ServerIdentity.web_secret)).first()
    if not found:
        raise RuntimeError("the database has no web secret; run the migrations (kachery-cloud-server start does)")
    return found


# --- sign-in links ---


def create_sign_in_link(session: Session, user: User, ttl_sec: int = DEFAULT_LINK_TTL_SEC) -> str:
    """A new one-time sign-in secret for ``user`` (the caller builds the link with :func:`link_of`)."""
    token = secrets.token_urlsafe(32)
    session.add(SignInLink(token_sha256=token_digest(token), user_id=user.id, expires_at_ms=now_ms() + ttl_sec * 1000))
    session.flush()
    return token


def sign_in_link_state(session: Session, token: str) -> tuple[str, User | None]:
    """``open``, ``used``, ``expired`` or ``unknown``, and whom the link signs in (looking does not use it)."""
    link = _find_link(session, token)
    if link is None:
        return "unknown", None
    user = session.get(User, link.user_id)
    if link.used_at_ms is not None:
        return "used", user
    return ("expired" if link.expires_at_ms <= now_ms() else "open"), user


def use_sign_in_link(session: Session, token: str) -> User:
    """The user the link signs in, using the link up (404, 409 used, 410 expired)."""
    link = _find_link(session, token)
    if link is None:
        raise NotFound("this sign-in link is not valid on this server", error_code="sign_in_link_not_found")
    if link.expires_at_ms <= now_ms():
        raise Gone("this sign-in link has expired; ask for a new one", error_code="sign_in_link_expired")
    claimed = session.execute(
        update(SignInLink)
        .where(SignInLink.token_sha256 == link.token_sha256, SignInLink.used_at_ms.is_(None))
        .values(used_at_ms=now_ms())
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:
        raise Conflict("this sign-in link was already used; ask for a new one", error_code="sign_in_link_used")
    user = session.get(User, link.user_id)
    assert user is not None  # the foreign key cascades
    return user


def accept_invitation_in_browser(session: Session, token: str, *, suggested_name: str) -> invitations.BrowserAccepted:
    """Use an invitation in the browser: as for a client (:func:`invitations.accept`), but no client is linked;
    the person signs in to the web app and links machines later."""
    return invitations.accept_for_browser(session, token, suggested_name=suggested_name)


# --- sessions ---


def start_session(session: Session, user: User, how: str, ttl_sec: int) -> str:
    """A new session for ``user``; returns the secret that goes into the cookie."""
    now = now_ms()
    session.execute(delete(WebSession).where(WebSession.expires_at_ms < now))  # indexed; keeps the table small
    token = secrets.token_urlsafe(32)
    session.add(
        WebSession(token_sha256=token_digest(token), user_id=user.id, how=how, expires_at_ms=now + ttl_sec * 1000)
    )
    session.flush()
    return token


def user_of_session(session: Session, token: str) -> User | None:
    """The signed-in user, or None for an unknown, ended or expired session."""
    if not _TOKEN_RE.fullmatch(token):
        return None
    row = session.get(WebSession, token_digest(token))
    if row is None or row.expires_at_ms <= now_ms():
        return None
    return session.get(User, row.user_id)


def end_session(session: Session, token: str) -> None:
    if _TOKEN_RE.fullmatch(token):
        session.execute(delete(WebSession).where(WebSession.token_sha256 == token_digest(token)))


def end_sessions_of(session: Session, user: User) -> None:
    session.execute(delete(WebSession).where(WebSession.user_id == user.id))


def _find_link(session: Session, token: str) -> SignInLink | None:
    return session.get(SignInLink, token_digest(token)) if _TOKEN_RE.fullmatch(token) else None


def link_of(server_url: str, token: str) -> str:
    return f"{server_url.rstrip('/')}{SIGN_IN_PATH}{token}"
