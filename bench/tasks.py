"""Task queue round trip and throughput: kachery-cloud tasks through a real ``api_server`` process vs RQ (python-rq
2.x) on the local Redis at 127.0.0.1:6379, in one run on the same machine.

The task is a no-op **action** (``task_type="action"``: never cached, runs every time) that returns a tiny dict
unique to the request (``{"i": ..., "pid": ...}``), so every kachery-cloud result is a new blob that the worker
uploads and the requester downloads, and RQ stores and reads a result of the same size. RQ runs the same function,
``bench.tasks.noop``, which its worker processes import before they start (RQ's advice for forking workers). RQ
is measured with its default ``Worker`` (forks a work horse per job) and with ``SimpleWorker`` (runs jobs in the
worker process, as a kachery-cloud ``TaskBackend`` does); both log at WARNING, like the quiet kachery-cloud
workers. Requester and workers use separate kachery-cloud client directories, as on separate machines.

1. Round trip, one worker process started beforehand and idle-waiting: one requester, sequential requests
   (``kcl.request_task`` vs ``Queue.enqueue`` + ``job.latest_result(timeout=...)``, which blocks on the job's
   result stream), a short untimed pause before each so that the worker is back in its wait. p50 / p95 / max.
2. Throughput with 4 worker processes (kachery-cloud: 4 processes each running ``TaskBackend(num_workers=1)``;
   RQ: 4 ``rq worker`` processes): N tasks requested by 16 threads that each request-and-wait sequentially,
   (a) in one requester process, (b) in 4 spawned requester processes of 4 threads. For RQ also its own best
   case: one thread enqueues all N, then waits for all N. Tasks/s from the first request to the last result.
   With each figure: the servers' CPU per task (kachery-cloud: API process + its object store; RQ: Redis).
3. The anatomy of one kachery-cloud round trip: 20 sequential requests to a worker that records every HTTP
   request it sends (requests' adapter patched in both processes): how many calls of each kind, how long each
   takes, and when each step ended after the request started; next to it, what a bare API call costs.
4. Context without a baseline (RQ has no result cache): a finished calculation requested again.

Afterwards it checks that each kachery-cloud task ran exactly once (the workers report every input they ran,
the server every task's attempts) and that no process of the run is left; Redis keys of the run are deleted.
Anything a worker wrote to stderr is printed as a PROBLEM line.

    .venv/bin/pip install rq redis && .venv/bin/python bench/tasks.py
    .venv/bin/python bench/tasks.py --quick                     # smoke run, under a minute
    .venv/bin/python bench/tasks.py --requests 200 --tasks 300  # the defaults (under 3 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import queue
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
ACTION = "bench.noop"  # kachery-cloud task names
CALCULATION = "bench.noop_calculation"
RQ_FUNCTION = "bench.tasks.noop"  # what RQ workers import: this file, with the repository root on their path
WORKERS = 4
TASKS = 300  # per throughput run: kachery-cloud does about 10 a second on 2 cores; the run stays under 3 min
REQUESTER_THREADS = 16
REQUESTER_PROCESSES = 4  # x REQUESTER_THREADS // REQUESTER_PROCESSES threads each
TRACED = 20  # round trips of the anatomy
SETTLE_SEC = 0.02  # before each sequential round trip: time for the worker to be back in its wait
WAIT_SEC = 60  # longest wait for one result (the first one also waits for the worker to start)
RQ_TTL_SEC = 900  # of RQ jobs and results; the run deletes its keys anyway
CHILD_TIMEOUT_SEC = 180.0
TRACE_ENV = "KC_BENCH_TRACE"


def noop(i: int) -> dict[str, int]:
    """The task, for both queues: nothing but a tiny result unique to the request."""
    return {"i": i, "pid": os.getpid()}


# ----------------------------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(fraction * len(ordered)) - 1))]


def fmt_ms(seconds: Sequence[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{statistics.median(ms):6.2f} / {percentile(ms, 0.95):6.2f} / {max(ms):6.2f} ms"


def fmt_rate(rate: float) -> str:
    return f"{rate:7.0f} tasks/s"


def latency_ratio(kc: Sequence[float] | None, baseline: Sequence[float] | None) -> str:
    if not kc or not baseline:
        return "-"
    return f"{statistics.median(kc) / statistics.median(baseline):.2f}"


def rate_ratio(kc: float | None, baseline: float | None) -> str:
    return "-" if kc is None or baseline is None else f"{kc / baseline:.2f}"


@dataclass
class Table:
    header: tuple[str, ...]
    rows: list[tuple[str, ...]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        self.rows.append(cells)

    def print(self) -> None:
        widths = [max(len(row[i]) for row in [self.header, *self.rows]) for i in range(len(self.header))]
        for row in [self.header, *self.rows]:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
        for note in self.notes:
            print(note)


_STARTED = time.monotonic()


def progress(text: str) -> None:
    print(f"... {time.monotonic() - _STARTED:5.1f} s  {text}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- HTTP trace


class HttpTrace:
    """Every HTTP request this process sends through requests, with its start and end (``time.time()``, which
    compares across processes). Patched at the adapter, below kachery-cloud's retries: a retried call counts
    twice, as it should. For a streamed download the end is when the headers arrived (the blobs here are tiny)."""

    def __init__(self, api_url: str) -> None:
        self.api_netloc = urlsplit(api_url).netloc
        self.records: list[tuple[str, float, float]] = []  # (label, start, end)
        self._original: Any = None

    def label(self, method: str, url: str) -> str:
        parts = urlsplit(url)
        if parts.netloc != self.api_netloc:
            return f"{method} object store"
        return f"{method} " + re.sub(r"/[0-9A-Za-z_-]{20,}", "/{id}", parts.path)

    def start(self) -> None:
        from requests.adapters import HTTPAdapter

        original = HTTPAdapter.send

        def send(adapter: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
            started = time.time()
            try:
                return original(adapter, request, *args, **kwargs)
            finally:
                self.records.append((self.label(request.method, request.url), started, time.time()))

        HTTPAdapter.send = send  # type: ignore[method-assign]
        self._original = original

    def stop(self) -> None:
        from requests.adapters import HTTPAdapter

        if self._original is not None:
            HTTPAdapter.send = self._original  # type: ignore[method-assign]
            self._original = None


# ----------------------------------------------------------------------------------------------- kachery-cloud workers


def kc_worker_main() -> None:
    """Body of a kachery-cloud worker process (``-c`` code calls it): serve the no-op action and calculation
    until SIGTERM, then print, as one JSON line, every input it ran (to find tasks run twice) and its trace."""
    import kachery_cloud as kcl

    trace = HttpTrace(os.environ["KACHERY_CLOUD_API_URL"]) if os.environ.get(TRACE_ENV) else None
    ran: list[int] = []
    runs: list[tuple[int, float]] = []  # (input, time the function ran), traced workers only

    def task(i: int) -> dict[str, int]:
        ran.append(i)
        if trace is not None:
            runs.append((i, time.time()))
        return noop(i)

    backend = kcl.TaskBackend(num_workers=1)
    backend.register_task_handler(task_type="action", task_name=ACTION, task_function=task)
    backend.register_task_handler(task_type="calculation", task_name=CALCULATION, task_function=task)
    if trace is not None:
        trace.start()
    backend.run()  # until SIGTERM
    report = {"pid": os.getpid(), "ran": ran, "runs": runs, "http": trace.records if trace is not None else []}
    print(json.dumps(report), flush=True)


@dataclass
class WorkerProcess:
    kind: str  # "kachery" | "rq"
    process: subprocess.Popen[str]
    stderr_path: Path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KACHERY_")}
    env.update(extra)
    return env


def start_kc_worker(env: dict[str, str], log_dir: Path, name: str, *, trace: bool = False) -> WorkerProcess:
    code = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import bench.tasks as b; b.kc_worker_main()"
    worker_env = clean_env(**env, **({TRACE_ENV: "1"} if trace else {}))
    stderr_path = log_dir / f"{name}.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", code], env=worker_env, stdout=subprocess.PIPE, stderr=stderr, text=True
        )
    return WorkerProcess("kachery", process, stderr_path)


def start_rq_worker(queue_name: str, worker_class: str, log_dir: Path, name: str) -> WorkerProcess:
    # `rq worker`, with the job's module imported before it starts, as RQ's performance notes advise: a forking
    # Worker's work horse would otherwise import it for every job (this file, not byte-compiled under
    # PYTHONDONTWRITEBYTECODE, costs ~15 ms to import), which would be measuring this file, not RQ.
    preload = f"import sys; sys.path.insert(0, {str(ROOT)!r}); import bench.tasks; from rq.cli import main; main()"
    options = {
        "--url": f"redis://{REDIS_HOST}:{REDIS_PORT}/0",
        "--worker-class": worker_class,
        "--name": name,
        "--logging_level": "WARNING",  # no per-job log lines, as the quiet kachery-cloud workers
    }
    command = [sys.executable, "-c", preload, "worker", queue_name, *(x for pair in options.items() for x in pair)]
    stderr_path = log_dir / f"{name}.stderr"
    with open(stderr_path, "w") as stderr:
        process = subprocess.Popen(command, env=clean_env(), stdout=stderr, stderr=subprocess.STDOUT, text=True)
    return WorkerProcess("rq", process, stderr_path)


@dataclass
class StopReport:
    ran: list[list[int]] = field(default_factory=list)  # kachery-cloud: inputs run, per worker
    runs: list[tuple[int, float]] = field(default_factory=list)
    http: list[tuple[str, float, float]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def stop_workers(workers: list[WorkerProcess]) -> StopReport:
    """SIGTERM (a graceful stop for both kinds), then collect what the kachery-cloud workers report; anything odd
    (a worker that needed SIGKILL, a bad exit code, a traceback or warning on stderr) goes to ``problems``."""
    report = StopReport()
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        pid = worker.process.pid
        try:
            stdout, _ = worker.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            worker.process.kill()
            stdout, _ = worker.process.communicate()
            report.problems.append(f"{worker.kind} worker {pid} ignored SIGTERM for 30 s and was killed")
        code = worker.process.returncode
        if code not in (0, -signal.SIGTERM):
            report.problems.append(f"{worker.kind} worker {pid} exited with {code}")
        if worker.kind == "kachery" and stdout and stdout.strip():
            answer = json.loads(stdout.strip().splitlines()[-1])
            report.ran.append(answer["ran"])
            report.runs += [tuple(run) for run in answer["runs"]]
            report.http += [tuple(record) for record in answer["http"]]
        elif worker.kind == "kachery":
            report.problems.append(f"kachery-cloud worker {pid} reported nothing on exit (code {code})")
        stderr = worker.stderr_path.read_text(errors="replace").strip()
        if stderr:
            report.problems.append(f"{worker.kind} worker {pid} stderr:\n    " + stderr.replace("\n", "\n    "))
    return report


# ----------------------------------------------------------------------------------------------- requesters
#
# A round trip is a callable taking the task's input number. Inputs are numbered across the whole run, so that
# every action and every RQ job id is new.


class Numbers:
    """Fresh input numbers (thread-safe)."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> list[int]:
        with self._lock:
            first, self._next = self._next, self._next + count
        return list(range(first, first + count))

    @property
    def taken(self) -> int:
        with self._lock:
            return self._next


def kc_round_trip(i: int) -> None:
    import kachery_cloud as kcl

    result = kcl.request_task("action", ACTION, {"i": i}, timeout_sec=WAIT_SEC, quiet=True)
    if result.get("i") != i:
        raise AssertionError(f"kachery-cloud task {i} answered {result!r}")


def rq_queue(queue_name: str) -> Any:
    import redis
    from rq import Queue

    return Queue(queue_name, connection=redis.Redis(host=REDIS_HOST, port=REDIS_PORT))


def rq_enqueue(rq: Any, job_prefix: str, i: int) -> Any:
    return rq.enqueue(
        RQ_FUNCTION, i, job_id=f"{job_prefix}_{i}", ttl=RQ_TTL_SEC, result_ttl=RQ_TTL_SEC, failure_ttl=RQ_TTL_SEC
    )


def rq_result(job: Any, i: int) -> None:
    from rq.results import Result

    result = job.latest_result(timeout=WAIT_SEC)  # blocks on the job's result stream (XREAD BLOCK)
    if result is None or result.type != Result.Type.SUCCESSFUL or result.return_value.get("i") != i:
        raise AssertionError(f"RQ job {job.id}: {result and result.type} {result and result.return_value!r}")


def rq_round_trip(rq: Any, job_prefix: str) -> Callable[[int], None]:
    def round_trip(i: int) -> None:
        rq_result(rq_enqueue(rq, job_prefix, i), i)

    return round_trip


def sequential(round_trip: Callable[[int], None], numbers: list[int]) -> list[float]:
    """One round trip at a time, each after a pause (untimed): their latencies."""
    latencies: list[float] = []
    for i in numbers:
        time.sleep(SETTLE_SEC)
        started = time.perf_counter()
        round_trip(i)
        latencies.append(time.perf_counter() - started)
    return latencies


def overlapping(
    round_trip: Callable[[int], None], numbers: list[int], threads: int
) -> tuple[float, float, list[float]]:
    """``threads`` threads, each doing its share of the round trips one after another: (time.time() of the
    start, of the last result, latencies). The first failure is raised."""
    shares = [numbers[k::threads] for k in range(threads)]

    def run(share: list[int]) -> tuple[list[float], float]:
        latencies: list[float] = []
        for i in share:
            started = time.perf_counter()
            round_trip(i)
            latencies.append(time.perf_counter() - started)
        return latencies, time.time()

    started = time.time()
    with ThreadPoolExecutor(threads) as pool:
        answers = list(pool.map(run, shares))
    return started, max(end for _, end in answers), [s for latencies, _ in answers for s in latencies]


def use_client_env(env: dict[str, str]) -> None:
    from kachery_cloud._connection import forget_clients

    os.environ.update(env)
    forget_clients()


def requester_child(
    backend: str, env: dict[str, str], target: str, numbers: list[int], threads: int, go: Any, out: Any
) -> None:
    """A spawned requester process: connect and do one untimed round trip (imports, connections), say "ready",
    then on ``go`` run ``numbers`` in ``threads`` threads and send back (start, end, latencies)."""
    try:
        if backend == "kachery":
            use_client_env(env)
            round_trip = kc_round_trip
        else:
            round_trip = rq_round_trip(rq_queue(target), f"{env['job_prefix']}_p{os.getpid()}")
        round_trip(numbers[0])
        out.put(("ready", None))
        if not go.wait(CHILD_TIMEOUT_SEC):
            raise TimeoutError("no start signal")
        out.put(("done", overlapping(round_trip, numbers[1:], threads)))
    except BaseException:
        out.put(("error", traceback.format_exc()))


def expect(out: Any, kind: str) -> Any:
    try:
        got, payload = out.get(timeout=CHILD_TIMEOUT_SEC)
    except queue.Empty:
        raise TimeoutError(f"no {kind!r} from a requester process within {CHILD_TIMEOUT_SEC:.0f} s") from None
    if got == "error":
        raise RuntimeError(f"a requester process failed:\n{payload}")
    if got != kind:
        raise RuntimeError(f"expected {kind!r} from a requester process, got {got!r}")
    return payload


def requester_processes(
    backend: str, env: dict[str, str], target: str, numbers: list[int]
) -> tuple[float, list[float]]:
    """REQUESTER_PROCESSES spawned processes of REQUESTER_THREADS // REQUESTER_PROCESSES threads share ``numbers``
    (plus one warm-up round trip each): (tasks/s from the start signal to the last result, latencies)."""
    ctx = mp.get_context("spawn")
    out, go = ctx.Queue(), ctx.Event()
    shares = [numbers[k::REQUESTER_PROCESSES] for k in range(REQUESTER_PROCESSES)]
    threads = REQUESTER_THREADS // REQUESTER_PROCESSES
    processes = [
        ctx.Process(target=requester_child, args=(backend, env, target, share, threads, go, out), daemon=True)
        for share in shares
    ]
    try:
        for process in processes:
            process.start()
        for _ in processes:
            expect(out, "ready")
        started = time.time()
        go.set()
        ends: list[float] = []
        latencies: list[float] = []
        for _ in processes:
            _, end, child_latencies = expect(out, "done")
            ends.append(end)
            latencies += child_latencies
    finally:
        go.set()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    return len(latencies) / (max(ends) - started), latencies


def warm_up_all(round_trip: Callable[[int], None], numbers: Numbers, pids: Callable[[], set[int]], count: int) -> None:
    """Overlapping round trips until every one of ``count`` workers has answered one (so all are up and
    waiting before the clock starts)."""
    deadline = time.monotonic() + WAIT_SEC * 2
    while len(pids()) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(pids())} of {count} workers answered during the warm-up")
        overlapping(round_trip, numbers.take(count * 2), count * 2)


def wait_registered(rq: Any, count: int) -> None:
    """Until ``count`` RQ workers of the queue have registered (they start their blocking dequeue right after); a
    forking worker's results carry its work horse's pid, so the warm-up cannot tell the workers apart by pid."""
    from rq import Worker

    deadline = time.monotonic() + WAIT_SEC
    while len(Worker.all(queue=rq)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"fewer than {count} RQ workers registered on {rq.name}")
        time.sleep(0.05)


# ----------------------------------------------------------------------------------------------- anatomy


# Calls whose duration is mostly waiting for something to happen.
LONG_POLLS = {"POST /api/tasks/request", "GET /api/tasks/{id}", "POST /api/tasks/claim"}


def anatomy(
    requester: list[tuple[str, float, float]], worker: StopReport, windows: list[tuple[float, float]]
) -> list[str]:
    """The traced round trips, as lines: calls per round trip and their median duration, for requester and worker,
    and the medians of when each step ended after the request started. A worker call belongs to the round trip in
    whose window (from its start to the next one's start) it ended; the windows are sequential, so none overlap."""
    starts = [start for start, _ in windows] + [windows[-1][1] + 0.5]  # not the stop's release at the end
    durations: dict[str, dict[str, list[float]]] = {"requester": {}, "worker": {}}  # side -> label -> ms
    steps: dict[str, list[float]] = {}
    totals: list[int] = []
    for k, (start, end) in enumerate(windows):
        mine = {
            "requester": [r for r in requester if start <= r[1] and r[2] <= end],
            "worker": [r for r in worker.http if start <= r[2] < starts[k + 1]],
        }
        totals.append(len(mine["requester"]) + len(mine["worker"]))
        for side, records in mine.items():
            for label, began, ended in records:
                durations[side].setdefault(label, []).append((ended - began) * 1000)

        def last_end(side: str, label: str, records: dict[str, list[tuple[str, float, float]]] = mine) -> float | None:
            ends = [r[2] for r in records[side] if r[0] == label]
            return max(ends) if ends else None

        marks = {
            "claim answered": last_end("worker", "POST /api/tasks/claim"),
            "function ran": next((t for _, t in worker.runs if start <= t < starts[k + 1]), None),
            "result blob stored": last_end("worker", "POST /api/uploads/complete"),
            "task completed": last_end("worker", "POST /api/tasks/{id}/complete"),
            "request long-poll answered": last_end("requester", "POST /api/tasks/request"),
            "status long-poll answered": last_end("requester", "GET /api/tasks/{id}"),
            "result blob loaded (request_task returned)": end,
        }
        for name, at in marks.items():
            if at is not None:
                steps.setdefault(name, []).append((at - start) * 1000)
    n = len(windows)
    lines = [
        f"anatomy of one kachery-cloud round trip ({n} traced, sequential): HTTP calls, mean count per round "
        "trip x median ms each"
    ]
    for side in ("requester", "worker"):
        parts = [
            f"{label} {len(ms) / n:.2f}x {statistics.median(ms):.1f}" + (" (long-poll)" if label in LONG_POLLS else "")
            for label, ms in durations[side].items()
        ]
        lines.append(f"  {side:9}  " + " | ".join(parts))
    lines.append(
        f"  HTTP calls per round trip: median {statistics.median(totals):.0f} (min {min(totals)}, max {max(totals)})"
    )
    lines.append("  when each step ended, median ms after request_task was called (in how many round trips):")
    ordered = sorted(steps.items(), key=lambda item: statistics.median(item[1]))
    lines += [f"    +{statistics.median(values):6.1f}  {name} ({len(values)}/{n})" for name, values in ordered]
    return lines


# ----------------------------------------------------------------------------------------------- server CPU


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) a live process has used; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class CpuMeter:
    """CPU seconds used by the servers: the API process, its object store (the API process's children: the
    embedded nanio) and Redis (INFO cpu; the machine's Redis serves nothing else during the run, we assume)."""

    server_pid: int
    redis: Any

    def read(self) -> dict[str, float]:
        from tests.servers import descendants

        info = self.redis.info("cpu")
        return {
            "api": process_cpu(self.server_pid),
            "store": sum(process_cpu(pid) for pid in descendants(self.server_pid)),
            "redis": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        }

    def per_task_ms(self, before: dict[str, float], tasks: int) -> dict[str, float]:
        after = self.read()
        return {name: (after[name] - before[name]) * 1000 / tasks for name in after}


def call_costs(server_url: str, meter: CpuMeter, n: int) -> list[str]:
    """What one API call costs that does nothing for a task: an unsigned GET /api/health and a signed
    GET /api/clients/me (signature check, nonce recorded, client looked up), wall time and API-process CPU."""
    import requests

    from kachery_cloud._connection import api_client

    session = requests.Session()
    api = api_client()
    calls: dict[str, Callable[[], object]] = {
        "unsigned GET /api/health": lambda: session.get(f"{server_url}/api/health", timeout=10).raise_for_status(),
        "signed GET /api/clients/me": lambda: api.call("GET", "/api/clients/me"),
    }
    parts = []
    for name, call in calls.items():
        call()
        before = meter.read()
        latencies = []
        for _ in range(n):
            started = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - started)
        cpu = meter.per_task_ms(before, n)["api"]
        parts.append(f"{name} p50 {statistics.median(latencies) * 1000:.1f} ms, {cpu:.1f} ms of API CPU")
    session.close()
    return parts


# ----------------------------------------------------------------------------------------------- Redis hygiene


def delete_rq_keys(r: Any, token: str) -> int:
    """Every key of this run (queue, registries, jobs, results, workers all carry the token) and our members of
    RQ's global sets. Never anything else."""
    keys = list(r.scan_iter(match=f"*{token}*", count=1000))
    for start in range(0, len(keys), 500):
        r.delete(*keys[start : start + 500])
    for global_set in ("rq:queues", "rq:workers"):
        members = [m for m in r.smembers(global_set) if token.encode() in m]
        if members:
            r.srem(global_set, *members)
    return len(keys)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


# ----------------------------------------------------------------------------------------------- the run


RQ_CLASSES = {"Worker": "rq.worker.Worker", "SimpleWorker": "rq.worker.SimpleWorker"}
SETUPS = {
    "threads": f"{REQUESTER_THREADS} requester threads in 1 process",
    "processes": f"{REQUESTER_PROCESSES} requester processes x {REQUESTER_THREADS // REQUESTER_PROCESSES} threads",
}


@dataclass
class Measured:
    """One backend's figures of one measurement: latencies, or a rate and the latencies under it, and the
    servers' CPU per task."""

    latencies: list[float]
    cpu: dict[str, float]
    rate: float | None = None
    requester_cpu: float | None = None  # ms per task of this process's CPU, when the requesters are threads here


class Run:
    """One benchmark run: the server, the clients, the worker processes it started and what it measured."""

    def __init__(self, args: argparse.Namespace, tmp: Path, redis_client: Any) -> None:
        self.args = args
        self.tmp = tmp
        self.redis = redis_client
        self.token = secrets.token_hex(4)  # in every Redis key of the run, deleted at the end
        self.queue_name = f"bench_tasks_{self.token}"
        self.job_prefix = f"bench_{self.token}"
        self.numbers = Numbers()
        self.workers: list[WorkerProcess] = []
        self.problems: list[str] = []
        self.server: Any = None
        self.meter: CpuMeter | None = None
        self.worker_env: dict[str, str] = {}
        self.requester_env: dict[str, str] = {}
        self.rq: Any = None

    # ------------------------------------------------------------------------------------------- set-up

    def start(self) -> None:
        import kachery_cloud as kcl
        from tests.servers import start_server

        progress("starting the embedded server (SQLite)")
        self.server = start_server(self.tmp / "server")
        self.meter = CpuMeter(self.server.process.pid, self.redis)
        # Separate client directories, as on separate machines: the requester must download each result, not find
        # it in a local store that the worker filled. The workers share one (one machine, one identity).
        common = {"KACHERY_CLOUD_API_URL": self.server.url, "KACHERY_CLOUD_QUIET": "1"}
        self.worker_env = {"KACHERY_CLOUD_DIR": str(self.tmp / "client-worker"), **common}
        self.requester_env = {"KACHERY_CLOUD_DIR": str(self.tmp / "client-requester"), **common}
        use_client_env(self.worker_env)
        worker_project = kcl.init(quiet=True)["default_project_id"]
        use_client_env(self.requester_env)  # this process is the requester from here on
        requester_project = kcl.init(quiet=True)["default_project_id"]
        assert worker_project == requester_project, (worker_project, requester_project)
        self.rq = rq_queue(self.queue_name)

    def stop_workers(self) -> StopReport:
        report = stop_workers(self.workers)
        self.workers.clear()
        self.problems += report.problems
        return report

    def cleanup(self) -> tuple[int, list[int]]:
        """Stop everything this run started; (Redis keys deleted, processes of the run still alive)."""
        from tests.servers import descendants

        try:
            if self.workers:
                self.stop_workers()
            if self.server is not None:
                self.server.stop()
        finally:
            deleted = delete_rq_keys(self.redis, self.token)
        # Spawned requesters are joined; multiprocessing's resource tracker may outlive them legitimately.
        return deleted, [pid for pid in descendants(os.getpid()) if "resource_tracker" not in cmdline(pid)]

    def cpu_since(self, before: dict[str, float], tasks: int) -> dict[str, float]:
        assert self.meter is not None
        return self.meter.per_task_ms(before, tasks)

    def cpu_now(self) -> dict[str, float]:
        assert self.meter is not None
        return self.meter.read()

    # ------------------------------------------------------------------------------------------- phases

    def kc_latency(self) -> tuple[Measured, list[float], StopReport]:
        """Sequential round trips to one idle worker, then a finished calculation asked for again."""
        import kachery_cloud as kcl

        n, warmup = self.args.requests, self.args.warmup
        progress(f"kachery-cloud round trips: {warmup} + {n}, 1 worker; then a cached calculation")
        self.workers.append(start_kc_worker(self.worker_env, self.tmp, "kc-latency"))
        sequential(kc_round_trip, self.numbers.take(warmup))  # the first waits for the worker to start
        before = self.cpu_now()
        latencies = sequential(kc_round_trip, self.numbers.take(n))
        measured = Measured(latencies, self.cpu_since(before, n))

        def cached_hit(_i: int) -> None:
            if kcl.request_task("calculation", CALCULATION, {"i": -1}, timeout_sec=WAIT_SEC)["i"] != -1:
                raise AssertionError("wrong cached result")

        sequential(cached_hit, self.numbers.take(warmup))  # the first one runs it
        cached = sequential(cached_hit, self.numbers.take(n))
        return measured, cached, self.stop_workers()

    def rq_latency(self, label: str) -> Measured:
        n, warmup = self.args.requests, self.args.warmup
        progress(f"RQ {label} round trips: {warmup} + {n}, 1 worker")
        name = f"{self.job_prefix}_latency_{label}"
        self.workers.append(start_rq_worker(self.queue_name, RQ_CLASSES[label], self.tmp, name))
        round_trip = rq_round_trip(self.rq, name)
        sequential(round_trip, self.numbers.take(warmup))
        before = self.cpu_now()
        latencies = sequential(round_trip, self.numbers.take(n))
        measured = Measured(latencies, self.cpu_since(before, n))
        self.stop_workers()
        return measured

    def kc_anatomy(self) -> tuple[list[str], StopReport]:
        """``args.traced`` sequential round trips with both sides recording their HTTP calls; then what a bare API
        call costs."""
        assert self.meter is not None
        progress(f"anatomy: {self.args.traced} traced round trips; the cost of an API call")
        self.workers.append(start_kc_worker(self.worker_env, self.tmp, "kc-traced", trace=True))
        sequential(kc_round_trip, self.numbers.take(self.args.warmup))
        trace = HttpTrace(self.server.url)
        windows: list[tuple[float, float]] = []
        trace.start()
        try:
            for i in self.numbers.take(self.args.traced):
                time.sleep(SETTLE_SEC)
                started = time.time()
                kc_round_trip(i)
                windows.append((started, time.time()))
            time.sleep(1.0)  # the worker's last calls end; its stop (a release) comes after the last window
        finally:
            trace.stop()
        report = self.stop_workers()
        lines = anatomy(trace.records, report, windows)
        costs = call_costs(self.server.url, self.meter, self.args.bare_calls)
        intro = f"  for comparison, calls that do nothing for a task ({self.args.bare_calls} each): "
        return [*lines, intro + "; ".join(costs)], report

    def kc_throughput(self) -> tuple[dict[str, Measured], int, StopReport]:
        """WORKERS worker processes; args.tasks tasks from each requester setup. Also: how many actions were
        requested, and what the workers say they ran."""
        import kachery_cloud as kcl

        n = self.args.tasks
        progress(f"kachery-cloud throughput: {WORKERS} workers, {n} tasks x {len(SETUPS)} requester setups")
        first = self.numbers.taken
        self.workers += [start_kc_worker(self.worker_env, self.tmp, f"kc-throughput-{k}") for k in range(WORKERS)]
        seen: set[int] = set()

        def seen_round_trip(i: int) -> None:
            seen.add(kcl.request_task("action", ACTION, {"i": i}, timeout_sec=WAIT_SEC)["pid"])

        warm_up_all(seen_round_trip, self.numbers, lambda: seen, WORKERS)
        results = {
            "threads": self._threads(kc_round_trip, n),
            "processes": self._processes("kachery", self.requester_env, "", n),
        }
        requested = self.numbers.taken - first
        return results, requested, self.stop_workers()

    def rq_throughput(self, label: str) -> tuple[dict[str, Measured], float]:
        """As :meth:`kc_throughput`, plus RQ's own best case (enqueue all, then wait): its tasks/s."""
        n = self.args.tasks
        progress(f"RQ {label} throughput: {WORKERS} workers, {n} tasks x {len(SETUPS) + 1} requester setups")
        prefix = f"{self.job_prefix}_tp_{label}"
        self.workers += [
            start_rq_worker(self.queue_name, RQ_CLASSES[label], self.tmp, f"{prefix}_{k}") for k in range(WORKERS)
        ]
        round_trip = rq_round_trip(self.rq, prefix)
        wait_registered(self.rq, WORKERS)
        overlapping(round_trip, self.numbers.take(WORKERS * 4), WORKERS * 2)
        results = {
            "threads": self._threads(round_trip, n),
            "processes": self._processes("rq", {"job_prefix": prefix}, self.queue_name, n),
        }
        batch = self.numbers.take(n)
        started = time.perf_counter()
        jobs = [rq_enqueue(self.rq, prefix, i) for i in batch]
        for job, i in zip(jobs, batch, strict=True):
            rq_result(job, i)
        enqueue_all = n / (time.perf_counter() - started)
        self.stop_workers()
        return results, enqueue_all

    def _threads(self, round_trip: Callable[[int], None], n: int) -> Measured:
        before, own_before = self.cpu_now(), time.process_time()
        start, end, latencies = overlapping(round_trip, self.numbers.take(n), REQUESTER_THREADS)
        own = (time.process_time() - own_before) * 1000 / n
        return Measured(latencies, self.cpu_since(before, n), n / (end - start), own)

    def _processes(self, backend: str, env: dict[str, str], target: str, n: int) -> Measured:
        before = self.cpu_now()
        # Each process also does one untimed round trip first (imports, connections).
        rate, latencies = requester_processes(backend, env, target, self.numbers.take(n + REQUESTER_PROCESSES))
        return Measured(latencies, self.cpu_since(before, n + REQUESTER_PROCESSES), rate)


# ----------------------------------------------------------------------------------------------- report


def cpu_cell(cpu: dict[str, float], backend: str) -> str:
    if backend == "kachery":  # its API process + object store; RQ: Redis
        return f"API {cpu['api']:.1f} + store {cpu['store']:.1f} ms"
    return f"Redis {cpu['redis']:.2f} ms"


def comparison(label: str, kc: Measured, rq: dict[str, Measured], what: str) -> list[tuple[str, ...]]:
    """Table rows of one measurement: the figure (``what``: "latency" or "rate"), then, for rates, the latency
    under that load, then the servers' CPU per task; each with the kc/RQ ratios."""
    rows: list[tuple[str, ...]] = []
    if what == "rate":
        assert kc.rate is not None
        rows.append(
            (
                label,
                fmt_rate(kc.rate),
                *(fmt_rate(m.rate or 0) for m in rq.values()),
                *(rate_ratio(kc.rate, m.rate) for m in rq.values()),
            )
        )
        label = "  round trip under that load p50/p95/max"
    rows.append(
        (
            label,
            fmt_ms(kc.latencies),
            *(fmt_ms(m.latencies) for m in rq.values()),
            *(latency_ratio(kc.latencies, m.latencies) for m in rq.values()),
        )
    )
    kc_total = kc.cpu["api"] + kc.cpu["store"]
    rows.append(
        (
            "  server CPU per task",
            cpu_cell(kc.cpu, "kachery"),
            *(cpu_cell(m.cpu, "rq") for m in rq.values()),
            *(f"{kc_total / m.cpu['redis']:.0f}" if m.cpu["redis"] > 0 else "-" for m in rq.values()),
        )
    )
    return rows


def bound_line(alone: Measured, loaded: dict[str, Measured]) -> str:
    """What bounds kachery-cloud, from the figures of this run."""
    threads, processes = loaded["threads"], loaded["processes"]
    assert threads.rate is not None and processes.rate is not None and threads.requester_cpu is not None
    api_busy = threads.cpu["api"] * threads.rate / 1000
    requester_busy = threads.requester_cpu * threads.rate / 1000
    return (
        "what bounds kachery-cloud: a round trip is the chain of signed HTTP calls above, each answered by one "
        "Python API process with SQLite write transactions (the signature's nonce, then the call's own); alone it "
        f"used {alone.cpu['api']:.0f} ms of API CPU per task in a {statistics.median(alone.latencies) * 1000:.0f} ms "
        f"round trip. Under load ({WORKERS} workers, {SETUPS['threads']}) the API process was busy {api_busy:.2f} of "
        f"a core at {threads.cpu['api']:.0f} ms per task, so one core caps it near {1000 / threads.cpu['api']:.0f} "
        f"tasks/s whatever the number of workers; the requester process was busy only {requester_busy:.2f} of a core "
        f"({threads.requester_cpu:.1f} ms per task), which is why requester processes instead of threads changed "
        f"little ({processes.rate:.1f} vs {threads.rate:.1f} tasks/s)"
    )


def check_lines(
    requested: int, throughput: StopReport, single: list[StopReport], listed: list[Any], problems: list[str]
) -> list[str]:
    """Did every kachery-cloud task run exactly once? And what became of the tasks a worker warned about?"""
    warned = [w for problem in problems for w in re.findall(r"\(([0-9a-f]{12})\) was cancelled or handed", problem)]
    by_prefix = {t.task_id[:12]: t for t in listed}
    fates: dict[str, int] = {}
    for prefix in warned:
        task = by_prefix.get(prefix)
        fate = f"{task.state} after {task.attempts} attempt(s)" if task is not None else "not among the listed"
        fates[fate] = fates.get(fate, 0) + 1
    runs = [i for ran in throughput.ran for i in ran]
    twice = sorted(i for i in set(runs) if runs.count(i) > 1) if len(set(runs)) != len(runs) else []
    one_worker = [i for report in single for ran in report.ran for i in ran]
    odd = [t for t in listed if t.attempts != 1 or t.state != "finished"]
    return [
        f"check, {WORKERS}-worker kachery-cloud runs: {requested} actions requested, {len(runs)} runs (per worker "
        f"{[len(ran) for ran in throughput.ran]}), {len(set(runs))} distinct inputs, "
        + ("no task ran twice" if not twice else f"RAN TWICE: {twice[:20]}")
        + ("" if len(runs) == requested else " -- RUNS != REQUESTS"),
        f"check, 1-worker kachery-cloud runs: {len(one_worker)} runs, {len(set(one_worker))} distinct inputs (the "
        f"cached calculation ran {one_worker.count(-1)} time(s))",
        f"check, server: of the {len(listed)} newest tasks, {len(odd)} not finished in exactly one attempt"
        + (f": {[(t.task_id[:8], t.state, t.attempts) for t in odd[:10]]}" if odd else ""),
        f"check, worker warnings that a task 'was cancelled or handed to another worker': {len(warned)}"
        + (f"; on the server those tasks are: {fates}" if warned else ""),
    ]


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="timed sequential round trips (default 200)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed round trips before them (default 20)")
    parser.add_argument("--tasks", type=int, default=TASKS, help=f"tasks per throughput run (default {TASKS})")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 round trips, 3 warm-ups, 24 tasks")
    args = parser.parse_args()
    args.traced, args.bare_calls = TRACED, 100
    if args.quick:
        args.requests, args.warmup, args.tasks, args.traced, args.bare_calls = 10, 3, 24, 5, 20

    import redis

    r = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    r.ping()
    bench_started = time.perf_counter()
    load_before = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    table = Table(("", "kachery-cloud", "RQ Worker (fork)", "RQ SimpleWorker", "kc/Worker", "kc/Simple"))
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        run = Run(args, Path(tmp_name), r)
        try:
            import kachery_cloud as kcl

            run.start()
            kc_alone, cached, latency_report = run.kc_latency()
            rq_alone = {label: run.rq_latency(label) for label in RQ_CLASSES}
            anatomy_lines, traced_report = run.kc_anatomy()
            lines += anatomy_lines
            kc_loaded, requested, throughput_report = run.kc_throughput()
            rq_loaded: dict[str, dict[str, Measured]] = {}
            enqueue_all: dict[str, float] = {}
            for label in RQ_CLASSES:
                rq_loaded[label], enqueue_all[label] = run.rq_throughput(label)
            listed = kcl.TaskClient().list_tasks(limit=1000)

            table.rows += comparison(
                f"round trip, 1 idle worker ({args.requests} sequential)", kc_alone, rq_alone, "latency"
            )
            for key, setup in SETUPS.items():
                label = f"throughput, {WORKERS} workers, {args.tasks} tasks, {setup}"
                table.rows += comparison(label, kc_loaded[key], {k: v[key] for k, v in rq_loaded.items()}, "rate")
            table.add(
                f"throughput, {WORKERS} workers, 1 thread enqueues all {args.tasks}, then waits",
                "n/a (request_task waits)",
                *(fmt_rate(rate) for rate in enqueue_all.values()),
                "-",
                "-",
            )
            table.add(
                f"cached calculation requested again ({args.requests} sequential)",
                fmt_ms(cached),
                "n/a (no result cache)",
                "n/a",
                "-",
                "-",
            )
            lines.append(bound_line(kc_alone, kc_loaded))
            table.notes += check_lines(
                requested, throughput_report, [latency_report, traced_report], listed, run.problems
            )
        finally:
            deleted, left = run.cleanup()

    table.notes.append(
        f"cleanup: deleted {deleted} Redis keys of this run; processes of the run left: {left or 'none'}"
    )
    print()
    print(
        f"tasks bench: {args.requests} sequential round trips after {args.warmup} warm-ups, {args.tasks} tasks per "
        f"throughput run; {os.cpu_count()} CPUs; kachery-cloud on the embedded server (SQLite, nanio); rq "
        f"{__import__('rq').__version__}, Redis {r.info('server')['redis_version']}; "
        f"{time.perf_counter() - bench_started:.0f} s in all; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after"
    )
    print(
        "latency: p50 / p95 / max; throughput: first request to last result; kc/RQ: ratio of the medians (latency "
        "above 1 = slower, throughput below 1 = slower), of the totals for CPU"
    )
    table.print()
    for line in lines:
        print(line)
    for problem in run.problems:
        print(f"PROBLEM: {problem}")


if __name__ == "__main__":
    main()
