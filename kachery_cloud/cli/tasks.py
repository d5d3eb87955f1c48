"""``kachery-cloud task list|status|cancel``: the tasks of a project."""

from __future__ import annotations

import dataclasses
import json
import time

import click

from ..protocol.task_format import TASK_STATES
from ..tasks import TaskClient, TaskStatus
from ._errors import handle_errors

_PROJECT = click.option("--project", default=None, help="Project id [default: KACHERY_CLOUD_PROJECT, else yours].")
_JSON = click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per line for list).")


@click.group("task")
def task() -> None:
    """Tasks requested from the workers of a project (kcl.request_task, kcl.TaskBackend)."""


@task.command("list")
@_PROJECT
@click.option("--state", type=click.Choice(TASK_STATES), default=None, help="Only tasks in this state.")
@click.option("--name", "task_name", default=None, help="Only tasks of this name.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@_JSON
@handle_errors
def list_(project: str | None, state: str | None, task_name: str | None, limit: int, as_json: bool) -> None:
    """The project's tasks, newest first: id, state, type, name, age, and progress or error."""
    for status in TaskClient(project).list_tasks(state=state, task_name=task_name, limit=limit):
        if as_json:
            click.echo(json.dumps(dataclasses.asdict(status)))
        else:
            note = (status.error or status.progress or "").strip().splitlines()
            click.echo(
                f"{status.task_id}  {status.state:<9}  {status.task_type:<11}  {status.task_name}  "
                f"{_age(status.created_at_ms)}  {note[-1][:80] if note else ''}".rstrip()
            )


@task.command("status")
@click.argument("task_id")
@_PROJECT
@_JSON
@handle_errors
def status(task_id: str, project: str | None, as_json: bool) -> None:
    """Everything known about TASK_ID: state, attempts, input, progress, result URI or error."""
    found = TaskClient(project).get_task_status(task_id)
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(found), indent=2))
        return
    for name, value in _fields(found):
        click.echo(f"{name + ':':<13} {value}")


@task.command("cancel")
@click.argument("task_id")
@_PROJECT
@handle_errors
def cancel(task_id: str, project: str | None) -> None:
    """Cancel TASK_ID if it is pending or running (its requester gets a TaskError)."""
    if TaskClient(project).cancel_task(task_id):
        click.echo(f"cancelled {task_id}")
    else:
        click.echo(f"{task_id} had ended already; nothing to cancel")


def _fields(found: TaskStatus) -> list[tuple[str, object]]:
    fields: list[tuple[str, object]] = [
        ("task", found.task_id),
        ("project", found.project_id),
        ("type", found.task_type),
        ("name", found.task_name),
        ("state", found.state),
        ("attempts", f"{found.attempts} of {found.max_attempts}"),
        ("requested by", found.requested_by_client_id),
        ("created", f"{_age(found.created_at_ms)} ago"),
        ("input", json.dumps(found.task_input)),
    ]
    if found.worker_client_id:
        fields.append(("worker", found.worker_client_id))
    if found.progress:
        fields.append(("progress", found.progress))
    if found.result_uri:
        fields.append(("result", found.result_uri))
    if found.error:
        fields.append(("error", found.error))
    return fields


def _age(ms: int) -> str:
    seconds = max(0, int(time.time() - ms / 1000))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
