"""Task queues through a real API server (SQLite and PostgreSQL) and real worker processes
(``tests/integration/task_worker.py``): round trips, the calculation cache, one run for ten identical requests,
a worker killed with kill -9, retries running out, errors, timeouts, cancelling, progress, exact NumPy results,
permissions, graceful stops and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

import kachery_cloud as kcl
from kachery_cloud.protocol.task_format import job_id

from ..helpers import act_as, run_cli, switch_client
from ..servers import PostgresDatabases, RunningServer, start_server

ROOT = Path(__file__).resolve().parents[2]
LEASE_SEC = 2  # short, so that lost workers are noticed within a test
MAX_ATTEMPTS = 2


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[RunningServer]:
    database_url = postgres.create() if request.param == "postgresql" else None
    settings = {"task_lease_sec": LEASE_SEC, "task_max_attempts": MAX_ATTEMPTS}
    running = start_server(
        tmp_path_factory.mktemp(f"tasks-{request.param}"), database_url=database_url, settings=settings
    )
    yield running
    running.stop()


class Workers:
    """Worker processes of this test's client; every task function run is a line in ``run_log``."""

    def __init__(self, run_log: Path) -> None:
        self.run_log = run_log
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, num_workers: int = 1) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.task_worker", str(num_workers)],
            cwd=ROOT,
            env={**os.environ, "RUN_LOG": str(self.run_log), "KACHERY_CLOUD_QUIET": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None and process.stdout.readline().strip() == "worker ready"
        self.processes.append(process)
        return process

    def runs(self, name: str | None = None) -> list[str]:
        lines = self.run_log.read_text().splitlines() if self.run_log.exists() else []
        return [line for line in lines if name is None or line.split(" ", 1)[0] == name]

    def wait_for_runs(self, name: str, count: int, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while len(self.runs(name)) < count:
            assert time.monotonic() < deadline, f"{name} ran {len(self.runs(name))} times, not {count}"
            time.sleep(0.02)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            if process.stdout is not None and not process.stdout.closed:
                print(f"worker {process.pid} (exit {process.returncode}):\n{process.stdout.read()}")


@pytest.fixture
def workers(registered: RunningServer, tmp_path: Path) -> Iterator[Workers]:
    running = Workers(tmp_path / "runs.log")
    yield running
    running.stop_all()


def _in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as e:
            outcome.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# ----------------------------------------------------------------------------------------------- round trips


def test_calculation_and_action_round_trips_and_the_calculation_cache(workers: Workers) -> None:
    worker = workers.start()
    a, b = 2, time.time()  # a fresh calculation in every run of the module
    assert kcl.request_task("calculation", "test.add", {"a": a, "b": b}) == {"sum": a + b}
    assert kcl.request_task("action", "test.echo", {"x": [1, "two", None]}) == {"x": [1, "two", None]}
    assert kcl.request_task("action", "test.echo", {"x": [1, "two", None]}) == {"x": [1, "two", None]}
    assert len(workers.runs("test.echo")) == 2  # an action runs every time
    # A result over 256 KiB goes the long way: the worker uploads a blob, the requester downloads it.
    big = {"text": "x" * (300 << 10)}
    assert kcl.request_task("action", "test.echo", big) == big
    [status] = kcl.TaskClient().list_tasks(task_name="test.echo", limit=1)
    assert status.result_uri is not None and kcl.load_json(status.result_uri) == big

    worker.send_signal(signal.SIGTERM)  # no worker from here on
    assert worker.wait(timeout=30) == 0
    started = time.monotonic()
    assert kcl.TaskClient().request_task("calculation", "test.add", {"b": b, "a": a}, timeout_sec=5) == {"sum": a + b}
    assert time.monotonic() - started < 2  # answered from the result blob, not by waiting for a worker
    assert len(workers.runs("test.add")) == 1

    status = kcl.TaskClient().get_task_status(job_id("test.add", {"a": a, "b": b}))
    assert status.state == "finished" and status.task_type == "calculation" and status.attempts == 1
    assert status.task_input == {"a": a, "b": b} and status.result_uri is not None
    assert kcl.load_json(status.result_uri) == {"sum": a + b}  # the result is an ordinary blob of the project
    # Requesters were told twice: created, finished. The claim is news to workers only, so a waiting requester
    # slept through it (one long-poll per task, not two).
    from kachery_cloud._connection import api_client

    assert api_client().call("GET", f"/api/tasks/{status.task_id}")["status_version"] == 2


def test_ten_identical_concurrent_requests_run_the_calculation_once(workers: Workers) -> None:
    task_input = {"a": 1, "b": time.time(), "delay": 0.5}
    code = (
        "import json, kachery_cloud as kcl; "
        f"print(json.dumps(kcl.request_task('calculation', 'test.add', {task_input!r}, timeout_sec=60)))"
    )
    requesters = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(10)
    ]
    workers.start(num_workers=4)  # four threads that could each take a copy, were there copies
    workers.start(num_workers=4)
    outputs = [p.communicate(timeout=90) for p in requesters]
    assert [json.loads(out) for out, _ in outputs] == [{"sum": 1 + task_input["b"]}] * 10, outputs
    assert len(workers.runs("test.add")) == 1


def test_a_worker_killed_mid_task_loses_it_to_another_worker(workers: Workers) -> None:
    first = workers.start()
    thread, outcome = _in_thread(lambda: kcl.request_task("action", "test.slow", {"steps": 10, "step_sec": 0.1}))
    workers.wait_for_runs("test.slow", 1)
    first.kill()  # kill -9: no release, no goodbye; only the lease running out tells the server
    first.wait()
    workers.start()
    thread.join(timeout=60)
    assert outcome == [10]
    assert len(workers.runs("test.slow")) == 2
    [status] = kcl.TaskClient().list_tasks(task_name="test.slow", limit=1)
    assert status.state == "finished" and status.attempts == 2


def test_a_task_whose_workers_keep_dying_ends_in_error(workers: Workers) -> None:
    thread, outcome = _in_thread(lambda: kcl.request_task("action", "test.slow", {"steps": 100, "step_sec": 0.1}))
    for attempt in range(1, MAX_ATTEMPTS + 1):
        worker = workers.start()
        workers.wait_for_runs("test.slow", attempt)
        worker.kill()
        worker.wait()
    thread.join(timeout=30)  # the waiting requester notices the last lease run out
    [error] = outcome
    assert isinstance(error, kcl.TaskError) and error.state == "error"
    assert f"giving up after {MAX_ATTEMPTS} attempts" in str(error)


def test_a_failing_task_reports_its_error_and_is_run_again_when_asked_again(workers: Workers) -> None:
    workers.start()
    with pytest.raises(kcl.TaskError) as failure:
        kcl.request_task("action", "test.fail", {"reason": "no data"})
    message = str(failure.value)
    assert message.splitlines()[0].endswith("failed: ValueError: refusing: no data")
    assert 'task_worker.py", line' in message and "in fail" in message  # the worker's traceback
    assert "task_backend.py" not in message  # from the task function down, not the framework
    assert failure.value.state == "error" and failure.value.task_name == "test.fail"
    assert len(workers.runs("test.fail")) == 1  # an exception is not retried


def test_a_result_over_the_project_quota_is_an_error(
    registered: RunningServer, workers: Workers, monkeypatch: pytest.MonkeyPatch
) -> None:
    import secrets

    project = f"small-{secrets.token_hex(3)}"
    # The input (2 KB) fits; the result, the same 2 KB again, does not (inputs and results both count).
    registered.admin("create-project", project, "--quota", "3000")
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", project)
    workers.start()
    with pytest.raises(kcl.TaskError, match=r"the result could not be stored: .*quota"):
        kcl.request_task("action", "test.echo", {"text": "y" * 2000})
    assert kcl.request_task("action", "test.echo", {"text": "fits"}) == {"text": "fits"}


def test_timeout_leaves_the_task_to_go_on(workers: Workers) -> None:
    started = time.monotonic()
    with pytest.raises(kcl.TaskTimeout) as timeout:
        kcl.request_task("action", "test.echo", {"nobody": "is serving"}, timeout_sec=1)
    assert 1 <= time.monotonic() - started < 5
    assert isinstance(timeout.value, TimeoutError) and timeout.value.state == "pending"
    assert kcl.TaskClient().get_task_status(timeout.value.task_id).state == "pending"
    workers.start()
    workers.wait_for_runs("test.echo", 1)  # the task was not dropped


def test_progress_reaches_the_requester_and_cancel_ends_a_pending_task(workers: Workers) -> None:
    # Cancelled while pending: the waiting requester gets a TaskError at once.
    client = kcl.TaskClient()
    thread, outcome = _in_thread(lambda: client.request_task("action", "test.echo", {"cancel": "me"}))
    deadline = time.monotonic() + 10
    while not (pending := client.list_tasks(state="pending", task_name="test.echo")):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.cancel_task(pending[0].task_id) is True
    thread.join(timeout=10)
    [error] = outcome
    assert isinstance(error, kcl.TaskError) and error.state == "cancelled" and "was cancelled" in str(error)
    assert client.cancel_task(pending[0].task_id) is False  # ended already

    workers.start()
    messages: list[str] = []
    assert kcl.request_task("action", "test.slow", {"steps": 5, "step_sec": 0.3}, on_progress=messages.append) == 5
    assert messages and all(m.startswith("step ") for m in messages)
    assert messages == sorted(set(messages), key=messages.index)  # each shown once, in order
    assert workers.runs("test.echo") == []  # the cancelled task never ran


def test_numpy_results_come_back_exact(workers: Workers) -> None:
    import importlib

    expected = importlib.import_module("tests.integration.task_worker").arrays(7)
    workers.start()
    result = kcl.request_task("calculation", "test.arrays", {"seed": 7})
    assert result.keys() == expected.keys()
    for name in expected:
        if name == "nested":
            continue
        got, want = result[name], expected[name]
        if name == "scalar":
            assert got == want
            continue
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert got.tobytes() == want.tobytes(), name  # every bit, NaN and -0.0 included
    assert np.array_equal(result["nested"][0], np.arange(3))
    assert result["nested"][1]["deep"].dtype == np.int16
    assert result["fortran"].flags.f_contiguous


def test_bad_requests_are_refused_with_clear_errors(registered: RunningServer) -> None:
    with pytest.raises(kcl.InvalidArgumentError, match="task_type must be"):
        kcl.request_task("job", "x", {})
    with pytest.raises(kcl.InvalidArgumentError, match="invalid task name"):
        kcl.request_task("action", "bad name", {})
    with pytest.raises(kcl.InvalidArgumentError, match="must be a dict"):
        kcl.request_task("action", "x", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(kcl.InvalidArgumentError, match="pass its URI"):
        kcl.request_task("action", "x", {"data": "y" * (1 << 20)})
    with pytest.raises(kcl.SerializationError):
        kcl.request_task("action", "x", {"v": float("nan")})
    with pytest.raises(kcl.InvalidArgumentError, match="register at least one"):
        kcl.TaskBackend().run()
    with pytest.raises(kcl.InvalidArgumentError, match="40 lowercase hex"):
        kcl.TaskClient().get_task_status("abc")
    with pytest.raises(kcl.ServerError) as missing:
        kcl.TaskClient().get_task_status("0" * 40)
    assert missing.value.error_code == "task_not_found"


# --------------------------------------------------------------------------------------------- permissions


def test_permissions_of_requesters_and_workers(
    registered: RunningServer, workers: Workers, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import secrets

    project = f"tasks-{secrets.token_hex(3)}"
    registered.admin("create-project", project)
    monkeypatch.setenv("KACHERY_CLOUD_PROJECT", project)
    workers.start()
    stamp = time.time()
    assert kcl.request_task("calculation", "test.add", {"a": 1, "b": stamp}) == {"sum": 1 + stamp}

    reader = f"reader-{secrets.token_hex(3)}@example.org"
    act_as(registered, monkeypatch, reader)
    registered.admin("add-member", project, reader, "--role", "read")
    # A reader may see statuses and finished calculations, but not ask for new work (the project's default)...
    assert kcl.request_task("calculation", "test.add", {"a": 1, "b": stamp}) == {"sum": 1 + stamp}
    assert kcl.TaskClient().list_tasks()[0].task_name == "test.add"
    with pytest.raises(kcl.PermissionDeniedError, match="this needs 'write'"):
        kcl.request_task("calculation", "test.add", {"a": 2, "b": stamp})
    # ... and never run tasks.
    backend = kcl.TaskBackend()
    backend.register_task_handler(task_type="action", task_name="test.echo", task_function=lambda **kw: kw)
    with pytest.raises(kcl.PermissionDeniedError):
        backend.run()
    # With the project's task_request_role at read, readers may request.
    registered.admin("set-task-request-role", project, "read")
    assert kcl.request_task("action", "test.echo", {"from": "reader"}, timeout_sec=30) == {"from": "reader"}
    # A reader may cancel the tasks it requested, but not others'.
    mine = kcl.TaskClient()
    thread, outcome = _in_thread(lambda: mine.request_task("action", "test.slow", {"steps": 50, "step_sec": 0.1}))
    workers.wait_for_runs("test.slow", 1)
    [running] = mine.list_tasks(state="running")
    assert mine.cancel_task(running.task_id) is True
    thread.join(timeout=10)
    assert isinstance(outcome[0], kcl.TaskError)

    # An outsider sees nothing: not even that the private project exists.
    act_as(registered, monkeypatch, f"outsider-{secrets.token_hex(3)}@example.org")
    invisible = f"project {project} does not exist, or is private to its members"
    with pytest.raises(kcl.ServerError, match=invisible):
        kcl.request_task("calculation", "test.add", {"a": 1, "b": stamp})
    with pytest.raises(kcl.ServerError, match=invisible):
        kcl.TaskClient().list_tasks()

    # Ephemeral clients: on a public project, finished calculations only.
    registered.admin("set-public", project, "true")
    monkeypatch.setenv("KACHERY_CLOUD_EPHEMERAL", "1")
    switch_client(monkeypatch, tmp_path / "ephemeral", register=False)
    assert kcl.request_task("calculation", "test.add", {"a": 1, "b": stamp}) == {"sum": 1 + stamp}
    with pytest.raises(kcl.PermissionDeniedError, match="anonymous"):
        kcl.request_task("calculation", "test.add", {"a": 3, "b": stamp})
    with pytest.raises(kcl.EphemeralModeError):
        backend.run()


def test_a_late_result_of_a_lost_claim_is_refused(registered: RunningServer) -> None:
    """A worker that was too slow to renew its lease (paused, cut off) cannot overwrite the task's fate."""
    from kachery_cloud._connection import api_client

    api = api_client()
    request = {"task_type": "action", "task_name": "test.late", "task_input": {}, "request_id": "ab" * 16}
    task_id = api.call("POST", "/api/tasks/request", json_body=request)["task_id"]
    assert api.call("POST", "/api/tasks/request", json_body=request)["task_id"] == task_id  # a retry: the same
    complete = f"/api/tasks/{task_id}/complete"
    claim = {"handlers": [{"task_type": "action", "task_name": "test.late"}], "worker_id": "1" * 32, "wait_ms": 5000}
    first = api.call("POST", "/api/tasks/claim", json_body=claim)["tasks"][0]
    time.sleep(LEASE_SEC + 0.5)
    second = api.call("POST", "/api/tasks/claim", json_body={**claim, "worker_id": "2" * 32})["tasks"][0]
    assert second["task_id"] == first["task_id"] == task_id and second["attempts"] == 2
    renewal = {"claims": [{"task_id": task_id, "claim_id": first["claim_id"]}]}
    assert api.call("POST", "/api/tasks/heartbeat", json_body=renewal)["lost"] == [first["claim_id"]]
    with pytest.raises(kcl.ServerError) as refused:
        api.call("POST", complete, json_body={"claim_id": first["claim_id"], "error": "late"})
    assert refused.value.error_code == "claim_lost"
    # An uploaded result must be a blob of the project.
    with pytest.raises(kcl.ServerError) as unstored:
        api.call("POST", complete, json_body={"claim_id": second["claim_id"], "result_sha1": "0" * 40})
    assert unstored.value.error_code == "result_not_stored"
    # Text a database cannot keep as such (NUL, an unpaired surrogate from a non-UTF-8 file name) is escaped.
    progress = {"claims": [{"task_id": task_id, "claim_id": second["claim_id"], "progress": "at \x00 \udc80"}]}
    assert api.call("POST", "/api/tasks/heartbeat", json_body=progress)["lost"] == []
    assert api.call("GET", f"/api/tasks/{task_id}")["progress"] == "at \\x00 \\udc80"
    body = {"claim_id": second["claim_id"], "error": "done badly \x00"}
    done = api.call("POST", complete, json_body=body)
    assert api.call("POST", complete, json_body=body) == done  # a retry is answered alike
    assert done["state"] == "error" and done["error"] == "done badly \\x00"
    # A renewal that crossed its own completion is not told the claim was lost.
    late_renewal = {"claims": [{"task_id": task_id, "claim_id": second["claim_id"]}]}
    assert api.call("POST", "/api/tasks/heartbeat", json_body=late_renewal)["lost"] == []


# ----------------------------------------------------------------------------------------------- stopping


def test_sigterm_lets_the_running_task_finish_and_a_second_one_hands_it_back(workers: Workers) -> None:
    worker = workers.start()
    thread, outcome = _in_thread(lambda: kcl.request_task("action", "test.slow", {"steps": 10, "step_sec": 0.1}))
    workers.wait_for_runs("test.slow", 1)
    worker.send_signal(signal.SIGINT)  # Ctrl-C: finish, then exit
    assert worker.wait(timeout=30) == 0
    thread.join(timeout=10)
    assert outcome == [10]
    assert worker.stdout is not None and "finishing 1 running task" in worker.stdout.read()

    worker = workers.start()
    thread, outcome = _in_thread(lambda: kcl.request_task("action", "test.slow", {"steps": 30, "step_sec": 0.1}))
    workers.wait_for_runs("test.slow", 2)
    worker.send_signal(signal.SIGINT)
    time.sleep(0.3)
    worker.send_signal(signal.SIGINT)  # again: hand the task back now
    assert worker.wait(timeout=30) == 0
    assert worker.stdout is not None and "handed back 1 task" in worker.stdout.read()
    [status] = kcl.TaskClient().list_tasks(task_name="test.slow", state="pending")
    assert status.attempts == 0  # a hand-back is not a lost worker
    workers.start()  # another worker takes it over at once, without waiting for a lease to run out
    thread.join(timeout=30)
    assert outcome == [30]


def test_an_idle_worker_stops_at_once(workers: Workers) -> None:
    worker = workers.start()
    time.sleep(0.5)  # waiting in its claim long-poll
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert time.monotonic() - started < 5

    backend = kcl.TaskBackend()
    backend.register_task_handler(task_type="action", task_name="test.never", task_function=lambda: None)
    thread = threading.Thread(target=backend.run, daemon=True)
    thread.start()
    time.sleep(0.5)
    started = time.monotonic()
    backend.stop()  # from another thread: the server ends the waiting claim
    thread.join(timeout=30)
    assert not thread.is_alive() and time.monotonic() - started < 5


# ---------------------------------------------------------------------------------------------------- CLI


def test_cli_lists_shows_and_cancels(registered: RunningServer, workers: Workers) -> None:
    workers.start()
    stamp = time.time()
    kcl.request_task("calculation", "test.add", {"a": 5, "b": stamp})
    calculation = job_id("test.add", {"a": 5, "b": stamp})
    thread, outcome = _in_thread(lambda: kcl.request_task("action", "test.echo", {"later": True}, timeout_sec=60))

    listed = run_cli("kachery-cloud", "task", "list")
    assert listed.returncode == 0, listed.stderr
    assert f"{calculation}  finished   calculation  test.add" in listed.stdout
    as_json = [json.loads(line) for line in run_cli("kachery-cloud", "task", "list", "--json").stdout.splitlines()]
    assert calculation in {t["task_id"] for t in as_json}

    shown = run_cli("kachery-cloud", "task", "status", calculation)
    assert shown.returncode == 0, shown.stderr
    assert "state:        finished" in shown.stdout and f'"b": {stamp}' in shown.stdout
    assert "result:       sha1://" in shown.stdout

    thread.join(timeout=30)
    assert outcome == [{"later": True}]
    gone = run_cli("kachery-cloud", "task", "cancel", calculation)
    assert gone.returncode == 0 and "had ended already" in gone.stdout
    bad = run_cli("kachery-cloud", "task", "status", "nope")
    assert bad.returncode != 0 and "40 lowercase hex" in bad.stderr
