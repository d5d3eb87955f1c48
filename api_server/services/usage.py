"""Usage counters per project and UTC day: API requests, bytes recorded (in), bytes handed out (out).

``bytes_out`` counts what the server handed out URLs for (whole blobs, or the range asked for): the bytes
themselves flow between client and store, where the server cannot see them.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ..db.models import UsageCounter


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


# The same upsert in SQLite (3.24+) and PostgreSQL. Plain SQL: the ORM's dialect-specific upsert was compiled
# afresh on every request and cost more than the rest of a small request's transaction.
_ADD_USAGE = text(
    "INSERT INTO usage_counters (project_id, day, requests, bytes_in, bytes_out) "
    "VALUES (:project_id, :day, :requests, :bytes_in, :bytes_out) "
    "ON CONFLICT (project_id, day) DO UPDATE SET requests = usage_counters.requests + excluded.requests, "
    "bytes_in = usage_counters.bytes_in + excluded.bytes_in, bytes_out = usage_counters.bytes_out + excluded.bytes_out"
)


def add_usage(session: Session, project_id: str, *, requests: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
    """Add to today's counters of ``project_id`` (one upsert; concurrent requests never lose a count)."""
    values = {"requests": requests, "bytes_in": bytes_in, "bytes_out": bytes_out}
    session.execute(_ADD_USAGE, {"project_id": project_id, "day": today(), **values})


def usage_of(session: Session, project_id: str) -> list[dict[str, Any]]:
    """The counters of ``project_id``, oldest day first."""
    rows = session.scalars(select(UsageCounter).where(UsageCounter.project_id == project_id).order_by(UsageCounter.day))
    return [
        {"day": row.day, "requests": row.requests, "bytes_in": row.bytes_in, "bytes_out": row.bytes_out} for row in rows
    ]
