"""Running the server: the foreground process (API + embedded store), and the background form with its pid file.

The data directory holds everything of the embedded default::

    <data dir>/
        settings.yaml          optional: overrides (an external S3 store, Google sign-in, PostgreSQL ...)
        server.db              SQLite database (unless database_url names another)
        s3/                    nanio's buckets (embedded store only)
        s3-credentials.json    the embedded store's generated credentials (0600)
        server.json            pid and URL of the running server (removed on a clean stop)
        server.lock            held while a server uses this directory
        server.log, nanio.log  logs of a background server and of its store

Everything in it is private to the user running the server (0700 directory, files without group or other
bits), whatever the umask and whatever a pre-made directory allowed: the database holds private mutables,
feed messages and task inputs.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .embedded import log_tail
from .settings import Settings

if TYPE_CHECKING:
    from .context import ServerContext

PID_FILE = "server.json"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"


class ServerStartError(RuntimeError):
    pass


class _Terminated(Exception):
    pass


def _raise_terminated(_signum: int, _frame: object) -> None:
    raise _Terminated


def run_foreground(settings: Settings, *, announce: bool = True) -> None:
    """Serve until SIGINT/SIGTERM; then stop the API, then the embedded store."""

    # From here on a SIGTERM ends with the cleanup below (nanio stopped, pid file removed), also while the
    # store starts or migrations run. uvicorn later re-raises the signal through this same handler.
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _run_foreground(settings, announce=announce)
    except _Terminated:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn's server, which on shutdown first answers the long-polls still waiting (they would otherwise
        hold the shutdown up for the rest of their wait; their clients simply ask again)."""

        def __init__(self, config: uvicorn.Config, context: ServerContext) -> None:
            super().__init__(config)
            self.context = context

        def handle_exit(self, sig: int, frame: object) -> None:
            self.context.wakeups.close_from_signal_handler()
            super().handle_exit(sig, frame)

    return Server


def _run_foreground(settings: Settings, *, announce: bool) -> None:
    import uvicorn
    from filelock import FileLock, Timeout

    from .app import create_app
    from .context import ServerContext
    from .embedded import EmbeddedS3
    from .http_guard import ConnectionLimits, guarded_protocol
    from .services import identity
    from .storage import Storage

    data_dir = settings.resolved_data_dir
    make_private(data_dir)
    _raise_open_files_limit()
    lock = FileLock(data_dir / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        running = read_pid_file(data_dir)
        where = f" (pid {running['pid']}, {running['url']})" if running else ""
        raise ServerStartError(f"another kachery-cloud-server is using {data_dir}{where}") from None
    embedded: EmbeddedS3 | None = None
    try:
        sock = _bind(settings.host, settings.port)
        s3 = settings.s3
        if s3 is None:
            embedded = EmbeddedS3(
                data_dir,
                host=settings.embedded_store_host,
                port=settings.store_port or (settings.port + 1 if settings.serves_other_machines else None),
            )
            s3, store_port = embedded.start()
            s3 = s3.model_copy(update={"client_endpoint_url": settings.embedded_store_url(store_port)})
        storage = Storage(s3, url_ttl_sec=settings.presigned_url_ttl_sec)
        storage.ensure_bucket()
        storage.probe_checksums()
        context = ServerContext.build(settings, storage)
        with context.db.transaction() as session:
            context.db.serialize_startup(session)  # replicas starting together create one owner, not two
            owner = identity.ensure_local_owner(session)
            owner_name = owner.name
        app = create_app(context)
        own_url = listen_url(settings)
        # Where clients reach the embedded store, when it serves other machines (start prints it).
        store_url = s3.client_endpoint_url if embedded is not None and settings.serves_other_machines else None
        _write_pid_file(data_dir, own_url, settings.resolved_public_url, store_url)
        if announce:
            store = f"embedded nanio at {s3.endpoint_url}" if embedded else f"{s3.endpoint_url} bucket {s3.bucket}"
            if s3.client_endpoint_url and s3.client_endpoint_url != s3.endpoint_url:
                store += f"; clients reach it at {s3.client_endpoint_url}"
            if context.blobs.store_checks_sha1:
                store += "\n  uploads: single PUTs checked by the store's SHA-1 check, multipart uploads re-hashed"
            elif settings.verify_uploads == "rehash":
                store += "\n  uploads: re-hashed on this server (verify_uploads: rehash)"
            else:
                store += "\n  uploads: re-hashed on this server (the store does not check SHA-1 checksums)"
            public = "" if own_url == settings.resolved_public_url else f" (public URL {settings.resolved_public_url})"
            print(
                f"kachery-cloud-server {own_url}{public} (pid {os.getpid()})\n"
                f"  data: {data_dir}\n  store: {store}\n  database: {_safe_db_name(settings)}\n"
                f"  registration: {settings.registration_mode}; owner {owner_name}, project 'default'\n"
                "  stop with Ctrl-C or `kachery-cloud-server stop`",
                file=sys.stderr,
                flush=True,
            )
        config = uvicorn.Config(
            app,
            log_level=settings.log_level,
            access_log=settings.log_level == "debug",
            http=guarded_protocol(
                ConnectionLimits(
                    max_head_bytes=settings.max_head_bytes,
                    max_headers=settings.max_headers,
                    head_timeout_sec=settings.head_timeout_sec,
                    max_connections_per_address=settings.max_connections_per_address,
                    exempt_addresses=frozenset(settings.trusted_proxies),
                )
            ),
            # X-Forwarded-For names the client only when a trusted proxy sent it (none by default): otherwise any
            # client on this machine could pick the address its requests are counted under.
            proxy_headers=bool(settings.trusted_proxies),
            forwarded_allow_ips=list(settings.trusted_proxies) or None,
            # No WebSocket routes: an upgrade would hand the connection to a protocol that the connection limits
            # above never see close, so each one would count against its address for good.
            ws="none",
        )
        try:
            # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal with the handler that
            # was in place before (ours, raising _Terminated; Python's, raising KeyboardInterrupt).
            _server_class()(config, context).run(sockets=[sock])
        except KeyboardInterrupt:
            pass
        finally:
            context.db.dispose()
    finally:
        if embedded is not None:
            embedded.stop()
        with contextlib.suppress(FileNotFoundError):
            (data_dir / PID_FILE).unlink()
        lock.release()


def make_private(data_dir: Path) -> None:
    """Create ``data_dir`` if needed and make it and what it holds at its top level private to this user (the
    files a server writes later are private anyway: the process's umask is 077)."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for path in (data_dir, *data_dir.iterdir()):
        try:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode) and stat.S_IMODE(mode) & 0o077:
                path.chmod(stat.S_IMODE(mode) & 0o700)
        except FileNotFoundError:
            continue
        except PermissionError:
            import logging

            logging.getLogger("kachery_cloud_server").warning(
                "cannot make %s private to this user (it belongs to someone else); other users may read it", path
            )


def _raise_open_files_limit() -> None:
    """Every connection is a file descriptor: take the hard limit, so that a thousand idle connections do not
    leave the server unable to accept more (the soft limit is often 1024)."""
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = hard if hard != resource.RLIM_INFINITY else 1 << 16
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def start_background(settings: Settings, argv: list[str], *, timeout_sec: float = 60.0) -> dict:
    """Start ``argv`` (a foreground ``start``) detached, logging to the data directory; return once healthy."""
    data_dir = settings.resolved_data_dir
    make_private(data_dir)
    log_path = data_dir / LOG_FILE
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True, close_fds=True
        )
    # Asked directly on host:port: a public_url may point at a proxy that is not up yet.
    url = listen_url(settings)
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerStartError(
                f"the server exited with code {process.returncode}; {log_path}:\n{log_tail(log_path, 30)}"
            )
        running = read_pid_file(data_dir)
        if running and running["pid"] == process.pid and _healthy(url):
            return running
        time.sleep(0.1)
    process.terminate()
    raise ServerStartError(
        f"the server did not become ready within {timeout_sec:.0f} s; {log_path}:\n{log_tail(log_path, 30)}"
    )


def stop(data_dir: Path, *, timeout_sec: float = 30.0) -> dict | None:
    """Stop the server using ``data_dir``; None if none was running."""
    running = read_pid_file(data_dir)
    if running is None:
        return None
    pid = running["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    deadline = time.monotonic() + timeout_sec
    while time.monotonic() < deadline:
        if not _alive(pid):
            return running
        time.sleep(0.05)
    raise ServerStartError(f"server pid {pid} did not stop within {timeout_sec:.0f} s")


def read_pid_file(data_dir: Path) -> dict | None:
    """The running server's pid and URL, or None if no server holds the data directory's lock.

    The lock, not the pid, says whether a server runs: after a kill -9 the pid file stays and its pid may
    belong to an unrelated process by now, which ``stop`` must not signal.
    """
    from filelock import FileLock, Timeout

    try:
        info = json.loads((data_dir / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or not isinstance(info.get("pid"), int) or not _alive(info["pid"]):
        return None
    probe = FileLock(data_dir / LOCK_FILE)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return info  # held: the server is running
    probe.release()
    return None


def listen_url(settings: Settings) -> str:
    """This process's own address (not a balancer's or proxy's), as this machine reaches it."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(settings.host, settings.host)
    return f"http://{f'[{host}]' if ':' in host else host}:{settings.port}"


def _write_pid_file(data_dir: Path, url: str, public_url: str, store_url: str | None) -> None:
    temp = data_dir / f".{PID_FILE}.{os.getpid()}"
    info = {"pid": os.getpid(), "url": url, "public_url": public_url, "data_dir": str(data_dir)}
    if store_url:
        info["store_url"] = store_url
    temp.write_text(json.dumps(info))
    os.replace(temp, data_dir / PID_FILE)


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ServerStartError(
            f"cannot listen on {host}:{port}: {e.strerror} (is another server running? choose one with --port)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _healthy(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/api/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) is not running.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def _safe_db_name(settings: Settings) -> str:
    from sqlalchemy.engine import make_url

    return make_url(settings.resolved_database_url).render_as_string(hide_password=True)
