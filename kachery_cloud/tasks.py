"""Layer 7: requesting tasks from the workers of a project, and watching or cancelling them.

``request_task("calculation", name, input)`` returns the result a worker computed (from the project's cache at
once, if any client has asked for the same calculation before). Waiting is a long-poll on the server: the call
returns as soon as a worker completes the task, and shows the worker's progress messages meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._connection import api_client
from ._context import local_directory
from .config import ClientConfig, load_config
from .errors import (
    InvalidArgumentError,
    ServerError,
    ServerUnreachableError,
    TaskError,
    TaskTimeout,
    is_passing_failure,
)
from .fetching import fetch_blob
from .protocol.task_format import (
    FINAL_STATES,
    MAX_WAIT_SEC,
    decode_result,
    input_json,
    validate_task_id,
    validate_task_name,
    validate_task_type,
)
from .protocol.uri import format_uri

_READ_TIMEOUT_MARGIN_SEC = 30.0  # on top of a long-poll's own wait
_UNREACHABLE_PAUSE_SEC = 2.0  # between attempts to reach a restarting server while waiting


@dataclass(frozen=True)
class TaskStatus:
    """What the server knows about a task."""

    task_id: str
    project_id: str
    task_type: str
    task_name: str
    state: str  # pending | running | finished | error | cancelled
    attempts: int  # how many times a worker claimed it
    max_attempts: int
    progress: str | None  # the latest progress message of its worker
    error: str | None  # error or cancelled: why
    result_uri: str | None  # finished: the result's blob (JSON) in the project
    requested_by_client_id: str
    worker_client_id: str | None
    created_at_ms: int
    updated_at_ms: int
    task_input: dict[str, Any] | None  # None in listings

    @classmethod
    def _from_answer(cls, answer: dict[str, Any]) -> TaskStatus:
        sha1 = answer.get("result_sha1")
        return cls(
            task_id=answer["task_id"],
            project_id=answer["project_id"],
            task_type=answer["task_type"],
            task_name=answer["task_name"],
            state=answer["state"],
            attempts=int(answer["attempts"]),
            max_attempts=int(answer["max_attempts"]),
            progress=answer.get("progress"),
            error=answer.get("error"),
            result_uri=format_uri(sha1) if sha1 else None,
            requested_by_client_id=answer["requested_by_client_id"],
            worker_client_id=answer.get("worker_client_id"),
            created_at_ms=int(answer["created_at_ms"]),
            updated_at_ms=int(answer["updated_at_ms"]),
            task_input=answer.get("task_input"),
        )


class TaskClient:
    """Requests tasks of one project (default: ``KACHERY_CLOUD_PROJECT``, else your default project)."""

    def __init__(self, project_id: str | None = None) -> None:
        self._project_id = project_id

    def request_task(
        self,
        task_type: str,
        task_name: str,
        task_input: dict[str, Any],
        timeout_sec: float | None = None,
        *,
        on_progress: Callable[[str], None] | None = None,
        quiet: bool | None = None,
    ) -> Any:
        """Run ``task_name`` on ``task_input`` (its keyword arguments) on a worker of the project; return its result.

        ``task_type`` is ``"calculation"`` (the result depends on name and input only, so a finished one is
        answered from the project's cache, and identical requests share one run) or ``"action"`` (runs every
        time). Raises :class:`TaskError` if the task failed or was cancelled, :class:`TaskTimeout` if it has
        not ended after ``timeout_sec`` (None: wait as long as it takes). The worker's progress messages go to
        ``on_progress``, else to stderr (unless ``quiet`` or ``KACHERY_CLOUD_QUIET``).
        """
        validate_task_type(task_type)
        validate_task_name(task_name)
        input_json(task_input)  # type and size, before anything is sent
        if timeout_sec is not None and (
            not isinstance(timeout_sec, int | float) or isinstance(timeout_sec, bool) or timeout_sec < 0
        ):
            raise InvalidArgumentError(f"timeout_sec must be a number >= 0 or None, not {timeout_sec!r}")
        config = load_config()
        report = on_progress or _progress_printer(task_name, config, quiet)
        deadline = None if timeout_sec is None else time.monotonic() + timeout_sec
        body: dict[str, Any] = {"task_type": task_type, "task_name": task_name, "task_input": task_input}
        if task_type == "action":
            body["request_id"] = secrets.token_hex(16)  # the same on a retry, so the action does not run twice
        project = self._project_id or config.project
        if project:
            body["project_id"] = project

        def ask(wait_sec: float) -> dict[str, Any]:
            return api_client(config).call(
                "POST",
                "/api/tasks/request",
                json_body={**body, "wait_ms": int(wait_sec * 1000)},
                idempotent=True,
                timeout=(10.0, wait_sec + _READ_TIMEOUT_MARGIN_SEC),
            )

        status = _until_answered(ask, deadline)
        shown_progress = None
        while status["state"] not in FINAL_STATES:
            if status.get("progress") and status["progress"] != shown_progress:
                shown_progress = status["progress"]
                report(shown_progress)
            version, task_id, project = status["status_version"], status["task_id"], status["project_id"]

            def look(wait_sec: float, version: int = version, task_id: str = task_id, project: str = project) -> Any:
                return _status_call(config, project, task_id, version, wait_sec, with_input=False)

            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TaskTimeout(
                    f"task {task_name} ({task_id}) did not end within {timeout_sec} s; it is {status['state']} and "
                    f"goes on: ask again later, or cancel it (kachery-cloud task cancel {task_id})",
                    task_id=task_id,
                    task_name=task_name,
                    state=status["state"],
                )
            status = _until_answered(look, deadline)
        return _outcome(config, status)

    def get_task_status(self, task_id: str) -> TaskStatus:
        """The task's state, progress, result URI or error, and its input."""
        validate_task_id(task_id)
        config = load_config()
        answer = _status_call(config, self._project_id or config.project, task_id, 0, 0, with_input=True)
        return TaskStatus._from_answer(answer)

    def list_tasks(
        self, *, state: str | None = None, task_name: str | None = None, limit: int = 100
    ) -> list[TaskStatus]:
        """The project's tasks, newest first (at most ``limit``, up to 1000), optionally of one state or name."""
        config = load_config()
        params: dict[str, Any] = {"limit": limit}
        for name, value in (
            ("project_id", self._project_id or config.project),
            ("state", state),
            ("task_name", task_name),
        ):
            if value is not None:
                params[name] = value
        answer = api_client(config).call("GET", "/api/tasks", params=params)
        return [TaskStatus._from_answer(item) for item in answer["tasks"]]

    def cancel_task(self, task_id: str) -> bool:
        """Cancel a pending or running task; False if it had ended already. A running task's worker is told at its
        next lease renewal and its result is discarded (its function is not interrupted)."""
        validate_task_id(task_id)
        config = load_config()
        project = self._project_id or config.project
        body = {"project_id": project} if project else {}
        answer = api_client(config).call("POST", f"/api/tasks/{task_id}/cancel", json_body=body, idempotent=True)
        return bool(answer["cancelled"])


def request_task(
    task_type: str,
    task_name: str,
    task_input: dict[str, Any],
    timeout_sec: float | None = None,
    project_id: str | None = None,
    *,
    on_progress: Callable[[str], None] | None = None,
    quiet: bool | None = None,
) -> Any:
    """:meth:`TaskClient.request_task` in ``project_id`` (default: the current project)."""
    return TaskClient(project_id).request_task(
        task_type, task_name, task_input, timeout_sec, on_progress=on_progress, quiet=quiet
    )


def _status_call(
    config: ClientConfig, project: str | None, task_id: str, after_version: int, wait_sec: float, *, with_input: bool
) -> Any:
    params: dict[str, Any] = {"after_version": after_version, "wait_ms": int(wait_sec * 1000)}
    if with_input:
        params["with_input"] = "true"
    if project:
        params["project_id"] = project
    return api_client(config).call(
        "GET", f"/api/tasks/{task_id}", params=params, timeout=(10.0, wait_sec + _READ_TIMEOUT_MARGIN_SEC)
    )


def _until_answered(call: Callable[[float], dict[str, Any]], deadline: float | None) -> dict[str, Any]:
    """``call(wait)`` with the longest long-poll the deadline allows; a server that cannot be reached or fails
    (restarting, behind a proxy answering 502) is asked again until the deadline."""
    while True:
        remaining = MAX_WAIT_SEC if deadline is None else min(MAX_WAIT_SEC, deadline - time.monotonic())
        try:
            return call(max(0.0, remaining))
        except (ServerUnreachableError, ServerError) as e:
            if not is_passing_failure(e) or (deadline is not None and deadline - time.monotonic() <= 0):
                raise
            time.sleep(_UNREACHABLE_PAUSE_SEC)


def _outcome(config: ClientConfig, status: dict[str, Any]) -> Any:
    task = f"task {status['task_name']} ({status['task_id']})"
    if status["state"] == "finished":
        if status.get("result_json") is not None:  # a small result comes with the answer
            return decode_result(json.loads(status["result_json"]))
        # A large result is a blob of the task's project (it may not be the current one).
        project_config = dataclasses.replace(config, project=status["project_id"])
        path = fetch_blob(project_config, local_directory(config), status["result_sha1"], quiet=True)
        return decode_result(json.loads(path.read_bytes()))
    error = (status.get("error") or "no message").strip()
    if status["state"] == "cancelled":
        message = f"{task} was cancelled ({error})"
    else:  # the error's last line first; then the whole worker traceback, if that is what it is
        last = error.splitlines()[-1]
        message = f"{task} failed: {last}" + (f"\n\nOn the worker:\n{error}" if last != error else "")
    raise TaskError(
        message,
        task_id=status["task_id"],
        task_name=status["task_name"],
        state=status["state"],
    )


def _progress_printer(task_name: str, config: ClientConfig, quiet: bool | None) -> Callable[[str], None]:
    if quiet if quiet is not None else config.quiet:
        return lambda _message: None

    def show(message: str) -> None:
        print(f"[{task_name}] {message}", file=sys.stderr, flush=True)

    return show
