"""Server layer 5: task queues. Requesters ask for tasks; workers claim them, run them and report the result.

The rules (every one decided by database transactions, so they hold across server replicas):

- A calculation's id is its job id (:func:`kachery_cloud.protocol.task_format.job_id`): asking again for a finished one
  answers its result at once; asking while it is pending or running joins it (ten requests, one run); asking
  after it failed or was cancelled runs it again. An action's id is random, chosen by its requester.
- A worker claims pending tasks of the names it handles. A claim is a random ``claim_id`` and a lease of
  ``task_lease_sec`` that the worker renews while the task runs. Only the holder of the current claim may
  renew, report progress or complete; a worker whose lease ran out finds its claim gone once another worker
  (or the requester's wait) has noticed, and its late result is refused.
- A task whose lease ran out goes back to pending, or to error once its worker was lost ``max_attempts``
  times. A task function that raises ends the task in error at once: the requester gets the message.
- Results are blobs of the task's project (JSON, see :mod:`kachery_cloud.protocol.task_format`), recorded by SHA-1. A
  small result comes inside the completion, and this server stores it as a blob and keeps a copy on the task's
  row, which requesters get in their answer. A large one the worker uploads first, and completion is refused
  unless the project holds it.
- Requesting a task that does not exist yet needs the project's ``task_request_role`` (``write`` unless an
  admin chose ``read``) and a registered client; reading a finished calculation, statuses and lists need read
  access; claiming, renewing and completing need ``write``; cancelling needs ``write`` or being the requester.
- Waiting is a long-poll on both sides: a waiting requester is woken by every change of its task (topic
  ``task:<project>:<id>``), an idle worker by every new pending task of its project (``tasks:<project>``) and
  by the earliest lease that can run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from kachery_cloud.errors import KacheryCloudError
from kachery_cloud.protocol.task_format import (
    FINAL_STATES,
    MAX_ERROR_CHARS,
    MAX_INLINE_RESULT_BYTES,
    MAX_PROGRESS_CHARS,
    action_id,
    clean_text,
    input_json,
    job_id,
    validate_task_id,
    validate_task_name,
    validate_task_type,
)

from ..auth import Caller
from ..db.models import Blob, Task, now_ms
from ..db.session import Database
from ..errors import ClientNotRegistered, Conflict, Forbidden, InvalidRequest, NotFound
from ..settings import Settings
from ..wakeups import Wakeups
from . import projects
from .blobs import BlobService
from .usage import add_usage, charge, charge_or_refuse

MAX_LIST = 1000
MAX_HANDLERS = 100  # task names one claim may ask for
MAX_CLAIM = 32  # tasks one claim may take
_SKIPPED_RETRY_MS = 20


def queue_topic(project_id: str) -> str:
    return f"tasks:{project_id}"


def task_topic(project_id: str, task_id: str) -> str:
    return f"task:{project_id}:{task_id}"


def worker_topic(worker_id: str) -> str:
    return f"worker:{worker_id}"


class TaskService:
    def __init__(self, db: Database, wakeups: Wakeups, settings: Settings, blobs: BlobService) -> None:
        self.db = db
        self.wakeups = wakeups
        self.settings = settings
        self.blobs = blobs

    # ----------------------------------------------------------------------------------------- requesters

    async def request(
        self,
        caller: Caller,
        project_id: str | None,
        task_type: str,
        task_name: str,
        task_input: Any,
        request_id: str | None,
        wait_ms: int,
    ) -> dict[str, Any]:
        """Find or create the task; with ``wait_ms``, wait for its end (or its first progress message) before
        answering."""
        _check(validate_task_type, task_type)
        _check(validate_task_name, task_name)
        body = _check(input_json, task_input).decode("ascii")
        if task_type == "calculation":
            task_id = job_id(task_name, task_input)
        elif request_id is None:
            raise InvalidRequest("an action needs a request_id: 32 random hex digits chosen by the requester")
        elif caller.client_id is None:
            raise Forbidden("an anonymous (ephemeral) client cannot request actions", error_code="permission_denied")
        else:
            task_id = action_id(caller.client_id, request_id)
        args = (caller, project_id, task_type, task_name, body, task_id)
        try:
            status = await run_in_threadpool(self._request, *args)
        except IntegrityError:  # another request created the same task between our look and our insert
            status = await run_in_threadpool(self._request, *args)
        if wait_ms <= 0 or status["state"] in FINAL_STATES:
            return status
        return await self.status(caller, status["project_id"], task_id, status["status_version"], wait_ms)

    def _request(
        self, caller: Caller, project_id: str | None, task_type: str, task_name: str, body: str, task_id: str
    ) -> dict[str, Any]:
        topics: list[str] = []
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "read")
            row = _locked(session, project.id, task_id)
            if row is not None and (row.task_type, row.task_name, row.input) != (task_type, task_name, body):
                raise Conflict("request id already used for another task; use a new random one for each action",
                               error_code="request_id_reused")  # fmt: skip
            if row is None or (task_type == "calculation" and row.state in ("error", "cancelled")):
                _require_requester(session, project, caller)
                if row is None:
                    charge_or_refuse(session, project.id, _bytes(body), f"the input of task {task_name}")
                elif row.result_json:
                    charge(session, project.id, -_bytes(row.result_json))
                if row is None:
                    row = Task(
                        project_id=project.id,
                        id=task_id,
                        task_type=task_type,
                        task_name=task_name,
                        input=body,
                        attempts=0,
                        status_version=0,
                    )
                    session.add(row)
                # A failed or cancelled calculation asked for again runs again: errors are not cached.
                _change(row, news=True, state="pending", attempts=0, error=None, progress=None, result_sha1=None,
                        result_size=None, result_json=None, **_NO_CLAIM)  # fmt: skip
                row.max_attempts = self.settings.task_max_attempts
                row.requested_by_client_id = caller.client_id or ""
                session.flush()
                topics += [queue_topic(project.id), task_topic(project.id, task_id)]
            else:
                topics += _expire_leases(session, project.id, task_id)
            add_usage(session, project.id, requests=1)
            self._publish_in(session, topics)
            status = _status(row, with_input=False)
        self._wake(topics)
        return status

    async def status(
        self,
        caller: Caller,
        project_id: str | None,
        task_id: str,
        after_version: int,
        wait_ms: int,
        with_input: bool = False,
    ) -> dict[str, Any]:
        """The task's status; if its ``status_version`` is not above ``after_version`` yet and it has not ended,
        wait up to ``wait_ms`` for a change."""
        _check(validate_task_id, task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        project_id = projects.caller_project_id(caller, project_id)
        first = True
        with self.wakeups.subscription(task_topic(project_id, task_id)) as woken:
            while True:
                woken.clear()
                status = await run_in_threadpool(self._status, caller, project_id, task_id, first, with_input)
                first = False
                remaining = deadline - loop.time()
                changed = status["status_version"] > after_version or status["state"] in FINAL_STATES
                if changed or remaining <= 0 or self.wakeups.closing:
                    return status
                # A running task's lease may run out with nobody to tell us: look again then.
                lease_end = status["lease_expires_at_ms"]
                if lease_end is not None:
                    remaining = min(remaining, max(0.05, (lease_end - now_ms()) / 1000 + 0.05))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(woken.wait(), remaining)

    def _status(self, caller: Caller, project_id: str, task_id: str, count: bool, with_input: bool) -> dict[str, Any]:
        with self.db.transaction() as session:
            projects.require_caller_role(session, project_id, caller, "read")
            topics = _expire_leases(session, project_id, task_id)
            # Not locked: a claim skips locked rows, and must not miss a task because its requester is looking.
            row = session.get(Task, (project_id, task_id), populate_existing=True)
            if row is None:
                raise NotFound(f"project {project_id} has no task {task_id}", error_code="task_not_found")
            if count:
                add_usage(session, project_id, requests=1)
            self._publish_in(session, topics)
            status = _status(row, with_input=with_input)
        self._wake(topics)
        return status

    def list_tasks(
        self, caller: Caller, project_id: str | None, state: str | None, task_name: str | None, limit: int
    ) -> dict[str, Any]:
        """The project's tasks, newest first (at most ``limit``), optionally of one state or name."""
        limit = max(1, min(limit, MAX_LIST))
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "read")
            topics = _expire_leases(session, project.id)
            query = select(Task).where(Task.project_id == project.id)
            if state is not None:
                query = query.where(Task.state == state)
            if task_name is not None:
                query = query.where(Task.task_name == task_name)
            query = query.order_by(Task.created_at_ms.desc(), Task.id).limit(limit)
            tasks = [_status(row, with_input=False, with_result=False) for row in session.scalars(query)]
            add_usage(session, project.id, requests=1)
            self._publish_in(session, topics)
        self._wake(topics)
        return {"project_id": project.id, "tasks": tasks}

    def cancel(self, caller: Caller, project_id: str | None, task_id: str) -> dict[str, Any]:
        """Cancel a pending or running task (a running one's worker learns it at its next lease renewal)."""
        _check(validate_task_id, task_id)
        topics: list[str] = []
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "read")
            row = _locked(session, project.id, task_id)
            if row is None:
                raise NotFound(f"project {project.id} has no task {task_id}", error_code="task_not_found")
            if caller.client_id is None or caller.client_id != row.requested_by_client_id:
                projects.require_caller_role(session, project.id, caller, "write")
            cancelled = row.state not in FINAL_STATES
            if cancelled:
                who = (
                    f"client {caller.client_id}"
                    if caller.client_id
                    else f"{caller.user.name if caller.user else 'someone'} in the web app"
                )
                why = f"cancelled by {who}"
                _change(row, news=True, state="cancelled", error=why, lease_expires_at_ms=None)
                topics.append(task_topic(project.id, task_id))
            add_usage(session, project.id, requests=1)
            self._publish_in(session, topics)
            status = _status(row, with_input=False)
        self._wake(topics)
        return {**status, "cancelled": cancelled}

    # -------------------------------------------------------------------------------------------- workers

    async def claim(
        self,
        caller: Caller,
        project_id: str | None,
        handlers: list[tuple[str, str]],
        worker_id: str,
        max_tasks: int,
        wait_ms: int,
        disconnected: Callable[[], Awaitable[bool]],
    ) -> dict[str, Any]:
        """Claim up to ``max_tasks`` pending tasks of the (type, name) pairs in ``handlers``, oldest first; if there
        are none, wait up to ``wait_ms`` for one. A :meth:`release` of ``worker_id`` ends the wait empty."""
        if not handlers or len(handlers) > MAX_HANDLERS:
            raise InvalidRequest(f"a claim names 1 to {MAX_HANDLERS} task handlers")
        for task_type, task_name in handlers:
            _check(validate_task_type, task_type)
            _check(validate_task_name, task_name)
        max_tasks = max(1, min(max_tasks, MAX_CLAIM))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000
        project_id = projects.caller_project_id(caller, project_id)
        first = True
        with (
            self.wakeups.subscription(queue_topic(project_id)) as woken,
            self.wakeups.subscription(worker_topic(worker_id)) as released,
        ):
            while True:
                woken.clear()
                tasks, look_again_at = await run_in_threadpool(
                    self._claim, caller, project_id, handlers, worker_id, max_tasks, first
                )
                first = False
                remaining = deadline - loop.time()
                if tasks or remaining <= 0 or self.wakeups.closing:
                    break
                if look_again_at is not None:  # e.g. a lease runs out then, which makes its task claimable
                    remaining = min(remaining, max(0.02, (look_again_at - now_ms()) / 1000 + 0.02))
                await _wait_any((woken, released), remaining)
                if released.is_set() or await disconnected():
                    break  # the worker is stopping, or gone: claiming now would strand the task until its lease ends
        return {"project_id": project_id, "lease_sec": self.settings.task_lease_sec, "tasks": tasks}

    def _claim(
        self,
        caller: Caller,
        project_id: str,
        handlers: list[tuple[str, str]],
        worker_id: str,
        max_tasks: int,
        count: bool,
    ) -> tuple[list[dict[str, Any]], int | None]:
        now = now_ms()
        claimed: list[dict[str, Any]] = []
        with self.db.transaction() as session:
            projects.require_caller_role(session, project_id, caller, "write")
            topics = _expire_leases(session, project_id)
            wanted = or_(*(and_(Task.task_type == t, Task.task_name == n) for t, n in handlers))
            query = (
                select(Task)
                .where(Task.project_id == project_id, Task.state == "pending", wanted)
                .order_by(Task.created_at_ms, Task.id)
                .limit(max_tasks)
                .with_for_update(skip_locked=True)  # PostgreSQL: concurrent claims take different tasks
            )
            for row in session.scalars(query).all():
                _change(
                    row,
                    news=False,
                    state="running",
                    attempts=row.attempts + 1,
                    claim_id=secrets.token_hex(16),
                    worker_id=worker_id,
                    worker_client_id=caller.client_id,
                    lease_expires_at_ms=now + self.settings.task_lease_sec * 1000,
                    progress=None,
                )
                claimed.append({**_status(row, with_input=True, with_result=False), "claim_id": row.claim_id})
            look_again_at = None
            if not claimed:
                look_again_at = session.scalar(
                    select(func.min(Task.lease_expires_at_ms)).where(
                        Task.project_id == project_id, Task.state == "running", wanted
                    )
                )
                # Pending tasks this claim skipped: another transaction holds their rows for a moment (a claim
                # that is taking them, a request joining them). Look again soon rather than sleep through them.
                skipped = select(Task.id).where(Task.project_id == project_id, Task.state == "pending", wanted)
                if session.scalar(select(skipped.exists())):
                    look_again_at = now + _SKIPPED_RETRY_MS
            if count or claimed:
                add_usage(session, project_id, requests=1)
            self._publish_in(session, topics)
        self._wake(topics)
        return claimed, look_again_at

    def heartbeat(
        self, caller: Caller, project_id: str | None, claims: list[tuple[str, str, str | None]]
    ) -> dict[str, Any]:
        """Renew the leases of ``claims`` (task id, claim id, new progress message or None); answers the claim ids
        that are lost (cancelled, or handed to another worker after the lease ran out)."""
        now = now_ms()
        lost: list[str] = []
        topics: list[str] = []
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            ids = sorted({task_id for task_id, _, _ in claims})
            query = select(Task).where(Task.project_id == project.id, Task.id.in_(ids))
            rows = {row.id: row for row in session.scalars(query.order_by(Task.id).with_for_update())}
            for task_id, claim_id, progress in claims:
                row = rows.get(task_id)
                if row is not None and row.claim_id == claim_id and row.state in ("finished", "error"):
                    continue  # completed by this very claim while the renewal was on its way
                if row is None or not _holds(row, claim_id, caller):
                    lost.append(claim_id)
                    continue
                row.lease_expires_at_ms = now + self.settings.task_lease_sec * 1000
                progress = clean_text(progress[:MAX_PROGRESS_CHARS]) if progress is not None else None
                if progress is not None and progress != row.progress:
                    _change(row, news=True, progress=progress)
                    topics.append(task_topic(project.id, task_id))
            add_usage(session, project.id, requests=1)
            self._publish_in(session, topics)
        self._wake(topics)
        return {"lease_sec": self.settings.task_lease_sec, "lost": lost}

    def complete(
        self,
        caller: Caller,
        project_id: str | None,
        task_id: str,
        claim_id: str,
        outcome: dict[str, str | None],
    ) -> dict[str, Any]:
        """Record the outcome of a claimed task: ``result_json`` (a small result, stored here as a blob),
        ``result_sha1`` (a blob the worker uploaded) or ``error``. Repeating the same completion (a retry after a
        lost answer) is answered as before."""
        _check(validate_task_id, task_id)
        given = {name: value for name, value in outcome.items() if value is not None}
        if len(given) != 1 or not given.keys() <= {"result_json", "result_sha1", "error"}:
            raise InvalidRequest("a completion carries exactly one of result_json, result_sha1 or error")
        result_json, result_sha1, error = given.get("result_json"), given.get("result_sha1"), given.get("error")
        if error is not None:
            error = clean_text(error[:MAX_ERROR_CHARS])
        data = None
        if result_json is not None:
            data = _result_bytes(result_json)
            result_sha1 = hashlib.sha1(data).hexdigest()
        project_id = projects.caller_project_id(caller, project_id)
        if data is not None:
            with self.db.transaction() as session:  # may this caller complete it? Then store the result.
                projects.require_caller_role(session, project_id, caller, "write")
                row, repeated = _claimed(session, project_id, task_id, claim_id, caller, result_sha1, error)
                if repeated:
                    return _status(row, with_input=False)
            # Outside any transaction: a write to the object store takes a while.
            self.blobs.store_bytes(project_id, caller.client_id or "", data)
        topics = [task_topic(project_id, task_id)]
        with self.db.transaction() as session:
            projects.require_caller_role(session, project_id, caller, "write")
            row, repeated = _claimed(session, project_id, task_id, claim_id, caller, result_sha1, error)
            if repeated:  # this very completion, repeated (its first answer was lost)
                return _status(row, with_input=False)
            if result_sha1 is not None:
                blob = session.get(Blob, (project_id, result_sha1))
                if blob is None:
                    raise InvalidRequest(f"project {project_id} holds no blob {result_sha1}; upload the result first",
                                         error_code="result_not_stored")  # fmt: skip
                if result_json is not None:  # the copy on the task's row, beside the blob
                    charge_or_refuse(session, project_id, _bytes(result_json), f"the result of task {row.task_name}")
                _change(row, news=True, state="finished", result_sha1=result_sha1, result_size=blob.size,
                        result_json=result_json, lease_expires_at_ms=None)  # fmt: skip
            else:
                _change(row, news=True, state="error", error=error, lease_expires_at_ms=None)
            add_usage(session, project_id, requests=1)
            self._publish_in(session, topics)
            status = _status(row, with_input=False)
        self._wake(topics)
        return status

    def release(self, caller: Caller, project_id: str | None, worker_id: str, keep: list[str]) -> dict[str, Any]:
        """A stopping worker hands back its running tasks (all but those whose claim ids are in ``keep``, which it
        is still finishing) without counting an attempt, and its waiting claims end empty."""
        topics: list[str] = []
        with self.db.transaction() as session:
            project = projects.caller_project(session, caller, project_id, "write")
            rows = session.scalars(
                select(Task)
                .where(
                    Task.project_id == project.id,
                    Task.state == "running",
                    Task.worker_id == worker_id,
                    Task.worker_client_id == caller.client_id,
                )
                .order_by(Task.id)
                .with_for_update()
            ).all()
            released = [row for row in rows if row.claim_id not in keep]
            for row in released:
                _change(row, news=False, state="pending", attempts=row.attempts - 1, **_NO_CLAIM)
            if released:
                topics.append(queue_topic(project.id))
            topics.append(worker_topic(worker_id))
            add_usage(session, project.id, requests=1)
            self._publish_in(session, topics)
        self._wake(topics)
        return {"project_id": project.id, "released": [row.id for row in released]}

    # ------------------------------------------------------------------------------------------- wake-ups

    def _publish_in(self, session: Session, topics: list[str]) -> None:
        for topic in dict.fromkeys(topics):
            self.wakeups.publish_in(session, topic)

    def _wake(self, topics: list[str]) -> None:
        for topic in dict.fromkeys(topics):
            self.wakeups.wake(topic)


_NO_CLAIM: dict[str, Any] = {"claim_id": None, "worker_id": None, "worker_client_id": None, "lease_expires_at_ms": None}


def _expire_leases(session: Session, project_id: str, task_id: str | None = None) -> list[str]:
    """Running tasks of the project (or just ``task_id``) whose lease has run out: back to pending, or to error
    after ``max_attempts`` lost workers. Returns the topics to publish."""
    query = select(Task).where(
        Task.project_id == project_id, Task.state == "running", Task.lease_expires_at_ms < now_ms()
    )
    if task_id is not None:
        query = query.where(Task.id == task_id)
    topics = []
    for row in session.scalars(query.order_by(Task.id).with_for_update(skip_locked=True)).all():
        if row.attempts >= row.max_attempts:
            lost = f"the task's worker stopped renewing its lease {row.attempts} times (killed, cut off or hung)"
            why = f"{lost}; giving up after {row.max_attempts} attempts"
            _change(row, news=True, state="error", error=why, **_NO_CLAIM)
            topics.append(task_topic(project_id, row.id))
        else:
            _change(row, news=False, state="pending", **_NO_CLAIM)
            topics.append(queue_topic(project_id))
    return topics


def _change(row: Task, *, news: bool, **values: Any) -> None:
    """Set ``values`` on the task. ``news``: a waiting requester must hear of it (a new run, a progress message,
    the end), so it counts a new ``status_version``. A claim, a hand-back or a lost worker is news to workers
    only: a requester's long-poll sleeps through it, and answers once, at the end, if nothing is reported."""
    for name, value in values.items():
        setattr(row, name, value)
    row.updated_at_ms = now_ms()
    if news:
        row.status_version += 1


def _claimed(
    session: Session,
    project_id: str,
    task_id: str,
    claim_id: str,
    caller: Caller,
    result_sha1: str | None,
    error: str | None,
) -> tuple[Task, bool]:
    """The task, locked, with whether it was completed already by this very completion; :class:`Conflict`
    ``claim_lost`` unless that, or the caller still holds the claim."""
    row = _locked(session, project_id, task_id)
    if row is not None and _same_completion(row, claim_id, result_sha1, error):
        return row, True
    if row is None or not _holds(row, claim_id, caller):
        state = row.state if row is not None else "gone"
        raise Conflict(
            f"task {task_id} is no longer claimed by this worker (it is {state}: cancelled, or handed to another "
            "worker after the lease ran out); this completion was not recorded",
            error_code="claim_lost",
        )
    return row, False


def _result_bytes(result_json: str) -> bytes:
    data = result_json.encode("utf-8")
    if len(data) > MAX_INLINE_RESULT_BYTES:
        raise InvalidRequest(f"result_json is over {MAX_INLINE_RESULT_BYTES} bytes; upload the result as a blob and "
                             "send result_sha1", error_code="result_too_large")  # fmt: skip
    try:
        json.loads(data)
    except ValueError:
        raise InvalidRequest("result_json is not JSON") from None
    return data


def _same_completion(row: Task, claim_id: str, result_sha1: str | None, error: str | None) -> bool:
    if row.claim_id != claim_id or row.state not in ("finished", "error"):
        return False
    return row.result_sha1 == result_sha1 and (error is None or row.error == error)


def _holds(row: Task, claim_id: str, caller: Caller) -> bool:
    return row.state == "running" and row.claim_id == claim_id and row.worker_client_id == caller.client_id


def _locked(session: Session, project_id: str, task_id: str) -> Task | None:
    return session.scalars(
        select(Task).where(Task.project_id == project_id, Task.id == task_id).with_for_update()
    ).one_or_none()


def _require_requester(session: Session, project: Any, caller: Caller) -> None:
    """Creating a task (or running a failed calculation again) needs a registered client with the project's
    ``task_request_role``."""
    if caller.user is None:
        if caller.client_id is not None:
            raise ClientNotRegistered(
                f"client {caller.client_id} is not registered with this server; run kachery-cloud-init"
            )
        raise Forbidden("an anonymous (ephemeral) client cannot request new tasks; only finished calculations are "
                        "readable without registering", error_code="permission_denied")  # fmt: skip
    projects.require_caller_role(session, project.id, caller, project.task_request_role)


def _status(row: Task, *, with_input: bool, with_result: bool = True) -> dict[str, Any]:
    status = {
        "project_id": row.project_id,
        "task_id": row.id,
        "task_type": row.task_type,
        "task_name": row.task_name,
        "state": row.state,
        "status_version": row.status_version,
        "attempts": row.attempts,
        "max_attempts": row.max_attempts,
        "requested_by_client_id": row.requested_by_client_id,
        "worker_client_id": row.worker_client_id,
        "created_at_ms": row.created_at_ms,
        "updated_at_ms": row.updated_at_ms,
        "lease_expires_at_ms": row.lease_expires_at_ms if row.state == "running" else None,
        "progress": row.progress,
        "result_sha1": row.result_sha1,
        "result_size": row.result_size,
        "error": row.error,
    }
    if with_input:
        status["task_input"] = json.loads(row.input)
    if with_result:
        status["result_json"] = row.result_json
    return status


def _check(validate: Callable[[Any], Any], value: Any) -> Any:
    try:
        return validate(value)
    except KacheryCloudError as e:
        raise InvalidRequest(str(e)) from None


async def _wait_any(events: tuple[asyncio.Event, ...], timeout: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


def _bytes(text: str | bytes) -> int:
    """The bytes a stored text takes (what usage.stored_by_kind counts), not its characters."""
    return len(text.encode("utf-8")) if isinstance(text, str) else len(text)
