"""The tables, as SQLAlchemy 2 declarative models. Alembic migrations in ``migrations/versions`` create them;
``tests/api_server/test_migrations.py`` checks that the two agree.

Times are integer milliseconds since the Unix epoch (``*_ms``): the same on SQLite and PostgreSQL, with no
time-zone conversions to get wrong.
"""

from __future__ import annotations

import time

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints, so migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ROLES = ("read", "write", "admin")


def now_ms() -> int:
    return int(time.time() * 1000)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A person. Google users are found by ``google_sub`` (or, the first time, by a verified ``email`` an admin
    already added); the embedded server's owner has ``is_local_owner``."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    email: Mapped[str | None] = mapped_column(String(320), unique=True)
    google_sub: Mapped[str | None] = mapped_column(String(255), unique=True)
    is_local_owner: Mapped[bool] = mapped_column(Boolean, default=False)
    default_project_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("projects.id", ondelete="SET NULL", use_alter=True)
    )
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class Client(Base):
    """A machine or process identity: the hex Ed25519 public key is the id."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    label: Mapped[str] = mapped_column(String(255), default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    # When it last sent a signed request (kept to the minute: auth.LAST_SEEN_RESOLUTION_MS), for the web app.
    last_seen_ms: Mapped[int | None] = mapped_column(BigInteger)


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(255), default="")
    owner_user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    public_read: Mapped[bool] = mapped_column(Boolean, default=False)
    storage_quota_bytes: Mapped[int | None] = mapped_column(BigInteger)
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    # The role a client needs to request tasks that do not exist yet: "write" (default) or "read" (anyone who
    # may read the project; on a public project, any registered client). Running tasks always needs "write".
    task_request_role: Mapped[str] = mapped_column(String(16), default="write", server_default="write")
    # What the project keeps, in bytes: blobs, mutable keys and values, feed messages and their signatures, task
    # inputs and results. Changed by the transaction that changes the data, and what the quota limits
    # (services/usage.charge).
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (CheckConstraint("role IN ('read', 'write', 'admin')", name="role"),)

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))


class Registration(Base):
    """A pending browser registration: the client proved its key; a person still has to sign in."""

    __tablename__ = "registrations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the secret in the registration link
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    label: Mapped[str] = mapped_column(String(255), default="")
    # Printed only by kachery-cloud-init; the person types it on the page, which proves they see the terminal
    # of the machine being linked (a link sent by someone else, or a leaked one, is not enough).
    verification_code: Mapped[str] = mapped_column(String(16))
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The network address the registration came from: pending ones are capped per address.
    address: Mapped[str] = mapped_column(String(64), default="", server_default="", index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)


class Invitation(Base):
    """A one-time link an admin made: whoever opens it with kachery-cloud-init becomes ``user_name`` (made if new;
    a new user of their own if none is named) with ``role`` in the project. Only the SHA-256 of the link's
    secret is kept, so a copy of the database lets nobody in."""

    __tablename__ = "invitations"
    __table_args__ = (CheckConstraint("role IN ('read', 'write', 'admin')", name="role"),)

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    user_name: Mapped[str | None] = mapped_column(String(255))
    created_by: Mapped[str] = mapped_column(String(255), default="")
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    used_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    used_by_client_id: Mapped[str | None] = mapped_column(String(64))
    # False for a link that only adds a machine to its user (the web app's "link another machine"): using it
    # gives no role, so a link made before a demotion cannot undo it. Migration 0009.
    grants_role: Mapped[bool] = mapped_column(Boolean, default=True, server_default="1")


class ServerIdentity(Base):
    """One row: the id this server (all its replicas) signs requests for. Made by migration 0007."""

    __tablename__ = "server_identity"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    # Signs the web app's cookies (session and CSRF), so that every replica accepts what another one set.
    # Made by migration 0009; only the database holds it.
    web_secret: Mapped[str | None] = mapped_column(String(64))


class WebSession(Base):
    """A browser signed in as ``user_id``. The cookie holds the secret; only its SHA-256 is kept here, and
    deleting the row (sign-out, a removed user) ends the session on every replica at once."""

    __tablename__ = "web_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    how: Mapped[str] = mapped_column(String(16))  # link | invitation | google
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger, index=True)


class SignInLink(Base):
    """A one-time browser sign-in link that ``admin web-login`` printed; only the secret's SHA-256 is kept."""

    __tablename__ = "sign_in_links"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger)
    used_at_ms: Mapped[int | None] = mapped_column(BigInteger)


class RequestNonce(Base):
    """Nonces seen within the signature window; the primary key makes a replay fail on every replica."""

    __tablename__ = "request_nonces"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    nonce: Mapped[str] = mapped_column(String(32), primary_key=True)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger, index=True)


# --- blobs, uploads and usage (migration 0002; used from the cloud store/load onwards) ---


class Blob(Base):
    """A verified object in a project: its bytes in the bucket have SHA-1 ``sha1``."""

    __tablename__ = "blobs"
    __table_args__ = (Index("ix_blobs_sha1", "sha1"),)  # find: by hash, whatever the project

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    sha1: Mapped[str] = mapped_column(String(40), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    created_by_client_id: Mapped[str | None] = mapped_column(String(64))
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    # None: the canonical key of (project_id, sha1); else the key the verified multipart upload wrote, or the
    # key of the pack that holds this blob at ``pack_offset``.
    object_key: Mapped[str | None] = mapped_column(Text)
    pack_offset: Mapped[int | None] = mapped_column(BigInteger)


class Upload(Base):
    """An upload in progress: a single presigned PUT or an S3 multipart upload, not yet verified."""

    __tablename__ = "uploads"
    __table_args__ = (Index("ix_uploads_project_sha1", "project_id", "sha1"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    sha1: Mapped[str] = mapped_column(String(40))
    size: Mapped[int] = mapped_column(BigInteger)
    object_key: Mapped[str] = mapped_column(Text)
    multipart_upload_id: Mapped[str | None] = mapped_column(Text)
    # "put": one presigned PUT whose SHA-1 the store checks; "multipart": parts, re-hashed by the server.
    method: Mapped[str] = mapped_column(String(16), default="multipart")
    part_size: Mapped[int | None] = mapped_column(BigInteger)
    client_id: Mapped[str] = mapped_column(String(64))
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    expires_at_ms: Mapped[int] = mapped_column(BigInteger, index=True)


class UsageCounter(Base):
    """Requests and bytes per project and UTC day."""

    __tablename__ = "usage_counters"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)  # YYYY-MM-DD
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_in: Mapped[int] = mapped_column(BigInteger, default=0)
    bytes_out: Mapped[int] = mapped_column(BigInteger, default=0)
    # What the project kept at the day's last change of it (None: unchanged that day; the day before holds).
    stored_bytes: Mapped[int | None] = mapped_column(BigInteger)


# --- mutables and feeds (migration 0004) ---


# Keys sort in byte order on every backend: SQLite compares bytes, PostgreSQL's default collation may not.
_MUTABLE_KEY = String(1024).with_variant(String(1024, collation="C"), "postgresql")


class Mutable(Base):
    """A named value of a project. A deleted mutable stays as a row with ``value`` None (a tombstone), so its
    version keeps counting up: a compare-and-swap against an old version can never succeed by accident after
    the key was deleted and set again."""

    __tablename__ = "mutables"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(_MUTABLE_KEY, primary_key=True)
    value: Mapped[bytes | None] = mapped_column(LargeBinary)  # UTF-8; bytes, since PostgreSQL text refuses NUL
    version: Mapped[int] = mapped_column(BigInteger)
    updated_by_client_id: Mapped[str] = mapped_column(String(64))
    updated_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class Feed(Base):
    """An append-only log of a project. ``num_messages`` is the next message number; appends raise it under
    the row's lock, in the transaction that inserts the messages, so numbers have no gaps or duplicates."""

    __tablename__ = "feeds"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    num_messages: Mapped[int] = mapped_column(BigInteger, default=0)
    created_by_client_id: Mapped[str] = mapped_column(String(64))
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)


class FeedMessage(Base):
    """One message: its canonical JSON exactly as the appending client signed it."""

    __tablename__ = "feed_messages"
    __table_args__ = (Index("uq_feed_messages_append", "feed_id", "append_id", unique=True),)

    feed_id: Mapped[str] = mapped_column(ForeignKey("feeds.id", ondelete="CASCADE"), primary_key=True)
    number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    body: Mapped[str] = mapped_column(Text)
    client_id: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))
    appended_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    # Set on the first message of each append only: a retried append finds it and is not applied twice.
    append_id: Mapped[str | None] = mapped_column(String(64))


# --- tasks (migration 0005) ---


class Task(Base):
    """A task of a project: a calculation (its id is the job id, the hash of its name and input, so a finished
    one is found again) or an action (a random id chosen by its requester).

    States: pending → running (claimed by one worker under a lease it renews) → finished | error; pending or
    running → cancelled. A running task whose lease ran out goes back to pending (or to error once
    ``attempts`` reaches ``max_attempts``). ``claim_id`` names the current claim: a worker that lost its
    claim can neither renew nor complete it. ``status_version`` rises on every change a requester waits for: a
    new run, a progress message, the end (not on claims and hand-backs, which concern workers only).
    """

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'running', 'finished', 'error', 'cancelled')", name="state"),
        CheckConstraint("task_type IN ('calculation', 'action')", name="task_type"),
        Index("ix_tasks_queue", "project_id", "state", "created_at_ms"),
    )

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    task_type: Mapped[str] = mapped_column(String(16))
    task_name: Mapped[str] = mapped_column(String(255))
    input: Mapped[str] = mapped_column(Text)  # canonical JSON
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    requested_by_client_id: Mapped[str] = mapped_column(String(64))
    created_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    updated_at_ms: Mapped[int] = mapped_column(BigInteger, default=now_ms)
    status_version: Mapped[int] = mapped_column(Integer, default=1)
    claim_id: Mapped[str | None] = mapped_column(String(32))
    worker_id: Mapped[str | None] = mapped_column(String(32))  # one TaskBackend.run of a worker client
    worker_client_id: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    progress: Mapped[str | None] = mapped_column(Text)
    result_sha1: Mapped[str | None] = mapped_column(String(40))
    result_size: Mapped[int | None] = mapped_column(BigInteger)
    # A small result's JSON, also kept here so that requesters get it in their answer without a download.
    result_json: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
