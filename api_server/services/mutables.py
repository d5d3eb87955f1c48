"""Server layer 5: mutables, the named values of a project.

- Reading needs read access (anyone, on a public project); writing needs the ``write`` role.
- Every mutable has a version: 1 when first set, one more on every set or delete. ``expected_version`` turns
  a set or delete into a compare-and-swap: it happens only if the version is still the one the caller read
  (0: the key must not be set), else :class:`VersionConflict` (409) names the current version.
- A delete leaves a tombstone (value None) that keeps the version, so versions never repeat for a key; to
  callers a key that is not set is at version 0, as ``expected_version`` counts it.
- Keys sort by their bytes (the column has the "C" collation on PostgreSQL, SQLite compares bytes), so
  listings are in the same order everywhere and a folder is one index range.
- Usage is counted at the end of each transaction, after the row lock: the per-project counter row is then
  held only briefly, not while waiting for a mutable's lock.
- Keys follow the client's key grammar (``kachery_cloud.protocol.mutable_key``); values are at most 1 MiB of UTF-8.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kachery_cloud.errors import InvalidArgumentError
from kachery_cloud.protocol.mutable_key import (
    MutableValueTooLargeError,
    encode_mutable_value,
    mutable_key,
)
from kachery_cloud.protocol.mutable_key import folder_key as canonical_folder_key

from ..auth import Caller
from ..db.models import Mutable, now_ms
from ..db.session import Database
from ..errors import Conflict, InvalidRequest
from . import projects
from .usage import add_usage, charge, charge_or_refuse

MAX_LIST = 1000  # keys per list page


class VersionConflict(Conflict):
    error_code = "version_conflict"


class MutableService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, caller: Caller, project_id: str | None, key: str) -> dict[str, Any]:
        key = _check_key(key)
        with self.db.read() as session:
            project = projects.caller_project(session, caller, project_id, "read")
            row = session.get(Mutable, (project.id, key))
            add_usage(session, project.id, requests=1)
            if row is None or row.value is None:
                return {"project_id": project.id, "key": key, "found": False, "version": 0}
            return {"project_id": project.id, "key": key, "found": True, **_describe(row)}

    def set(
        self, caller: Caller, project_id: str | None, key: str, value: str, expected_version: int | None
    ) -> dict[str, Any]:
        key = _check_key(key)
        data = _encode_value(value)
        try:
            return self._set(caller, project_id, key, data, expected_version)
        except IntegrityError:
            # Another request created the key between our look and our insert (PostgreSQL; nothing was there to
            # lock). Look again: the row exists now, so this time it is locked and the versions decide.
            return self._set(caller, project_id, key, data, expected_version)

    def _set(
        self, caller: Caller, project_id: str | None, key: str, data: bytes, expected_version: int | None
    ) -> dict[str, Any]:
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            row = _locked(session, project.id, key)
            _check_version(key, row, expected_version)
            # The key is charged once, with its row (which a delete keeps as a tombstone); the value as it changes.
            grows = len(data) - len(row.value or b"") if row is not None else len(key.encode("utf-8")) + len(data)
            charge_or_refuse(session, project.id, grows, f"the value of mutable {key!r}")
            if row is None:
                row = Mutable(project_id=project.id, key=key, version=0, updated_by_client_id="")
                session.add(row)
            _change(session, row, data, caller)
            add_usage(session, project.id, requests=1)
            return {"project_id": project.id, "key": key, "version": row.version}

    def delete(self, caller: Caller, project_id: str | None, key: str, expected_version: int | None) -> dict[str, Any]:
        key = _check_key(key)
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            row = _locked(session, project.id, key)
            _check_version(key, row, expected_version)
            deleted = row is not None and row.value is not None
            if row is not None and deleted:
                charge(session, project.id, -len(row.value or b""))
                _change(session, row, None, caller)  # the tombstone keeps counting versions
            add_usage(session, project.id, requests=1)
            return {"project_id": project.id, "key": key, "deleted": deleted, "version": 0}

    def delete_folder(self, caller: Caller, project_id: str | None, folder_key: str) -> dict[str, Any]:
        """Delete every key under ``folder_key`` in one transaction; returns how many there were."""
        prefix = _folder_prefix(folder_key)
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            live = and_(Mutable.project_id == project.id, Mutable.value.is_not(None), _under(prefix))
            freed = session.scalar(select(func.coalesce(func.sum(func.length(Mutable.value)), 0)).where(live))
            charge(session, project.id, -int(freed or 0))
            result = session.execute(
                update(Mutable)
                .where(live)
                .values(
                    value=None,
                    version=Mutable.version + 1,
                    updated_by_client_id=caller.client_id or "",
                    updated_at_ms=now_ms(),
                )
                .execution_options(synchronize_session=False)
            )
            add_usage(session, project.id, requests=1)
            return {"project_id": project.id, "folder_key": prefix[:-1], "deleted": result.rowcount}

    def list_keys(
        self, caller: Caller, project_id: str | None, folder_key: str | None, after: str | None, limit: int
    ) -> dict[str, Any]:
        """Keys under ``folder_key`` (every key of the project if None), in key order, ``limit`` at a time from
        after the key ``after``; ``next_after`` is where the next page starts (None: this was the last)."""
        prefix = _folder_prefix(folder_key) if folder_key else None
        limit = max(1, min(limit, MAX_LIST))
        with self.db.read() as session:
            project = projects.caller_project(session, caller, project_id, "read")
            # Columns, not rows: a page must not load up to 1000 values of up to 1 MiB each.
            query = select(
                Mutable.key,
                Mutable.version,
                Mutable.updated_at_ms,
                Mutable.updated_by_client_id,
                func.length(Mutable.value).label("size"),
            ).where(Mutable.project_id == project.id, Mutable.value.is_not(None))
            if prefix is not None:
                query = query.where(_under(prefix))
            if after is not None:
                after = _check_key(after)  # a page ends at a key; NUL or a lone surrogate would fail in the database
                query = query.where(Mutable.key > after)
            rows = session.execute(query.order_by(Mutable.key).limit(limit + 1)).all()
            add_usage(session, project.id, requests=1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "project_id": project.id,
            "mutables": [row._asdict() for row in rows],
            "next_after": rows[-1].key if more else None,
        }


def _locked(session: Session, project_id: str, key: str) -> Mutable | None:
    """The row of ``key``, locked until the transaction ends (PostgreSQL; SQLite transactions are serial)."""
    return session.scalars(
        select(Mutable).where(Mutable.project_id == project_id, Mutable.key == key).with_for_update()
    ).one_or_none()


def _change(session: Session, row: Mutable, value: bytes | None, caller: Caller) -> None:
    """Give ``row`` a new value (None: deleted) and the next version, recording who and when."""
    row.value = value
    row.version += 1
    row.updated_by_client_id = caller.client_id or ""
    row.updated_at_ms = now_ms()
    session.flush()


def _check_version(key: str, row: Mutable | None, expected_version: int | None) -> None:
    if expected_version is None:
        return
    current = row.version if row is not None and row.value is not None else 0
    if current != expected_version:
        state = f"is at version {current}" if current else "is not set"
        raise VersionConflict(
            f"mutable {key!r} {state}, not version {expected_version}: someone changed it since it was read"
        )


def _describe(row: Mutable) -> dict[str, Any]:
    return {
        "version": row.version,
        "updated_at_ms": row.updated_at_ms,
        "updated_by_client_id": row.updated_by_client_id,
        "size": len(row.value or b""),
        "value": (row.value or b"").decode("utf-8"),
    }


def _check_key(key: str) -> str:
    """The key in its one form (NFC), or 400 ``invalid_key``."""
    try:
        return mutable_key(key)
    except InvalidArgumentError as e:
        raise InvalidRequest(str(e), error_code="invalid_key") from None


def _folder_prefix(key: str) -> str:
    try:
        return canonical_folder_key(key) + "/"
    except InvalidArgumentError as e:
        raise InvalidRequest(str(e), error_code="invalid_key") from None


def _under(prefix: str) -> Any:
    """Keys starting with ``prefix`` (which ends in '/'), as an index range: in byte order, the keys under a
    folder are those from ``<folder>/`` up to ``<folder>0`` ('0' follows '/')."""
    return and_(Mutable.key >= prefix, Mutable.key < prefix[:-1] + "0")


def _encode_value(value: str) -> bytes:
    try:
        return encode_mutable_value(value)
    except MutableValueTooLargeError as e:
        raise InvalidRequest(str(e), error_code="value_too_large") from None
    except InvalidArgumentError as e:
        raise InvalidRequest(str(e)) from None
