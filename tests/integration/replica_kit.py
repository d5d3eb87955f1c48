"""Two (or more) API server replicas behind a real haproxy, on one PostgreSQL database and one SeaweedFS bucket
(DESIGN.md section 8), for ``test_replicas.py``; plus the processes that use them: task workers pointed at one
replica, and a load client (``python -m tests.integration.replica_kit load OUT SECONDS SEED``) that records every
store call only once it has returned."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..servers import RunningServer, clean_env, free_port, start_server

ROOT = Path(__file__).resolve().parents[2]
HAPROXY = "/usr/sbin/haproxy"
REDIS_URL = "redis://127.0.0.1:6379/0"


def find_haproxy() -> str:
    """The haproxy binary; a clear failure where it should be (Linux), a skip elsewhere."""
    import pytest

    if sys.platform != "linux":
        pytest.skip("the replica tests run haproxy, installed on Linux only (by .ci/run)")
    found = HAPROXY if os.access(HAPROXY, os.X_OK) else shutil.which("haproxy")
    if found is None:
        pytest.fail("haproxy is not installed; .ci/run installs it (apt-get install haproxy)", pytrace=False)
    return found


HAPROXY_CONFIG = """\
global
    stats socket {socket} mode 600 level admin
    maxconn 2000

defaults
    mode http
    timeout connect 5s
    # longer than the server's 30 s long-polls, so haproxy never cuts a waiting follower or worker
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    retries 3
    option redispatch
    option forwardfor

frontend api
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /api/health/ready
{servers}
"""


class HAProxy:
    """A foreground haproxy process balancing over ``backends`` (name -> loopback port)."""

    def __init__(self, binary: str, directory: Path, port: int, backends: dict[str, int]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        # A Unix socket path may be at most ~100 bytes, which a test's temporary directory (under a worker's) can
        # pass: the socket lives in a short directory of its own.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="kc-haproxy-"))
        self.socket_path = self._socket_dir / "stats.sock"
        self.log_path = directory / "haproxy.log"
        servers = "\n".join(
            f"    server {name} 127.0.0.1:{backend_port} check inter 500ms fall 2 rise 2"
            for name, backend_port in backends.items()
        )
        config = directory / "haproxy.cfg"
        config.write_text(HAPROXY_CONFIG.format(socket=self.socket_path, port=port, servers=servers))
        check = subprocess.run([binary, "-c", "-f", str(config)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            raise AssertionError(f"haproxy refuses its configuration:\n{check.stdout}{check.stderr}")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([binary, "-db", "-f", str(config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not self._answers():
            if self.process.poll() is not None:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                raise AssertionError(f"haproxy exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"haproxy did not start:\n{self.log()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
            self.stats()
            return True
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def command(self, line: str) -> str:
        """One command on the stats socket (``show stat``, ...), its whole answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect(str(self.socket_path))
            s.sendall(line.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """The backend's servers, by name: haproxy's own counters (status, stot, hrsp_2xx, ...)."""
        text = self.command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {row["svname"]: row for row in rows if row["pxname"] == "replicas" and row["svname"] != "BACKEND"}

    def responses(self) -> dict[str, int]:
        """HTTP responses each server has sent through the balancer (every status class)."""
        classes = ("hrsp_1xx", "hrsp_2xx", "hrsp_3xx", "hrsp_4xx", "hrsp_5xx", "hrsp_other")
        return {name: sum(int(row[c] or 0) for c in classes) for name, row in self.stats().items()}

    def wait_for_status(self, name: str, prefix: str, timeout: float = 30) -> None:
        """Until haproxy's health checks have marked server ``name`` as UP or DOWN."""
        deadline = time.monotonic() + timeout
        while not (status := self.stats()[name]["status"]).startswith(prefix):
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy kept {name} at {status}, not {prefix}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._socket_dir, ignore_errors=True)


@dataclass
class Replicas:
    """API servers sharing one database and one bucket, and the haproxy in front of them."""

    servers: list[RunningServer]
    balancer: HAProxy
    names: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.balancer.url

    def invite(self, role: str = "write", project: str = "default") -> str:
        """A one-time invitation link naming the balancer (admin commands work on the shared database)."""
        printed = self.servers[0].admin("invite", project, "--role", role, "--url", self.url).stdout
        return printed.strip().splitlines()[-1]

    def register_clients(self, count: int, user: str) -> list[dict[str, str]]:
        """``count`` new clients of ``user`` (made a writer of the default project), as the environment
        (KACHERY_CLOUD_CLIENT_ID, KACHERY_CLOUD_PRIVATE_KEY) that gives a process each one's identity."""
        self.servers[0].admin("add-member", "default", user, "--role", "write")  # an email: made if new

        def register(_: int) -> dict[str, str]:
            printed = self.servers[0].admin("register-client", "--user", user).stdout
            return dict(line.split("=", 1) for line in printed.strip().splitlines())

        with ThreadPoolExecutor(count) as pool:
            return list(pool.map(register, range(count)))


@contextlib.contextmanager
def running_replicas(
    directory: Path, *, database_url: str, s3: dict[str, Any], settings: dict[str, Any] | None = None, count: int = 2
) -> Iterator[Replicas]:
    """``count`` replicas (each its own data dir, one database, one bucket, the balancer as public URL) behind
    haproxy, all stopped at the end even when the block fails."""
    binary = find_haproxy()
    balancer_port = free_port()
    ports = [free_port() for _ in range(count)]
    names = [f"r{i}" for i in range(count)]
    shared = {
        "trusted_proxies": ["127.0.0.1"],  # haproxy's X-Forwarded-For names the client
        "rate_limit_storage": REDIS_URL,  # one count per client for all replicas
        **(settings or {}),
        "s3": s3,
        "public_url": f"http://127.0.0.1:{balancer_port}",
    }

    def start(i: int) -> RunningServer:
        return start_server(directory / names[i], database_url=database_url, settings=shared, port=ports[i])

    # Together: the startup advisory lock must make concurrent migrations of the fresh database safe.
    with ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(start, i) for i in range(count)]
    servers: list[RunningServer] = []
    failure: BaseException | None = None
    for future in futures:
        try:
            servers.append(future.result())
        except BaseException as e:  # keep the others to stop them
            failure = e
    balancer: HAProxy | None = None
    try:
        if failure is not None:
            raise failure
        balancer = HAProxy(binary, directory / "haproxy", balancer_port, dict(zip(names, ports, strict=True)))
        replicas = Replicas(servers, balancer, names)
        for name in names:
            balancer.wait_for_status(name, "UP")
        yield replicas
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers:
            with contextlib.suppress(Exception):
                server.stop()
            if server.process.poll() is None:
                server.process.kill()
                server.process.wait()


def client_env(directory: Path, api_url: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a client process: its own client directory, optionally another server URL."""
    env = clean_env(KACHERY_CLOUD_DIR=str(directory), KACHERY_CLOUD_QUIET="1", **extra)
    if api_url is not None:
        env["KACHERY_CLOUD_API_URL"] = api_url
    return env


class Workers:
    """Task worker processes (``tests/integration/task_worker.py``), each with its own run log."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, env: dict[str, str], run_log: Path) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.task_worker", "1"],
            cwd=ROOT,
            env={**env, "RUN_LOG": str(run_log), "KACHERY_CLOUD_QUIET": ""},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.processes.append(process)
        assert process.stdout is not None
        first = process.stdout.readline().strip()
        assert first == "worker ready", f"the worker said {first!r}"
        return process

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            if process.stdout is not None and not process.stdout.closed:
                print(f"worker {process.pid} (exit {process.returncode}):\n{process.stdout.read()}")


# ----------------------------------------------------------------------------------------------- the load


@dataclass
class LoadClient:
    process: subprocess.Popen[str]
    acks: Path  # one JSON line per store call that returned: when, the URI, what was stored


def start_load(directory: Path, env: dict[str, str], seconds: float, seed: int) -> LoadClient:
    directory.mkdir(parents=True, exist_ok=True)
    acks = directory / "acks.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.integration.replica_kit", "load", str(acks), str(seconds), str(seed)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return LoadClient(process, acks)


def read_acks(path: Path) -> list[dict[str, Any]]:
    """The acknowledged stores; a last line cut short (the writer stopped mid-line) was never acknowledged."""
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            records.append(json.loads(line))
    return records


def _load_main(acks_path: str, seconds: str, seed: str) -> None:
    """Store distinct small JSON values and small binary files until time is up; a line in ``acks_path`` per
    store call that returned, written only after it returned. Prints ``{"acked": n, "failed": n, "errors": ...}``."""
    import kachery_cloud as kcl

    deadline = time.monotonic() + float(seconds)
    scratch = Path(acks_path).parent / "scratch.bin"
    acked = failed = 0
    errors: dict[str, int] = {}
    with open(acks_path, "a") as acks:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            try:
                if n % 2:
                    value = {"client": int(seed), "n": n, "nonce": secrets.token_hex(8)}
                    uri = kcl.store_json(value)
                    record = {"kind": "json", "value": value}
                else:
                    data = os.urandom(100 + n % 3000)
                    scratch.write_bytes(data)
                    uri = kcl.store_file(scratch)
                    record = {"kind": "blob", "hex": data.hex()}
            except Exception as e:  # a failed call is counted, not fatal: the load goes on
                failed += 1
                key = f"{type(e).__name__}: {str(e)[:160]}"
                errors[key] = errors.get(key, 0) + 1
                time.sleep(0.05)
                continue
            acks.write(json.dumps({"t": time.time(), "uri": uri, **record}) + "\n")
            acks.flush()
            acked += 1
    print(json.dumps({"acked": acked, "failed": failed, "errors": errors}), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["load"]:
        _load_main(*sys.argv[2:5])
    else:
        raise SystemExit(f"usage: python -m {__spec__.name if __spec__ else 'replica_kit'} load OUT SECONDS SEED")
