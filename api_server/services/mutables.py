"""Server layer 5: mutables, the named values of a project.

- Reading needs read access (anyone, on a public project); writing needs the ``write`` role.
- Every mutable has a version: 1 when first set, one more on every set or delete. ``expected_version`` turns
  a set or delete into a compare-and-swap: it happens only if the version is still the one the caller read
  (0: the key must not be set), else :class:`VersionConflict` (409) names the current version.
- A delete leaves a tombstone (value None) that keeps the version, so versions never repeat for a key.
- Keys follow the client's key grammar (``kachery_cloud.mutable_key``); values are at most 1 MiB of UTF-8.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kachery_cloud.errors import InvalidArgumentError
from kachery_cloud.mutable_key import MAX_VALUE_BYTES, validate_folder_key, validate_mutable_key

from ..auth import Caller
from ..db.models import Mutable, Project, now_ms
from ..db.session import Database
from ..errors import Conflict, InvalidRequest
from . import projects
from .usage import add_usage

MAX_LIST = 1000  # keys per list page


class VersionConflict(Conflict):
    error_code = "version_conflict"


class MutableService:
    def __init__(self, db: Database) -> None:
        self.db = db

    def get(self, caller: Caller, project_id: str | None, key: str) -> dict[str, Any]:
        _check_key(key)
        with self.db.transaction() as session:
            project = _project(session, caller, project_id, "read")
            add_usage(session, project.id, requests=1)
            row = session.get(Mutable, (project.id, key))
            if row is None or row.value is None:
                return {"project_id": project.id, "key": key, "found": False, "version": row.version if row else 0}
            return {"project_id": project.id, "key": key, "found": True, **_describe(row)}

    def set(
        self, caller: Caller, project_id: str | None, key: str, value: str, expected_version: int | None
    ) -> dict[str, Any]:
        _check_key(key)
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
            project = _project(session, caller, project_id, "write")
            add_usage(session, project.id, requests=1)
            row = _locked(session, project.id, key)
            _check_version(key, row, expected_version)
            if row is None:
                row = Mutable(project_id=project.id, key=key, version=0, updated_by_client_id="")
                session.add(row)
            row.value = data
            row.version += 1
            row.updated_by_client_id = caller.client_id or ""
            row.updated_at_ms = now_ms()
            session.flush()
            return {"project_id": project.id, "key": key, "version": row.version}

    def delete(self, caller: Caller, project_id: str | None, key: str, expected_version: int | None) -> dict[str, Any]:
        _check_key(key)
        with self.db.transaction() as session:
            project = _project(session, caller, project_id, "write")
            add_usage(session, project.id, requests=1)
            row = _locked(session, project.id, key)
            _check_version(key, row, expected_version)
            if row is None or row.value is None:
                return {"project_id": project.id, "key": key, "deleted": False, "version": row.version if row else 0}
            row.value = None
            row.version += 1
            row.updated_by_client_id = caller.client_id or ""
            row.updated_at_ms = now_ms()
            return {"project_id": project.id, "key": key, "deleted": True, "version": row.version}

    def delete_folder(self, caller: Caller, project_id: str | None, folder_key: str) -> dict[str, Any]:
        """Delete every key under ``folder_key`` in one transaction; returns how many there were."""
        prefix = _folder_prefix(folder_key)
        with self.db.transaction() as session:
            project = _project(session, caller, project_id, "write")
            add_usage(session, project.id, requests=1)
            result = session.execute(
                update(Mutable)
                .where(Mutable.project_id == project.id, Mutable.value.is_not(None), _under(prefix))
                .values(
                    value=None,
                    version=Mutable.version + 1,
                    updated_by_client_id=caller.client_id or "",
                    updated_at_ms=now_ms(),
                )
                .execution_options(synchronize_session=False)
            )
            return {"project_id": project.id, "folder_key": folder_key, "deleted": result.rowcount}

    def list_keys(
        self, caller: Caller, project_id: str | None, folder_key: str | None, after: str | None, limit: int
    ) -> dict[str, Any]:
        """Keys under ``folder_key`` (every key of the project if None), in key order, ``limit`` at a time from
        after the key ``after``; ``next_after`` is where the next page starts (None: this was the last)."""
        prefix = _folder_prefix(folder_key) if folder_key else None
        limit = max(1, min(limit, MAX_LIST))
        with self.db.transaction() as session:
            project = _project(session, caller, project_id, "read")
            add_usage(session, project.id, requests=1)
            query = select(Mutable).where(Mutable.project_id == project.id, Mutable.value.is_not(None))
            if prefix is not None:
                query = query.where(_under(prefix))
            if after is not None:
                query = query.where(Mutable.key > after)
            rows = list(session.scalars(query.order_by(Mutable.key).limit(limit + 1)))
        more = len(rows) > limit
        rows = rows[:limit]
        return {
            "project_id": project.id,
            "mutables": [{"key": row.key, **_describe(row, with_value=False)} for row in rows],
            "next_after": rows[-1].key if more else None,
        }


def _project(session: Session, caller: Caller, project_id: str | None, role: str) -> Project:
    if not project_id:
        if caller.user is None or not caller.user.default_project_id:
            who = "an anonymous client" if caller.user is None else caller.user.name
            raise InvalidRequest(
                f"{who} has no default project; name one (project_id, or KACHERY_CLOUD_PROJECT)",
                error_code="no_project",
            )
        project_id = caller.user.default_project_id
    return projects.require_role(session, project_id, caller.user, role)


def _locked(session: Session, project_id: str, key: str) -> Mutable | None:
    """The row of ``key``, locked until the transaction ends (PostgreSQL; SQLite transactions are serial)."""
    return session.scalars(
        select(Mutable).where(Mutable.project_id == project_id, Mutable.key == key).with_for_update()
    ).one_or_none()


def _check_version(key: str, row: Mutable | None, expected_version: int | None) -> None:
    if expected_version is None:
        return
    current = row.version if row is not None and row.value is not None else 0
    if current != expected_version:
        state = f"is at version {current}" if current else "is not set"
        raise VersionConflict(
            f"mutable {key!r} {state}, not version {expected_version}: someone changed it since it was read"
        )


def _describe(row: Mutable, *, with_value: bool = True) -> dict[str, Any]:
    described: dict[str, Any] = {
        "version": row.version,
        "updated_at_ms": row.updated_at_ms,
        "updated_by_client_id": row.updated_by_client_id,
        "size": len(row.value or b""),
    }
    if with_value:
        described["value"] = (row.value or b"").decode("utf-8")
    return described


def _check_key(key: str) -> None:
    try:
        validate_mutable_key(key)
    except InvalidArgumentError as e:
        raise InvalidRequest(str(e), error_code="invalid_key") from None


def _folder_prefix(folder_key: str) -> str:
    try:
        validate_folder_key(folder_key)
    except InvalidArgumentError as e:
        raise InvalidRequest(str(e), error_code="invalid_key") from None
    return folder_key + "/"


def _under(prefix: str) -> Any:
    # substr rather than LIKE (SQLite's LIKE ignores ASCII case) or a range (collations order text differently).
    return func.substr(Mutable.key, 1, len(prefix)) == prefix


def _encode_value(value: str) -> bytes:
    try:
        data = value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("a mutable value must be valid Unicode (it has a lone surrogate)") from None
    if len(data) > MAX_VALUE_BYTES:
        raise InvalidRequest(
            f"a mutable value may be at most {MAX_VALUE_BYTES} bytes of UTF-8; this one is {len(data)}",
            error_code="value_too_large",
        )
    return data
