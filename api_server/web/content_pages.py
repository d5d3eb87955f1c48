"""A project's content in the browser: mutables (folders, values, versions), feeds (messages, followed live) and
tasks (state, progress, errors, cancel). They call the same services as the API, as the signed-in user."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from kachery_cloud.protocol.task_format import TASK_STATES

from ..auth import Caller
from ..db.models import Feed, User
from ..errors import InvalidRequest, NotFound
from ..routes.deps import ContextDep
from .browser_session import OptionalWebUser, WebUser, flash
from .project_pages import project_page, readable_project

router = APIRouter(include_in_schema=False)

FEED_PAGE = 100  # messages a feed's page shows, and a live update brings at most
FEED_WAIT_MS = 20_000  # how long the page's live update waits for a new message
MUTABLES_PAGE = 1000
RECENT_FEEDS = 200
RECENT_TASKS = 200


def _caller(request: Request, user: User | None) -> Caller:
    """The signed-in person as the services' caller: a user and no client."""
    return Caller(client_id=None, user=user, address=request.client.host if request.client else "unknown")


# --- mutables ---


@router.get("/projects/{project_id}/mutables", response_class=HTMLResponse)
def mutables(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    folder = request.query_params.get("folder", "").strip("/")
    after = request.query_params.get("after") or None
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
    listing = context.mutables.list_keys(_caller(request, user), project_id, folder or None, after, MUTABLES_PAGE)
    prefix = f"{folder}/" if folder else ""
    folders: dict[str, int] = {}
    values: list[dict[str, Any]] = []
    for row in listing["mutables"]:
        rest = row["key"][len(prefix) :]
        if "/" in rest:
            name = rest.split("/", 1)[0]
            folders[name] = folders.get(name, 0) + 1
        else:
            values.append({**row, "name": rest})
    crumbs = []
    parts = folder.split("/") if folder else []
    for i, part in enumerate(parts):
        crumbs.append((part, "/".join(parts[: i + 1])))
    return project_page(
        request,
        "mutables.html",
        project,
        role,
        "mutables",
        user,
        folder=folder,
        prefix=prefix,
        crumbs=crumbs,
        folders=sorted(folders.items()),
        values=values,
        next_after=listing["next_after"],
    )


@router.get("/projects/{project_id}/mutable", response_class=HTMLResponse)
def mutable_value(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    key = request.query_params.get("key", "")
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
    found = context.mutables.get(_caller(request, user), project_id, key)
    if not found["found"]:
        raise NotFound(f"project {project_id} has no mutable {key[:200]!r}", error_code="mutable_not_found")
    folder = found["key"].rsplit("/", 1)[0] if "/" in found["key"] else ""
    return project_page(request, "mutable.html", project, role, "mutables", user, m=found, folder=folder)


# --- feeds ---


@router.get("/projects/{project_id}/feeds", response_class=HTMLResponse)
def feeds(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
        rows = list(
            session.scalars(
                select(Feed)
                .where(Feed.project_id == project_id)
                .order_by(Feed.created_at_ms.desc(), Feed.id)
                .limit(RECENT_FEEDS)
            )
        )
    return project_page(request, "feeds.html", project, role, "feeds", user, feeds=rows)


def _feed_of(context: Any, project_id: str, feed_id: str) -> Feed:
    with context.db.transaction() as session:
        feed = session.get(Feed, feed_id) if len(feed_id) == 32 else None
    if feed is None or feed.project_id != project_id:
        raise NotFound(f"feed {feed_id[:40]} does not exist", error_code="feed_not_found")
    return feed


@router.get("/projects/{project_id}/feeds/{feed_id}", response_class=HTMLResponse)
async def feed_page(
    project_id: str, feed_id: str, request: Request, context: ContextDep, user: OptionalWebUser
) -> HTMLResponse:
    def check() -> tuple[Any, str | None, Feed]:
        with context.db.transaction() as session:
            project, role = readable_project(session, user, project_id)
        return project, role, _feed_of(context, project_id, feed_id)

    project, role, feed = await run_in_threadpool(check)
    start = max(0, feed.num_messages - FEED_PAGE)
    page = await context.feeds.read(_caller(request, user), feed_id, start, FEED_PAGE, 0)
    return project_page(
        request,
        "feed.html",
        project,
        role,
        "feeds",
        user,
        feed=feed,
        messages=[_shown(m) for m in page["messages"]],
        next_start=page["start"] + len(page["messages"]),
    )


@router.get("/projects/{project_id}/feeds/{feed_id}/messages.json")
async def feed_messages(
    project_id: str, feed_id: str, request: Request, context: ContextDep, user: OptionalWebUser
) -> JSONResponse:
    """Messages from ``start`` on; with none yet, waits for an append (the feed page follows new ones with it)."""
    try:
        start = int(request.query_params.get("start", "0"))
    except ValueError:
        raise InvalidRequest("start: a message number") from None

    def check() -> None:
        with context.db.transaction() as session:
            readable_project(session, user, project_id)
        _feed_of(context, project_id, feed_id)

    await run_in_threadpool(check)
    caller = _caller(request, user)
    key = f"web:{user.id}" if user is not None else caller.limit_key
    with context.long_polls.slot(key):
        page = await context.feeds.read(caller, feed_id, max(0, start), FEED_PAGE, FEED_WAIT_MS)
    return JSONResponse(
        {"num_messages": page["num_messages"], "messages": [_shown(m) for m in page["messages"]]},
        headers={"Cache-Control": "no-store"},
    )


def _shown(message: dict[str, Any]) -> dict[str, Any]:
    """A message as the page shows it: its number, when, which client appended it, and its body indented."""
    try:
        body = json.dumps(json.loads(message["body"]), indent=1, ensure_ascii=False)
    except ValueError:
        body = message["body"]
    return {
        "number": message["number"],
        "appended_at_ms": message["appended_at_ms"],
        "client_id": message["client_id"],
        "body": body,
    }


# --- tasks ---


@router.get("/projects/{project_id}/tasks", response_class=HTMLResponse)
def tasks(project_id: str, request: Request, context: ContextDep, user: OptionalWebUser) -> HTMLResponse:
    state = request.query_params.get("state") or None
    if state is not None and state not in TASK_STATES:
        raise InvalidRequest(f"state: one of {', '.join(TASK_STATES)}")
    with context.db.transaction() as session:
        project, role = readable_project(session, user, project_id)
    listing = context.tasks.list_tasks(_caller(request, user), project_id, state, None, RECENT_TASKS)
    return project_page(
        request, "tasks.html", project, role, "tasks", user, tasks=listing["tasks"], state=state, states=TASK_STATES
    )


@router.get("/projects/{project_id}/tasks/{task_id}", response_class=HTMLResponse)
async def task_page(
    project_id: str, task_id: str, request: Request, context: ContextDep, user: OptionalWebUser
) -> HTMLResponse:
    def check() -> tuple[Any, str | None]:
        with context.db.transaction() as session:
            return readable_project(session, user, project_id)

    project, role = await run_in_threadpool(check)
    status = await context.tasks.status(_caller(request, user), project_id, task_id, 0, 0, with_input=True)
    return project_page(
        request,
        "task.html",
        project,
        role,
        "tasks",
        user,
        task=status,
        task_input=json.dumps(status.get("task_input"), indent=1, ensure_ascii=False),
    )


@router.post("/projects/{project_id}/tasks/{task_id}/cancel")
def cancel_task(project_id: str, task_id: str, request: Request, context: ContextDep, user: WebUser) -> Response:
    with context.db.transaction() as session:
        readable_project(session, user, project_id)
    result = context.tasks.cancel(_caller(request, user), project_id, task_id)
    notice = "cancelled" if result["cancelled"] else f"the task had already ended ({result['state']})"
    flash(request, notice)
    return RedirectResponse(f"/projects/{project_id}/tasks/{task_id}", status_code=303)
