"""Layer 7: workers. A :class:`TaskBackend` claims the tasks it has handlers for from its project, runs them,
stores each result as a blob of the project and reports it.

- Claims are long-polls: an idle worker is handed a new task the moment it is requested.
- A claimed task is held under a lease that a background thread renews while the task runs; if this process
  dies, the lease runs out and the server hands the task to another worker.
- ``num_workers`` tasks run at once, in threads of this process (NumPy and I/O release the GIL; for CPU-bound
  pure-Python functions run several worker processes instead).
- Ctrl-C (or SIGTERM) stops claiming and lets the running tasks finish; a second one hands them back to the
  server, for another worker, and returns at once. :meth:`TaskBackend.stop` is the first Ctrl-C from code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import secrets
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ._connection import api_client, require_writable
from ._context import local_directory
from .config import ClientConfig, load_config
from .errors import InvalidArgumentError, KacheryCloudError, ServerError, is_passing_failure
from .protocol.hashing import sha1_of_bytes
from .protocol.task_format import (
    MAX_ERROR_CHARS,
    MAX_INLINE_RESULT_BYTES,
    MAX_PROGRESS_CHARS,
    MAX_WAIT_SEC,
    clean_text,
    encode_result,
    validate_task_name,
    validate_task_type,
)
from .storing import upload_cached_blob

log = logging.getLogger("kachery_cloud.tasks")

_CLAIM_TIMEOUT_MARGIN_SEC = 30.0  # on top of the claim's long-poll
_UNREACHABLE_PAUSE_SEC = 2.0  # between attempts to reach a restarting server
_PROGRESS_MIN_INTERVAL_SEC = 0.25  # progress messages are sent at most this often per worker
_RELEASE_AGAIN_SEC = 1.0  # while stopping, how often a claim still waiting on the server is released again
_SIGNAL_CHECK_SEC = 0.2  # how soon the main thread notices a stop or hand-back flag set by a signal
_current = threading.local()  # .reporter: the progress reporter of the task running in this thread


def report_task_progress(message: str) -> None:
    """Inside a task function run by a :class:`TaskBackend`: tell the requester how far the task has come (the
    latest message wins; at most 1000 characters). Outside one it does nothing, so the function still runs
    anywhere."""
    reporter = getattr(_current, "reporter", None)
    if reporter is not None:
        reporter(str(message)[:MAX_PROGRESS_CHARS])


@dataclass(frozen=True)
class _Handler:
    function: Callable[..., Any]
    extra_kwargs: dict[str, Any]


@dataclass
class _Running:
    task_id: str
    task_name: str
    claim_id: str
    progress: str | None = None  # not yet sent
    lost: bool = False  # the server says the claim is gone (cancelled, or handed on)
    started: float = field(default_factory=time.monotonic)


class TaskBackend:
    """Runs the tasks of a project (default: ``KACHERY_CLOUD_PROJECT``, else your default project) that it has
    handlers for, ``num_workers`` at a time. Needs write access to the project."""

    def __init__(self, project_id: str | None = None, num_workers: int = 1) -> None:
        if not isinstance(num_workers, int) or isinstance(num_workers, bool) or not 1 <= num_workers <= 32:
            raise InvalidArgumentError(f"num_workers must be an int from 1 to 32, not {num_workers!r}")
        self._project_id = project_id
        self._num_workers = num_workers
        self._handlers: dict[tuple[str, str], _Handler] = {}
        self._running: dict[str, _Running] = {}  # by claim id
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # a task ended, or progress waits to be sent
        self._stopping = threading.Event()  # no more claims
        self._ended = threading.Event()  # run() has returned: no more lease renewals
        self._hand_back = threading.Event()  # a second Ctrl-C: hand the running tasks back now
        # No claim is on its way or waiting on the server (set), and once _stopping is set under the gate, none
        # starts: a stop can then tell when its release has ended the last one.
        self._claim_gate = threading.Lock()
        self._no_claim = threading.Event()
        self._no_claim.set()
        self._worker_id = ""
        self._lease_sec = 30.0
        self._config: ClientConfig | None = None
        self._project = ""

    def register_task_handler(
        self,
        *,
        task_type: str,
        task_name: str,
        task_function: Callable[..., Any],
        extra_kwargs: dict[str, Any] | None = None,
    ) -> None:
        """Run ``task_function(**task_input, **extra_kwargs)`` for tasks of this type and name. It returns
        JSON-serializable data, NumPy arrays included (kept exact); what it raises becomes the task's error."""
        validate_task_type(task_type)
        validate_task_name(task_name)
        if not callable(task_function):
            raise InvalidArgumentError(f"task_function must be callable, not {type(task_function).__name__}")
        if extra_kwargs is not None and not isinstance(extra_kwargs, dict):
            raise InvalidArgumentError("extra_kwargs must be a dict or None")
        self._handlers[(task_type, task_name)] = _Handler(task_function, dict(extra_kwargs or {}))

    def stop(self) -> None:
        """Stop claiming tasks; :meth:`run` returns once the running ones have finished. Callable from any thread."""
        self._stopping.set()
        self._end_claims()

    def _end_claims(self) -> None:
        """Release, which also ends our claim waiting on the server, until no claim is left. One sent just before
        the stop may reach the server after the first release: it would wait its whole 30 s there."""
        worker_id = self._worker_id
        with self._claim_gate:  # _stopping is set: from here on no claim starts
            pass
        # Not past the end of this run: a later run() (a notebook loop) has a worker id and claims of its own.
        while not self._ended.is_set() and self._worker_id == worker_id:
            self._release_quietly()
            if self._no_claim.wait(_RELEASE_AGAIN_SEC):
                return

    def _release_quietly(self) -> None:
        if self._config is not None:
            with contextlib.suppress(KacheryCloudError):
                self._release(keep_running=True)

    def run(self) -> None:
        """Serve tasks until Ctrl-C, SIGTERM or :meth:`stop`; see the module's description."""
        if not self._handlers:
            raise InvalidArgumentError("register at least one task handler before run()")
        config = load_config()
        require_writable(config, "TaskBackend.run")
        self._worker_id = secrets.token_hex(16)
        self._project = self._project_id or config.project or ""
        self._config = config
        self._ended.clear()  # (not _stopping: a stop() just before this line must still end this run)
        self._hand_back.clear()
        heartbeat = threading.Thread(target=self._heartbeats, name="kachery-task-leases", daemon=True)
        with _stderr_logging(config), self._stopped_by_signals():
            names = ", ".join(sorted(f"{name} ({kind})" for kind, name in self._handlers))
            log.info("worker %s serving %s with %d worker(s)", self._worker_id[:8], names, self._num_workers)
            heartbeat.start()
            try:
                self._serve()
            finally:  # also when the server refused us: running tasks still finish or are handed back
                self._stopping.set()
                try:
                    self._finish()
                finally:
                    self._ended.set()
                    self._stopping.clear()  # the next run() starts afresh
                    with self._changed:
                        self._changed.notify_all()

    # ------------------------------------------------------------------------------------------ claiming

    def _serve(self) -> None:
        handlers = [{"task_type": t, "task_name": n} for t, n in self._handlers]
        while not self._stopping.is_set():
            with self._changed:
                while len(self._running) >= self._num_workers and not self._stopping.is_set():
                    self._changed.wait(_SIGNAL_CHECK_SEC)
                free = self._num_workers - len(self._running)
            with self._claim_gate:
                if self._stopping.is_set():
                    return
                self._no_claim.clear()
            wait_ms = MAX_WAIT_SEC * 1000
            body = {"handlers": handlers, "worker_id": self._worker_id, "max_tasks": free, "wait_ms": wait_ms}
            try:
                answer = self._call("POST", "/api/tasks/claim", body, idempotent=False,
                                    timeout=(10.0, MAX_WAIT_SEC + _CLAIM_TIMEOUT_MARGIN_SEC))  # fmt: skip
            except KacheryCloudError as e:
                if not is_passing_failure(e):
                    raise
                log.warning("%s; trying again", e)
                self._stopping.wait(_UNREACHABLE_PAUSE_SEC)
                continue
            finally:
                self._no_claim.set()
            self._project = answer["project_id"]
            self._lease_sec = float(answer["lease_sec"])
            self._start_tasks(answer["tasks"])

    def _start_tasks(self, tasks: list[dict[str, Any]]) -> None:
        """Run the claimed ``tasks``, unless the worker is stopping: then _finish hands them back."""
        # Checking _stopping under the lock that _release reads the running tasks under: a task is either run here
        # or handed back there, never both.
        with self._lock:
            if self._stopping.is_set():
                return
            for task in tasks:
                running = _Running(task["task_id"], task["task_name"], task["claim_id"])
                self._running[running.claim_id] = running
                # Daemon threads: tasks handed back after a second Ctrl-C must not keep the process alive.
                name = f"kachery-task-{running.task_id[:8]}"
                threading.Thread(target=self._run_one, args=(running, task), name=name, daemon=True).start()

    def _finish(self) -> None:
        """Hand back what a stopped claim may have taken, then let the running tasks finish; a second Ctrl-C
        hands those back too."""
        self._release_quietly()
        with self._changed:
            if self._running:
                log.info("finishing %d running task(s); press Ctrl-C again to hand them back and stop now",
                         len(self._running))  # fmt: skip
            while self._running and not self._hand_back.is_set():
                self._changed.wait(_SIGNAL_CHECK_SEC)
        if self._hand_back.is_set():
            released = self._release(keep_running=False)
            log.info("handed back %d task(s) for another worker", len(released))
            # Their threads go on until this process exits; exit soon after a hand-back (a notebook kernel that
            # keeps running would run a handed-back action alongside the worker that took it over).

    @contextlib.contextmanager
    def _stopped_by_signals(self) -> Iterator[None]:
        """Ctrl-C and SIGTERM (systemd, docker stop, kill) stop the worker, a second one hands its tasks back.
        The handlers only set flags: an exception raised at an arbitrary point of the main thread could leave a
        lock held or a claimed task unrecorded. Main thread only (elsewhere, use :meth:`stop`)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def on_signal(_signum: int, _frame: Any) -> None:
            if self._stopping.is_set():
                self._hand_back.set()
            else:
                self._stopping.set()
                # Not here: the main thread may be inside a request. The release ends our waiting claim.
                threading.Thread(target=self._end_claims, name="kachery-task-stop", daemon=True).start()

        previous = {number: signal.signal(number, on_signal) for number in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for number, handler in previous.items():
                signal.signal(number, handler)

    def _release(self, *, keep_running: bool) -> list[str]:
        with self._lock:
            keep = [r.claim_id for r in self._running.values()] if keep_running else []
        body = {"worker_id": self._worker_id, "keep": keep}
        return self._call("POST", "/api/tasks/release", body, idempotent=True)["released"]

    # ------------------------------------------------------------------------------------------- running

    def _run_one(self, running: _Running, task: dict[str, Any]) -> None:
        handler = self._handlers[(task["task_type"], task["task_name"])]
        label = f"{running.task_name} ({running.task_id[:12]})"
        _current.reporter = lambda message: self._set_progress(running, message)
        try:
            try:
                data = encode_result(handler.function(**task["task_input"], **handler.extra_kwargs))
            except (Exception, SystemExit) as e:
                # The traceback from the task function down (the worker's own frame would only be noise).
                frames = e.__traceback__.tb_next if e.__traceback__ is not None else None
                error = _error_text(clean_text("".join(traceback.format_exception(type(e), e, frames))))
                log.warning("task %s failed:\n%s", label, error)
                self._report(running, label, error=error)
            else:
                self._report(running, label, data=data)
        except BaseException:
            log.exception("task %s: the worker failed; its lease will run out and it goes to another worker", label)
        finally:
            _current.reporter = None
            with self._changed:
                self._running.pop(running.claim_id, None)
                self._changed.notify_all()

    def _report(self, running: _Running, label: str, *, data: bytes | None = None, error: str | None = None) -> None:
        """Complete the task with its result (``data``) or ``error``. While the server cannot be reached or
        fails, try again (the lease is still renewed, and a repeated completion is recognized); stop when the
        claim is lost, or the worker's run has ended."""
        path = f"/api/tasks/{running.task_id}/complete"
        while not running.lost and not self._ended.is_set():
            try:
                if error is not None:
                    outcome = {"error": error}
                elif data is not None and len(data) <= MAX_INLINE_RESULT_BYTES:
                    # A small result goes in the completion (the server stores it as a blob): 1 call, not 4.
                    outcome = {"result_json": data.decode("ascii")}
                else:
                    assert data is not None
                    outcome = {"result_sha1": self._store_result(data)}
                self._call("POST", path, {"claim_id": running.claim_id, **outcome}, idempotent=True)
            except KacheryCloudError as e:
                if is_passing_failure(e):
                    log.warning("task %s: %s; trying again", label, e)
                    self._ended.wait(_UNREACHABLE_PAUSE_SEC)
                    continue
                if isinstance(e, ServerError) and e.error_code == "claim_lost":
                    log.warning("task %s: %s", label, e)
                    return
                if error is not None:
                    log.error("task %s: the server refused its error report: %s", label, e)
                    return
                # The result cannot be kept (the project's quota, say): the requester hears so.
                error = clean_text(f"the result could not be stored: {e}")
                log.warning("task %s: %s", label, error)
                continue
            if error is None:
                log.info("task %s finished in %.2f s", label, time.monotonic() - running.started)
            return
        if running.lost:
            log.warning("task %s was cancelled or handed to another worker; its outcome is discarded", label)

    def _store_result(self, data: bytes) -> str:
        assert self._config is not None
        sha1 = sha1_of_bytes(data)
        local_directory(self._config).blobs.put(sha1, lambda f: f.write(data), size_hint=len(data))
        upload_cached_blob(dataclasses.replace(self._config, project=self._project), sha1)
        return sha1

    # ------------------------------------------------------------------------------ leases and progress

    def _set_progress(self, running: _Running, message: str) -> None:
        with self._changed:
            running.progress = clean_text(message)
            self._changed.notify_all()

    def _heartbeats(self) -> None:
        """Renew every running task's lease every third of the lease, and send progress messages soon after they
        are reported (at most every 0.25 s)."""
        last_renewal = time.monotonic()
        while not self._ended.is_set():
            with self._changed:
                self._changed.wait(_PROGRESS_MIN_INTERVAL_SEC)
                running = list(self._running.values())
                due = time.monotonic() - last_renewal >= self._lease_sec / 3
                claims = [
                    {"task_id": r.task_id, "claim_id": r.claim_id, "progress": r.progress}
                    for r in running
                    if due or r.progress is not None
                ]
                for r in running:
                    r.progress = None
            if not claims:
                if due:
                    last_renewal = time.monotonic()
                continue
            try:
                # A renewal that hangs must not outlive the leases it renews.
                timeout = (5.0, max(1.0, self._lease_sec / 3))
                answer = self._call("POST", "/api/tasks/heartbeat", {"claims": claims}, idempotent=True,
                                    timeout=timeout)  # fmt: skip
            except KacheryCloudError as e:
                log.warning("could not renew task leases (%s); trying again", e)
                continue
            if due:
                last_renewal = time.monotonic()
            lost = set(answer["lost"])  # claim ids
            with self._lock:
                still_running = set(self._running)
            for r in running:
                if r.claim_id in lost and r.claim_id in still_running and not r.lost:
                    r.lost = True
                    log.warning("task %s (%s) was cancelled or handed to another worker", r.task_name, r.task_id[:12])
            time.sleep(_PROGRESS_MIN_INTERVAL_SEC)

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any],
        *,
        idempotent: bool,
        timeout: tuple[float, float] | None = None,
    ) -> Any:
        assert self._config is not None
        if self._project:
            body = {"project_id": self._project, **body}
        return api_client(self._config).call(method, path, json_body=body, idempotent=idempotent, timeout=timeout)


def _error_text(text: str) -> str:
    """A traceback cut to the size the server keeps, keeping its end (where the error is)."""
    return text if len(text) <= MAX_ERROR_CHARS else "...\n" + text[-(MAX_ERROR_CHARS - 4) :]


@contextlib.contextmanager
def _stderr_logging(config: ClientConfig) -> Iterator[None]:
    """Show the worker's log on stderr unless the program configured logging itself (or asked for quiet)."""
    if config.quiet or logging.getLogger().handlers or log.handlers:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s kachery-cloud tasks: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
