"""Usage counters per project and UTC day: API requests, bytes recorded (in), bytes handed out (out).

``bytes_out`` counts what the server handed out URLs for (whole blobs, or the range asked for): the bytes
themselves flow between client and store, where the server cannot see them.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db.models import UsageCounter


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def add_usage(session: Session, project_id: str, *, requests: int = 0, bytes_in: int = 0, bytes_out: int = 0) -> None:
    """Add to today's counters of ``project_id`` (one upsert; concurrent requests never lose a count)."""
    values = {
        "project_id": project_id,
        "day": today(),
        "requests": requests,
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
    }
    insert = _dialect_insert(session)
    table = UsageCounter.__table__
    statement = insert(table).values(**values)
    statement = statement.on_conflict_do_update(
        index_elements=[table.c.project_id, table.c.day],
        set_={
            "requests": table.c.requests + statement.excluded.requests,
            "bytes_in": table.c.bytes_in + statement.excluded.bytes_in,
            "bytes_out": table.c.bytes_out + statement.excluded.bytes_out,
        },
    )
    session.execute(statement)


def usage_of(session: Session, project_id: str) -> list[dict[str, Any]]:
    """The counters of ``project_id``, oldest day first."""
    rows = session.scalars(select(UsageCounter).where(UsageCounter.project_id == project_id).order_by(UsageCounter.day))
    return [
        {"day": row.day, "requests": row.requests, "bytes_in": row.bytes_in, "bytes_out": row.bytes_out} for row in rows
    ]


def _dialect_insert(session: Session) -> Any:
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert
