"""Real API server processes (embedded nanio + SQLite or PostgreSQL) for the tests."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

POSTGRES_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KACHERY_")}
    env.update(extra)
    return env


@dataclass
class RunningServer:
    url: str
    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    env: dict[str, str]
    log_path: Path

    def admin(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "api_server.cli", "admin", *args, "--data-dir", str(self.data_dir)],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"admin {args} failed: {result.stderr}")
        return result

    def child_pids(self) -> list[int]:
        return descendants(self.process.pid)

    def stop(self) -> int:
        """SIGTERM, wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    data_dir: Path,
    *,
    database_url: str | None = None,
    settings: dict[str, Any] | None = None,
    port: int | None = None,
    timeout: float = 60,
) -> RunningServer:
    data_dir.mkdir(parents=True, exist_ok=True)
    if settings:
        (data_dir / "settings.yaml").write_text(yaml.safe_dump(settings))
    port = port or free_port()
    env = clean_env()
    if database_url:
        env["KACHERY_CLOUD_SERVER_DATABASE_URL"] = database_url
    log_path = data_dir / "test-server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "api_server.cli", "start", "--data-dir", str(data_dir), "--port", str(port)],
            env=env,
            stdout=log,
            stderr=log,
        )
    server = RunningServer(
        url=f"http://127.0.0.1:{port}", port=port, data_dir=data_dir, process=process, env=env, log_path=log_path
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}:\n{server.log()}")
        if healthy(server.url):
            return server
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"server did not start:\n{server.log()}")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (from /proc), zombies excluded."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PostgresDatabases:
    """Fresh PostgreSQL databases on the machine's server, dropped at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def create(self) -> str:
        import psycopg

        name = f"kctest_{secrets.token_hex(5)}"
        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        self.names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.names.clear()
