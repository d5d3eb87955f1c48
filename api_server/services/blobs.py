"""Server layer 5: the blobs of projects. Which blobs a client must upload and how, verifying and recording
what it uploaded, finding blobs to download, cleaning up abandoned uploads.

The rules:

- A blob is recorded, and from then on found, only after its bytes are known to have its SHA-1: checked by
  the store (a single PUT with the signed ``x-amz-checksum-sha1``, on a store that enforces it) or re-hashed
  here (multipart uploads, and every upload on a store that does not check). A mismatch deletes the object
  and records nothing.
- Writing needs the ``write`` role. A project's quota counts everything it keeps (:mod:`.usage`); it is
  checked when the client asks what to upload, and a blob is charged to it when it is recorded.
- Reading a blob needs read access to one project that holds it: membership, or the project is public.
- An object a blob row points to is never written again: the canonical key only takes PUTs whose signed
  checksum the store checks (the same bytes), onto a key that holds no object yet where the store honours
  ``If-None-Match``; a multipart key only the one completion the server makes.
- Every call about an upload in progress (more URLs, completion) checks again that its client's user still
  has the ``write`` role: a member removed meanwhile gets nothing more.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, insert, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kachery_cloud.protocol.uri import is_sha1_hex

from ..auth import Caller
from ..db.models import Blob, Membership, Project, Upload, now_ms
from ..db.session import Database
from ..errors import ApiError, InvalidRequest, NotFound, StoreUnavailable
from ..settings import MIB, Settings
from ..storage import Storage, new_upload_id, s3_error_code, sha1_base64
from . import projects
from .usage import add_usage, charge, charge_or_refuse, check_fits

log = logging.getLogger("kachery_cloud_server")

MAX_BATCH = 1000  # blobs per request
MAX_BLOB_BYTES = 5 << 40  # S3's largest object
MAX_PARTS = 10_000  # S3's limit per multipart upload
FIRST_PART_URLS = 64  # part URLs in the answer to "need"; the client asks for the rest in batches
MAX_PART_URLS = 1000  # per request
MAX_INLINE_BLOB_BYTES = 64 << 10  # blobs up to this size may be sent inside an API request
MAX_INLINE_REQUEST_BYTES = 4 << 20  # bytes of blobs per such request
_STORAGE_THREADS = 8


@dataclass(frozen=True)
class BlobRef:
    sha1: str
    size: int


@dataclass(frozen=True)
class _Placed:
    """Where the server wrote a small blob: its canonical key (``key`` None), or ``offset`` in the pack ``key``."""

    size: int
    key: str | None
    offset: int | None


@dataclass(frozen=True)
class _Plan:
    """An upload about to start; its fields are named as :class:`Upload`'s, so both describe an upload."""

    id: str
    sha1: str
    size: int
    method: str  # "put" | "multipart"
    object_key: str
    part_size: int | None


class BlobService:
    def __init__(self, db: Database, storage: Storage, settings: Settings) -> None:
        self.db = db
        self.storage = storage
        self.settings = settings
        self._pool = ThreadPoolExecutor(max_workers=_STORAGE_THREADS, thread_name_prefix="kachery-storage")

    @property
    def store_checks_sha1(self) -> bool:
        """Whether single PUTs are verified by the store's own SHA-1 check (else everything is re-hashed)."""
        return self.storage.enforces_sha1 and self.settings.verify_uploads == "auto"

    # ------------------------------------------------------------------------------------------------ need

    def need(self, caller: Caller, project_id: str | None, blobs: list[BlobRef]) -> dict[str, Any]:
        """For each blob: ``exists`` in the project, or how to upload it (a PUT URL, or a multipart upload)."""
        unique = _unique_blobs(blobs)
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            present = self._present(session, project.id, list(unique))
            missing = [blob for sha1, blob in unique.items() if sha1 not in present]
            check_fits(project, sum(b.size for b in missing), f"{len(missing)} blob(s)")
            add_usage(session, project.id, requests=1)
        plans = [self._plan(project.id, blob) for blob in missing]
        multipart_ids = self._create_multipart_uploads([p for p in plans if p.method == "multipart"])
        try:
            self._add_uploads(caller, project.id, plans, multipart_ids)
        except Exception:
            self._abort_multipart_uploads(plans, multipart_ids)  # no row would ever lead the sweeper to them
            raise
        planned = {plan.sha1: plan for plan in plans}
        results: list[dict[str, Any]] = []
        for sha1 in unique:
            plan = planned.get(sha1)
            if plan is None:
                results.append({"sha1": sha1, "status": "exists"})
                continue
            instructions = self._instructions(plan, multipart_ids.get(plan.id))
            results.append({"sha1": sha1, "status": "upload", **instructions})
        return {"project_id": project.id, "results": results}

    def _add_uploads(self, caller: Caller, project_id: str, plans: list[_Plan], multipart_ids: dict[str, str]) -> None:
        expires = now_ms() + self.settings.upload_ttl_sec * 1000
        with self.db.transaction() as session:
            for plan in plans:
                session.add(
                    Upload(
                        id=plan.id,
                        project_id=project_id,
                        sha1=plan.sha1,
                        size=plan.size,
                        object_key=plan.object_key,
                        multipart_upload_id=multipart_ids.get(plan.id),
                        method=plan.method,
                        part_size=plan.part_size,
                        client_id=caller.client_id,
                        expires_at_ms=expires,
                    )
                )

    def _abort_multipart_uploads(self, plans: list[_Plan], multipart_ids: dict[str, str]) -> None:
        keys = {plan.id: plan.object_key for plan in plans}
        for upload_id, multipart_id in multipart_ids.items():
            self._quietly(self.storage.abort_multipart, keys[upload_id], multipart_id)

    def _plan(self, project_id: str, blob: BlobRef) -> _Plan:
        upload_id = new_upload_id()
        if self.store_checks_sha1 and blob.size <= self.settings.single_put_max_bytes:
            return _Plan(upload_id, blob.sha1, blob.size, "put", self.storage.blob_key(project_id, blob.sha1), None)
        key = self.storage.upload_key(project_id, blob.sha1, upload_id)
        return _Plan(upload_id, blob.sha1, blob.size, "multipart", key, self._part_size(blob.size))

    def _part_size(self, size: int) -> int:
        part_size = self.settings.multipart_part_bytes
        smallest = -(-size // MAX_PARTS)
        if smallest > part_size:
            part_size = -(-smallest // MIB) * MIB
        return part_size

    def _create_multipart_uploads(self, plans: list[_Plan]) -> dict[str, str]:
        if not plans:
            return {}
        futures = {plan.id: self._pool.submit(self.storage.create_multipart, plan.object_key) for plan in plans}
        created: dict[str, str] = {}
        failure: Exception | None = None
        for upload_id, future in futures.items():
            try:
                created[upload_id] = future.result()
            except Exception as e:
                failure = e
        if failure is not None:
            self._abort_multipart_uploads(plans, created)
            log.error("creating multipart uploads failed: %s", failure)
            raise StoreUnavailable("the object store refused to start an upload; try again later")
        return created

    def _instructions(
        self, plan: _Plan | Upload, multipart_id: str | None, part_numbers: list[int] | None = None
    ) -> dict[str, Any]:
        """How to send an upload: its PUT URL, or URLs for ``part_numbers`` (default: the first parts)."""
        if plan.method == "put":
            presigned = self.storage.presign_put(plan.object_key, plan.size, plan.sha1)
            return {"upload_id": plan.id, "method": "put", "url": presigned.url, "headers": presigned.headers}
        assert plan.part_size is not None and multipart_id is not None
        num_parts = _num_parts(plan.size, plan.part_size)
        if part_numbers is None:
            part_numbers = list(range(1, min(num_parts, FIRST_PART_URLS) + 1))
        bad = [n for n in part_numbers if not 1 <= n <= num_parts]
        if bad:
            raise InvalidRequest(f"upload {plan.id} has parts 1..{num_parts}; no part {bad[0]}")
        part_urls = {
            str(n): self.storage.presign_part(
                plan.object_key, multipart_id, n, _part_length(plan.size, plan.part_size, n)
            ).url
            for n in sorted(set(part_numbers))
        }
        return {
            "upload_id": plan.id,
            "method": "multipart",
            "part_size": plan.part_size,
            "num_parts": num_parts,
            "part_urls": part_urls,
        }

    # ------------------------------------------------------------------------------------------------ URLs

    def upload_urls(self, caller: Caller, upload_id: str, part_numbers: list[int]) -> dict[str, Any]:
        """Fresh URLs for an upload in progress: its PUT URL, or URLs for the parts asked for."""
        if len(part_numbers) > MAX_PART_URLS:
            raise InvalidRequest(f"at most {MAX_PART_URLS} part URLs per request")
        with self.db.transaction() as session:
            upload = self._own_upload(session, caller, upload_id)
            projects.require_caller_role(session, upload.project_id, caller, "write")
            # A client still asking for URLs is alive: its upload is not abandoned.
            upload.expires_at_ms = max(upload.expires_at_ms, now_ms() + self.settings.upload_ttl_sec * 1000)
        return self._instructions(upload, upload.multipart_upload_id, part_numbers)

    # ------------------------------------------------------------------------------------------------ complete

    def complete(self, caller: Caller, items: list[tuple[str, list[tuple[int, str]] | None]]) -> list[dict[str, Any]]:
        """Verify and record finished uploads. Per upload: ``stored``, or why not."""
        if len(items) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} uploads per request")
        ids = [upload_id for upload_id, _ in items]
        with self.db.transaction() as session:
            uploads = {
                u.id: u
                for u in session.scalars(select(Upload).where(Upload.id.in_(ids), Upload.client_id == caller.client_id))
            }
            for project_id in sorted({u.project_id for u in uploads.values()}):
                projects.require_role(session, project_id, caller.user, "write")
                add_usage(session, project_id, requests=1)
        now = now_ms()
        futures = {}
        for upload_id, parts in items:
            upload = uploads.get(upload_id)
            if upload is not None and upload.expires_at_ms >= now and upload_id not in futures:
                futures[upload_id] = self._pool.submit(self._complete_one, upload, parts)
        results = []
        for upload_id, _ in items:
            future = futures.get(upload_id)
            if future is None:
                results.append(_result(upload_id, None, "not_found", "no such upload in progress for this client"))
                continue
            try:
                results.append(future.result())
            except ApiError:
                raise
            except Exception:
                log.exception("completing upload %s failed", upload_id)
                raise StoreUnavailable("the object store failed while an upload was verified; try again") from None
        return results

    def _complete_one(self, upload: Upload, parts: list[tuple[int, str]] | None) -> dict[str, Any]:
        if upload.method == "multipart":
            return self._complete_multipart(upload, parts or [])
        head = self.storage.head(upload.object_key)
        if head is None:
            return _result(upload.id, upload.sha1, "not_uploaded", "nothing was uploaded with this upload's URL yet")
        # Trusted only if the store says it checked these bytes against this hash when they were written (a PUT
        # onto this key with another signed checksum fails, and a copy or unsigned header cannot get around it:
        # see Storage.probe_checksums); anything else is read back and hashed here.
        if self.store_checks_sha1 and head.checksum_sha1 == sha1_base64(upload.sha1) and head.size == upload.size:
            return self._record(upload, object_key=None)
        actual_sha1, actual_size = self.storage.sha1_of(upload.object_key)
        if (actual_sha1, actual_size) != (upload.sha1, upload.size):
            self._discard_canonical(upload)
            return _mismatch(upload)
        return self._record(upload, object_key=None)

    def _complete_multipart(self, upload: Upload, parts: list[tuple[int, str]]) -> dict[str, Any]:
        assert upload.part_size is not None and upload.multipart_upload_id is not None
        num_parts = _num_parts(upload.size, upload.part_size)
        numbers = sorted(n for n, _ in parts)
        if numbers != list(range(1, num_parts + 1)):
            return _result(upload.id, upload.sha1, "incomplete", f"give the ETags of parts 1..{num_parts}, each once")
        try:
            self.storage.complete_multipart(upload.object_key, upload.multipart_upload_id, sorted(parts))
        except Exception as e:
            code = s3_error_code(e)
            if code == "NoSuchUpload" and self.storage.head(upload.object_key) is not None:
                pass  # completed by an earlier attempt of this same request; verify what it wrote
            elif code in ("InvalidPart", "InvalidPartOrder", "EntityTooSmall", "NoSuchUpload"):
                return _result(upload.id, upload.sha1, "incomplete", f"the store refused the parts: {code}")
            else:
                raise
        actual_sha1, actual_size = self.storage.sha1_of(upload.object_key)
        if (actual_sha1, actual_size) != (upload.sha1, upload.size):
            self._quietly(self.storage.delete, upload.object_key)
            self._drop_upload(upload.id)
            return _mismatch(upload)
        return self._record(upload, object_key=upload.object_key)

    def _record(self, upload: Upload, *, object_key: str | None) -> dict[str, Any]:
        """Record a verified upload as a blob of its project (unless it is there already, or over quota)."""
        outcome = "stored"
        try:
            with self.db.transaction() as session:
                session.execute(delete(Upload).where(Upload.id == upload.id))
                if session.get(Blob, (upload.project_id, upload.sha1)) is not None:
                    outcome = "duplicate"
                else:
                    project = session.get(Project, upload.project_id)
                    if project is None:
                        raise NotFound(f"project {upload.project_id} no longer exists", error_code="project_not_found")
                    if not charge(session, project.id, upload.size):
                        outcome = "quota_exceeded"
                    else:
                        session.add(
                            Blob(
                                project_id=upload.project_id,
                                sha1=upload.sha1,
                                size=upload.size,
                                created_by_client_id=upload.client_id,
                                object_key=object_key,
                            )
                        )
                        add_usage(session, upload.project_id, bytes_in=upload.size)
        except IntegrityError:
            outcome = "duplicate"  # another upload of the same blob was recorded at the same moment
        if outcome == "duplicate":
            # Another upload of the blob was recorded first, unless it was this very upload, completed by a
            # retry of the same request: then its object is the recorded one and must stay.
            if object_key is not None and self._recorded_key(upload) != object_key:
                self._quietly(self.storage.delete, object_key)
            outcome = "stored"
        if outcome == "stored":
            return _result(upload.id, upload.sha1, "stored", "")
        if object_key is not None:
            self._quietly(self.storage.delete, object_key)
        else:
            self._discard_canonical(upload)
        return _result(upload.id, upload.sha1, "quota_exceeded", f"project {upload.project_id} is over its quota")

    def store_bytes(self, project_id: str, client_id: str, data: bytes) -> BlobRef:
        """Make ``data`` a blob of the project, written by the server itself (small task results, which would
        otherwise take a client three round trips). The server hashed the bytes, so they need no other check.
        Raises :class:`QuotaExceeded`."""
        sha1 = hashlib.sha1(data).hexdigest()
        with self.db.transaction() as session:
            missing = self._missing(session, projects.get_project(session, project_id), {sha1: data})
        self._write_blobs(project_id, client_id, missing)
        return BlobRef(sha1, len(data))

    def store_inline(self, caller: Caller, project_id: str | None, blobs: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Small blobs whose bytes came in the request: hashed here, written to the store by the server, and
        recorded, in one round trip instead of the three of an upload. Per blob: ``stored`` or ``mismatch``
        (the bytes do not have the SHA-1 the client claimed). Raises :class:`QuotaExceeded`."""
        if len(blobs) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} blobs per request")
        if any(len(data) > MAX_INLINE_BLOB_BYTES for _, data in blobs):
            raise InvalidRequest(f"a blob sent inline has at most {MAX_INLINE_BLOB_BYTES} bytes; upload bigger ones")
        if sum(len(data) for _, data in blobs) > MAX_INLINE_REQUEST_BYTES:
            raise InvalidRequest(f"at most {MAX_INLINE_REQUEST_BYTES} bytes of blobs per request")
        verified: dict[str, bytes] = {}
        results = []
        for claimed, data in blobs:
            actual = hashlib.sha1(data).hexdigest()
            if actual != _check_sha1(claimed):
                message = f"the bytes sent have SHA-1 {actual}"
                results.append({"sha1": claimed, "status": "mismatch", "message": message})
                continue
            verified[actual] = data
            results.append({"sha1": claimed, "status": "stored", "message": ""})
        with self.db.read() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            add_usage(session, project.id, requests=1)
            missing = self._missing(session, project, verified)
        self._write_blobs(project.id, caller.client_id or "", missing)
        return {"project_id": project.id, "results": results}

    def _missing(self, session: Session, project: Project, blobs: dict[str, bytes]) -> dict[str, bytes]:
        """Those of ``blobs`` the project lacks. Raises :class:`QuotaExceeded` if they do not fit."""
        present = self._present(session, project.id, list(blobs))
        missing = {sha1: data for sha1, data in blobs.items() if sha1 not in present}
        check_fits(project, sum(len(data) for data in missing.values()), f"{len(missing)} blob(s)")
        return missing

    def _write_blobs(self, project_id: str, client_id: str, missing: dict[str, bytes]) -> None:
        """Write blobs (keyed by their verified SHA-1) to the store, then record them: one alone at its canonical
        key, several together as one pack object. Raises :class:`QuotaExceeded` if another request used up the
        quota meanwhile."""
        if not missing:
            return
        placed: dict[str, _Placed] = {}
        if len(missing) == 1:
            [(sha1, data)] = missing.items()
            self._put(self.storage.blob_key(project_id, sha1), data, sha1)
            placed[sha1] = _Placed(len(data), None, None)
        else:
            pack = b"".join(missing.values())
            pack_sha1 = hashlib.sha1(pack).hexdigest()
            key = self.storage.pack_key(project_id, pack_sha1)
            self._put(key, pack, pack_sha1)
            offset = 0
            for sha1, data in missing.items():
                placed[sha1] = _Placed(len(data), key, offset)
                offset += len(data)
        try:
            self._record_written(project_id, client_id, placed)
        except IntegrityError:  # some were recorded at the same moment by another request: one by one
            for sha1, where in placed.items():
                with contextlib.suppress(IntegrityError):
                    self._record_written(project_id, client_id, {sha1: where})

    def _put(self, key: str, data: bytes, sha1: str) -> None:
        try:
            self.storage.put_bytes(key, data, sha1)
        except Exception as e:
            reason = s3_error_code(e) or e
            raise StoreUnavailable(f"the object store refused a {len(data)}-byte object ({reason})") from None

    def _record_written(self, project_id: str, client_id: str, placed: dict[str, _Placed]) -> None:
        with self.db.transaction() as session:
            present = self._present(session, project_id, list(placed))
            new = {sha1: where for sha1, where in placed.items() if sha1 not in present}
            total = sum(where.size for where in new.values())
            # Checked again: another request may have used up the quota meanwhile. The objects are left in the
            # store then; without a row they are never served, and writing them again is harmless.
            charge_or_refuse(session, project_id, total, f"{len(new)} blob(s)")
            if new:  # one statement for the batch (ORM objects cost more than the rest of a small store)
                rows = [
                    {
                        "project_id": project_id,
                        "sha1": sha1,
                        "size": where.size,
                        "created_by_client_id": client_id,
                        "object_key": where.key,
                        "pack_offset": where.offset,
                    }
                    for sha1, where in new.items()
                ]
                session.execute(insert(Blob), rows)
                add_usage(session, project_id, bytes_in=total)

    def _recorded_key(self, upload: Upload) -> str | None:
        """The object key of the recorded blob ``upload`` is for (None: the canonical key, or no blob)."""
        with self.db.read() as session:
            blob = session.get(Blob, (upload.project_id, upload.sha1))
            return blob.object_key if blob is not None else None

    def _discard_canonical(self, upload: Upload) -> None:
        """Delete the canonical object a PUT upload wrote, unless a recorded blob or another upload uses it."""
        with self.db.transaction() as session:
            session.execute(delete(Upload).where(Upload.id == upload.id))
            in_use = session.get(Blob, (upload.project_id, upload.sha1)) is not None or (
                session.scalar(
                    select(func.count())
                    .select_from(Upload)
                    .where(Upload.project_id == upload.project_id, Upload.sha1 == upload.sha1)
                )
                or 0
            )
        if not in_use:
            self._quietly(self.storage.delete, upload.object_key)

    def _drop_upload(self, upload_id: str) -> None:
        with self.db.transaction() as session:
            session.execute(delete(Upload).where(Upload.id == upload_id))

    # ------------------------------------------------------------------------------------------------ find

    def find(self, caller: Caller, sha1s: list[str], project_id: str | None) -> dict[str, Any]:
        """Per hash: its size and a URL to GET it from a project the caller may read, or not found.

        Several projects may hold the same blob: ``project_id`` is preferred, then the caller's own projects,
        then public ones.
        """
        unique = list(dict.fromkeys(_check_sha1(s) for s in sha1s))
        if len(unique) > MAX_BATCH:
            raise InvalidRequest(f"at most {MAX_BATCH} hashes per request")
        user_id = caller.user_id
        with self.db.read() as session:
            query = (
                select(
                    Blob.sha1,
                    Blob.project_id,
                    Blob.size,
                    Blob.object_key,
                    Blob.pack_offset,
                    Project.public_read,
                    Membership.role,
                )
                .join(Project, Project.id == Blob.project_id)
                .outerjoin(
                    Membership,
                    and_(Membership.project_id == Blob.project_id, Membership.user_id == (user_id or -1)),
                )
                .where(Blob.sha1.in_(unique), or_(Project.public_read, Membership.role.is_not(None)))
            )
            best: dict[str, Any] = {}
            for row in session.execute(query):
                rank = (row.project_id != project_id, row.role is None, row.project_id)
                if row.sha1 not in best or rank < best[row.sha1][0]:
                    best[row.sha1] = (rank, row)
            served: dict[str, int] = {}
            for _rank, row in best.values():
                served[row.project_id] = served.get(row.project_id, 0) + row.size
            for served_project, size in served.items():
                add_usage(session, served_project, requests=1, bytes_out=size)
        results: list[dict[str, Any]] = []
        urls: dict[str, str] = {}  # one URL per object: the blobs of a pack share it
        for sha1 in unique:
            if sha1 not in best:
                results.append({"sha1": sha1, "found": False})
                continue
            row = best[sha1][1]
            key = row.object_key or self.storage.blob_key(row.project_id, sha1)
            if key not in urls:
                urls[key] = (self.storage.public_url(key) if row.public_read else None) or self.storage.presign_get(key)
            result = {"sha1": sha1, "found": True, "size": row.size, "project_id": row.project_id, "url": urls[key]}
            if row.pack_offset is not None:
                result["offset"] = row.pack_offset
            results.append(result)
        return {"results": results, "registered": caller.user is not None}

    # ------------------------------------------------------------------------------------------------ cleanup

    def sweep_expired_uploads(self, limit: int = 500) -> int:
        """Abort uploads past their expiry: drop their parts and unrecorded objects. Returns how many."""
        with self.db.transaction() as session:
            expired = list(
                session.scalars(
                    select(Upload).where(Upload.expires_at_ms < now_ms()).order_by(Upload.expires_at_ms).limit(limit)
                )
            )
        for upload in expired:
            if upload.multipart_upload_id:
                self._quietly(self.storage.abort_multipart, upload.object_key, upload.multipart_upload_id)
                self._drop_upload(upload.id)
            elif upload.method == "put":
                self._discard_canonical(upload)
            else:
                self._drop_upload(upload.id)
        return len(expired)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------------------ helpers

    def _present(self, session: Session, project_id: str, sha1s: list[str]) -> set[str]:
        if not sha1s:
            return set()
        return set(session.scalars(select(Blob.sha1).where(Blob.project_id == project_id, Blob.sha1.in_(sha1s))))

    def _own_upload(self, session: Session, caller: Caller, upload_id: str) -> Upload:
        upload = session.get(Upload, upload_id)
        if upload is None or upload.client_id != caller.client_id or upload.expires_at_ms < now_ms():
            raise NotFound(f"no upload {upload_id} in progress for this client", error_code="upload_not_found")
        return upload

    def _quietly(self, action: Any, *args: Any) -> None:
        """Clean-up that may fail without failing the request (the sweeper or a later call retries it)."""
        try:
            action(*args)
        except Exception as e:
            log.warning("clean-up %s%s failed: %s", getattr(action, "__name__", action), args[:1], e)


def stored_totals(session: Session, project_id: str) -> tuple[int, int]:
    """How many blobs the project records, and their bytes."""
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(Blob.size), 0)).where(Blob.project_id == project_id)
    ).one()
    return int(count), int(size)


def _unique_blobs(blobs: list[BlobRef]) -> dict[str, BlobRef]:
    if len(blobs) > MAX_BATCH:
        raise InvalidRequest(f"at most {MAX_BATCH} blobs per request")
    unique: dict[str, BlobRef] = {}
    for blob in blobs:
        _check_sha1(blob.sha1)
        if not 0 <= blob.size <= MAX_BLOB_BYTES:
            raise InvalidRequest(f"blob size {blob.size} is outside 0..{MAX_BLOB_BYTES}")
        previous = unique.setdefault(blob.sha1, blob)
        if previous.size != blob.size:
            raise InvalidRequest(f"blob {blob.sha1} is listed with two sizes, {previous.size} and {blob.size}")
    return unique


def _check_sha1(sha1: str) -> str:
    if not is_sha1_hex(sha1):
        raise InvalidRequest(f"invalid SHA-1 {sha1[:60]!r}: expected 40 lowercase hex digits")
    return sha1


def _num_parts(size: int, part_size: int) -> int:
    return max(1, -(-size // part_size))


def _part_length(size: int, part_size: int, part_number: int) -> int:
    return max(0, min(part_size, size - (part_number - 1) * part_size))


def _result(upload_id: str, sha1: str | None, status: str, message: str) -> dict[str, Any]:
    return {"upload_id": upload_id, "sha1": sha1, "status": status, "message": message}


def _mismatch(upload: Upload) -> dict[str, Any]:
    # Nothing about what the object held: it may not be what this client sent (an upload URL misused to copy
    # another object), and a caller must not learn anything of objects it cannot read.
    return _result(
        upload.id,
        upload.sha1,
        "mismatch",
        f"the uploaded bytes are not the blob ({upload.size} bytes, SHA-1 {upload.sha1}); nothing was recorded",
    )
