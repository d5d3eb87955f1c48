"""Tasks: thin HTTP over :mod:`api_server.services.tasks`. Requests and status reads, and worker claims, are
long-polls (``wait_ms``)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from kachery_cloud.protocol.task_format import MAX_WAIT_SEC, TASK_STATES

from ..services.tasks import MAX_CLAIM, MAX_LIST
from .deps import ContextDep, OptionalCaller, RegisteredCaller, long_poll

router = APIRouter(prefix="/api/tasks", tags=["tasks"])

_PROJECT = Field(None, description="default: the caller's default project (required for anonymous callers)")
_WAIT = Field(0, ge=0, le=MAX_WAIT_SEC * 1000, description="long-poll: wait this long (ms) for a change")
_HEX32 = r"^[0-9a-f]{32}$"
_HEX40 = r"^[0-9a-f]{40}$"


class TaskStatus(BaseModel):
    project_id: str
    task_id: str
    task_type: str
    task_name: str
    state: str = Field(description=" | ".join(TASK_STATES))
    status_version: int = Field(description="rises on a new run, a progress message and the end")
    attempts: int = Field(description="how many times a worker has claimed the task")
    max_attempts: int
    requested_by_client_id: str
    worker_client_id: str | None
    created_at_ms: int
    updated_at_ms: int
    lease_expires_at_ms: int | None = Field(description="while running: when the worker's claim runs out")
    progress: str | None = Field(description="the running task's latest progress message")
    result_sha1: str | None = Field(description="finished: the result's blob in the project (JSON)")
    result_size: int | None
    result_json: str | None = Field(None, description="finished, with a small result: the result blob's content")
    error: str | None = Field(description="error or cancelled: why")
    task_input: Any = Field(None, description="the input (status reads and claims only)")


class RequestBody(BaseModel):
    project_id: str | None = _PROJECT
    task_type: Literal["calculation", "action"]
    task_name: str
    task_input: dict[str, Any] = Field(description="the task function's keyword arguments")
    request_id: str | None = Field(
        None, pattern=_HEX32, description="actions: 32 random hex digits chosen by the requester (the same on a retry)"
    )
    wait_ms: int = _WAIT


class CancelResponse(TaskStatus):
    cancelled: bool = Field(description="false if the task had ended already")


class ListResponse(BaseModel):
    project_id: str
    tasks: list[TaskStatus]


class Handler(BaseModel):
    task_type: Literal["calculation", "action"]
    task_name: str


class ClaimBody(BaseModel):
    project_id: str | None = _PROJECT
    handlers: list[Handler] = Field(description="the task types and names this worker runs")
    worker_id: str = Field(pattern=_HEX32, description="random, one per running worker (TaskBackend.run)")
    max_tasks: int = Field(1, ge=1, le=MAX_CLAIM)
    wait_ms: int = _WAIT


class ClaimedTask(TaskStatus):
    claim_id: str = Field(description="names this claim in renewals and the completion")


class ClaimResponse(BaseModel):
    project_id: str
    lease_sec: int = Field(description="renew each claim well within this")
    tasks: list[ClaimedTask]


class Claim(BaseModel):
    task_id: str = Field(pattern=_HEX40)
    claim_id: str = Field(pattern=_HEX32)
    progress: str | None = Field(None, description="a new progress message, if any")


class HeartbeatBody(BaseModel):
    project_id: str | None = _PROJECT
    claims: list[Claim] = Field(max_length=1000)


class HeartbeatResponse(BaseModel):
    lease_sec: int
    lost: list[str] = Field(description="claim ids no longer held (the task was cancelled, or handed to another)")


class CompleteBody(BaseModel):
    project_id: str | None = _PROJECT
    claim_id: str
    result_json: str | None = Field(None, description="a result of up to 256 KiB as JSON; stored as a blob here")
    result_sha1: str | None = Field(None, description="a larger result, uploaded as a blob of the project first")
    error: str | None = Field(None, description="why the task failed")


class ReleaseBody(BaseModel):
    project_id: str | None = _PROJECT
    worker_id: str = Field(pattern=_HEX32)
    keep: list[str] = Field([], description="claim ids the worker is still finishing")


class ReleaseResponse(BaseModel):
    project_id: str
    released: list[str]


class ProjectBody(BaseModel):
    project_id: str | None = _PROJECT


@router.post("/request", response_model=TaskStatus)
async def request_task(body: RequestBody, caller: OptionalCaller, context: ContextDep) -> dict:
    """Find or create a task. A finished calculation answers its result at once; with ``wait_ms`` the answer waits
    for the task's end, or its first progress message."""
    with long_poll(context, caller, body.wait_ms):
        return await context.tasks.request(
            caller, body.project_id, body.task_type, body.task_name, body.task_input, body.request_id, body.wait_ms
        )


@router.get("", response_model=ListResponse)
def list_tasks(
    caller: OptionalCaller,
    context: ContextDep,
    project_id: str | None = Query(None),
    state: Literal["pending", "running", "finished", "error", "cancelled"] | None = Query(None),
    task_name: str | None = Query(None),
    limit: int = Query(100, ge=1, le=MAX_LIST),
) -> dict:
    """A project's tasks, newest first."""
    return context.tasks.list_tasks(caller, project_id, state, task_name, limit)


@router.get("/{task_id}", response_model=TaskStatus)
async def task_status(
    task_id: str,
    caller: OptionalCaller,
    context: ContextDep,
    project_id: str | None = Query(None),
    after_version: int = Query(0, ge=0, description="wait for a status_version above this"),
    wait_ms: int = Query(0, ge=0, le=MAX_WAIT_SEC * 1000),
    with_input: bool = Query(False, description="include the task's input"),
) -> dict:
    """A task's status. With ``wait_ms``: wait until it changes past ``after_version`` or ends."""
    with long_poll(context, caller, wait_ms):
        return await context.tasks.status(caller, project_id, task_id, after_version, wait_ms, with_input)


@router.post("/{task_id}/cancel", response_model=CancelResponse)
def cancel_task(task_id: str, body: ProjectBody, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Cancel a pending or running task (write role, or the client that requested it)."""
    return context.tasks.cancel(caller, body.project_id, task_id)


@router.post("/claim", response_model=ClaimResponse)
async def claim_tasks(body: ClaimBody, caller: RegisteredCaller, context: ContextDep, request: Request) -> dict:
    """Workers: claim pending tasks this worker handles, oldest first; wait up to ``wait_ms`` for one."""
    handlers = [(h.task_type, h.task_name) for h in body.handlers]
    with long_poll(context, caller, body.wait_ms):
        return await context.tasks.claim(
            caller, body.project_id, handlers, body.worker_id, body.max_tasks, body.wait_ms, request.is_disconnected
        )


@router.post("/heartbeat", response_model=HeartbeatResponse)
def heartbeat(body: HeartbeatBody, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Workers: renew the leases of running tasks, with their latest progress messages."""
    claims = [(c.task_id, c.claim_id, c.progress) for c in body.claims]
    return context.tasks.heartbeat(caller, body.project_id, claims)


@router.post("/{task_id}/complete", response_model=TaskStatus)
def complete_task(task_id: str, body: CompleteBody, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Workers: record a claimed task's result (a blob of the project) or its error."""
    outcome = {"result_json": body.result_json, "result_sha1": body.result_sha1, "error": body.error}
    return context.tasks.complete(caller, body.project_id, task_id, body.claim_id, outcome)


@router.post("/release", response_model=ReleaseResponse)
def release_tasks(body: ReleaseBody, caller: RegisteredCaller, context: ContextDep) -> dict:
    """Workers: a stopping worker hands back its running tasks (but ``keep``) and ends its waiting claims."""
    return context.tasks.release(caller, body.project_id, body.worker_id, body.keep)
