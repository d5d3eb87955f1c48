"""Faults on the server side (items 8, 9 and 12 of the reliability issue).

- 8: the database goes away (SQLite locked by another process past its busy timeout; PostgreSQL refusing and
  dropping connections, as in a restart): requests are answered 503 ``database_unavailable`` with
  ``Retry-After``, clients ride it out or fail clearly, /api/health keeps answering at once, nothing acknowledged
  is lost.
- 9: JSON nested deeper than anything legitimate is a 400 with an error code, never a 500 or a crash; the client
  refuses to store it (SerializationError, not RecursionError).
- 12: the server's data directory is private: another real Unix user can read none of it, whatever the umask and
  whatever modes a pre-made directory had.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

import kachery_cloud as kcl
from kachery_cloud._connection import api_client
from kachery_cloud.protocol.feed_format import signed_bytes

from ..conftest import point_client_at
from ..helpers import BIN, signed_headers
from ..integration.multiuser_runtime import ensure_lab_users, is_root, run_as
from ..servers import POSTGRES_ADMIN_URL, PostgresDatabases, RunningServer, start_server
from .conftest import Figure, Figures

HEALTH_BOUND_SEC = 1.0  # the requirement: health answers within a second while the database is out
BUSY_SEC = 4.0  # the servers' SQLite busy timeout here (30 s by default)
LOCK_SEC = BUSY_SEC + 4  # past it, so that the requests waiting on the lock are answered 503
# More writes at once than the server has worker threads (anyio's default: 40), so that every worker waits on the
# lock: a health check that needed a worker (or the database) would then wait too.
WRITES = 48


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, postgres: PostgresDatabases
) -> Iterator[RunningServer]:
    """As tests/conftest.py's, with a short SQLite busy timeout: the outage need not last the default 30 s."""
    database_url = postgres.create() if request.param == "postgresql" else None
    settings = {"sqlite_busy_timeout_sec": BUSY_SEC}
    directory = tmp_path_factory.mktemp(f"faults-{request.param}")
    running = start_server(directory, database_url=database_url, settings=settings)
    yield running
    running.stop()


def post(server: RunningServer, target: str, body: bytes, timeout: float = 90) -> requests.Response:
    """A POST of the raw ``body``, correctly signed by this test's registered client."""
    headers = signed_headers(api_client().identity, "POST", target, body, server=server.url)
    headers["Content-Type"] = "application/json"
    return requests.post(server.url + target, data=body, headers=headers, timeout=timeout)


def health_seconds(server: RunningServer) -> float:
    start = time.monotonic()
    response = requests.get(f"{server.url}/api/health", timeout=LOCK_SEC)
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    return elapsed


def error_code(response: requests.Response) -> str | None:
    try:
        return response.json().get("error_code")
    except ValueError:
        return None


def assert_database_unavailable(response: requests.Response, what: str) -> None:
    assert (response.status_code, error_code(response)) == (503, "database_unavailable"), (
        f"{what}: {response.status_code} {response.text[:300]}"
    )
    assert response.json().get("message"), what
    assert float(response.headers.get("Retry-After", "-1")) >= 0, f"{what}: no Retry-After in {response.headers}"


def log_since(server: RunningServer, offset: int) -> str:
    return server.log()[offset:]


def is_postgres(server: RunningServer) -> bool:
    return "KACHERY_CLOUD_SERVER_DATABASE_URL" in server.env


def set_mutable_body(key: str, value: str) -> bytes:
    return json.dumps({"key": key, "value": value}).encode()


class InFlight(threading.Thread):
    """A ``kcl.set_mutable`` started while the database is out; ``outcome`` is "ok" or the exception."""

    def __init__(self, key: str, value: str) -> None:
        super().__init__(daemon=True)
        self.key, self.value = key, value
        self.outcome: Any = None

    def run(self) -> None:
        try:
            kcl.set_mutable(self.key, self.value)
            self.outcome = "ok"
        except Exception as e:
            self.outcome = e

    def check(self) -> str:
        """Either "ok" (stored) or "refused" (a clear database_unavailable, nothing kept); else the test fails."""
        self.join(timeout=120)
        assert not self.is_alive(), "the set_mutable started during the outage never returned"
        if self.outcome == "ok":
            assert kcl.get_mutable(self.key) == self.value
            return "ok"
        assert isinstance(self.outcome, kcl.ServerError), repr(self.outcome)
        assert self.outcome.error_code == "database_unavailable", repr(self.outcome)
        assert kcl.get_mutable(self.key) is None
        return "refused"


# ------------------------------------------------------------------------------------------------ 8 outage

LOCKER = r"""
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=60)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
conn.close()
print("released", flush=True)
"""


def sqlite_outage(server: RunningServer, tag: str, details: dict[str, Any]) -> tuple[int, int, list[float]]:
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(server.data_dir / "server.db"), str(LOCK_SEC)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        in_flight = InFlight(f"@faults/@{tag}/in-flight", "written during the lock")
        in_flight.start()
        latencies: list[float] = []
        with ThreadPoolExecutor(WRITES) as pool:
            writes = [
                pool.submit(post, server, "/api/mutables/set", set_mutable_body(f"@faults/@{tag}/raw{i}", f"v{i}"))
                for i in range(WRITES)
            ]
            while locker.poll() is None:
                latencies.append(health_seconds(server))
                time.sleep(0.25)
            responses = [w.result() for w in writes]
        assert locker.returncode == 0 and locker.stdout.read().strip() == "released"
        details["sqlite in-flight set_mutable"] = in_flight.check()
    finally:
        if locker.poll() is None:
            locker.kill()
            locker.wait()
    # Each write was refused (503, nothing kept) or, if it got a worker only once the lock was gone, done.
    refused = 0
    for i, response in enumerate(responses):
        if response.status_code == 200:
            assert kcl.get_mutable(f"@faults/@{tag}/raw{i}") == f"v{i}", "an acknowledged write was lost"
            continue
        assert_database_unavailable(response, f"raw mutables/set {i} while the database was locked")
        assert kcl.get_mutable(f"@faults/@{tag}/raw{i}") is None, "a refused write was kept"
        refused += 1
    assert refused, "no write was refused while the database stayed locked past the busy timeout"
    details["writes done after the lock"] = len(responses) - refused
    return len(responses), refused, latencies


def pg_admin(sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        cursor = conn.execute(sql)
        return cursor.fetchall() if cursor.description else []


def postgres_outage(server: RunningServer, tag: str, details: dict[str, Any]) -> tuple[int, int, list[float]]:
    name = server.env["KACHERY_CLOUD_SERVER_DATABASE_URL"].rsplit("/", 1)[1]
    assert name.startswith("kctest_"), name  # only ever a database the tests created
    latencies: list[float] = []
    responses: list[requests.Response] = []
    try:
        pg_admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
        killed = pg_admin(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' "
            "AND pid <> pg_backend_pid()"
        )
        details["postgresql backends terminated"] = len(killed)
        for i in range(4):
            responses.append(post(server, "/api/mutables/set", set_mutable_body(f"@faults/@{tag}/raw{i}", "x")))
            responses.append(post(server, "/api/mutables/get", json.dumps({"key": f"@faults/@{tag}/before"}).encode()))
            latencies.append(health_seconds(server))
        for i, response in enumerate(responses):
            assert_database_unavailable(response, f"request {i} while PostgreSQL refused connections")
        in_flight = InFlight(f"@faults/@{tag}/in-flight", "written during the restart")
        in_flight.start()
        for _ in range(12):  # the "restart" lasts ~3 s, within the client's retries
            latencies.append(health_seconds(server))
            time.sleep(0.25)
    finally:
        pg_admin(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
    details["postgresql in-flight set_mutable"] = in_flight.check()
    for i in range(4):
        assert kcl.get_mutable(f"@faults/@{tag}/raw{i}") is None
    return len(responses), sum(r.status_code == 503 for r in responses), latencies


def test_database_outage_is_a_503_that_clients_ride_out(registered: RunningServer, figures: Figures) -> None:
    server = registered
    started, offset = time.monotonic(), len(server.log())
    tag = secrets.token_hex(4)
    acknowledged = {f"@faults/@{tag}/before": "set before the outage", f"@faults/@{tag}/also": "and this"}
    for key, value in acknowledged.items():
        kcl.set_mutable(key, value)
    details: dict[str, Any] = {"backend": "postgresql" if is_postgres(server) else "sqlite"}
    outage = postgres_outage if is_postgres(server) else sqlite_outage
    requests_sent, refused, latencies = outage(server, tag, details)

    # After the outage: the same client calls work, nothing acknowledged is lost.
    kcl.set_mutable(f"@faults/@{tag}/after", "set after the outage")
    assert kcl.get_mutable(f"@faults/@{tag}/after") == "set after the outage"
    lost = sum(kcl.get_mutable(key) != value for key, value in acknowledged.items())
    assert lost == 0
    log = log_since(server, offset)
    assert "Traceback" not in log, log[-4000:]
    assert "internal_error" not in log and "unhandled error" not in log, log[-4000:]
    assert server.process.poll() is None
    details.update(max_health_sec=round(max(latencies), 3), health_checks=len(latencies))
    figures.record(
        Figure("8 database outage is a 503", runs=requests_sent, faults=1, errors=0,  # any error failed above
               data_lost=lost, seconds=time.monotonic() - started, details={**details, "503s": refused})
    )  # fmt: skip
    assert max(latencies) < HEALTH_BOUND_SEC, f"health took {max(latencies):.2f} s during the outage"


# ------------------------------------------------------------------------------------------------ 9 deep JSON


def deep_dict(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


def deep_list(n: int) -> str:
    return "[" * n + "]" * n


def task_body(inner: str) -> bytes:
    return (
        '{"task_type":"calculation","task_name":"faults.deep","task_input":{"x":' + inner + '},"wait_ms":0}'
    ).encode()


def feed_body(feed_id: str, message: str) -> bytes:
    """An append of one message (canonical JSON text) correctly signed by this test's client."""
    signature = api_client().identity.sign(signed_bytes(feed_id, message))
    return json.dumps(
        {"append_id": secrets.token_hex(16), "messages": [{"body": message, "signature": signature}]}
    ).encode()


def test_deeply_nested_json_is_a_400_not_a_500(registered: RunningServer, figures: Figures) -> None:
    server = registered
    started, offset = time.monotonic(), len(server.log())
    feed = kcl.create_feed()
    cases: list[tuple[str, str, bytes, tuple[int, ...]]] = []
    for n in (900, 100_000):
        for shape, inner in (("dict", deep_dict(n)), ("list", deep_list(n))):
            cases.append((f"task_input {shape} x{n}", "/api/tasks/request", task_body(inner), (400,)))
    message = deep_dict(900)  # canonical already: one key, no spaces
    cases.append(("feed message x900", f"/api/feeds/{feed.feed_id}/messages", feed_body(feed.feed_id, message), (400,)))
    # mutables/set: a value that should be a string, nested: a validation error (the server's invalid_request,
    # 422) or a parse error (400) whichever comes first; the whole body wrapped 100,000 deep cannot be parsed.
    cases.append(("mutables/set value x900", "/api/mutables/set",
                  b'{"key":"@faults/deep","value":' + deep_dict(900).encode() + b"}", (400, 422)))  # fmt: skip
    cases.append(("mutables/set body wrapped x100000", "/api/mutables/set",
                  ("[" * 100_000 + '{"key":"@faults/deep","value":"v"}' + "]" * 100_000).encode(), (400,)))  # fmt: skip
    seen: dict[str, str] = {}
    errors = 0
    for what, target, body, statuses in cases:
        response = post(server, target, body)
        code = error_code(response)
        seen[what] = f"{response.status_code} {code}"
        ok = response.status_code in statuses and code in ("invalid_request", "invalid_message")
        ok = ok and bool(response.json().get("message"))
        errors += not ok
        assert requests.get(f"{server.url}/api/health", timeout=10).status_code == 200, f"server down after {what}"
    assert kcl.get_mutable("@faults/deep") is None  # nothing of the refused set was stored
    assert feed.get_num_messages() == 0

    # The client refuses to make such JSON (clearly), and makes JSON of an ordinary depth.
    too_deep: dict[str, Any] = {}
    cursor = too_deep
    for _ in range(300):
        cursor["a"] = {}
        cursor = cursor["a"]
    try:
        client_300 = f"stored {kcl.store_json(too_deep)}"
    except Exception as e:
        client_300 = type(e).__name__
    fine: dict[str, Any] = {"leaf": 1}
    for _ in range(149):
        fine = {"a": fine}
    client_150 = "stored and loaded" if kcl.load_json(kcl.store_json(fine)) == fine else "loaded differently"

    log = log_since(server, offset)
    figures.record(
        Figure("9 deep JSON is 400", runs=len(cases) + 2, faults=len(cases) + 1,
               errors=errors + (client_300 != "SerializationError") + (client_150 != "stored and loaded"),
               seconds=time.monotonic() - started,
               details={"backend": "postgresql" if is_postgres(server) else "sqlite", "answers": seen,
                        "client 300 levels": client_300, "client 150 levels": client_150})
    )  # fmt: skip
    assert errors == 0, f"answers (expected 400 with an error code and a message, never 500): {seen}"
    assert "Traceback" not in log, log[-4000:]
    assert server.process.poll() is None
    assert client_300 == "SerializationError", f"kcl.store_json of 300 levels: {client_300}"
    assert client_150 == "stored and loaded"


# ------------------------------------------------------------------------------------------------ 12 privacy

TRY_READ = r"""
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            os.listdir(path)
        else:
            with open(path, "rb") as f:
                f.read(1)
        out[path] = "read"
    except PermissionError:
        out[path] = "denied"
    except OSError as e:
        out[path] = type(e).__name__
print(json.dumps(out))
"""


def lab_python(user: Any) -> str:
    """An interpreter the Unix user can run (the test's own may live under a private /root)."""
    candidates = (
        sys.executable,
        f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
        "/usr/bin/python3",
    )
    for interpreter in candidates:
        if run_as(user, interpreter, "pass", {"PATH": "/usr/bin:/bin"}).returncode == 0:
            return interpreter
    pytest.skip("no interpreter the lab user can run")


def read_as(user: Any, interpreter: str, paths: list[Path]) -> dict[str, str]:
    result = run_as(user, interpreter, TRY_READ, {"PATH": "/usr/bin:/bin"}, *map(str, paths))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def loose_modes(directory: Path) -> list[str]:
    """Everything under ``directory`` (itself included) with group or other permission bits."""
    found = []
    for path in [directory, *directory.rglob("*")]:
        mode = path.lstat().st_mode
        if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
            found.append(f"{path.relative_to(directory.parent)} {stat.S_IMODE(mode):04o}")
    return found


@pytest.fixture
def open_base() -> Iterator[Path]:
    """A directory every user can traverse (pytest's tmp_path is 0700, which would hide what is tested)."""
    base = Path(tempfile.mkdtemp(prefix="kc-private-"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.mark.skipif(not is_root(), reason="reading as another real Unix user needs root (CI runs as root)")
def test_the_servers_data_is_private(open_base: Path, monkeypatch: pytest.MonkeyPatch, figures: Figures) -> None:
    started = time.monotonic()
    bob = next(u for u in ensure_lab_users() if u.name == "kctestbob")
    interpreter = lab_python(bob)
    control = open_base / "control.txt"
    control.write_text("anyone may read this")
    control.chmod(0o644)
    data_dir = open_base / "server"
    previous = os.umask(0o022)
    try:
        data_dir.mkdir(mode=0o755)
        data_dir.chmod(0o755)
        server = start_server(data_dir, settings={"presigned_url_ttl_sec": 3600})  # a world-readable settings.yaml
    finally:
        os.umask(previous)
    try:
        point_client_at(server, monkeypatch)
        kcl.init(quiet=True)
        secret = f"private {secrets.token_hex(8)}"
        kcl.set_mutable("@faults/secret", secret)
        uri = kcl.store_text(secret * 20_000)  # ~500 KB: uploaded to the embedded store, not inline
        assert kcl.load_text(uri) == secret * 20_000
        wanted = [data_dir / n for n in ("server.db", "server.db-wal", "s3-credentials.json", "settings.yaml")]
        missing = [p.name for p in wanted if not p.exists()]
        assert not missing, f"expected while the server runs: {missing}"
        running = read_as(bob, interpreter, [control, data_dir, *wanted, *sorted(data_dir.rglob("*"))])
    finally:
        assert server.stop() == 0
    files = sorted(p for p in data_dir.rglob("*") if p.is_file())
    logs = [p for p in files if p.suffix == ".log"]
    store_data = [p for p in files if "s3" in p.relative_to(data_dir).parts[:1] and p.stat().st_size > 400_000]
    assert logs and store_data, f"no logs or no stored object among {files}"
    stopped = read_as(bob, interpreter, [control, data_dir, *files])
    # The control: kctestbob reads a world-readable file beside the data directory, so a denial below is the
    # data directory's doing.
    assert running.pop(str(control)) == "read" and stopped.pop(str(control)) == "read", "the control read failed"
    attempts = {**{f"running {k}": v for k, v in running.items()}, **{f"stopped {k}": v for k, v in stopped.items()}}
    readable = sorted(k for k, v in attempts.items() if v != "denied")

    loose = loose_modes(data_dir)
    dir_mode = stat.S_IMODE(data_dir.stat().st_mode)

    # kachery-cloud-server admin with umask 022: on a fresh data directory and on this one.
    fresh = open_base / "admin-fresh"
    admin_runs = [
        [str(BIN / "kachery-cloud-server"), "admin", "create-project", "faults-p1", "--data-dir", str(fresh)],
        [str(BIN / "kachery-cloud-server"), "admin", "create-project", "faults-p2", "--data-dir", str(data_dir)],
        [str(BIN / "kachery-cloud-server"), "admin", "list-projects", "--data-dir", str(data_dir)],
    ]
    for args in admin_runs:
        result = subprocess.run(args, env=server.env, capture_output=True, text=True, timeout=60, umask=0o022)
        assert result.returncode == 0, result.stderr
    admin_loose = loose_modes(fresh) + loose_modes(data_dir)
    fresh_denied = read_as(bob, interpreter, [fresh, *fresh.rglob("*")])
    readable += sorted(f"admin {k}" for k, v in fresh_denied.items() if v != "denied")

    figures.record(
        Figure("12 the server's data is private", runs=len(attempts) + len(fresh_denied), faults=0,
               errors=len(readable) + len(loose) + len(admin_loose) + (dir_mode != 0o700),
               seconds=time.monotonic() - started,
               details={"read attempts as kctestbob": len(attempts) + len(fresh_denied),
                        "denied": sum(v == "denied" for v in attempts.values()) + sum(
                            v == "denied" for v in fresh_denied.values()),
                        "data dir mode": f"{dir_mode:04o}",
                        "files checked": [str(p.relative_to(data_dir)) for p in files],
                        "loose modes": loose + admin_loose, "readable": readable})
    )  # fmt: skip
    assert dir_mode == 0o700
    assert not readable, f"kctestbob could read: {readable}"
    assert not loose, f"group/other bits after the server ran: {loose}"
    assert not admin_loose, f"group/other bits after admin commands with umask 022: {admin_loose}"
