"""Usage counters per project and UTC day: API requests, bytes recorded (in), bytes handed out (out); and the
bytes each project keeps, which its quota limits.

``bytes_out`` counts what the server handed out URLs for (whole blobs, or the range asked for): the bytes
themselves flow between client and store, where the server cannot see them.

What a project keeps (``projects.stored_bytes``) is everything a writer can make the server hold for it: its
blobs, its mutables (key and value), its feed messages (body and signature), its tasks' inputs and results.
The transaction that adds or removes such data changes the count by the same bytes (:func:`charge`), in one
conditional UPDATE, so that concurrent writers can never take a project over its quota together.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import LargeBinary, cast, func, select, text
from sqlalchemy.orm import Session

from ..db.models import Blob, Feed, FeedMessage, Mutable, Project, Task, UsageCounter
from ..errors import QuotaExceeded


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


# The same upsert in SQLite (3.24+) and PostgreSQL. Plain SQL: the ORM's dialect-specific upsert was compiled
# afresh on every request and cost more than the rest of a small request's transaction.
ADD_USAGE = text(
    "INSERT INTO usage_counters (project_id, day, requests, bytes_in, bytes_out) "
    "VALUES (:project_id, :day, :requests, :bytes_in, :bytes_out) "
    "ON CONFLICT (project_id, day) DO UPDATE SET requests = usage_counters.requests + excluded.requests, "
    "bytes_in = usage_counters.bytes_in + excluded.bytes_in, bytes_out = usage_counters.bytes_out + excluded.bytes_out"
)


def add_usage(session: Session, project_id: str, *, requests: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
    """Add to today's counters of ``project_id``: in the server's :class:`~.usage_meter.UsageMeter`, which writes
    them in batches, or (the admin CLI, which has none) at once, by one upsert in ``session``'s transaction."""
    meter = session.info.get("usage_meter")
    if meter is not None:
        meter.add(project_id, requests=requests, bytes_in=bytes_in, bytes_out=bytes_out)
        return
    values = {"requests": requests, "bytes_in": bytes_in, "bytes_out": bytes_out}
    session.execute(ADD_USAGE, {"project_id": project_id, "day": today(), **values})


def usage_of(session: Session, project_id: str) -> list[dict[str, Any]]:
    """The counters of ``project_id``, oldest day first."""
    rows = session.scalars(select(UsageCounter).where(UsageCounter.project_id == project_id).order_by(UsageCounter.day))
    return [
        {
            "day": row.day,
            "requests": row.requests,
            "bytes_in": row.bytes_in,
            "bytes_out": row.bytes_out,
            "stored_bytes": row.stored_bytes,
        }
        for row in rows
    ]


# Adds ``delta`` unless that takes the project over its quota (a decrease always applies). PostgreSQL evaluates
# the condition again on the locked row, so two writers racing for the last bytes cannot both get them.
_CHARGE = text(
    "UPDATE projects SET stored_bytes = stored_bytes + :delta WHERE id = :project_id "
    "AND (:delta <= 0 OR storage_quota_bytes IS NULL OR stored_bytes + :delta <= storage_quota_bytes) "
    "RETURNING stored_bytes"
)


# What the project keeps after a change, as the day's figure (the web app's usage chart).
_RECORD_STORED = text(
    "INSERT INTO usage_counters (project_id, day, requests, bytes_in, bytes_out, stored_bytes) "
    "VALUES (:project_id, :day, 0, 0, 0, :stored) "
    "ON CONFLICT (project_id, day) DO UPDATE SET stored_bytes = excluded.stored_bytes"
)


def charge(session: Session, project_id: str, delta: int) -> bool:
    """Count ``delta`` more (or, negative, fewer) bytes kept for the project; False (and nothing counted) if
    that would take it over its quota."""
    if delta == 0:
        return True
    row = session.execute(_CHARGE, {"project_id": project_id, "delta": delta}).first()
    if row is None:
        return False
    session.execute(_RECORD_STORED, {"project_id": project_id, "day": today(), "stored": row[0]})
    return True


def charge_or_refuse(session: Session, project_id: str, delta: int, what: str) -> None:
    """:func:`charge`, raising :class:`QuotaExceeded` (naming ``what`` was to be stored) if it does not fit."""
    if charge(session, project_id, delta):
        return
    project = session.get(Project, project_id)
    quota = project.storage_quota_bytes if project is not None else None
    used = project.stored_bytes if project is not None else 0
    raise QuotaExceeded(
        f"storing {what} ({human_bytes(delta)}) would take project {project_id} over its quota of "
        f"{human_bytes(quota or 0)} ({human_bytes(used)} used); ask a project admin to raise it"
    )


def check_fits(project: Project, new_bytes: int, what: str) -> None:
    """Refuse early, before anything is uploaded, what cannot fit now (charged later, when it is recorded)."""
    quota = project.storage_quota_bytes
    if quota is not None and new_bytes > 0 and project.stored_bytes + new_bytes > quota:
        raise QuotaExceeded(
            f"storing {what} ({human_bytes(new_bytes)}) would take project {project.id} over its quota of "
            f"{human_bytes(quota)} ({human_bytes(project.stored_bytes)} used); ask a project admin to raise it"
        )


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def stored_by_kind(session: Session, project_id: str) -> dict[str, int]:
    """What the project keeps, counted afresh from its data, by kind (blobs, mutables, feed_messages, tasks): the
    breakdown ``admin usage`` shows; their sum equals the project's ``stored_bytes``."""
    postgresql = session.get_bind().dialect.name == "postgresql"

    def size(column: Any) -> Any:  # bytes, also of text (PostgreSQL's length() counts characters)
        return func.octet_length(column) if postgresql else func.length(cast(column, LargeBinary))

    def total(expression: Any, *where: Any, join: Any = None) -> int:
        query = select(func.coalesce(func.sum(expression), 0))
        if join is not None:
            query = query.select_from(FeedMessage).join(join)
        return int(session.scalar(query.where(*where)) or 0)

    return {
        "blobs": total(Blob.size, Blob.project_id == project_id),
        "mutables": total(size(Mutable.key) + func.coalesce(size(Mutable.value), 0), Mutable.project_id == project_id),
        "feed_messages": total(
            size(FeedMessage.body) + size(FeedMessage.signature), Feed.project_id == project_id, join=Feed
        ),
        "tasks": total(size(Task.input) + func.coalesce(size(Task.result_json), 0), Task.project_id == project_id),
    }
