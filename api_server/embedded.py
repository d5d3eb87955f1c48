"""The embedded object store: a nanio process (with the SHA-1 check of :mod:`.checked_store`), child of the API
server, with its data and generated credentials in the server's data directory. It dies with the server, even on
kill -9 (Linux).

It listens where the API does. On loopback only: on a free loopback port (the last run's if still free). For
other machines: on the API's address and a port of its own (``store_port``, default the API's port + 1), which
clients reach directly with the URLs the server signs for them."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

from .settings import S3Settings

NANIO_VERSION = "0.1.7"  # pinned in pyproject.toml ([server] extra); checked at start
BUCKET = "kachery-cloud"
_READY_TIMEOUT_SEC = 30.0


class EmbeddedStoreError(RuntimeError):
    pass


class EmbeddedS3:
    def __init__(self, data_dir: Path, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        """``host``: where the store listens; ``port``: its port (None: a free loopback port)."""
        self.dir = data_dir / "s3"
        self.log_path = data_dir / "nanio.log"
        self.host = host
        # Where this server reaches the store: loopback, unless it listens on one other address only.
        self.local_host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
        self.fixed_port = port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> tuple[S3Settings, int]:
        """Start the store; its settings (as this server reaches it, on loopback) and its port."""
        installed = version("nanio")
        if installed != NANIO_VERSION:
            raise EmbeddedStoreError(f"nanio {installed} is installed; this server needs nanio=={NANIO_VERSION}")
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        access_key, secret_key = self._credentials()
        previous = self._previous_port()
        for attempt in range(1 if self.fixed_port else 3):
            # Another process may take a free port between our check and nanio's bind: then try another. The port
            # of the last run first: presigned URLs handed out before a restart still lead somewhere.
            port = self.fixed_port or (previous if attempt == 0 and previous else free_loopback_port())
            self._spawn(port, access_key, secret_key)
            if self._wait_ready(port):
                with contextlib.suppress(OSError):
                    self._port_file.write_text(f"{port}\n")
                local = f"[{self.local_host}]" if ":" in self.local_host else self.local_host
                settings = S3Settings(
                    endpoint_url=f"http://{local}:{port}",
                    bucket=BUCKET,
                    access_key_id=access_key,
                    secret_access_key=secret_key,
                )
                return settings, port
        if self.fixed_port and not _port_free(self.host, self.fixed_port):
            raise EmbeddedStoreError(
                f"the embedded S3 store cannot listen on {self.host}:{self.fixed_port}: the port is taken "
                "(choose another with --store-port)"
            )
        raise EmbeddedStoreError(
            f"the embedded S3 store (nanio) did not start; see {self.log_path}:\n{self._log_tail()}"
        )

    @property
    def _port_file(self) -> Path:
        return self.dir.parent / "s3-port"

    def _previous_port(self) -> int | None:
        try:
            port = int(self._port_file.read_text())
        except (OSError, ValueError):
            return None
        return port if 1024 <= port <= 65535 else None

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _credentials(self) -> tuple[str, str]:
        path = self.dir.parent / "s3-credentials.json"
        if not path.exists():
            # Written whole to a temp file, then linked into place: a start killed midway leaves no empty or
            # partial credentials file behind, and of two starts racing, the first link wins for both.
            data = {"access_key_id": "kc" + secrets.token_hex(9), "secret_access_key": secrets.token_urlsafe(30)}
            temp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(data, f)
                    f.flush()
                    os.fsync(f.fileno())
                with contextlib.suppress(FileExistsError):
                    os.link(temp, path)
            finally:
                temp.unlink()
        data = json.loads(path.read_text())
        return data["access_key_id"], data["secret_access_key"]

    def _spawn(self, port: int, access_key: str, secret_key: str) -> None:
        env = {**os.environ, "NANIO_ACCESS_KEY": access_key, "NANIO_SECRET_KEY": secret_key}
        command = [sys.executable, "-m", "api_server.checked_store", str(self.dir), self.host, str(port)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # Own session: a Ctrl-C in the terminal reaches only the API server, which then stops nanio in order.
                start_new_session=True,
                preexec_fn=functools.partial(_die_with_parent, os.getpid())
                if sys.platform.startswith("linux")
                else None,
            )

    def _wait_ready(self, port: int) -> bool:
        deadline = time.monotonic() + _READY_TIMEOUT_SEC
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                return False
            with contextlib.suppress(OSError), socket.create_connection((self.local_host, port), timeout=0.5):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def _log_tail(self) -> str:
        return log_tail(self.log_path, 20)


def log_tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log file, for error messages ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent(parent_pid: int) -> None:
    # Runs in the child between fork and exec: ask the kernel to SIGTERM it when the server process dies,
    # so a kill -9 of the server leaves no orphan store behind.
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    # The parent may have died before prctl took effect.
    if os.getppid() != parent_pid:
        os._exit(1)
